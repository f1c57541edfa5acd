"""Helpers of the tests that run this repository's pipeline in copies of it (DVC remotes, Slurm)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from filelock import FileLock

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


# The shared experiment repository (tests/conftest.py's `experiment_repo`, and the local runs that
# tests/integration/test_slurm_grid.py compares its Slurm runs with): one phantom patient
# (LIDC-IDRI-0003: 4 nodules, 2 folds of 2 test nodules), 2 epochs (a requeue can resume mid-run),
# and three of the paper's experiments, each with the -S list `nodule-net grid` gives it.
SHARED_PARAMS = {
    "phantom": {"patients": ["LIDC-IDRI-0003"], "workers": 1},
    "extract": {"workers": 1},
    "folds": [0, 1],
    "train": {"epochs": 2, "device": "cpu"},
}
SHARED_EXPERIMENTS = ("t1-none", "t5-classify", "t1-sam")  # run in this order: t1-sam's results stay
SHARED_COMMIT = "tiny pipeline"
SHOWN = "experiments.json"  # beside the repository: its `dvc exp show --json` once built


def merged(tree: dict, changes: dict) -> dict:
    """``tree`` with the nested ``changes`` written into it."""
    for key, value in changes.items():
        tree[key] = merged(tree[key], value) if isinstance(value, dict) else value
    return tree


def copy_with_shared_params(repo: Path) -> None:
    """This working tree copied into ``repo`` (made here), SHARED_PARAMS written into its params.yaml."""
    repo.mkdir(parents=True)
    copy_working_tree(repo)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    (repo / "params.yaml").write_text(yaml.safe_dump(merged(params, SHARED_PARAMS), sort_keys=False))


def build_experiment_repo(root: Path, python: Path) -> Path:
    """A git + DVC copy of this working tree in ``root/repo`` with SHARED_PARAMS committed (message
    SHARED_COMMIT), a default DVC remote ``root/dvc-store`` committed with it, and SHARED_EXPERIMENTS run
    with ``dvc exp run``; each experiment's predictions are copied aside to ``root/<name>.csv``, and
    ``dvc exp show --json`` to ``root/SHOWN`` (for tests on other workers, which must not run DVC in it)."""
    from nodule_net.experiments import grid

    repo = root / "repo"
    copy_with_shared_params(repo)
    env = experiment_env(repo, python)
    dvc = str(python.parent / "dvc")
    run(["git", "init", "--quiet", "--initial-branch=main"], repo, env)
    run([dvc, "remote", "add", "--default", "store", str(root / "dvc-store")], repo, env)
    run(["git", "add", "."], repo, env)
    run(["git", "commit", "--quiet", "-m", SHARED_COMMIT], repo, env)
    by_name = {experiment.name: experiment for experiment in grid.select_experiments(list(SHARED_EXPERIMENTS))}
    for experiment in (by_name[name] for name in SHARED_EXPERIMENTS):  # the grid's order is not ours
        overrides = grid.set_params(grid.experiment_overrides(experiment, []))
        run([dvc, "exp", "run", "--name", experiment.name, *overrides], repo, env)
        shutil.copy(repo / "data" / "predictions.csv", root / f"{experiment.name}.csv")
    (root / SHOWN).write_text(run([dvc, "exp", "show", "--json"], repo, env))
    return repo


def shared_experiment_repo(tmp_path_factory) -> Path:
    """The session's experiment repository (build_experiment_repo), built once for all pytest-xdist
    workers: the first to ask builds it under a file lock, the others wait for it (pytest-xdist's way
    of running a session fixture once)."""
    base = tmp_path_factory.getbasetemp()
    root = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared-experiments"
    with FileLock(f"{root}.lock"):
        if not (root / SHOWN).is_file():  # written last: a build that failed is redone
            shutil.rmtree(root, ignore_errors=True)
            build_experiment_repo(root, Path(sys.executable))
    return root / "repo"


def shown_experiments(shown: str) -> dict[str, dict]:
    """``dvc exp show --json``'s experiments by name."""
    return {
        rev["name"]: rev
        for commit in json.loads(shown)
        for group in commit.get("experiments") or ()
        for rev in group["revs"]
        if rev.get("name")
    }


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
