"""One fold's training run, whatever engine takes its steps (paper §3.2).

:class:`FoldRun` holds the bookkeeping every engine shares: start afresh or resume from the
fold's checkpoint, the data checks, the error of a non-finite loss, validation and its
non-finite check, best-epoch selection, the checkpoint written after every epoch, the
per-epoch line (``fold k epoch e/E``, the elapsed time and an estimate of what is left:
:mod:`nodule_net.runtime.progress`) and the final :class:`FitResult`. The engines differ
only in how they take steps: :func:`nodule_net.training.fit.fit` (one fold),
:func:`nodule_net.training.side_by_side.fit_folds` (k folds under vmap),
:func:`nodule_net.training.processes.fit_in_processes` (one process per fold).

Protocol: Adam (lr 1e-4, betas 0.9/0.999, weight decay 1e-4 on all parameters), the summed
loss of eq. 8 (:mod:`nodule_net.model.loss`), shuffling and augmentation every epoch, inputs
normalised by the training part's pixel mean/std.

Precision (``train.precision``): fp32 by default; bf16 runs the training forward under
autocast (:func:`forward_at`) with fp32 weights and Adam. Validation is always fp32.

Model selection: the epoch with the lowest mean validation MAE (original scales) on the
fold's validation slice; ties keep the earlier epoch. (The authors' code picks the best
epoch on the test fold.) A benign/malignant classifier (``model.malignancy: classify``,
Table 5) is selected by the mean MAE of the 8 regressed attributes plus the validation BCE
of P(malignant).

Resumption: every epoch draws its shuffling and augmentation from its own seeded stream
(seed, fold, epoch), so a run resumed from a checkpoint produces exactly the numbers of an
uninterrupted one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from nodule_net.attributes import denormalise
from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.data.batches import normalisation_stats, resident_nodules, targets_for
from nodule_net.evaluation.inference import predict_resident
from nodule_net.evaluation.metrics import mae_report
from nodule_net.io.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from nodule_net.io.store import NoduleDataset
from nodule_net.model.loss import benign_malignant_labels
from nodule_net.model.net import ModelOutput, NoduleNet
from nodule_net.runtime.progress import EpochClock, progress_line
from nodule_net.training.fingerprint import fingerprint

# Random stream id for training (nodule_net.data.split uses 1), so `seed` feeds independent streams.
TRAIN_STREAM = 2

# train.precision → the autocast dtype of the training forward; fp32: no autocast at all.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


class EpochRecord(NamedTuple):
    epoch: int  # 1-based
    train_loss: float  # mean over nodules of the summed per-nodule loss
    val_mae: float  # mean over attributes, original scales


class FitResult(NamedTuple):
    model_state: dict[str, torch.Tensor]  # the selected (best-validation) weights
    mean: float  # normalisation stats of the training part
    std: float
    best_epoch: int
    best_val_mae: float
    history: list[EpochRecord]


# --- what every engine draws, builds and computes the same way ---------------------------


def _torch_seed(seed: int, fold: int) -> int:
    return int(np.random.SeedSequence([seed, TRAIN_STREAM, fold]).generate_state(1)[0])


def init_model(model_config: ModelConfig, seed: int, fold: int) -> NoduleNet:
    """Fold ``fold``'s initial network (on the CPU), drawn from its own seed (seed, fold)."""
    torch.manual_seed(_torch_seed(seed, fold))
    return NoduleNet(model_config)


def epoch_rng(train_config: TrainConfig, fold: int, epoch: int) -> np.random.Generator:
    """The stream of fold ``fold``'s shuffling and augmentation in ``epoch``: (seed, stream, fold, epoch)."""
    return np.random.default_rng([train_config.seed, TRAIN_STREAM, fold, epoch])


def make_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """The paper's Adam (L2 weight decay on all parameters) as one fused kernel where torch has one.

    Fused Adam updates every parameter in one call (CUDA, and the CPU since torch 2.4)
    instead of a handful of ops per tensor; its numbers equal the per-tensor Adam's within
    float rounding (tests/training/test_train.py). `nodule-net bench` measures it fastest on
    the CPU too (docs/speed.md). Elsewhere: the multi-tensor (foreach) Adam.
    """
    params = list(params)
    kwargs: dict[str, Any] = dict(lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    try:
        return torch.optim.Adam(params, **kwargs, fused=True)
    except RuntimeError:  # a device (or an older torch) without the fused kernel
        return torch.optim.Adam(params, **kwargs, foreach=True)


def forward_at(precision: str, device_type: str, forward: Callable[[], ModelOutput]) -> ModelOutput:
    """``forward()`` at ``precision`` (``train.precision``): fp32 calls it as is (no autocast
    context); bf16 runs it under ``torch.autocast(device_type, torch.bfloat16)`` — convolutions
    and matmuls in bf16, while the weights, their gradients and Adam's state stay fp32 — and
    returns its outputs in fp32.

    The loss is then computed outside the autocast region, on those fp32 outputs: CUDA's
    autocast refuses ``binary_cross_entropy`` (``model.malignancy: classify``) whatever the
    dtype, and the loss's sums over nodules and attributes want fp32 anyway.
    """
    dtype = PRECISIONS[precision]
    if dtype is None:
        return forward()
    with torch.autocast(device_type, dtype=dtype):
        output = forward()
    return ModelOutput._make(t.float() if t is not None else None for t in output)


def check_precision(precision: str, device: torch.device) -> None:
    """Raise a one-line ValueError if ``device`` cannot train at ``precision`` (bf16 on a GPU
    without bf16; the CPU's autocast has bf16 everywhere, emulated where the CPU lacks it)."""
    if PRECISIONS[precision] is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16; use fp32.")


def validation_mae(
    predicted: np.ndarray, targets: np.ndarray, attributes: tuple[str, ...], classify_column: int | None = None
) -> float:
    """Model-selection criterion, lower is better: the mean over attributes of the MAE on the
    original rating scales (``predicted``, ``targets``: (N, K) normalised).

    With ``classify_column``: the mean MAE over the regressed attributes plus the mean BCE of
    P(malignant) over the nodules not rated 3 (0 when every one is).
    """
    regressed = [k for k in range(len(attributes)) if k != classify_column]
    names = tuple(attributes[k] for k in regressed)
    criterion = (
        mae_report(denormalise(predicted[:, regressed], names), denormalise(targets[:, regressed], names), names)[
            "mean"
        ]
        if regressed
        else 0.0
    )
    if classify_column is not None:
        malignancy = torch.as_tensor(targets[:, classify_column], dtype=torch.float32)
        malignant, counted = benign_malignant_labels(malignancy)
        if counted.any():
            probability = torch.as_tensor(predicted[:, classify_column], dtype=torch.float32)
            criterion += F.binary_cross_entropy(probability[counted], malignant[counted].to(torch.float32)).item()
    return criterion


# --- one fold's run ----------------------------------------------------------------------


class FoldRun:
    """Fold ``fold``'s run on ``device``: its network and Adam, its nodules resident there,
    and its progress (epochs done, history, best epoch), started afresh or from the
    checkpoint at ``checkpoint_path`` when that belongs to this run (:mod:`nodule_net.training.fingerprint`).

    An engine trains :attr:`model` with :attr:`optimizer` (or copies its own weights and Adam
    state into them) over :meth:`epochs`, and calls :meth:`end_epoch` after each.
    """

    def __init__(
        self,
        data: NoduleDataset,
        parts: dict[str, np.ndarray],
        model_config: ModelConfig,
        train_config: TrainConfig,
        fold: int,
        device: torch.device,
        checkpoint_path: str | os.PathLike | None = None,
    ) -> None:
        for part in ("train", "val"):
            if len(parts.get(part, ())) == 0:
                raise ValueError(f"Fold {fold} has no {part} nodules; check split.val_fraction and the dataset size.")
        self.data, self.parts, self.fold = data, parts, fold
        self.targets = targets_for(data, model_config.attribute)  # (N, K) normalised, every nodule of data
        self.model_config, self.train_config = model_config, train_config
        self.mean, self.std = normalisation_stats(data, parts["train"])
        # Training draws nothing from torch's generator (no dropout), so a checkpoint need not hold its state.
        self.model = init_model(model_config, train_config.seed, fold)
        self.model.to(device)
        self.optimizer = make_optimizer(self.model.parameters(), train_config, device)
        # Normalised once and kept on the device for the whole run (nodule_net.data.batches).
        self.train_set, self.val_set = (
            resident_nodules(data, parts[p], self.targets, self.mean, self.std, device) for p in ("train", "val")
        )
        self.run_id = fingerprint(data, parts, model_config, train_config, fold)
        self.path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.start, self.best_epoch, self.best_mae = 0, 0, float("inf")
        self.best_state: dict[str, torch.Tensor] | None = None
        self.history: list[EpochRecord] = []
        if (ckpt := load_checkpoint(self.path, self.run_id, train_config.epochs, device)) is not None:
            self.model.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.start, self.best_state = ckpt["epoch"], ckpt["best_model"]
            self.best_epoch, self.best_mae = ckpt["best_epoch"], ckpt["best_val_mae"]
            self.history = [EpochRecord(*r) for r in ckpt["history"]]
            epochs = train_config.epochs
            # A finished checkpoint resumes nothing: the stage that loads it says why (pipeline/train.py).
            if self.start < epochs:
                left = f"epoch {epochs}" if self.start + 1 == epochs else f"epochs {self.start + 1}–{epochs}"
                progress_line(
                    f"Resuming fold {fold} from {self.path} after epoch {self.start}/{epochs}; training {left}."
                )
        # The time of this run's epochs only (resumed ones took none here); engines that step
        # several folds in one loop give them one clock.
        self.clock = EpochClock(self.start + 1, train_config.epochs)

    def epochs(self) -> range:
        """The epochs left to train (1-based)."""
        return range(self.start + 1, self.train_config.epochs + 1)

    def replay(self, on_epoch: Callable[[EpochRecord], None] | None) -> None:
        """``on_epoch`` for each epoch the checkpoint holds, in order, so loggers rebuild complete curves."""
        if on_epoch is not None:
            for record in self.history:
                on_epoch(record)

    def step_line(self, epoch: int, done: int, steps: int) -> None:
        """The line of a bar-less epoch ``epoch`` that has done ``done`` of its ``steps`` steps."""
        progress_line(
            f"fold {self.fold} epoch {epoch}/{self.train_config.epochs}: step {done}/{steps}, "
            f"{self.clock.timing(epoch, done / steps)}"
        )

    def loss_error(self, epoch: int, step: int, nodules: np.ndarray, loss: float) -> ValueError:
        """The error of a NaN or infinite loss at 0-based ``step`` of ``epoch`` on dataset ``nodules``."""
        return ValueError(
            f"Fold {self.fold}, epoch {epoch}: the loss of step {step + 1} was {float(loss)} (nodule "
            f"{', '.join(self.data.nodule_id[nodules])}); nothing was saved for this epoch — lower "
            "train.lr or check that nodule."
        )

    def end_epoch(self, epoch: int, train_loss: float, validation_batch: int, progress: bool) -> EpochRecord:
        """After ``epoch``'s steps: validate (``validation_batch`` nodules at a time), select,
        log a line (``progress``) and write the checkpoint. A non-finite validation MAE raises
        a ValueError naming the first nodule with a non-finite prediction, and saves nothing.
        """
        # Validation stays fp32 whatever train.precision: model selection (and evaluate, which
        # reads the saved model) compare fp32 predictions, so precision changes only training.
        val_pred = predict_resident(self.model, self.val_set, validation_batch)
        val_targets = self.targets[self.parts["val"]]
        record = EpochRecord(
            epoch,
            train_loss,
            validation_mae(
                val_pred.scores, val_targets, self.model_config.attributes, self.model_config.classify_column
            ),
        )
        if not np.isfinite(record.val_mae):
            bad = ~(np.isfinite(val_pred.scores).all(axis=1) & np.isfinite(val_targets).all(axis=1))
            nodule = self.data.nodule_id[self.parts["val"][int(np.argmax(bad))]]
            raise ValueError(
                f"Fold {self.fold}, epoch {epoch}: the validation MAE is {record.val_mae} (first "
                f"non-finite prediction: nodule {nodule}); nothing was saved for this epoch — lower "
                "train.lr or check that nodule."
            )
        self.history.append(record)
        if record.val_mae < self.best_mae:  # strict: ties keep the earlier epoch
            self.best_mae, self.best_epoch = record.val_mae, epoch
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if progress:
            progress_line(
                f"fold {self.fold} epoch {epoch}/{self.train_config.epochs}: train loss {train_loss:.4f}, "
                f"val MAE {record.val_mae:.4f} (best {self.best_mae:.4f} @ {self.best_epoch}), "
                f"{self.clock.timing(epoch)}"
            )
        if self.path is not None:
            save_checkpoint(self.checkpoint(epoch), self.path)
        return record

    def checkpoint(self, epoch: int) -> Checkpoint:
        """The state to resume from after ``epoch``."""
        return Checkpoint(
            fingerprint=self.run_id,
            epoch=epoch,
            model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(),
            best_model=self.best_state,
            best_epoch=self.best_epoch,
            best_val_mae=self.best_mae,
            history=[(r.epoch, r.train_loss, r.val_mae) for r in self.history],
        )

    def result(self) -> FitResult:
        """The selected model and what the run learnt about its data."""
        # Every epoch's MAE is finite (end_epoch), so the first one trained or resumed selects a model.
        assert self.best_state is not None, f"fold {self.fold} has trained no epoch"
        return FitResult(self.best_state, self.mean, self.std, self.best_epoch, self.best_mae, self.history)
