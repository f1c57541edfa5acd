"""Folds trained at once in processes on a CPU: the plan, equality with one after another, finished folds, errors,
a killed fold process."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from test_side_by_side import three_folds

from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.io.checkpoint import finished_epochs
from nodule_net.training import plan as folds_module
from nodule_net.training.fingerprint import fingerprint
from nodule_net.training.fit import fit
from nodule_net.training.plan import TrainingPlan, fold_processes, train_folds
from nodule_net.training.processes import FoldProcesses, unfinished_folds
from synthetic_nodules import TINY

pytestmark = pytest.mark.usefixtures("one_thread")
CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def test_plan_shares_the_threads_among_one_process_per_fold() -> None:
    assert fold_processes("auto", CPU, n_folds=5, threads=2) == FoldProcesses(5, 1)  # more folds than cores
    assert fold_processes("auto", CPU, n_folds=5, threads=16) == FoldProcesses(5, 3)
    assert fold_processes("auto", CPU, n_folds=5, threads=1) == FoldProcesses(1, 1)  # nothing to share
    assert fold_processes("auto", CPU, n_folds=1, threads=8) == FoldProcesses(1, 8)  # one fold keeps every thread
    assert fold_processes("auto", CPU, n_folds=0, threads=8) == FoldProcesses(1, 8)
    assert fold_processes("auto", GPU, n_folds=5, threads=8) == FoldProcesses(1, 8)  # GPUs: side by side instead
    assert fold_processes(2, CPU, n_folds=5, threads=8) == FoldProcesses(2, 4)
    assert fold_processes(8, CPU, n_folds=3, threads=8) == FoldProcesses(3, 2)
    assert fold_processes(1, GPU, n_folds=5, threads=8) == FoldProcesses(1, 8)
    with pytest.raises(ValueError, match=r"train.fold_processes=2 applies to CPU training"):
        fold_processes(2, GPU, n_folds=5, threads=8)
    for bad in (0, -1, True, "two", 1.5):  # the config refuses them, so the plan never sees one
        with pytest.raises(ValueError, match=r"train\.fold_processes = .* is not allowed"):
            TrainConfig(fold_processes=bad)


def plan_of(monkeypatch, device: torch.device, written=None, unfinished=None, **train) -> TrainingPlan:
    """The plan for folds 0, 1, 2 on ``device`` (resolve_device faked), 8 threads."""
    monkeypatch.setattr(folds_module, "resolve_device", lambda name: device)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 8)
    return TrainingPlan.resolve(TrainConfig(**train), (0, 1, 2), written, unfinished)


def test_the_plan_names_the_engine_and_which_folds_train_and_which_only_load(monkeypatch) -> None:
    asked = []

    def unfinished(folds):
        asked.append(folds)
        return [0, 1]

    plan = plan_of(monkeypatch, CPU, (1,), unfinished, fold_processes=3, folds_together=False)
    assert (plan.device, plan.engine, plan.folds, plan.written) == (CPU, "processes", (0, 1, 2), (1,))
    assert (plan.train, plan.load, plan.pool) == ((0, 1), (), FoldProcesses(2, 4))  # the pool for 2 folds, not 3
    assert asked == [(0, 1, 2)]  # at once: every fold's checkpoint is looked at
    # Side by side (auto on a CUDA GPU): fold 2 trains, the finished fold 0 is written, so it loads.
    plan = plan_of(monkeypatch, GPU, (0,), lambda folds: [2])
    assert (plan.engine, plan.folds, plan.train, plan.load) == ("side_by_side", (0, 1, 2), (2,), (0,))
    # One after another: only the written fold, trained or loaded.
    plan = plan_of(
        monkeypatch, CPU, (1,), lambda folds: [f for f in folds if f != 1], fold_processes=1, folds_together=False
    )
    assert (plan.engine, plan.folds, plan.train, plan.load, plan.pool) == (
        "sequential",
        (1,),
        (),
        (1,),
        FoldProcesses(1, 8),
    )
    plan = plan_of(monkeypatch, CPU, folds_together="auto", fold_processes="auto")  # no checkpoints: all train
    assert (plan.engine, plan.train, plan.load, plan.pool) == ("processes", (0, 1, 2), (), FoldProcesses(3, 2))


def test_nothing_below_the_plan_resolves_the_device(tmp_path, monkeypatch) -> None:
    """The plan resolves train.device once (auto may lock a GPU); every engine trains on the plan's device,
    which it must be given (no default to resolve by itself), and none can resolve one."""
    import inspect

    from nodule_net.training import fit as fit_module
    from nodule_net.training import processes, side_by_side

    data, folds = three_folds()
    model_config = ModelConfig(variant="none", **TINY)
    for engine_fn in (fit_module.fit, side_by_side.fit_folds, processes.fit_in_processes):
        device = inspect.signature(engine_fn).parameters["device"]
        assert device.default is inspect.Parameter.empty, engine_fn.__name__
    for module in (fit_module, side_by_side, processes):
        assert not hasattr(module, "resolve_device"), module.__name__
    monkeypatch.setattr(folds_module, "resolve_device", lambda name: torch.device("cpu"))  # the plan's, once
    for engine in (
        dict(folds_together=True),
        dict(folds_together=False, fold_processes=1),
        dict(folds_together=False, fold_processes=3),
    ):
        config = TrainConfig(epochs=1, device="cpu", **engine)
        paths = {k: tmp_path / f"{sorted(engine.values())}{k}.pt" for k in folds}
        plan = TrainingPlan.resolve(config, folds, None, lambda pending: list(pending))
        results = train_folds(data, folds, model_config, config, plan, paths, progress=False)
        assert sorted(results) == [0, 1, 2] and all(p.exists() for p in paths.values())


@pytest.mark.slow
def test_folds_in_processes_equal_folds_one_after_another(tmp_path) -> None:
    """Same thread count (one) in the workers and here: the same floats to the bit, and the same checkpoints."""
    data, folds = three_folds()
    model_config = ModelConfig(variant="full", **TINY)
    config = TrainConfig(epochs=2, seed=3, folds_together=False, fold_processes=3)
    seen = []
    together = train_folds(
        data,
        folds,
        model_config,
        config,
        None,
        {k: tmp_path / f"p{k}.pt" for k in folds},
        lambda fold, record: seen.append((fold, record.epoch)),
        progress=False,
    )
    # Every fold's epochs arrive once each, in order, as the processes finish them.
    assert sorted(seen) == [(k, e) for k in folds for e in (1, 2)]
    assert all([e for f, e in seen if f == k] == [1, 2] for k in folds)
    for k, parts in folds.items():
        alone = fit(data, parts, model_config, config, k, tmp_path / f"a{k}.pt", progress=False, device=CPU)
        assert together[k].best_epoch == alone.best_epoch and together[k].history == alone.history
        assert (together[k].mean, together[k].std) == (alone.mean, alone.std)
        for name, value in alone.model_state.items():
            torch.testing.assert_close(together[k].model_state[name], value, rtol=0, atol=0, msg=name)
        assert finished_epochs(tmp_path / f"p{k}.pt", fingerprint(data, parts, model_config, config, k)) == 2


@pytest.mark.slow
def test_finished_folds_load_here_and_only_the_rest_get_processes(tmp_path, monkeypatch) -> None:
    data, folds = three_folds()
    model_config = ModelConfig(variant="none", **TINY)
    config = TrainConfig(epochs=1, seed=0)
    paths = {k: tmp_path / f"fold{k}.pt" for k in folds}
    first = fit(data, folds[0], model_config, config, 0, paths[0], progress=False, device=CPU)
    assert unfinished_folds(data, folds, model_config, config, paths) == [1, 2]
    assert unfinished_folds(data, folds, model_config, TrainConfig(epochs=2, seed=0), paths) == [0, 1, 2]
    assert unfinished_folds(data, folds, model_config, TrainConfig(epochs=1, seed=1), paths) == [0, 1, 2]

    started = []
    real = folds_module.fit_in_processes

    def spy(data, fold_parts, *args):
        started.append(sorted(fold_parts))
        return real(data, fold_parts, *args)

    monkeypatch.setattr(folds_module, "fit_in_processes", spy)
    auto, three = (replace(config, folds_together=False, fold_processes=n) for n in ("auto", 3))
    results = train_folds(data, folds, model_config, auto, None, paths, progress=False)
    assert started == []  # one thread here: auto trains one fold after another
    results = train_folds(data, folds, model_config, three, None, paths, progress=False)
    assert started == []  # every fold finished: nothing to start
    paths[1].unlink()
    paths[2].unlink()
    again = train_folds(data, folds, model_config, three, None, paths, progress=False)
    assert started == [[1, 2]]
    for k in folds:
        for name, value in results[k].model_state.items():
            torch.testing.assert_close(again[k].model_state[name], value, rtol=0, atol=0)
    assert again[0].history == first.history


@pytest.mark.slow
def test_a_workers_error_reaches_the_caller(tmp_path) -> None:
    data, folds = three_folds()
    folds[2]["val"] = np.array([], dtype=np.int64)  # fit refuses a fold without validation nodules
    with pytest.raises(ValueError, match="Fold 2 has no val nodules"):
        train_folds(
            data,
            folds,
            ModelConfig(variant="none", **TINY),
            TrainConfig(epochs=1, folds_together=False, fold_processes=3),
            None,
            {k: tmp_path / f"fold{k}.pt" for k in folds},
            progress=False,
        )


@pytest.mark.slow
def test_a_resumed_fold_reports_its_earlier_epochs_too(tmp_path) -> None:
    data, folds = three_folds()
    folds = {k: folds[k] for k in (0, 1)}
    model_config = ModelConfig(variant="none", **TINY)
    paths = {k: tmp_path / f"fold{k}.pt" for k in folds}
    in_two = dict(folds_together=False, fold_processes=2)
    train_folds(data, folds, model_config, TrainConfig(epochs=1, **in_two), None, paths, progress=False)
    seen = []
    longer = train_folds(
        data,
        folds,
        model_config,
        TrainConfig(epochs=2, **in_two),
        None,
        paths,
        lambda fold, record: seen.append((fold, record.epoch, record.val_mae)),
        progress=False,
    )
    assert sorted((f, e) for f, e, _ in seen) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    for f, e, mae in seen:  # the replayed epoch 1 and the new epoch 2 are the fold's history
        assert mae == longer[f].history[e - 1].val_mae


# Two folds of three_folds() in two processes. Spawned workers run this file as
# ``__mp_main__`` first: there fold 1's process SIGKILLs itself right after reporting its
# first epoch, that is after writing that epoch's checkpoint.
KILLED_FOLD = textwrap.dedent("""
    import json
    import os
    import signal
    import sys
    import time
    from pathlib import Path

    import torch

    from nodule_net.config import ModelConfig, TrainConfig
    from nodule_net.runtime.workers import WorkerDied
    from nodule_net.training import processes as fold_processes
    from nodule_net.training.processes import FoldProcesses, fit_in_processes

    out = Path(sys.argv[1])

    if __name__ == "__mp_main__":
        real_fit = fold_processes.fit

        def fit(data, parts, model_config, train_config, fold, path, report, **kwargs):
            def report_then_die(record):
                report(record)
                if fold == 1 and record.epoch == 1:
                    (out / "killed").write_text(json.dumps([os.getpid(), time.monotonic()]))
                    os.kill(os.getpid(), signal.SIGKILL)

            return real_fit(data, parts, model_config, train_config, fold, path, report_then_die, **kwargs)

        fold_processes.fit = fit

    if __name__ == "__main__":
        sys.path[:0] = [sys.argv[2], str(Path(sys.argv[2]).parent)]  # tests/training and tests/
        from test_fold_processes import KILLED_FOLDS, KILLED_MODEL, KILLED_TRAINING
        from test_side_by_side import three_folds

        data, folds = three_folds()
        seen = []
        try:
            fit_in_processes(data, {k: folds[k] for k in KILLED_FOLDS}, ModelConfig(**KILLED_MODEL),
                             TrainConfig(**KILLED_TRAINING), {k: out / f"fold{k}.pt" for k in KILLED_FOLDS},
                             FoldProcesses(len(KILLED_FOLDS), 1), torch.device("cpu"),
                             lambda fold, record: seen.append((fold, record.epoch)))
        except WorkerDied as err:
            (out / "died.json").write_text(json.dumps({"message": str(err), "at": time.monotonic(), "seen": seen}))
""")
KILLED_FOLDS, KILLED_MODEL, KILLED_TRAINING = (0, 1), dict(variant="full", **TINY), dict(epochs=2, seed=3)


@pytest.mark.slow
def test_a_killed_fold_process_is_one_line_and_the_rerun_resumes_bit_identically(tmp_path) -> None:
    program = tmp_path / "folds.py"
    program.write_text(KILLED_FOLD)
    done = subprocess.run(
        [sys.executable, str(program), str(tmp_path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=300,
    )  # the old multiprocessing.Pool waited forever
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no tracebacks, no resource tracker warning about the killed worker's semaphores
    pid, killed_at = json.loads((tmp_path / "killed").read_text())
    died = json.loads((tmp_path / "died.json").read_text())
    assert died["message"] == (
        f"train: worker process {pid} was killed by SIGKILL while training fold 1; every fold "
        "keeps its last finished epoch's checkpoint, and `dvc repro` resumes from there."
    )
    assert died["at"] - killed_at < 30
    assert [1, 1] in died["seen"]  # the epoch reported just before the kill still reached on_epoch

    # The rerun (here in this process: `fit` as each fold process runs it) resumes fold 1 from epoch 1.
    data, folds = three_folds()
    model_config, config = ModelConfig(**KILLED_MODEL), TrainConfig(**KILLED_TRAINING)
    assert finished_epochs(tmp_path / "fold1.pt", fingerprint(data, folds[1], model_config, config, 1)) == 1
    for k in KILLED_FOLDS:
        resumed = fit(data, folds[k], model_config, config, k, tmp_path / f"fold{k}.pt", progress=False, device=CPU)
        alone = fit(data, folds[k], model_config, config, k, tmp_path / f"alone{k}.pt", progress=False, device=CPU)
        assert resumed.history == alone.history and resumed.best_epoch == alone.best_epoch
        for name, value in alone.model_state.items():
            torch.testing.assert_close(resumed.model_state[name], value, rtol=0, atol=0, msg=name)
