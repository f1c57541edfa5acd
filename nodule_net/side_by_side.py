"""The k folds of an experiment trained side by side, with the paper's semantics.

Every optimiser step takes one nodule *per fold* — each fold's next nodule in its own
seeded order, with its own augmentation draws (:func:`nodule_net.train.epoch_rng` through
:func:`~nodule_net.data.iterate_resident`, as ``fit`` draws them) — and updates all k
models at once: the folds' parameters are the rows of one (k, P) tensor, :func:`torch.func.vmap` runs
:meth:`~nodule_net.model.NoduleNet.forward_padded` and :func:`~nodule_net.train.loss_fn`
over them (batched convolutions are grouped convolutions: one kernel for k folds), one
backward gives each fold its own gradient (the folds share nothing, so the gradient of
the summed loss is per fold exactly), and :class:`StackedAdam` updates the stack.
Nothing is averaged across folds, so the models equal k separate :func:`~nodule_net.train.fit`
runs within float tolerance (tests/test_side_by_side.py).

The nodules of one step differ in depth: each is zero-padded in z to the step's deepest
and masked (``forward_padded``). Folds differ in size by a nodule or two: a fold whose
epoch is over sits out the step (its parameters, moments and step count unchanged).

Why: on a GPU one nodule per step is launch-bound (a few hundred small kernels of a few
microseconds each); stepping k folds in one set of kernels does k times the work per
launch. On a CPU, which is compute-bound, it brings nothing (README, "Folds side by side").

Validation, model selection (lowest validation MAE, ties keep the earlier epoch),
checkpoints and resumption are per fold and as in ``fit``; a fold's checkpoint has
``fit``'s format and fingerprint, so either can resume it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from nodule_net.checkpoint import load_checkpoint, save_checkpoint
from nodule_net.data import Batch, ResidentNodules, iterate_resident, normalisation_stats, resident_nodules, targets_for
from nodule_net.device import resolve_device
from nodule_net.inference import predict_resident
from nodule_net.model import ModelConfig, ModelOutput, NoduleNet
from nodule_net.store import NoduleDataset
from nodule_net.train import (
    EpochRecord,
    FitResult,
    TrainConfig,
    check_precision,
    epoch_rng,
    fingerprint,
    forward_at,
    init_model,
    loss_fn,
    make_optimizer,
    validation_mae,
)

# Validation packs nodules (same outputs as one at a time, tests/test_train.py), so it
# stays a small share of an epoch's launches; 8 keeps a `3d` batch of 64-slice volumes small.
VALIDATION_BATCH_NODULES = 8
ADAM_EPS = 1e-8  # torch.optim.Adam's default, which fit uses


def folds_together(setting: str | bool, device: torch.device, batch_nodules: int) -> bool:
    """Whether to train the folds side by side: ``train.folds_together`` resolved for ``device``.

    ``auto`` → side by side on a CUDA GPU with one nodule per step; one fold after another
    on a CPU, which is compute-bound, so side by side brings nothing there, and with
    ``train.batch_nodules`` > 1 (a different-semantics option side by side does not do).
    """
    if setting == "auto":
        return device.type == "cuda" and batch_nodules == 1
    if not isinstance(setting, bool):
        raise ValueError(f"train.folds_together={setting!r} must be auto, true or false.")
    return setting


# --- the stacked parameters and their optimiser ------------------------------------------


class ParamLayout(NamedTuple):
    """Where each parameter of a :class:`NoduleNet` lies in its flat vector (P,)."""

    names: tuple[str, ...]
    shapes: tuple[torch.Size, ...]
    sizes: tuple[int, ...]

    @classmethod
    def of(cls, model: nn.Module) -> ParamLayout:
        if any(True for _ in model.buffers()):
            raise ValueError("Training folds side by side needs a network without buffers (NoduleNet has none).")
        named = list(model.named_parameters())
        return cls(tuple(n for n, _ in named), tuple(p.shape for _, p in named), tuple(p.numel() for _, p in named))

    def flatten(self, tensors: Sequence[Tensor]) -> Tensor:
        """Tensors in ``names`` order (parameters, or their Adam moments) → (P,)."""
        return torch.cat([t.detach().reshape(-1) for t in tensors])

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """(P,) → ``{name: view}``; differentiable, and works on the per-fold rows inside vmap."""
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes)}


class StackedAdam:
    """``torch.optim.Adam`` (L2 weight decay added to the gradient, no AMSGrad) over k
    independent parameter vectors, the rows of ``params`` (k, P), updated in place.

    Adam is elementwise, so one update of the stack equals k separate optimisers; the
    operations are those of torch's per-tensor Adam, with each fold's bias corrections
    (folds that sat out steps have fewer). A fold whose ``active`` is False keeps its
    parameters, moments and step count.
    """

    def __init__(self, params: Tensor, lr: float, betas: tuple[float, float], weight_decay: float,
                 eps: float = ADAM_EPS) -> None:
        self.params = params
        self.lr, self.betas, self.weight_decay, self.eps = lr, tuple(betas), weight_decay, eps
        self.exp_avg = torch.zeros_like(params, requires_grad=False)
        self.exp_avg_sq = torch.zeros_like(params, requires_grad=False)
        self.steps = np.zeros(len(params), dtype=np.int64)  # per fold, on the host: no device sync

    @torch.no_grad()
    def step(self, grad: Tensor, active: np.ndarray) -> None:
        """One update with ``grad`` (k, P) for the folds where ``active`` (k,) bool is True."""
        beta1, beta2 = self.betas
        self.steps += active
        steps = np.maximum(self.steps, 1)  # a fold that has not stepped yet is masked out below
        # Bias corrections in float64 on the host, as torch computes them in Python floats.
        per_fold = np.stack([self.lr / (1 - beta1**steps), np.sqrt(1 - beta2**steps)])  # (2, k)
        step_size, bias2_sqrt = to_device(torch.from_numpy(per_fold.astype(np.float32))[:, :, None],
                                          self.params.device)  # (k, 1) each
        grad = grad.add(self.params, alpha=self.weight_decay) if self.weight_decay != 0 else grad
        if active.all():
            self.exp_avg.lerp_(grad, 1 - beta1)
            self.exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (self.exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
            self.params.sub_(step_size * self.exp_avg / denom)  # torch's addcdiv: (value · m) / denom
            return
        keep = ~to_device(torch.from_numpy(active)[:, None], self.params.device)  # (k, 1)
        exp_avg = self.exp_avg.lerp(grad, 1 - beta1)
        exp_avg_sq = self.exp_avg_sq.mul(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (exp_avg_sq.sqrt() / bias2_sqrt).add_(self.eps)
        params = self.params - step_size * exp_avg / denom
        self.exp_avg.copy_(torch.where(keep, self.exp_avg, exp_avg))
        self.exp_avg_sq.copy_(torch.where(keep, self.exp_avg_sq, exp_avg_sq))
        self.params.copy_(torch.where(keep, self.params, params))


def to_device(tensor: Tensor, device: torch.device) -> Tensor:
    """``tensor`` (on the CPU) on ``device``; to a GPU through pinned memory without waiting for it."""
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


# --- one step's nodules ------------------------------------------------------------------


class FoldsStep(NamedTuple):
    """One nodule per fold, zero-padded in z to the deepest (see ``NoduleNet.forward_padded``)."""

    images: Tensor  # (k, D, H, W) normalised; a fold's M slices first, then zeros
    mask: Tensor  # (k, D) bool, True on real slices
    targets: Tensor  # (k, 1, K)
    active: np.ndarray  # (k,) bool on the host; False: the fold sits this step out (a stand-in nodule)
    index: np.ndarray  # (k,) dataset index of each fold's nodule (the stand-in's: -1)


def stack_nodules(batches: Sequence[Batch | None], blank: Batch) -> FoldsStep:
    """The step's one-nodule ``batches`` (None for a fold that sits out, which gets ``blank``:
    one zero slice, zero targets) as a :class:`FoldsStep` on their device."""
    batches = [b if b is not None else blank for b in batches]
    active = np.array([b is not blank for b in batches])
    if any(len(b.index) != 1 for b in batches):
        raise ValueError("Folds side by side take one nodule per fold per step (train.batch_nodules: 1).")
    depths = torch.tensor([len(b.images) for b in batches])  # shapes: known on the host
    mask = to_device(torch.arange(int(depths.max()))[None] < depths[:, None], blank.images.device)  # (k, D)
    images = nn.utils.rnn.pad_sequence([b.images for b in batches], batch_first=True)  # (k, D, H, W)
    return FoldsStep(images, mask, torch.stack([b.targets for b in batches]), active,
                     np.array([b.index[0] for b in batches]))


class _Padded(nn.Module):
    """``forward_padded`` as a module's forward, for :func:`torch.func.functional_call`."""

    def __init__(self, net: NoduleNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor, mask: Tensor) -> ModelOutput:
        return self.net.forward_padded(images, mask)


def batched_loss(template: NoduleNet, layout: ParamLayout, lambda_aux: float,
                 precision: str = "fp32") -> Callable[..., Tensor]:
    """``(params (k, P), images, mask, targets) → (k,)`` per-fold losses of one :class:`FoldsStep`,
    the forward at ``precision`` (``train.precision``, as ``fit``'s: :func:`~nodule_net.train.forward_at`)."""
    padded = _Padded(copy.deepcopy(template).to("meta"))  # structure only: every weight comes from params
    classify_column = template.config.classify_column

    def one_fold(flat: Tensor, images: Tensor, mask: Tensor, targets: Tensor) -> Tensor:
        weights = {f"net.{name}": w for name, w in layout.unflatten(flat).items()}
        output = forward_at(precision, images.device.type,
                            lambda: torch.func.functional_call(padded, weights, (images, mask)))
        return loss_fn(output, targets, lambda_aux, classify_column)

    return torch.func.vmap(one_fold)


# --- training ----------------------------------------------------------------------------


@dataclass
class _Fold:
    """One fold's state beside the stack: its network (weights copied in for validation and
    checkpoints), an Adam that only carries the checkpoint's optimiser state, and selection."""

    fold: int
    parts: dict[str, np.ndarray]
    mean: float
    std: float
    train_set: ResidentNodules  # normalised, on the training device, as fit keeps them
    val_set: ResidentNodules
    run_id: str
    path: Path | None
    model: NoduleNet
    optimizer: torch.optim.Adam
    torch_rng: Tensor
    start: int = 0
    best_state: dict[str, Tensor] | None = None
    best_epoch: int = 0
    best_mae: float = float("inf")
    history: list[EpochRecord] = field(default_factory=list)


def _init_fold(data: NoduleDataset, targets: np.ndarray, fold: int, parts: dict[str, np.ndarray],
               model_config: ModelConfig, train_config: TrainConfig, path: str | os.PathLike | None,
               device: torch.device) -> _Fold:
    """As ``fit`` starts fold ``fold``: the same initial weights, or its checkpoint."""
    for part in ("train", "val"):
        if len(parts.get(part, ())) == 0:
            raise ValueError(f"Fold {fold} has no {part} nodules; check split.val_fraction and the dataset size.")
    mean, std = normalisation_stats(data, parts["train"])
    model = init_model(model_config, train_config.seed, fold)
    torch_rng = torch.get_rng_state()  # what fit's checkpoint holds: training draws nothing from torch
    model = model.to(device)
    optimizer = make_optimizer(model.parameters(), train_config, device)
    train_set, val_set = (resident_nodules(data, parts[p], targets, mean, std, device) for p in ("train", "val"))
    run_id = fingerprint(data, parts, model_config, train_config, fold)
    path = Path(path) if path is not None else None
    state = _Fold(fold, parts, mean, std, train_set, val_set, run_id, path, model, optimizer, torch_rng)
    if (ckpt := load_checkpoint(path, run_id, train_config.epochs, device)) is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        state.torch_rng = ckpt["torch_rng"].cpu()
        state.start, state.best_state, state.best_epoch = ckpt["epoch"], ckpt["best_model"], ckpt["best_epoch"]
        state.best_mae, state.history = ckpt["best_val_mae"], [EpochRecord(*r) for r in ckpt["history"]]
        tqdm.write(f"Resuming fold {fold} from {path} after epoch {state.start}.")
    return state


def _load_stack(folds: list[_Fold], layout: ParamLayout, adam: StackedAdam) -> None:
    """Each fold's Adam state (from its checkpoint) into the stacked moments and step counts."""
    for row, f in enumerate(folds):
        states = [f.optimizer.state.get(p) for p in f.model.parameters()]
        if any(s is None for s in states):  # a fresh fold: zero moments, step 0
            continue
        adam.exp_avg[row] = layout.flatten([s["exp_avg"] for s in states])
        adam.exp_avg_sq[row] = layout.flatten([s["exp_avg_sq"] for s in states])
        adam.steps[row] = int(states[0]["step"])


def _sync_fold(f: _Fold, row: int, layout: ParamLayout, adam: StackedAdam) -> None:
    """Copy the stack's row ``row`` (weights, moments, step) into fold ``f``'s network and Adam."""
    with torch.no_grad():
        for p, w in zip(f.model.parameters(), layout.unflatten(adam.params[row]).values()):
            p.copy_(w)
    moments = zip(layout.unflatten(adam.exp_avg[row]).values(), layout.unflatten(adam.exp_avg_sq[row]).values())
    for p, (m, v) in zip(f.model.parameters(), moments):
        # torch.optim.Adam's own state layout, so fit resumes this checkpoint and vice versa.
        f.optimizer.state[p] = {"step": torch.tensor(float(adam.steps[row])), "exp_avg": m.clone(),
                                "exp_avg_sq": v.clone()}


def _epoch_losses(losses: Tensor, active: np.ndarray, index: np.ndarray, folds: list[_Fold], data: NoduleDataset,
                  epoch: int) -> list[float]:
    """Each fold's mean loss per nodule from the epoch's per-step ``losses`` (steps, k) on the
    device (read once: a sync per step would stall a GPU); as ``fit``, a ValueError naming
    the fold, step and nodule if a loss was not finite."""
    losses = losses.double().cpu().numpy()
    means = []
    for row, f in enumerate(folds):
        mine = losses[active[:, row], row]
        if not np.isfinite(mine).all():
            step = int(np.flatnonzero(~np.isfinite(mine))[0])
            nodule = data.nodule_id[index[active[:, row], row][step]]
            raise ValueError(f"Fold {f.fold}, epoch {epoch}: the loss of step {step + 1} was {mine[step]} (nodule "
                             f"{nodule}); nothing was saved for this epoch — lower train.lr or check that nodule.")
        means.append(float(mine.sum()) / len(f.parts["train"]) if len(mine) else float("nan"))
    return means


def fit_folds(
    data: NoduleDataset,
    fold_parts: Mapping[int, dict[str, np.ndarray]],
    model_config: ModelConfig,
    train_config: TrainConfig,
    checkpoint_paths: Mapping[int, str | os.PathLike] | None = None,
    on_epoch: Callable[[int, EpochRecord], None] | None = None,
    progress: bool = True,
) -> dict[int, FitResult]:
    """``fit`` for every fold of ``fold_parts`` ({fold: parts}), the folds stepped side by side.

    Each result equals ``fit(data, fold_parts[f], model_config, train_config, f,
    checkpoint_paths[f])`` within float tolerance. ``on_epoch(fold, record)`` is called
    once per fold and epoch, in epoch order for each fold, after that epoch's checkpoints
    are written — on resumption first for the epochs the checkpoints already hold.
    """
    if train_config.batch_nodules != 1:
        raise ValueError(f"Folds side by side train one nodule per fold per step, but train.batch_nodules="
                         f"{train_config.batch_nodules}; set train.folds_together: false to pack nodules.")
    if not fold_parts:
        raise ValueError("No folds to train; check the params' `folds`.")
    device = resolve_device(train_config.device)
    check_precision(train_config.precision, device)
    targets = targets_for(data, model_config.attribute)
    paths = checkpoint_paths or {}
    folds = [_init_fold(data, targets, k, parts, model_config, train_config, paths.get(k), device)
             for k, parts in fold_parts.items()]
    layout = ParamLayout.of(folds[0].model)
    params = torch.stack([layout.flatten(list(f.model.parameters())) for f in folds]).requires_grad_()  # (k, P)
    adam = StackedAdam(params, train_config.lr, train_config.betas, train_config.weight_decay)
    _load_stack(folds, layout, adam)
    loss_of = batched_loss(folds[0].model, layout, train_config.lambda_aux, train_config.precision)
    image_shape = data.images.shape[1:]
    blank = Batch(torch.zeros((1, *image_shape), device=device), torch.zeros(1, dtype=torch.long, device=device),
                  torch.zeros((1, model_config.n_outputs), device=device), np.array([-1]))
    if on_epoch is not None:
        for f in folds:
            for record in f.history:
                on_epoch(f.fold, record)
    for epoch in range(min(f.start for f in folds) + 1, train_config.epochs + 1):
        # A fold resumed from a later epoch than the others waits for them.
        training = [f.start < epoch for f in folds]
        streams: list[Iterator[Batch] | None] = [
            iterate_resident(f.train_set, 1, epoch_rng(train_config, f.fold, epoch), train_config.augment) if t else None
            for f, t in zip(folds, training)
        ]
        n_steps = max(len(f.parts["train"]) for f, t in zip(folds, training) if t)
        step_losses, step_active, step_index = [], [], []
        names = ",".join(str(f.fold) for f, t in zip(folds, training) if t)
        for _ in tqdm(range(n_steps), desc=f"folds {names} epoch {epoch}/{train_config.epochs}", unit="step",
                      disable=None if progress else True, leave=False):
            step = stack_nodules([next(s, None) if s is not None else None for s in streams], blank)
            losses = loss_of(params, step.images, step.mask, step.targets)  # (k,)
            (grad,) = torch.autograd.grad(losses.sum(), params)  # the folds share nothing: per-fold gradients
            adam.step(grad, step.active)
            step_losses.append(losses.detach())
            step_active.append(step.active)
            step_index.append(step.index)
        mean_losses = _epoch_losses(torch.stack(step_losses), np.stack(step_active), np.stack(step_index), folds,
                                    data, epoch)
        finished = []
        for row, f in enumerate(folds):
            if not training[row]:
                continue
            _sync_fold(f, row, layout, adam)
            val = predict_resident(f.model, f.val_set, VALIDATION_BATCH_NODULES)
            record = EpochRecord(epoch, mean_losses[row], validation_mae(
                val.scores, targets[f.parts["val"]], model_config.attributes, model_config.classify_column))
            if not np.isfinite(record.val_mae):
                bad = int(np.argmax(~np.isfinite(val.scores).all(axis=1)))
                raise ValueError(f"Fold {f.fold}, epoch {epoch}: the validation MAE is {record.val_mae} (first "
                                 f"non-finite prediction: nodule {data.nodule_id[f.parts['val'][bad]]}); nothing "
                                 "was saved for this epoch — lower train.lr or check that nodule.")
            f.history.append(record)
            if record.val_mae < f.best_mae:  # strict: ties keep the earlier epoch
                f.best_mae, f.best_epoch = record.val_mae, epoch
                f.best_state = {k: v.detach().clone() for k, v in f.model.state_dict().items()}
            if progress:
                tqdm.write(f"fold {f.fold} epoch {epoch}: train loss {record.train_loss:.4f}, val MAE "
                           f"{record.val_mae:.4f} (best {f.best_mae:.4f} @ {f.best_epoch})")
            if f.path is not None:
                save_checkpoint({
                    "fingerprint": f.run_id, "epoch": epoch,
                    "model": f.model.state_dict(), "optimizer": f.optimizer.state_dict(),
                    "torch_rng": f.torch_rng, "best_model": f.best_state, "best_epoch": f.best_epoch,
                    "best_val_mae": f.best_mae, "history": [tuple(r) for r in f.history],
                }, f.path)
            finished.append((f.fold, record))
        if on_epoch is not None:  # after every fold's checkpoint, so an interrupt leaves them in step
            for fold, record in finished:
                on_epoch(fold, record)
    return {f.fold: FitResult(f.best_state, f.mean, f.std, f.best_epoch, f.best_mae, f.history) for f in folds}
