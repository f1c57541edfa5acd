"""The k folds of an experiment trained at once on a CPU, one process per fold.

Each process runs :func:`nodule_net.training.fit.fit` for its fold exactly as one after another
would (same seeded streams, checkpoints and model selection), on the plan's device, with its
share of the CPU's threads. The models equal sequential runs within float rounding: only the
thread count, hence the order of some float sums inside the convolutions, differs.

Why: at one nodule per step the convolutions are small (a few 64² slices), and two
threads inside one of them do not give twice the speed; one thread per fold does. On
the 2-core development machine two one-thread processes train ≈ 1.1× the slices per
second of one two-thread process (docs/speed.md: ``nodule-net bench`` measures it,
``fold_processes`` in its JSON). A GPU trains its folds side by side instead
(:mod:`nodule_net.training.side_by_side`); :class:`nodule_net.training.plan.TrainingPlan` chooses.

Every fold's process is started at once, even when there are more folds than threads:
the operating system shares the cores, so all folds finish together (a pool of fewer
processes would leave the last fold alone on one thread). Each process writes its fold's
lines (:mod:`nodule_net.runtime.progress`): one per epoch, with the time its run has taken
and what is left at that pace (the pace of all folds sharing the cores), and one a minute
within an epoch.

Each process reads the dataset itself, from its HDF5 file: what the parent sends a process
as it starts goes through a pipe the parent writes while it waits, and a process killed then
(the out-of-memory killer, as five start at once) must not leave the parent blocked on a
pipe that holds a pickled dataset (:mod:`nodule_net.runtime.workers`).
"""

from __future__ import annotations

import os
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from multiprocessing.queues import SimpleQueue
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.io.checkpoint import finished_epochs
from nodule_net.io.store import NoduleDataset, read_dataset, write_dataset
from nodule_net.runtime.workers import WorkerDied, process_pool, spawn_context
from nodule_net.training.fingerprint import fingerprint
from nodule_net.training.fit import fit
from nodule_net.training.run import EpochRecord, FitResult


class FoldProcesses(NamedTuple):
    """How the folds of a run train: ``processes`` at once (1: in this process), ``threads`` each
    (:func:`nodule_net.training.plan.fold_processes`)."""

    processes: int
    threads: int


# Set once in each worker by the pool's initializer rather than sent with every fold: the
# dataset (read from its file there), and the queue on which the workers report each
# finished epoch to the parent.
_worker_data: NoduleDataset | None = None
_worker_epochs: SimpleQueue | None = None


def _init_worker(dataset_path: str, threads: int, epochs: SimpleQueue) -> None:
    global _worker_data, _worker_epochs
    _worker_data, _worker_epochs = read_dataset(dataset_path), epochs
    torch.set_num_threads(threads)
    # tqdm's default lock is a named semaphore, and one left by a killed worker makes the
    # resource tracker warn at exit, after the stage's one line. The workers draw no bars
    # (their epoch lines are whole writes), so a lock of this process will do.
    tqdm.set_lock(threading.RLock())


def _fit_fold(task: tuple) -> tuple[int, FitResult]:
    fold, parts, model_config, train_config, device, checkpoint_path = task
    assert _worker_data is not None and _worker_epochs is not None, "the pool's initializer sets both"
    epochs = _worker_epochs

    def report(record: EpochRecord) -> None:  # after the epoch's checkpoint, as on_epoch everywhere
        epochs.put((fold, tuple(record)))

    # Lines only (each epoch's, and one a minute within it): bars of several processes would
    # overwrite each other. Each line is flushed as written, time-stamped in a log.
    return fold, fit(
        _worker_data,
        parts,
        model_config,
        train_config,
        fold,
        checkpoint_path,
        report,
        progress_bar=False,
        device=device,
    )


def unfinished_folds(
    data: NoduleDataset,
    fold_parts: Mapping[int, dict[str, np.ndarray]],
    model_config: ModelConfig,
    train_config: TrainConfig,
    checkpoint_paths: Mapping[int, str | os.PathLike] | None,
) -> list[int]:
    """The folds of ``fold_parts`` whose checkpoint does not hold exactly ``train_config.epochs``.

    A finished fold needs no process: ``fit`` reads its result from the checkpoint in an
    instant (the later ``train@k`` stages, after the first trained every fold). A checkpoint
    past ``train.epochs`` (after ``-S train.epochs`` was lowered) is not finished: its best
    epoch may lie beyond the new last one, so the fold trains afresh
    (:func:`~nodule_net.io.checkpoint.load_checkpoint` says so).
    """
    paths = checkpoint_paths or {}
    return [
        fold
        for fold, parts in fold_parts.items()
        if finished_epochs(paths.get(fold), fingerprint(data, parts, model_config, train_config, fold))
        != train_config.epochs
    ]


@contextmanager
def dataset_file(data: NoduleDataset, path: str | os.PathLike | None) -> Iterator[str]:
    """``path``, the file ``data`` was read from; None: a temporary file of ``data``, removed afterwards."""
    if path is not None:
        yield os.fspath(path)
        return
    with tempfile.TemporaryDirectory(prefix="nodule-net-folds-") as folder:
        copy = os.path.join(folder, "nodules.h5")
        write_dataset(copy, data)
        yield copy


def fit_in_processes(
    data: NoduleDataset,
    fold_parts: Mapping[int, dict[str, np.ndarray]],
    model_config: ModelConfig,
    train_config: TrainConfig,
    checkpoint_paths: Mapping[int, str | os.PathLike] | None,
    pool: FoldProcesses,
    device: torch.device,
    on_epoch: Callable[[int, EpochRecord], None] | None = None,
    dataset_path: str | os.PathLike | None = None,
) -> dict[int, FitResult]:
    """:func:`~nodule_net.training.fit.fit` on ``device`` for every fold of ``fold_parts``, ``pool.processes``
    at a time.

    ``dataset_path``: the HDF5 file ``data`` was read from, which each process reads; None
    (a dataset built in memory): a temporary copy is written for them.

    ``on_epoch(fold, record)`` runs here, in this process, as each worker finishes an epoch
    (so dvclive's curves grow during training): for each fold once per epoch, in order,
    including the epochs a resumed checkpoint holds. A worker's error (a non-finite loss,
    say) is raised here as it was raised there; a Ctrl-C stops every worker (each keeps its
    last finished epoch's checkpoint), and so does a worker that dies (``WorkerDied``, one
    line naming its fold).
    """
    paths = checkpoint_paths or {}
    tasks = [(fold, parts, model_config, train_config, device, paths.get(fold)) for fold, parts in fold_parts.items()]
    # A SimpleQueue's put writes to the pipe before it returns (a Queue's is flushed later by a
    # thread), so a worker's epochs are all in the pipe once its result is in. A record is far
    # below PIPE_BUF, so each write is atomic: a worker killed mid-put leaves no half record.
    epochs = spawn_context().SimpleQueue()

    def deliver() -> None:
        while not epochs.empty():
            fold, record = epochs.get()
            if on_epoch is not None:
                on_epoch(fold, EpochRecord(*record))

    with (
        dataset_file(data, dataset_path) as path,
        process_pool(
            pool.processes,
            _init_worker,
            (path, pool.threads, epochs),
            stage="train",
            resume="every fold keeps its last finished epoch's checkpoint, and `dvc repro` resumes from there",
        ) as workers,
    ):
        try:
            results = dict(
                workers.imap(_fit_fold, tasks, describe=lambda task: f"training fold {task[0]}", while_waiting=deliver)
            )  # a worker's exception is raised here
        except WorkerDied:
            deliver()  # the epochs finished before the death: their checkpoints are kept
            raise
    deliver()
    return {fold: results[fold] for fold in fold_parts}
