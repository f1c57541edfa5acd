"""Training progress a person can follow: the epoch line, time stamps in logs only, the heartbeat,
the resume message, and what a train@k stage says of a fold the others' stage trained."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.runtime import progress
from nodule_net.training import run as run_module
from nodule_net.training.fit import fit
from nodule_net.training.plan import TrainingPlan
from nodule_net.training.processes import FoldProcesses
from nodule_net.training.side_by_side import fit_folds
from pipeline.train import finished_line
from synthetic_nodules import TINY, make_dataset

CPU = torch.device("cpu")  # the engines train where the plan says; these tests on the CPU

pytestmark = pytest.mark.usefixtures("one_thread")

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
NUMBER = r"\d+\.\d{4}"
DURATION = r"\d+(?:s|m\d\ds|h\d\dm)"
TIMING = rf"elapsed {DURATION}, ETA {DURATION}"


def epoch_line(fold: int, epoch: int, epochs: int) -> str:
    return (
        rf"fold {fold} epoch {epoch}/{epochs}: train loss {NUMBER}, val MAE {NUMBER} \(best {NUMBER} @ \d+\), {TIMING}"
    )


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def tiny() -> tuple:
    data = make_dataset(n_nodules=8, size=16, max_depth=3, seed=0)
    return data, {"train": np.arange(0, 6), "val": np.arange(6, 8)}


def run(checkpoint: Path | None = None, epochs: int = 2, stop_after: int | None = None, **kwargs):
    def on_epoch(record) -> None:
        if record.epoch == stop_after:
            raise KeyboardInterrupt  # a Ctrl-C right after the epoch's checkpoint

    data, parts = tiny()
    config = TrainConfig(epochs=epochs, seed=0)
    return fit(data, parts, ModelConfig(variant="sam", **TINY), config, 0, checkpoint, on_epoch, **kwargs, device=CPU)


def test_an_epoch_line_in_a_log_has_its_count_time_stamp_elapsed_time_and_eta(capsys) -> None:
    run()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        assert re.fullmatch(STAMP + epoch_line(0, epoch, 2), line), line
    assert lines[-1].endswith("ETA 0s")


def test_an_epoch_line_on_a_terminal_has_no_time_stamp(monkeypatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    run(progress_bar=False)
    lines = terminal.getvalue().splitlines()
    assert [bool(re.fullmatch(epoch_line(0, e, 2), line)) for e, line in enumerate(lines, 1)] == [True, True], lines


def test_an_epoch_without_a_bar_says_how_far_it_is_every_heartbeat(capsys, monkeypatch) -> None:
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.0)  # a beat before every step but the first
    run(epochs=1)
    lines = capsys.readouterr().out.splitlines()
    steps = [line for line in lines if ": step " in line]
    assert len(steps) == 5  # 6 training nodules, one per step
    for done, line in enumerate(steps, 1):
        assert re.fullmatch(STAMP + rf"fold 0 epoch 1/1: step {done}/6, {TIMING}", line), line
    assert re.fullmatch(STAMP + epoch_line(0, 1, 1), lines[-1])


def test_no_line_without_progress(capsys, monkeypatch) -> None:
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.0)
    run(epochs=1, progress=False)
    assert capsys.readouterr().out == ""


def test_a_resumed_run_says_so_and_a_finished_checkpoint_resumes_nothing(tmp_path, capsys, monkeypatch) -> None:
    checkpoint = tmp_path / "fold0.pt"
    with pytest.raises(KeyboardInterrupt):
        run(checkpoint, epochs=3, stop_after=1)
    capsys.readouterr()
    clocks: list[progress.EpochClock] = []

    def recorded(first: int, epochs: int) -> progress.EpochClock:
        clocks.append(progress.EpochClock(first, epochs))
        return clocks[-1]

    monkeypatch.setattr(run_module, "EpochClock", recorded)
    resumed = run(checkpoint, epochs=3)
    lines = capsys.readouterr().out.splitlines()
    where = re.escape(str(checkpoint))
    assert re.fullmatch(STAMP + f"Resuming fold 0 from {where} after epoch 1/3; training epochs 2–3.", lines[0])
    assert len(lines) == 3
    for epoch, line in zip((2, 3), lines[1:], strict=True):
        assert re.fullmatch(STAMP + epoch_line(0, epoch, 3), line), line
    # Epoch 1 took no time in this run: the estimate counts epochs 2 and 3 only.
    assert [(c.first, c.epochs) for c in clocks] == [(2, 3)]
    loaded = run(checkpoint, epochs=3)
    assert capsys.readouterr().out == ""  # nothing resumed or trained: the stage says why it loads it
    assert loaded.history == resumed.history


def three_folds() -> tuple:
    data = make_dataset(n_nodules=16, size=16, max_depth=3, seed=0)
    ids = np.arange(16)
    return data, {k: {"train": ids[5 * k : 5 * k + 3], "val": ids[5 * k + 3 : 5 * k + 5]} for k in range(3)}


def test_folds_side_by_side_print_a_line_per_fold_per_epoch_on_one_clock(capsys, monkeypatch) -> None:
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.0)
    data, folds = three_folds()
    fit_folds(data, folds, ModelConfig(variant="sam", **TINY), TrainConfig(epochs=2, device="cpu"), device=CPU)
    lines = capsys.readouterr().out.splitlines()
    epochs = [line for line in lines if "train loss" in line]
    assert len(epochs) == 6
    for i, line in enumerate(epochs):
        assert re.fullmatch(STAMP + epoch_line(i % 3, i // 3 + 1, 2), line), line
    # The loop's heartbeat names every fold it steps.
    assert re.fullmatch(STAMP + rf"folds 0,1,2 epoch 1/2: step 1/3, {TIMING}", lines[0]), lines[0]


def plan(engine: str, written: tuple[int, ...], train: tuple[int, ...], processes: int = 1) -> TrainingPlan:
    folds = (0, 1, 2)
    load = tuple(f for f in written if f not in train)
    return TrainingPlan(torch.device("cpu"), engine, folds, written, train, load, FoldProcesses(processes, 1))


def test_the_plan_says_which_folds_train_how_and_which_stages_only_write() -> None:
    assert plan("processes", (0,), (0, 1, 2), processes=3).summary(12) == (
        "Training folds 0, 1, 2 at once in 3 processes of 1 thread(s) each on cpu, 12 epochs; "
        "train@1, train@2 will then only write their outputs."
    )
    assert plan("side_by_side", (0, 1, 2), (1, 2)).summary(5) == (
        "Training folds 1, 2 side by side in one loop on cpu, 5 epochs."
    )
    assert plan("sequential", (2,), (2,)).summary(12) == "Training fold 2 on cpu, 12 epochs."
    assert plan("processes", (1,), ()).summary(12) is None  # train@1 after train@0 trained every fold


def test_a_fold_trained_with_the_others_is_not_called_a_resume() -> None:
    path = Path("data/checkpoints/fold1.pt")
    assert finished_line(1, path, 12, together=True) == (
        "fold 1 was trained together with the other folds by an earlier train@ stage "
        "(12/12 epochs in data/checkpoints/fold1.pt); writing its outputs."
    )
    assert finished_line(1, path, 12, together=False) == (
        "fold 1: data/checkpoints/fold1.pt holds a finished run (12/12 epochs); writing its outputs."
    )
