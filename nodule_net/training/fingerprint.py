"""The identity of a fold's training run, which decides whether its checkpoint may be resumed.

A checkpoint is resumed only by a run of the same params, folds, data and training code,
so a change to any of them starts afresh. Left out: ``train.epochs`` (``-S train.epochs=N``
extends a finished run, with the numbers of training N epochs in one go), the device, and
how the folds are scheduled (``train.folds_together``, ``train.fold_processes``), so any
engine resumes any engine's checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import numpy as np

from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.io.store import NoduleDataset
from nodule_net.runtime.imports import PACKAGE_DIR, import_closure

# The train config's fields that do not change what a fold's run computes.
NOT_IDENTITY = ("epochs", "device", "folds_together", "fold_processes")

# Modules whose code defines what training produces: the engines that write checkpoints (fit
# one after another, side_by_side, the plan that runs them or fit in fold processes, and the
# per-fold run they share) and every package module they import, read from the source like
# dvc.yaml's deps guard. DVC re-runs `train` when they change; a checkpoint written by other
# code must then not be resumed.
TRAINING_CODE = tuple(
    sorted(
        {
            p.relative_to(PACKAGE_DIR).as_posix()
            for writer in ("training/fit.py", "training/side_by_side.py", "training/plan.py", "training/run.py")
            for p in import_closure(PACKAGE_DIR / writer)
        }
    )
)


def training_code_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """SHA-256 of the training code (``TRAINING_CODE`` in ``package_dir``)."""
    h = hashlib.sha256()
    for name in TRAINING_CODE:
        h.update((package_dir / name).read_bytes())
    return h.hexdigest()


def run_settings(model_config: ModelConfig, train_config: TrainConfig, fold: int) -> str:
    """The params part of a run's identity: JSON of the model config, the train config without
    ``NOT_IDENTITY``, and the fold."""
    settings = {k: v for k, v in asdict(train_config).items() if k not in NOT_IDENTITY}
    return json.dumps([asdict(model_config), settings, fold], sort_keys=True, default=list)


def fingerprint(
    data: NoduleDataset, parts: dict[str, np.ndarray], model_config: ModelConfig, train_config: TrainConfig, fold: int
) -> str:
    """SHA-256 (hex) of fold ``fold``'s run: :func:`run_settings`, the training code, the fold's
    train and val indices, their slices and every nodule's ratings."""
    h = hashlib.sha256(run_settings(model_config, train_config, fold).encode())
    h.update(training_code_digest().encode())
    for part in ("train", "val"):
        h.update(np.ascontiguousarray(parts[part]).tobytes())
        for n in parts[part]:
            h.update(np.ascontiguousarray(data.slices(int(n))).tobytes())
    h.update(np.ascontiguousarray(data.ratings).tobytes())
    return h.hexdigest()
