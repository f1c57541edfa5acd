"""Training one fold (paper §3.2): loss, epochs, validation-based model selection, checkpoints.

Protocol: Adam (lr 1e-4, betas 0.9/0.999, weight decay 1e-4 on all parameters), summed
squared-error loss ``λ·L_aux + L_final`` (eq. 8; summed over nodules and attributes, as
in the authors' code), one nodule per step by default, shuffling and augmentation every
epoch, inputs normalised by the training part's pixel mean/std.

Precision (``train.precision``): fp32 by default; bf16 runs the training forward under
autocast (:func:`forward_at`) with fp32 weights and Adam. Validation is always fp32.

Model selection: the epoch with the lowest mean validation MAE (original scales) on the
fold's validation slice. (The authors' code picks the best epoch on the test fold.) A
benign/malignant classifier (``model.malignancy: classify``, Table 5) is selected by the
mean MAE of the 8 regressed attributes plus the validation BCE of P(malignant).

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
import torch.nn.functional as F
from tqdm import tqdm

from nodule_net.attributes import MALIGNANCY_CUTOFF, N_ATTRIBUTES, attribute_index, denormalise, normalise
from nodule_net.checkpoint import load_checkpoint, save_checkpoint, save_model as save_model_file
from nodule_net.data import Batch, iterate_resident, normalisation_stats, resident_nodules, targets_for
from nodule_net.device import batch_to, resolve_device
from nodule_net.imports import PACKAGE_DIR, import_closure
from nodule_net.inference import predict_resident
from nodule_net.metrics import mae_report
from nodule_net.model import ModelConfig, ModelOutput, NoduleNet
from nodule_net.store import NoduleDataset

# Random stream id for training (nodule_net.split uses 1), so `seed` feeds independent streams.
TRAIN_STREAM = 2

# train.precision → the autocast dtype of the training forward; fp32: no autocast at all.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


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
    precision: str = "fp32"  # fp32 | bf16: autocast of the training forward (PRECISIONS)
    seed: int = 0  # base seed; init and per-epoch streams derive from (seed, fold[, epoch])

    def __post_init__(self) -> None:
        self.betas = tuple(self.betas)
        if self.epochs < 1:
            raise ValueError(f"train.epochs={self.epochs} must be at least 1.")
        if self.batch_nodules < 1:
            raise ValueError(f"train.batch_nodules={self.batch_nodules} must be at least 1.")
        if self.lambda_aux < 0:
            raise ValueError(f"lambda={self.lambda_aux} must be non-negative (it weighs the auxiliary loss).")
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision={self.precision!r} must be one of {' | '.join(PRECISIONS)}.")


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


# The benign/malignant cutoff on malignancy's [0, 1] training scale (rating 3 → 0.5).
MALIGNANT_ABOVE = float(normalise(np.full(N_ATTRIBUTES, MALIGNANCY_CUTOFF))[attribute_index("malignancy")])


def malignancy_labels(targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised mean malignancy (B,) → benign 0 / malignant 1 labels (B,) and which count (B,) bool.

    Mean ratings that are not exactly 3 are at least 1/(4·readers) from 0.5 here, so the
    tolerance only absorbs float32 rounding.
    """
    keep = (targets - MALIGNANT_ABOVE).abs() > 1e-4
    return (targets > MALIGNANT_ABOVE).to(targets.dtype), keep


def _attribute_loss(scores: torch.Tensor, targets: torch.Tensor, classify_column: int | None) -> torch.Tensor:
    """Σ squared errors over (B, K); ``classify_column`` instead adds its masked, summed BCE."""
    if classify_column is None:
        return ((scores - targets) ** 2).sum()
    regressed = [k for k in range(targets.shape[1]) if k != classify_column]
    loss = ((scores[:, regressed] - targets[:, regressed]) ** 2).sum()
    labels, keep = malignancy_labels(targets[:, classify_column])
    bce = F.binary_cross_entropy(scores[:, classify_column], labels, reduction="none")  # (B,)
    # where(), not a product with the mask, so a rated-3 nodule adds exactly no gradient.
    return loss + torch.where(keep, bce, torch.zeros_like(bce)).sum()


def loss_fn(
    output: ModelOutput, targets: torch.Tensor, lambda_aux: float, classify_column: int | None = None
) -> torch.Tensor:
    """Eq. 8 with summed squared errors: λ·Σ(aux − y)² + Σ(final − y)².

    With ``classify_column`` (``model.malignancy: classify``) that output is P(malignant):
    its term is the binary cross-entropy against the benign/malignant label, summed over
    nodules like the squared errors, nodules rated exactly 3 masked out; the auxiliary
    (ASCMM) malignancy output gets the same BCE and mask.
    """
    loss = _attribute_loss(output.scores, targets, classify_column)
    if output.aux_scores is not None:
        loss = loss + lambda_aux * _attribute_loss(output.aux_scores, targets, classify_column)
    return loss


def forward_at(precision: str, device_type: str, forward: Callable[[], ModelOutput]) -> ModelOutput:
    """``forward()`` at ``precision`` (``train.precision``): fp32 calls it as is (no autocast
    context, so today's numbers are unchanged bit for bit); bf16 runs it under
    ``torch.autocast(device_type, torch.bfloat16)`` — convolutions and matmuls in bf16, while
    the weights, their gradients and Adam's state stay fp32 — and returns its outputs in fp32.

    The loss is then computed outside the autocast region, on those fp32 outputs: CUDA's
    autocast refuses ``binary_cross_entropy`` (``model.malignancy: classify``) whatever the
    dtype, and the loss's sums over nodules and attributes want fp32 anyway.
    """
    dtype = PRECISIONS[precision]
    if dtype is None:
        return forward()
    with torch.autocast(device_type, dtype=dtype):
        output = forward()
    return ModelOutput(*(t.float() if t is not None else None for t in output))


def check_precision(precision: str, device: torch.device) -> None:
    """Raise a one-line ValueError if ``device`` cannot train at ``precision`` (bf16 on a GPU
    without bf16; the CPU's autocast has bf16 everywhere, emulated where the CPU lacks it)."""
    if PRECISIONS[precision] is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"train.precision=bf16 but {torch.cuda.get_device_name(device)} has no bfloat16; "
                         "use fp32.")


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
        batch = batch_to(batch, device)  # a no-op for resident batches (nodule_net.data)
        step_losses.append(train_step(model, optimizer, batch, lambda_aux, precision))
        step_nodules.append(batch.index)
    losses = torch.stack(step_losses).double().cpu()  # (steps,): the epoch's one host sync
    if not (finite := torch.isfinite(losses)).all():
        step = int((~finite).nonzero()[0, 0])
        raise NonFiniteLoss(step, step_nodules[step], float(losses[step]))
    return float(losses.sum()) / sum(len(index) for index in step_nodules)


def train_step(model: NoduleNet, optimizer: torch.optim.Optimizer, batch: Batch, lambda_aux: float,
               precision: str = "fp32") -> torch.Tensor:
    """One optimiser step on ``batch``, its forward at ``precision`` (:func:`forward_at`);
    returns its loss, detached, still on the device (no host sync)."""
    out = forward_at(precision, batch.images.device.type,
                     lambda: model(batch.images, batch.segment_ids, len(batch.index)))
    loss = loss_fn(out, batch.targets, lambda_aux, model.config.classify_column)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach()


def make_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig, device: torch.device) -> torch.optim.Adam:
    """The paper's Adam (L2 weight decay on all parameters) as one fused kernel where torch has one.

    Fused Adam updates every parameter in one call (CUDA, and the CPU since torch 2.4)
    instead of a handful of ops per tensor; its numbers equal the per-tensor Adam's within
    float rounding (tests/test_train.py). `nodule-net bench` measured it fastest on the CPU
    too (README, "Speed"). Elsewhere: the multi-tensor (foreach) Adam.
    """
    params = list(params)
    kwargs = dict(lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    try:
        return torch.optim.Adam(params, **kwargs, fused=True)
    except RuntimeError:  # a device (or an older torch) without the fused kernel
        return torch.optim.Adam(params, **kwargs, foreach=True)


class NonFiniteLoss(ValueError):
    """A training step whose loss was NaN or infinite: its 0-based ``step`` and dataset ``nodules``."""

    def __init__(self, step: int, nodules: np.ndarray, loss: float) -> None:
        super().__init__(f"the loss of step {step + 1} was {loss}")
        self.step, self.nodules, self.loss = step, nodules, loss


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
    criterion = mae_report(denormalise(predicted[:, regressed], names), denormalise(targets[:, regressed], names),
                           names)["mean"] if regressed else 0.0
    if classify_column is not None:
        labels, keep = malignancy_labels(torch.as_tensor(targets[:, classify_column], dtype=torch.float32))
        if keep.any():
            probability = torch.as_tensor(predicted[:, classify_column], dtype=torch.float32)
            criterion += F.binary_cross_entropy(probability[keep], labels[keep]).item()
    return criterion


# Modules whose code defines what training produces: the ones that write checkpoints (this
# one; side_by_side.py trains folds side by side into the same checkpoints; folds.py runs
# either, or fit in fold processes) and every package module they import, read from the
# source like dvc.yaml's deps guard. DVC re-runs `train` when they change; a checkpoint
# written by other code must then not be resumed.
TRAINING_CODE = tuple(sorted({
    p.relative_to(PACKAGE_DIR).as_posix() for writer in ("train.py", "side_by_side.py", "folds.py")
    for p in import_closure(PACKAGE_DIR / writer)
}))


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


def train_config_from_params(params: dict) -> TrainConfig:
    """The :class:`TrainConfig` of validated params (:func:`nodule_net.params.load_params`)."""
    train = params["train"]
    return TrainConfig(
        epochs=train["epochs"], lr=train["lr"], betas=tuple(train["betas"]), weight_decay=train["weight_decay"],
        lambda_aux=params["lambda"], batch_nodules=train["batch_nodules"], augment=train["augment"],
        device=train["device"], precision=train["precision"], seed=params["seed"],
    )


def _torch_seed(seed: int, fold: int) -> int:
    return int(np.random.SeedSequence([seed, TRAIN_STREAM, fold]).generate_state(1)[0])


def init_model(model_config: ModelConfig, seed: int, fold: int) -> NoduleNet:
    """Fold ``fold``'s initial network (on the CPU), drawn from its own seed (seed, fold)."""
    torch.manual_seed(_torch_seed(seed, fold))
    return NoduleNet(model_config)


def epoch_rng(train_config: TrainConfig, fold: int, epoch: int) -> np.random.Generator:
    """The stream of fold ``fold``'s shuffling and augmentation in ``epoch``: (seed, stream, fold, epoch)."""
    return np.random.default_rng([train_config.seed, TRAIN_STREAM, fold, epoch])


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
) -> FitResult:
    """Train on ``parts["train"]``, select the epoch by MAE on ``parts["val"]``.

    ``on_epoch`` is called once per epoch in order — including, on resumption, for the
    epochs the checkpoint already holds, so loggers can rebuild complete curves.
    ``progress``: a line per epoch, and a progress bar on a terminal unless ``progress_bar`` is False.
    """
    for part in ("train", "val"):
        if len(parts.get(part, ())) == 0:
            raise ValueError(f"Fold {fold} has no {part} nodules; check split.val_fraction and the dataset size.")
    device = resolve_device(train_config.device)
    check_precision(train_config.precision, device)
    targets = targets_for(data, model_config.attribute)
    mean, std = normalisation_stats(data, parts["train"])
    model = init_model(model_config, train_config.seed, fold).to(device)
    optimizer = make_optimizer(model.parameters(), train_config, device)
    # Normalised once and kept on the device for the whole run (nodule_net.data).
    train_set, val_set = (resident_nodules(data, parts[p], targets, mean, std, device) for p in ("train", "val"))
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
        batches = iterate_resident(train_set, train_config.batch_nodules, epoch_rng(train_config, fold, epoch),
                                   train_config.augment)
        n_batches = -(-len(parts["train"]) // train_config.batch_nodules)
        bar = tqdm(batches, total=n_batches, desc=f"fold {fold} epoch {epoch}/{train_config.epochs}",
                   # None: tqdm draws the bar only on a terminal; logs get the per-epoch lines below.
                   unit="batch", disable=None if progress and progress_bar else True, leave=False)
        try:
            train_loss = train_epoch(model, optimizer, bar, train_config.lambda_aux, device, train_config.precision)
        except NonFiniteLoss as err:
            raise ValueError(f"Fold {fold}, epoch {epoch}: {err} (nodule {', '.join(data.nodule_id[err.nodules])}); "
                             "nothing was saved for this epoch — lower train.lr or check that nodule.") from None
        # Validation stays fp32 whatever train.precision: model selection (and evaluate, which
        # reads the saved model) compare fp32 predictions, so precision changes only training.
        val_pred = predict_resident(model, val_set, train_config.batch_nodules)
        record = EpochRecord(epoch, train_loss, validation_mae(val_pred.scores, val_targets, model_config.attributes,
                                                          model_config.classify_column))
        if not np.isfinite(record.val_mae):
            bad = ~(np.isfinite(val_pred.scores).all(axis=1) & np.isfinite(val_targets).all(axis=1))
            raise ValueError(f"Fold {fold}, epoch {epoch}: the validation MAE is {record.val_mae} (first non-finite "
                             f"prediction: nodule {data.nodule_id[parts['val'][int(np.argmax(bad))]]}); "
                             "nothing was saved for this epoch — lower train.lr or check that nodule.")
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


def save_model(path: str | os.PathLike, result: FitResult, model_config: ModelConfig, fold: int,
               extract: dict | None = None) -> None:
    """Write the selected model of ``result`` (see :func:`nodule_net.checkpoint.save_model`).

    ``extract``: the training data's extract settings (``extract_record(data.attrs)``), which `predict` crops with.
    """
    save_model_file(path, result.model_state, asdict(model_config), result.mean, result.std, fold,
                    result.best_epoch, result.best_val_mae, extract)
