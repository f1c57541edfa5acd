"""The k folds of an experiment trained side by side, with the paper's semantics.

Every optimiser step takes one nodule *per fold* — each fold's next nodule in its own
seeded order, with its own augmentation draws (:func:`nodule_net.training.run.epoch_rng` through
:func:`~nodule_net.data.batches.iterate_resident`, as ``fit`` draws them) — and updates all k
models at once: the folds' parameters are the rows of one (k, P) tensor, :func:`torch.func.vmap` runs
:meth:`~nodule_net.model.net.NoduleNet.forward_padded` and :func:`~nodule_net.model.loss.loss_fn`
over them (batched convolutions are grouped convolutions: one kernel for k folds), one
backward gives each fold its own gradient (the folds share nothing, so the gradient of
the summed loss is per fold exactly), and :class:`StackedAdam` updates the stack.
Nothing is averaged across folds, so the models equal k separate :func:`~nodule_net.training.fit.fit`
runs within float tolerance (tests/training/test_side_by_side.py).

The nodules of one step differ in depth: each is zero-padded in z to the step's deepest
and masked (``forward_padded``). Folds differ in size by a nodule or two: a fold whose
epoch is over sits out the step (its parameters, moments and step count unchanged).

Why: on a GPU one nodule per step is launch-bound (a few hundred small kernels of a few
microseconds each); stepping k folds in one set of kernels does k times the work per
launch. On a CPU, which is compute-bound, it brings nothing (docs/training.md).

Validation, model selection, checkpoints and resumption are per fold, by the
:class:`~nodule_net.training.run.FoldRun` that ``fit`` uses too: a fold's checkpoint has
``fit``'s format and fingerprint, so either can resume it.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.data.batches import Batch, iterate_resident
from nodule_net.io.store import NoduleDataset
from nodule_net.model.loss import loss_fn
from nodule_net.model.net import ModelOutput, NoduleNet
from nodule_net.runtime.progress import EpochClock, progress_line, with_heartbeat
from nodule_net.training.run import EpochRecord, FitResult, FoldRun, epoch_rng, forward_at

# Validation packs nodules (same outputs as one at a time, tests/training/test_train.py), so it
# stays a small share of an epoch's launches; 8 keeps a `3d` batch of 64-slice volumes small.
VALIDATION_BATCH_NODULES = 8
ADAM_EPS = 1e-8  # torch.optim.Adam's default, which fit uses


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
        return {n: t.view(s) for n, t, s in zip(self.names, flat.split(self.sizes), self.shapes, strict=True)}


class StackedAdam:
    """``torch.optim.Adam`` (L2 weight decay added to the gradient, no AMSGrad) over k
    independent parameter vectors, the rows of ``params`` (k, P), updated in place.

    Adam is elementwise, so one update of the stack equals k separate optimisers; the
    operations are those of torch's per-tensor Adam, with each fold's bias corrections
    (folds that sat out steps have fewer). A fold whose ``active`` is False keeps its
    parameters, moments and step count.
    """

    def __init__(
        self, params: Tensor, lr: float, betas: tuple[float, float], weight_decay: float, eps: float = ADAM_EPS
    ) -> None:
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
        step_size, bias2_sqrt = to_device(
            torch.from_numpy(per_fold.astype(np.float32))[:, :, None], self.params.device
        )  # (k, 1) each
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
    # The field shadows tuple.index, which a NamedTuple cannot help; nothing here calls tuple.index.
    index: np.ndarray  # type: ignore[assignment]  # (k,) dataset index of each fold's nodule (the stand-in's: -1)


def stack_nodules(batches: Sequence[Batch | None], blank: Batch) -> FoldsStep:
    """The step's one-nodule ``batches`` (None for a fold that sits out, which gets ``blank``:
    one zero slice, zero targets) as a :class:`FoldsStep` on their device."""
    filled = [b if b is not None else blank for b in batches]
    active = np.array([b is not blank for b in filled])
    if any(len(b.index) != 1 for b in filled):
        raise ValueError("Folds side by side take one nodule per fold per step (train.batch_nodules: 1).")
    depths = torch.tensor([len(b.images) for b in filled])  # shapes: known on the host
    mask = to_device(torch.arange(int(depths.max()))[None] < depths[:, None], blank.images.device)  # (k, D)
    images = nn.utils.rnn.pad_sequence([b.images for b in filled], batch_first=True)  # (k, D, H, W)
    return FoldsStep(
        images, mask, torch.stack([b.targets for b in filled]), active, np.array([b.index[0] for b in filled])
    )


class _Padded(nn.Module):
    """``forward_padded`` as a module's forward, for :func:`torch.func.functional_call`."""

    def __init__(self, net: NoduleNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: Tensor, mask: Tensor) -> ModelOutput:
        return self.net.forward_padded(images, mask)


def batched_loss(
    template: NoduleNet, layout: ParamLayout, lambda_aux: float, precision: str = "fp32"
) -> Callable[..., Tensor]:
    """``(params (k, P), images, mask, targets) → (k,)`` per-fold losses of one :class:`FoldsStep`,
    the forward at ``precision`` (``train.precision``, as ``fit``'s: :func:`~nodule_net.training.run.forward_at`)."""
    padded = _Padded(copy.deepcopy(template).to("meta"))  # structure only: every weight comes from params
    classify_column = template.config.classify_column

    def one_fold(flat: Tensor, images: Tensor, mask: Tensor, targets: Tensor) -> Tensor:
        weights = {f"net.{name}": w for name, w in layout.unflatten(flat).items()}
        output = forward_at(
            precision, images.device.type, lambda: torch.func.functional_call(padded, weights, (images, mask))
        )
        return loss_fn(output, targets, lambda_aux, classify_column)

    return torch.func.vmap(one_fold)


# --- training ----------------------------------------------------------------------------


def _load_stack(runs: list[FoldRun], layout: ParamLayout, adam: StackedAdam) -> None:
    """Each fold's Adam state (from its checkpoint) into the stacked moments and step counts."""
    for row, run in enumerate(runs):
        found = [run.optimizer.state.get(p) for p in run.model.parameters()]
        states = [s for s in found if s is not None]
        if len(states) < len(found):  # a fresh fold: zero moments, step 0
            continue
        adam.exp_avg[row] = layout.flatten([s["exp_avg"] for s in states])
        adam.exp_avg_sq[row] = layout.flatten([s["exp_avg_sq"] for s in states])
        adam.steps[row] = int(states[0]["step"])


def _sync_fold(run: FoldRun, row: int, layout: ParamLayout, adam: StackedAdam) -> None:
    """Copy the stack's row ``row`` (weights, moments, step) into ``run``'s network and Adam."""
    with torch.no_grad():
        for p, w in zip(run.model.parameters(), layout.unflatten(adam.params[row]).values(), strict=True):
            p.copy_(w)
    moments = zip(
        layout.unflatten(adam.exp_avg[row]).values(), layout.unflatten(adam.exp_avg_sq[row]).values(), strict=True
    )
    for p, (m, v) in zip(run.model.parameters(), moments, strict=True):
        # torch.optim.Adam's own state layout, so fit resumes this checkpoint and vice versa.
        run.optimizer.state[p] = {
            "step": torch.tensor(float(adam.steps[row])),
            "exp_avg": m.clone(),
            "exp_avg_sq": v.clone(),
        }


def _epoch_losses(
    losses: Tensor, active: np.ndarray, index: np.ndarray, runs: list[FoldRun], epoch: int
) -> list[float]:
    """Each fold's mean loss per nodule from the epoch's per-step ``losses`` (steps, k) on the
    device (read once: a sync per step would stall a GPU); as ``fit``, a ValueError naming
    the fold, step and nodule if a loss was not finite."""
    values = losses.double().cpu().numpy()
    means = []
    for row, run in enumerate(runs):
        mine = values[active[:, row], row]
        if not np.isfinite(mine).all():
            step = int(np.flatnonzero(~np.isfinite(mine))[0])
            raise run.loss_error(epoch, step, index[active[:, row], row][[step]], mine[step])
        means.append(float(mine.sum()) / len(run.parts["train"]) if len(mine) else float("nan"))
    return means


def _step_line(names: str, epoch: int, clock: EpochClock, steps: int, done: int) -> None:
    """The line of a bar-less epoch ``epoch`` of folds ``names`` that has done ``done`` of its ``steps`` steps."""
    progress_line(
        f"folds {names} epoch {epoch}/{clock.epochs}: step {done}/{steps}, {clock.timing(epoch, done / steps)}"
    )


def fit_folds(
    data: NoduleDataset,
    fold_parts: Mapping[int, dict[str, np.ndarray]],
    model_config: ModelConfig,
    train_config: TrainConfig,
    checkpoint_paths: Mapping[int, str | os.PathLike] | None = None,
    on_epoch: Callable[[int, EpochRecord], None] | None = None,
    progress: bool = True,
    *,
    device: torch.device,
) -> dict[int, FitResult]:
    """``fit`` for every fold of ``fold_parts`` ({fold: parts}), the folds stepped side by side on ``device``.

    ``device``: the training plan's, which resolved ``train.device`` and checked its precision.
    Each result equals ``fit(data, fold_parts[f], model_config, train_config,
    f, checkpoint_paths[f])`` within float tolerance. ``on_epoch(fold, record)`` is called
    once per fold and epoch, in epoch order for each fold, after that epoch's checkpoints
    are written — on resumption first for the epochs the checkpoints already hold.
    ``progress``: a line per fold and epoch (the elapsed time and what is left are the
    loop's, which every fold shares), and a bar on a terminal — elsewhere a line a minute.
    """
    if train_config.batch_nodules != 1:
        raise ValueError(
            f"Folds side by side train one nodule per fold per step, but train.batch_nodules="
            f"{train_config.batch_nodules}; set train.folds_together: false to pack nodules."
        )
    if not fold_parts:
        raise ValueError("No folds to train; check the params' `folds`.")
    paths = checkpoint_paths or {}
    runs = [
        FoldRun(data, parts, model_config, train_config, k, device, paths.get(k)) for k, parts in fold_parts.items()
    ]
    layout = ParamLayout.of(runs[0].model)
    params = torch.stack([layout.flatten(list(r.model.parameters())) for r in runs]).requires_grad_()  # (k, P)
    adam = StackedAdam(params, train_config.lr, train_config.betas, train_config.weight_decay)
    _load_stack(runs, layout, adam)
    loss_of = batched_loss(runs[0].model, layout, train_config.lambda_aux, train_config.precision)
    image_shape = data.images.shape[1:]
    blank = Batch(
        torch.zeros((1, *image_shape), device=device),
        torch.zeros(1, dtype=torch.long, device=device),
        torch.zeros((1, model_config.n_outputs), device=device),
        np.array([-1]),
    )
    for run in runs:
        run.replay(partial(on_epoch, run.fold) if on_epoch is not None else None)
    first = min(r.start for r in runs) + 1
    # One loop steps every fold: each fold's time and what is left are the loop's.
    clock = EpochClock(first, train_config.epochs)
    for run in runs:
        run.clock = clock
    for epoch in range(first, train_config.epochs + 1):
        # A fold resumed from a later epoch than the others waits for them.
        training = [r.start < epoch for r in runs]
        streams: list[Iterator[Batch] | None] = [
            iterate_resident(r.train_set, 1, epoch_rng(train_config, r.fold, epoch), train_config.augment)
            if t
            else None
            for r, t in zip(runs, training, strict=True)
        ]
        n_steps = max(len(r.parts["train"]) for r, t in zip(runs, training, strict=True) if t)
        step_losses, step_active, step_index = [], [], []
        names = ",".join(str(r.fold) for r, t in zip(runs, training, strict=True) if t)
        bar = tqdm(
            range(n_steps),
            desc=f"folds {names} epoch {epoch}/{train_config.epochs}",
            unit="step",
            disable=None if progress else True,
            leave=False,
        )
        # Where no bar is drawn (a log), a line every minute within the epoch.
        beat = partial(_step_line, names, epoch, clock, n_steps)
        for _ in with_heartbeat(bar, beat) if progress and bar.disable else bar:
            step = stack_nodules([next(s, None) if s is not None else None for s in streams], blank)
            losses = loss_of(params, step.images, step.mask, step.targets)  # (k,)
            (grad,) = torch.autograd.grad(losses.sum(), params)  # the folds share nothing: per-fold gradients
            adam.step(grad, step.active)
            step_losses.append(losses.detach())
            step_active.append(step.active)
            step_index.append(step.index)
        mean_losses = _epoch_losses(torch.stack(step_losses), np.stack(step_active), np.stack(step_index), runs, epoch)
        finished = []
        for row, run in enumerate(runs):
            if training[row]:
                _sync_fold(run, row, layout, adam)
                finished.append((run.fold, run.end_epoch(epoch, mean_losses[row], VALIDATION_BATCH_NODULES, progress)))
        if on_epoch is not None:  # after every fold's checkpoint, so an interrupt leaves them in step
            for fold, record in finished:
                on_epoch(fold, record)
    return {r.fold: r.result() for r in runs}
