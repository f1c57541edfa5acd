"""Training one fold, one step after another (paper §3.2; the run's bookkeeping: :mod:`nodule_net.training.run`).

One nodule per step by default (``train.batch_nodules`` packs more), the forward at
``train.precision`` (:func:`~nodule_net.training.run.forward_at`), the per-step losses
read once per epoch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import asdict
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.data.batches import Batch, batch_to, iterate_resident
from nodule_net.io.checkpoint import save_model as save_model_file
from nodule_net.io.store import NoduleDataset
from nodule_net.model.loss import loss_fn
from nodule_net.model.net import NoduleNet
from nodule_net.runtime.progress import with_heartbeat
from nodule_net.training.run import EpochRecord, FitResult, FoldRun, epoch_rng, forward_at


class NonFiniteLoss(ValueError):
    """A training step whose loss was NaN or infinite: its 0-based ``step`` and dataset ``nodules``."""

    def __init__(self, step: int, nodules: np.ndarray, loss: float) -> None:
        super().__init__(f"the loss of step {step + 1} was {loss}")
        self.step, self.nodules, self.loss = step, nodules, loss


def train_step(
    model: NoduleNet, optimizer: torch.optim.Optimizer, batch: Batch, lambda_aux: float, precision: str = "fp32"
) -> torch.Tensor:
    """One optimiser step on ``batch``, its forward at ``precision`` (:func:`forward_at`);
    returns its loss, detached, still on the device (no host sync)."""
    out = forward_at(
        precision, batch.images.device.type, lambda: model(batch.images, batch.segment_ids, len(batch.index))
    )
    loss = loss_fn(out, batch.targets, lambda_aux, model.config.classify_column)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def train_epoch(
    model: NoduleNet,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    lambda_aux: float,
    device: torch.device,
    precision: str = "fp32",
) -> float:
    """One pass over ``batches``; returns the mean loss per nodule.

    Raises :class:`NonFiniteLoss` after the pass if a step's loss was NaN or infinite.
    The per-step losses stay on the device and are read once, at the end of the epoch
    (a host sync per step would stall a GPU).
    """
    model.train()
    step_losses, step_nodules = [], []
    for batch in batches:
        batch = batch_to(batch, device)  # a no-op for resident batches (nodule_net.data.batches)
        step_losses.append(train_step(model, optimizer, batch, lambda_aux, precision))
        step_nodules.append(batch.index)
    losses = torch.stack(step_losses).double().cpu()  # (steps,): the epoch's one host sync
    if not (finite := torch.isfinite(losses)).all():
        step = int((~finite).nonzero()[0, 0])
        raise NonFiniteLoss(step, step_nodules[step], float(losses[step]))
    return float(losses.sum()) / sum(len(index) for index in step_nodules)


def fit(
    data: NoduleDataset,
    parts: dict[str, np.ndarray],
    model_config: ModelConfig,
    train_config: TrainConfig,
    fold: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = True,
    progress_bar: bool = True,
    *,
    device: torch.device,
) -> FitResult:
    """Train on ``parts["train"]``, select the epoch by MAE on ``parts["val"]``, on ``device``.

    ``device``: the training plan's (:class:`nodule_net.training.plan.TrainingPlan`), which
    resolved ``train.device`` and checked that it can train at ``train.precision``.
    ``on_epoch`` is called once per epoch in order — including, on resumption, for the
    epochs the checkpoint already holds, so loggers can rebuild complete curves.
    ``progress``: a line per epoch (``fold k epoch e/E``, the elapsed time and an estimate of
    what is left), and a progress bar on a terminal unless ``progress_bar`` is False — without
    the bar, a line every :data:`~nodule_net.runtime.progress.HEARTBEAT_S` seconds within an epoch.
    """
    run = FoldRun(data, parts, model_config, train_config, fold, device, checkpoint_path)
    run.replay(on_epoch)
    n_batches = -(-len(parts["train"]) // train_config.batch_nodules)
    for epoch in run.epochs():
        batches = iterate_resident(
            run.train_set, train_config.batch_nodules, epoch_rng(train_config, fold, epoch), train_config.augment
        )
        bar = tqdm(
            batches,
            total=n_batches,
            desc=f"fold {fold} epoch {epoch}/{train_config.epochs}",
            # None: tqdm draws the bar only on a terminal; logs get the per-epoch lines.
            unit="batch",
            disable=None if progress and progress_bar else True,
            leave=False,
        )
        # Without a bar an epoch would be silent for minutes (5 folds sharing 2 cores): a line every minute.
        steps = with_heartbeat(bar, partial(run.step_line, epoch, steps=n_batches)) if progress and bar.disable else bar
        try:
            train_loss = train_epoch(
                run.model, run.optimizer, steps, train_config.lambda_aux, device, train_config.precision
            )
        except NonFiniteLoss as err:
            raise run.loss_error(epoch, err.step, err.nodules, err.loss) from None
        record = run.end_epoch(epoch, train_loss, train_config.batch_nodules, progress)
        if on_epoch is not None:
            on_epoch(record)
    return run.result()


def save_model(
    path: str | os.PathLike, result: FitResult, model_config: ModelConfig, fold: int, extract: dict | None = None
) -> None:
    """Write the selected model of ``result`` (see :func:`nodule_net.io.checkpoint.save_model`).

    ``extract``: the training data's extract settings (``extract_record(data.attrs)``), which `predict` crops with.
    """
    save_model_file(
        path,
        result.model_state,
        asdict(model_config),
        result.mean,
        result.std,
        fold,
        result.best_epoch,
        result.best_val_mae,
        extract,
    )
