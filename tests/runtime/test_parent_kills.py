"""Stages with worker processes, killed as users and machines kill them: a fold process killed while it
starts, Ctrl-C then, and the parent alone killed by pid (SIGKILL, SIGTERM) while its workers are busy.

Whatever the moment, the stage ends within seconds, no worker outlives it, nothing is half-written,
and the next run gives the numbers of an uninterrupted one. The workers are held where the test
wants them by ``tests/held_workers/sitecustomize.py`` (put on their PYTHONPATH here only).
"""

from __future__ import annotations

import filecmp
import os
import runpy
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from conftest import TINY_PATIENTS, popen_interruptible
from nodule_net.config import load_params
from nodule_net.data.phantom import build_phantom
from nodule_net.data.split import fold_indices, read_splits
from nodule_net.io.checkpoint import finished_epochs
from nodule_net.io.store import read_dataset
from nodule_net.training.fingerprint import fingerprint
from synthetic_nodules import train_argv, write_stage_inputs

REPO = Path(__file__).resolve().parents[2]
HOOK = Path(__file__).resolve().parents[1] / "held_workers"
GONE_WITHIN_S = 10  # the workers' parent watch looks every second; PR_SET_PDEATHSIG is at once
ENDED_WITHIN_S = 20  # a stage's own end after a death: the pool notices, stops the rest, prints

pytestmark = [pytest.mark.slow, pytest.mark.integration]

TRAIN = {"epochs": 2, "device": "cpu", "folds_together": False, "fold_processes": 2}


def start(argv: list[str], cwd: Path, hold: str | None, marks: Path) -> subprocess.Popen:
    """A stage process in a session of its own (a signal to its group reaches no test), its workers held at ``hold``."""
    marks.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HOOK), str(REPO)]), NODULE_NET_HOLD_DIR=str(marks))
    if hold is not None:
        env["NODULE_NET_HOLD"] = hold
    return popen_interruptible([sys.executable, *argv], cwd=cwd, env=env, start_new_session=True)


def held_workers(proc: subprocess.Popen, marks: Path, count: int, timeout: float = 120) -> list[int]:
    """The pids of ``count`` held workers, once they are (no event to wait on across processes: their marks)."""
    deadline = time.monotonic() + timeout
    while len(held := list(marks.glob("held-*"))) < count:
        if proc.poll() is not None or time.monotonic() > deadline:
            _, err = proc.communicate()
            pytest.fail(f"{len(held)} of {count} workers held; the stage ended with {proc.returncode}:\n{err}")
        time.sleep(0.02)
    return sorted(int(mark.name.split("-")[1]) for mark in held)


def descendants(proc: subprocess.Popen) -> list[psutil.Process]:
    return psutil.Process(proc.pid).children(recursive=True)


def alive(process: psutil.Process) -> bool:
    """Running, not a zombie: an orphan's zombie waits for a PID 1 that may never reap it (containers)."""
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def assert_all_gone(processes: list[psutil.Process], within: float = GONE_WITHIN_S) -> None:
    deadline = time.monotonic() + within
    while (left := [p for p in processes if alive(p)]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not left, f"still running {within} s after their stage ended: {[p.cmdline() for p in left]}"


def ended(proc: subprocess.Popen, since: float, within: float = ENDED_WITHIN_S) -> tuple[int, list[str]]:
    """The stage's exit code and stderr lines (less the INFO log), after checking it ended ``within`` s of ``since``."""
    try:
        _, err = proc.communicate(timeout=within + 30)
    finally:
        proc.kill()
    assert time.monotonic() - since < within, f"the stage took {time.monotonic() - since:.0f} s to end"
    assert "Traceback" not in err, err
    return proc.returncode, [line for line in err.splitlines() if not line.startswith("INFO ")]


def kill(proc: subprocess.Popen, signum: signal.Signals) -> tuple[list[psutil.Process], float]:
    """``signum`` to the stage's process alone (``kill PID``); its descendants as they were, and when."""
    before = descendants(proc)
    assert before, "the stage has no worker processes"
    os.kill(proc.pid, signum)
    return before, time.monotonic()


# --- train: fold processes ---------------------------------------------------------------------------


def train_stage(folder: Path, size: int = 16) -> list[str]:
    write_stage_inputs(folder, TRAIN, size=size)
    return [str(REPO / "pipeline" / "train.py"), *train_argv()]


def train_here(folder: Path, monkeypatch) -> None:
    """The train stage in this process, on one thread, one fold after another: the numbers of fold
    processes of one thread each (tests/training/test_fold_processes.py), without their start-up."""
    values = yaml.safe_load((folder / "params.yaml").read_text())
    values["train"]["fold_processes"] = 1  # not part of a checkpoint's identity: it resumes the processes' ones
    (folder / "params.yaml").write_text(yaml.safe_dump(values))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with monkeypatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(sys, "argv", ["train.py", *train_argv()])
        try:
            runpy.run_path(str(REPO / "pipeline" / "train.py"), run_name="__main__")
        finally:
            torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def uninterrupted_training(tmp_path_factory) -> Path:
    """The train stage's folder after a run that nothing interrupted: the numbers a rerun must give."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    train_stage(folder)
    with pytest.MonkeyPatch.context() as monkeypatch:
        train_here(folder, monkeypatch)
    return folder


def assert_same_training(folder: Path, reference: Path) -> None:
    for fold in (0, 1):
        ours = torch.load(folder / f"models/fold{fold}/model.pt", weights_only=True)
        theirs = torch.load(reference / f"models/fold{fold}/model.pt", weights_only=True)
        for name, value in theirs["model"].items():
            torch.testing.assert_close(ours["model"][name], value, rtol=0, atol=0, msg=name)
        curves = sorted((reference / f"live/fold{fold}").rglob("*.tsv"))
        assert curves
        for curve in curves:
            assert (folder / curve.relative_to(reference)).read_text() == curve.read_text()


def assert_checkpoints_whole(folder: Path, epochs: int) -> None:
    """Each fold's checkpoint holds ``epochs`` finished epochs of this run; no temporary file is left."""
    data = read_dataset(folder / "nodules.h5")
    splits = read_splits(folder / "splits.json")
    params = load_params(folder / "params.yaml")
    for fold in (0, 1):
        parts = fold_indices(splits, fold, data.nodule_id)
        identity = fingerprint(data, parts, params.model, params.train, fold)
        assert finished_epochs(folder / f"ckpt/fold{fold}.pt", identity) == epochs
    assert not list((folder / "ckpt").glob("*.partial"))


def test_a_fold_process_killed_while_it_starts_ends_train_with_one_line(tmp_path) -> None:
    """SIGKILL to a fold process that has not yet read its start-up arguments. The dataset is larger
    than a pipe holds: sent through the start-up pipe, the parent would block on it for ever.

    The victim is the last process started: the one that CPython 3.11's executor may not watch
    (nodule_net.runtime.workers), so the stage must notice its death itself."""
    proc = start(train_stage(tmp_path, size=64), tmp_path, "start", tmp_path / "marks")
    assert os.path.getsize(tmp_path / "nodules.h5") > 64 * 1024  # more than a Linux pipe buffer
    *_, victim = held_workers(proc, tmp_path / "marks", 2)  # pids grow: the last is the later one
    before = descendants(proc)
    os.kill(victim, signal.SIGKILL)
    code, lines = ended(proc, time.monotonic())
    assert code == 1
    (line,) = lines
    assert line.startswith(f"error: train: worker process {victim} was killed by SIGKILL before training fold ")
    assert line.endswith("every fold keeps its last finished epoch's checkpoint, and `dvc repro` resumes from there.")
    assert_all_gone(before)
    assert not list((tmp_path / "models").rglob("*.pt"))


def test_ctrl_c_while_fold_processes_start_is_one_line(tmp_path) -> None:
    """SIGINT to the stage's process group (a terminal's Ctrl-C) while both fold processes are starting."""
    proc = start(train_stage(tmp_path, size=64), tmp_path, "start", tmp_path / "marks")
    held_workers(proc, tmp_path / "marks", 2)
    before = descendants(proc)
    os.killpg(proc.pid, signal.SIGINT)
    code, lines = ended(proc, time.monotonic())
    assert (code, lines) == (130, ["interrupted; `dvc repro` resumes from the last epoch"])
    assert_all_gone(before)


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_train_killed_alone_leaves_no_fold_process_and_resumes_to_uninterrupted_numbers(
    tmp_path, signum, uninterrupted_training, monkeypatch, capsys
) -> None:
    """The parent alone, by pid, while both fold processes train their second epoch (the first is checkpointed)."""
    proc = start(train_stage(tmp_path), tmp_path, "train", tmp_path / "marks")
    held_workers(proc, tmp_path / "marks", 2)
    before, at = kill(proc, signum)
    code, lines = ended(proc, at)
    if signum == signal.SIGTERM:  # handled: the stage stops its workers itself, as on Ctrl-C
        assert (code, lines) == (143, ["terminated (SIGTERM); `dvc repro` resumes from the last epoch"])
    else:
        assert (code, lines) == (-signal.SIGKILL, [])
    assert_all_gone(before)
    assert not list((tmp_path / "models").rglob("*.pt"))
    assert_checkpoints_whole(tmp_path, epochs=1)
    if signum == signal.SIGTERM:
        return
    # The next run (as `dvc repro` would start it) resumes both folds from epoch 1.
    capsys.readouterr()
    train_here(tmp_path, monkeypatch)
    out = capsys.readouterr().out
    assert "Resuming fold 0" in out and "Resuming fold 1" in out
    assert_same_training(tmp_path, uninterrupted_training)


# --- extract and phantom: scan workers ---------------------------------------------------------------


def stage_params(tmp_path: Path) -> Path:
    """The repository's params with the tiny phantom's patients and two workers in each pool."""
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["data"]["source"] = "phantom"
    values["phantom"] |= {"patients": TINY_PATIENTS, "workers": 2, "margin_slices": 1, "all_slices": False}
    values["extract"]["workers"] = 2
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(values))
    return params


def extract_stage(tmp_path: Path, phantom: Path) -> list[str]:
    out, stats = tmp_path / "nodules.h5", tmp_path / "dataset.json"
    return ["-m", "pipeline.extract", "--phantom-root", str(phantom), "--out", str(out), "--stats", str(stats),
            "--params", str(stage_params(tmp_path))]  # fmt: skip


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_extract_killed_alone_leaves_no_worker_and_no_dataset(tmp_path, signum, tiny_phantom) -> None:
    proc = start(extract_stage(tmp_path, tiny_phantom), REPO, "extract", tmp_path / "marks")
    held_workers(proc, tmp_path / "marks", 2)  # each busy with one of the two scans
    before, at = kill(proc, signum)
    code, lines = ended(proc, at)
    if signum == signal.SIGTERM:
        assert (code, lines) == (143, ["terminated (SIGTERM); no output was left half-written, and `dvc repro` "
                                       "runs this stage again"])  # fmt: skip
    else:
        assert (code, lines) == (-signal.SIGKILL, [])
    assert_all_gone(before)
    # No dataset, no .partial: the next run is a first run.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["marks", "params.yaml"]


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_phantom_killed_alone_leaves_no_worker_and_no_tree(tmp_path, signum, tiny_phantom) -> None:
    root = tmp_path / "LIDC-IDRI"
    argv = ["-m", "pipeline.phantom", "--out", str(root), "--params", str(stage_params(tmp_path))]
    proc = start(argv, REPO, "phantom", tmp_path / "marks")
    held_workers(proc, tmp_path / "marks", 2)  # each has written a scan under LIDC-IDRI.partial
    assert root.with_name("LIDC-IDRI.partial").is_dir()
    before, at = kill(proc, signum)
    code, lines = ended(proc, at)
    assert_all_gone(before)
    assert not root.exists()
    if signum == signal.SIGTERM:
        assert (code, lines) == (143, ["terminated (SIGTERM); no output was left half-written, and `dvc repro` "
                                       "runs this stage again"])  # fmt: skip
        assert not root.with_name("LIDC-IDRI.partial").exists()
        return
    # Killed outright, the stage cannot remove its half-built tree; the next run replaces it first.
    assert code == -signal.SIGKILL
    build_phantom(root, TINY_PATIENTS, seed=0, margin=1, workers=1, progress=False)  # what the stage runs
    assert not root.with_name("LIDC-IDRI.partial").exists()
    files = sorted(p.relative_to(tiny_phantom) for p in tiny_phantom.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    _, mismatch, errors = filecmp.cmpfiles(tiny_phantom, root, [str(f) for f in files], shallow=False)
    assert (mismatch, errors) == ([], [])
