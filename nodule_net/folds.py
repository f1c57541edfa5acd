"""How the k folds of an experiment train: side by side, in one process per fold, or one after another.

:func:`train_folds` is what the train stage calls. It resolves ``train.folds_together``
(side by side, :mod:`nodule_net.side_by_side`: auto on a CUDA GPU) and
``train.fold_processes`` (one process per fold, :mod:`nodule_net.fold_processes`: auto on
a CPU) for the training device; whatever is left trains one fold after another with
:func:`nodule_net.train.fit`. Every way gives each fold the same per-fold outputs,
checkpoints and epoch reports, and finished folds are loaded, not retrained.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping

import numpy as np
import torch

from nodule_net.device import resolve_device
from nodule_net.fold_processes import fit_in_processes, fold_processes, unfinished_folds
from nodule_net.model import ModelConfig
from nodule_net.side_by_side import fit_folds, folds_together
from nodule_net.store import NoduleDataset
from nodule_net.train import EpochRecord, FitResult, TrainConfig, fit


def trains_at_once(together: str | bool, processes: str | int, device: torch.device, n_folds: int,
                   batch_nodules: int) -> bool:
    """Whether ``n_folds`` folds train at once (side by side, or one process per fold) on
    ``device``, as ``train.folds_together`` and ``train.fold_processes`` resolve there."""
    return (folds_together(together, device, batch_nodules)
            or fold_processes(processes, device, n_folds, torch.get_num_threads()).processes > 1)


def train_folds(
    data: NoduleDataset,
    fold_parts: Mapping[int, dict[str, np.ndarray]],
    model_config: ModelConfig,
    train_config: TrainConfig,
    together: str | bool = "auto",
    checkpoint_paths: Mapping[int, str | os.PathLike] | None = None,
    on_epoch: Callable[[int, EpochRecord], None] | None = None,
    progress: bool = True,
    processes: str | int = 1,
    wanted: Collection[int] | None = None,
) -> dict[int, FitResult]:
    """The results of the ``wanted`` folds of ``fold_parts`` (default: all of them), trained side
    by side (:func:`fit_folds`), in one process per fold (:mod:`nodule_net.fold_processes`) or
    one after another (``fit``), as ``together`` (``train.folds_together``) and ``processes``
    (``train.fold_processes``) resolve on the training device.

    Trained at once, every unfinished fold of ``fold_parts`` trains, wanted or not (so the
    first ``train@k`` trains them all), and a finished fold that is not wanted is not even
    loaded; one after another, only the wanted folds train.
    """
    wanted = list(fold_parts) if wanted is None else [fold for fold in fold_parts if fold in wanted]
    device = resolve_device(train_config.device)
    if not trains_at_once(together, processes, device, len(fold_parts), train_config.batch_nodules):
        pending, fold_parts = [], {fold: fold_parts[fold] for fold in wanted}
    else:
        pending = unfinished_folds(data, fold_parts, model_config, train_config, checkpoint_paths)
        fold_parts = {fold: parts for fold, parts in fold_parts.items() if fold in pending or fold in wanted}
    if folds_together(together, device, train_config.batch_nodules):
        results = fit_folds(data, fold_parts, model_config, train_config, checkpoint_paths, on_epoch, progress)
        return {fold: results[fold] for fold in wanted}
    results: dict[int, FitResult] = {}
    plan = fold_processes(processes, device, len(pending), torch.get_num_threads())  # one process: none pending
    if plan.processes > 1:
        results = fit_in_processes(data, {fold: fold_parts[fold] for fold in pending}, model_config, train_config,
                                   checkpoint_paths, plan, on_epoch)
    paths = checkpoint_paths or {}
    for fold, parts in fold_parts.items():  # the rest one after another; finished folds only load
        if fold not in results:
            log = (lambda record, fold=fold: on_epoch(fold, record)) if on_epoch is not None else None
            results[fold] = fit(data, parts, model_config, train_config, fold, paths.get(fold), log, progress)
    return {fold: results[fold] for fold in wanted}
