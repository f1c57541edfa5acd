"""How the k folds of an experiment train, decided once per stage, and the training that follows it.

:meth:`TrainingPlan.resolve` resolves ``train.device`` (once: ``auto`` may lock a GPU for
this process), ``train.folds_together`` (side by side, :mod:`nodule_net.training.side_by_side`:
auto on a CUDA GPU) and ``train.fold_processes`` (one process per fold,
:mod:`nodule_net.training.processes`: auto on a CPU), and reads which folds' checkpoints are
finished. :func:`train_folds` then runs the plan's engine; nothing below it resolves the
device or decides again. Every engine gives each fold the same per-fold outputs,
checkpoints and epoch reports, and finished folds are loaded, not retrained.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch

from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.io.store import NoduleDataset
from nodule_net.runtime.device import resolve_device
from nodule_net.training.fit import fit
from nodule_net.training.processes import FoldProcesses, fit_in_processes, unfinished_folds
from nodule_net.training.run import EpochRecord, FitResult, check_precision
from nodule_net.training.side_by_side import fit_folds

ENGINES = ("side_by_side", "processes", "sequential")


def folds_together(setting: str | bool, device: torch.device, batch_nodules: int) -> bool:
    """Whether to train the folds side by side: ``train.folds_together`` resolved for ``device``.

    ``auto`` → side by side on a CUDA GPU with one nodule per step; one fold after another
    on a CPU, which is compute-bound, so side by side brings nothing there, and with
    ``train.batch_nodules`` > 1 (a different-semantics option side by side does not do).
    ``setting`` is auto, true or false: :class:`~nodule_net.config.TrainConfig` allows nothing else.
    """
    if setting == "auto":
        return device.type == "cuda" and batch_nodules == 1
    return bool(setting)


def fold_processes(setting: str | int, device: torch.device, n_folds: int, threads: int) -> FoldProcesses:
    """``train.fold_processes`` resolved: ``auto`` → one process per fold on a CPU with ≥ 2 threads.

    ``threads`` is the intra-op thread budget (``torch.get_num_threads()``), shared evenly,
    at least one each. On a GPU the folds stay in this process (side by side or one after
    another); an explicit count > 1 there is an error, since the processes would share one card.
    ``setting`` is auto or a whole number ≥ 1: :class:`~nodule_net.config.TrainConfig` allows nothing else.
    """
    if setting == "auto":
        processes = n_folds if device.type == "cpu" and threads >= 2 else 1
    elif int(setting) > 1 and device.type != "cpu":
        raise ValueError(
            f"train.fold_processes={setting} applies to CPU training; on {device} set it to auto or 1 "
            "(train.folds_together trains the folds side by side on a GPU)."
        )
    else:
        processes = int(setting)
    processes = max(1, min(processes, n_folds))
    return FoldProcesses(processes, max(1, threads // processes) if processes > 1 else threads)


@dataclass(frozen=True)
class TrainingPlan:
    """How a stage trains its folds: built once (:meth:`resolve`) and passed down.

    ``folds``: every fold this stage may write a checkpoint of — all of them when the folds
    train at once (side by side or in processes: the first ``train@k`` trains them all),
    else the ``written`` ones. ``train``: those of them whose checkpoint is not finished;
    ``load``: the finished ones that are ``written``, read from their checkpoints (a finished
    fold that is not written is not even loaded). ``pool``: the fold processes of
    ``train`` (engine ``processes``; one process trains its fold here).
    """

    device: torch.device
    engine: str  # one of ENGINES
    folds: tuple[int, ...]
    written: tuple[int, ...]
    train: tuple[int, ...]
    load: tuple[int, ...]
    pool: FoldProcesses

    @classmethod
    def resolve(
        cls,
        train_config: TrainConfig,
        folds: Collection[int],
        written: Collection[int] | None = None,
        unfinished: Callable[[tuple[int, ...]], list[int]] | None = None,
    ) -> TrainingPlan:
        """The plan for ``folds`` (the params' folds), of which the stage writes ``written`` (default: all).

        ``unfinished(folds)``: which of ``folds`` have no finished checkpoint (default: none is
        finished); :func:`~nodule_net.training.processes.unfinished_folds` reads them from the checkpoints.
        """
        folds = tuple(folds)
        written = folds if written is None else tuple(fold for fold in folds if fold in written)
        device = resolve_device(train_config.device)
        check_precision(train_config.precision, device)
        threads = torch.get_num_threads()
        if folds_together(train_config.folds_together, device, train_config.batch_nodules):
            engine = "side_by_side"
        elif fold_processes(train_config.fold_processes, device, len(folds), threads).processes > 1:
            engine = "processes"
        else:
            engine = "sequential"
        handled = folds if engine != "sequential" else written
        pending = set(unfinished(handled) if unfinished is not None else handled)
        train = tuple(fold for fold in handled if fold in pending)
        load = tuple(fold for fold in written if fold not in pending)
        pool = (
            fold_processes(train_config.fold_processes, device, len(train), threads)
            if engine == "processes"
            else FoldProcesses(1, threads)
        )
        return cls(device, engine, handled, written, train, load, pool)

    def summary(self, epochs: int) -> str | None:
        """One line for the log: which folds train (to ``epochs``), how and on which device; None
        when none does."""
        if not self.train:
            return None
        plural = "s" if len(self.train) > 1 else ""
        if self.engine == "side_by_side":
            how = " side by side in one loop"
        elif self.engine == "processes" and self.pool.processes > 1:
            how = f" at once in {self.pool.processes} processes of {self.pool.threads} thread(s) each"
        else:
            how = " one after another" if plural else ""
        line = f"Training fold{plural} {', '.join(map(str, self.train))}{how} on {self.device}, {epochs} epochs"
        if others := [fold for fold in self.train if fold not in self.written]:
            stages = ", ".join(f"train@{fold}" for fold in others)
            line += f"; {stages} will then only write {'their' if len(others) > 1 else 'its'} outputs"
        return line + "."

    @classmethod
    def for_checkpoints(
        cls,
        data: NoduleDataset,
        fold_parts: Mapping[int, dict[str, np.ndarray]],
        model_config: ModelConfig,
        train_config: TrainConfig,
        checkpoint_paths: Mapping[int, str | os.PathLike] | None,
        written: Collection[int] | None = None,
    ) -> TrainingPlan:
        """:meth:`resolve` for the folds of ``fold_parts``, their unfinished ones read from ``checkpoint_paths``."""
        return cls.resolve(
            train_config,
            fold_parts,
            written,
            lambda folds: unfinished_folds(
                data, {fold: fold_parts[fold] for fold in folds}, model_config, train_config, checkpoint_paths
            ),
        )


def train_folds(
    data: NoduleDataset,
    fold_parts: Mapping[int, dict[str, np.ndarray]],
    model_config: ModelConfig,
    train_config: TrainConfig,
    plan: TrainingPlan | None = None,
    checkpoint_paths: Mapping[int, str | os.PathLike] | None = None,
    on_epoch: Callable[[int, EpochRecord], None] | None = None,
    progress: bool = True,
    dataset_path: str | os.PathLike | None = None,
) -> dict[int, FitResult]:
    """The results of ``plan.written`` (each fold's parts in ``fold_parts``), as ``plan`` trains
    them: side by side (:func:`fit_folds`), in one process per fold (:func:`fit_in_processes`)
    or one after another (:func:`fit`), the finished folds loaded from their checkpoints.

    ``plan`` None: resolved here for every fold of ``fold_parts`` (a caller that is not a stage).
    ``on_epoch(fold, record)``: once per fold and epoch, as each engine documents.
    ``dataset_path``: the file ``data`` was read from, for fold processes to read (None: they
    get a temporary copy).
    """
    if plan is None:
        plan = TrainingPlan.for_checkpoints(data, fold_parts, model_config, train_config, checkpoint_paths)
    paths = checkpoint_paths or {}
    run = [fold for fold in plan.folds if fold in plan.train or fold in plan.load]  # to train or to load
    if plan.engine == "side_by_side":
        together = fit_folds(
            data,
            {fold: fold_parts[fold] for fold in run},
            model_config,
            train_config,
            paths,
            on_epoch,
            progress,
            device=plan.device,
        )
        return {fold: together[fold] for fold in plan.written}
    results: dict[int, FitResult] = {}
    if plan.engine == "processes" and plan.pool.processes > 1:
        results = fit_in_processes(
            data,
            {fold: fold_parts[fold] for fold in plan.train},
            model_config,
            train_config,
            paths,
            plan.pool,
            plan.device,
            on_epoch,
            dataset_path,
        )
    for fold in run:  # the rest one after another; finished folds only load
        if fold not in results:
            log = partial(on_epoch, fold) if on_epoch is not None else None
            results[fold] = fit(
                data,
                fold_parts[fold],
                model_config,
                train_config,
                fold,
                paths.get(fold),
                log,
                progress,
                device=plan.device,
            )
    return {fold: results[fold] for fold in plan.written}
