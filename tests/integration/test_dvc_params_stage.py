"""dvc.yaml's `params` stage under real DVC: an experiment with a misspelt key fails and is not recorded.

Without the stage, `dvc exp run -S +trian.epochs=1` on a reproduced pipeline changes no stage's
params, runs nothing, and DVC records a successful experiment. The repository here holds the
stage exactly as dvc.yaml defines it (read from it, with only the files its ``deps`` list: a
missing dep would fail the import), so removing or breaking the stage fails this test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).with_name("dvc")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not DVC.exists(), reason=f"no dvc executable beside {sys.executable}"),
]


def _run(args: list[str], repo: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=120)


def _experiments(repo: Path, env: dict[str, str]) -> list[str]:
    """Names of the experiments `dvc exp show --json` lists under the baseline commit."""
    done = _run([str(DVC), "exp", "show", "--json"], repo, env)
    assert done.returncode == 0, done.stderr
    return [e["name"] for commit in json.loads(done.stdout) for e in commit.get("experiments") or []]


@pytest.fixture()
def params_only_repo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A git + DVC repository whose dvc.yaml is the real one's `params` stage, reproduced and committed."""
    repo = tmp_path / "repo"
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["params"]
    for dep in stage["deps"]:
        (repo / dep).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / dep, repo / dep)
    shutil.copy(REPO / "params.yaml", repo / "params.yaml")
    (repo / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"params": stage}}, sort_keys=False))
    env = os.environ | {
        # The stage calls `python`: the venv's, which imports this copy's package (run from its root).
        "PATH": f"{DVC.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": "",
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.org",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.org",
    }
    for args in (["git", "init", "-q"], [str(DVC), "init", "-q"], [str(DVC), "repro"]):
        done = _run(args, repo, env)
        assert done.returncode == 0, done.stdout + done.stderr
    for args in (["git", "add", "-A"], ["git", "commit", "-qm", "baseline"]):
        assert _run(args, repo, env).returncode == 0
    return repo, env


def test_an_experiment_with_a_misspelt_key_fails_and_is_not_recorded(params_only_repo) -> None:
    repo, env = params_only_repo
    typo = _run([str(DVC), "exp", "run", "-S", "+trian.epochs=1"], repo, env)
    assert typo.returncode != 0
    assert "error: params.yaml: unknown key 'trian'; did you mean 'train'?" in typo.stderr.splitlines()
    assert _experiments(repo, env) == []
    # The same repository records a valid experiment: the empty list above is not a blind exp show.
    assert _run(["git", "checkout", "params.yaml"], repo, env).returncode == 0  # the workspace run left the typo
    valid = _run([str(DVC), "exp", "run", "--name", "valid", "-S", "train.epochs=2"], repo, env)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert "params.yaml: ok" in valid.stdout
    assert _experiments(repo, env) == ["valid"]
