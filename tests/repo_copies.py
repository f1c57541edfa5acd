"""Helpers of the tests that run this repository's pipeline in copies of it (DVC remotes, Slurm)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """stdout of ``args``; on failure an AssertionError with the command's last output lines."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise AssertionError(f"`{' '.join(args)}` in {cwd} exited with {done.returncode}:\n{tail}")
    return done.stdout


def copy_working_tree(dest: Path) -> None:
    """Tracked and untracked, not ignored files of this repository (as they are now) into ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-coz", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)


# The shared experiment repository (tests/conftest.py's `experiment_repo`): one phantom patient
# (LIDC-IDRI-0003: 4 nodules, 2 folds of 2 test nodules), 1 epoch, and two experiments.
SHARED_PARAMS = {
    "phantom": {"patients": ["LIDC-IDRI-0003"], "workers": 1},
    "extract": {"workers": 1},
    "folds": [0, 1],
    "train": {"epochs": 1, "device": "cpu"},
}
SHARED_EXPERIMENTS = (("t1-none", "none"), ("t1-sam", "sam"))  # run in this order: t1-sam's results stay
SHARED_COMMIT = "tiny pipeline"


def merged(tree: dict, changes: dict) -> dict:
    """``tree`` with the nested ``changes`` written into it."""
    for key, value in changes.items():
        tree[key] = merged(tree[key], value) if isinstance(value, dict) else value
    return tree


def build_experiment_repo(root: Path, python: Path) -> Path:
    """A git + DVC copy of this working tree in ``root/repo`` with SHARED_PARAMS committed (message
    SHARED_COMMIT), a default DVC remote ``root/dvc-store`` committed with it, and SHARED_EXPERIMENTS run
    with ``dvc exp run``; each experiment's predictions are copied aside to ``root/<name>.csv``."""
    repo = root / "repo"
    repo.mkdir(parents=True)
    copy_working_tree(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(merged(params, SHARED_PARAMS), sort_keys=False))
    env = experiment_env(repo, python)
    dvc = str(python.parent / "dvc")
    run(["git", "init", "--quiet", "--initial-branch=main"], repo, env)
    run([dvc, "remote", "add", "--default", "store", str(root / "dvc-store")], repo, env)
    run(["git", "add", "."], repo, env)
    run(["git", "commit", "--quiet", "-m", SHARED_COMMIT], repo, env)
    for name, variant in SHARED_EXPERIMENTS:
        run([dvc, "exp", "run", "--name", name, "-S", f"model.variant={variant}"], repo, env)
        shutil.copy(repo / "data" / "predictions.csv", root / f"{name}.csv")
    return repo


def experiment_env(repo: Path, python: Path) -> dict[str, str]:
    """What DVC and its stage commands need in a copy: the venv's ``dvc``/``python`` first on PATH, the
    copy's own nodule_net (not the editable install's), one torch thread, a git identity."""
    return os.environ | {
        "PATH": f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(repo),
        "OMP_NUM_THREADS": "1",  # tiny tensors on a shared machine: a second thread only waits
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "machine A",
        "GIT_AUTHOR_EMAIL": "a@example.org",
        "GIT_COMMITTER_NAME": "machine A",
        "GIT_COMMITTER_EMAIL": "a@example.org",
    }
