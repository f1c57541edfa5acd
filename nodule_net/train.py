"""Training one fold (paper §3.2): loss, epochs, validation-based model selection, checkpoints.

Protocol: Adam (lr 1e-4, betas 0.9/0.999, weight decay 1e-4 on all parameters), summed
squared-error loss ``λ·L_aux + L_final`` (eq. 8; summed over nodules and attributes, as
in the authors' code), one nodule per step by default, shuffling and augmentation every
epoch, inputs normalised by the training part's pixel mean/std.

Model selection: the epoch with the lowest mean validation MAE (original scales) on the
fold's validation slice. (The authors' code picks the best epoch on the test fold.)

Resumption: after every epoch a checkpoint holds the model, the optimiser, the epoch,
the RNG state and the best model so far. Every epoch draws its shuffling and
augmentation from its own seeded stream (seed, fold, epoch), so a run resumed from a
checkpoint produces exactly the numbers of an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from nodule_net.attributes import denormalise
from nodule_net.checkpoint import load_checkpoint, save_checkpoint, save_model as save_model_file
from nodule_net.data import Batch, iterate_batches, normalisation_stats, targets_for
from nodule_net.device import batch_to, resolve_device
from nodule_net.inference import predict
from nodule_net.metrics import mae_report
from nodule_net.model import ModelConfig, ModelOutput, NoduleNet
from nodule_net.store import NoduleDataset

# Random stream id for training (nodule_net.split uses 1), so `seed` feeds independent streams.
TRAIN_STREAM = 2


@dataclass
class TrainConfig:
    epochs: int = 10  # passes over the training part (paper: 150)
    lr: float = 1e-4  # Adam learning rate (paper §3.2)
    betas: tuple[float, float] = (0.9, 0.999)  # Adam moment decay rates (paper §3.2)
    weight_decay: float = 1e-4  # Adam L2 weight decay on all parameters (paper §3.2)
    lambda_aux: float = 0.1  # λ, weight of the ASCMM auxiliary loss (eq. 8)
    batch_nodules: int = 1  # nodules per optimiser step (paper: 1)
    augment: bool = True  # random flip / rot90 / z-reversal (paper §3.2)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    seed: int = 0  # base seed; init and per-epoch streams derive from (seed, fold[, epoch])

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.epochs < 1:
            raise ValueError(f"train.epochs={self.epochs} must be at least 1.")
        if self.batch_nodules < 1:
            raise ValueError(f"train.batch_nodules={self.batch_nodules} must be at least 1.")
        if self.lambda_aux < 0:
            raise ValueError(f"lambda={self.lambda_aux} must be non-negative (it weighs the auxiliary loss).")


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


def loss_fn(output: ModelOutput, targets: torch.Tensor, lambda_aux: float) -> torch.Tensor:
    """Eq. 8 with summed squared errors: λ·Σ(aux − y)² + Σ(final − y)²."""
    loss = ((output.scores - targets) ** 2).sum()
    if output.aux_scores is not None:
        loss = loss + lambda_aux * ((output.aux_scores - targets) ** 2).sum()
    return loss


def train_epoch(
    model: NoduleNet,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[Batch],
    lambda_aux: float,
    device: torch.device,
) -> float:
    """One pass over ``batches``; returns the mean loss per nodule."""
    model.train()
    total, n = 0.0, 0
    for batch in batches:
        batch = batch_to(batch, device)
        loss = loss_fn(model(batch.images, batch.segment_ids, len(batch.index)), batch.targets, lambda_aux)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, n = total + loss.item(), n + len(batch.index)
    return total / n


def validation_mae(predicted: np.ndarray, targets: np.ndarray, attributes: tuple[str, ...]) -> float:
    """Mean over attributes of the MAE on the original rating scales."""
    return mae_report(denormalise(predicted, attributes), denormalise(targets, attributes), attributes)[
        "mean"
    ]


# Modules whose code defines what training produces. DVC re-runs `train` when they change;
# a checkpoint written by other code must then not be resumed.
TRAINING_CODE = (
    "attributes.py", "checkpoint.py", "data.py", "device.py", "inference.py", "metrics.py", "model.py", "train.py",
)


def training_code_digest(package_dir: Path = Path(__file__).parent) -> str:
    """SHA-256 of the training code (``TRAINING_CODE`` in ``package_dir``)."""
    h = hashlib.sha256()
    for name in TRAINING_CODE:
        h.update((package_dir / name).read_bytes())
    return h.hexdigest()


def fingerprint(
    data: NoduleDataset, parts: dict[str, np.ndarray], model_config: ModelConfig, train_config: TrainConfig, fold: int
) -> str:
    """Identity of a training run, minus ``epochs`` and ``device``.

    A checkpoint is resumed only if this matches, so changed params, folds, data or
    training code start afresh; leaving out ``epochs`` lets ``-S train.epochs=N`` extend a
    finished run (same numbers as training N epochs in one go).
    """
    settings = {k: v for k, v in asdict(train_config).items() if k not in ("epochs", "device")}
    h = hashlib.sha256(json.dumps([asdict(model_config), settings, fold], sort_keys=True, default=list).encode())
    h.update(training_code_digest().encode())
    for part in ("train", "val"):
        h.update(np.ascontiguousarray(parts[part]).tobytes())
        for n in parts[part]:
            h.update(np.ascontiguousarray(data.slices(int(n))).tobytes())
    h.update(np.ascontiguousarray(data.ratings).tobytes())
    return h.hexdigest()


def _torch_seed(seed: int, fold: int) -> int:
    return int(np.random.SeedSequence([seed, TRAIN_STREAM, fold]).generate_state(1)[0])


def fit(
    data: NoduleDataset,
    parts: dict[str, np.ndarray],
    model_config: ModelConfig,
    train_config: TrainConfig,
    fold: int = 0,
    checkpoint_path: str | os.PathLike | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    progress: bool = True,
) -> FitResult:
    """Train on ``parts["train"]``, select the epoch by MAE on ``parts["val"]``.

    ``on_epoch`` is called once per epoch in order — including, on resumption, for the
    epochs the checkpoint already holds, so loggers can rebuild complete curves.
    """
    for part in ("train", "val"):
        if len(parts.get(part, ())) == 0:
            raise ValueError(f"Fold {fold} has no {part} nodules; check split.val_fraction and the dataset size.")
    device = resolve_device(train_config.device)
    targets = targets_for(data, model_config.attribute)
    mean, std = normalisation_stats(data, parts["train"])
    torch.manual_seed(_torch_seed(train_config.seed, fold))
    model = NoduleNet(model_config).to(device)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=train_config.lr, betas=train_config.betas, weight_decay=train_config.weight_decay
    )
    run_id = fingerprint(data, parts, model_config, train_config, fold)
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    start, best_state, best_epoch, best_mae, history = 0, None, 0, float("inf"), []
    if (ckpt := load_checkpoint(path, run_id, train_config.epochs, device)) is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["torch_rng"].cpu())
        start, best_state, best_epoch, best_mae = ckpt["epoch"], ckpt["best_model"], ckpt["best_epoch"], ckpt["best_val_mae"]
        history = [EpochRecord(*r) for r in ckpt["history"]]
        tqdm.write(f"Resuming fold {fold} from {path} after epoch {start}.")
    for record in history:
        if on_epoch is not None:
            on_epoch(record)
    val_targets = targets[parts["val"]]
    for epoch in range(start + 1, train_config.epochs + 1):
        rng = np.random.default_rng([train_config.seed, TRAIN_STREAM, fold, epoch])
        batches = iterate_batches(
            data, parts["train"], targets, mean, std, train_config.batch_nodules, rng, train_config.augment
        )
        n_batches = -(-len(parts["train"]) // train_config.batch_nodules)
        bar = tqdm(batches, total=n_batches, desc=f"fold {fold} epoch {epoch}/{train_config.epochs}",
                   unit="batch", disable=not progress, leave=False)
        train_loss = train_epoch(model, optimizer, bar, train_config.lambda_aux, device)
        val_pred = predict(model, data, parts["val"], mean, std, train_config.batch_nodules, device)
        record = EpochRecord(epoch, train_loss, validation_mae(val_pred.scores, val_targets, model_config.attributes))
        history.append(record)
        if record.val_mae < best_mae:  # strict: ties keep the earlier epoch
            best_mae, best_epoch = record.val_mae, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if progress:
            tqdm.write(f"fold {fold} epoch {epoch}: train loss {train_loss:.4f}, val MAE {record.val_mae:.4f}"
                       f" (best {best_mae:.4f} @ {best_epoch})")
        if path is not None:
            save_checkpoint({
                "fingerprint": run_id, "epoch": epoch,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "torch_rng": torch.get_rng_state(), "best_model": best_state, "best_epoch": best_epoch,
                "best_val_mae": best_mae, "history": [tuple(r) for r in history],
            }, path)
        if on_epoch is not None:
            on_epoch(record)
    return FitResult(best_state, mean, std, best_epoch, best_mae, history)


def save_model(path: str | os.PathLike, result: FitResult, model_config: ModelConfig, fold: int) -> None:
    """Write the selected model of ``result`` (see :func:`nodule_net.checkpoint.save_model`)."""
    save_model_file(path, result.model_state, asdict(model_config), result.mean, result.std, fold,
                    result.best_epoch, result.best_val_mae)
