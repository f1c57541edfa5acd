"""Tiny in-memory NoduleDatasets for the modelling tests (no extractor, no DICOM).

Each nodule is a bright disk whose radius grows with its first rating, so a model can
learn something in a handful of steps.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import yaml

from nodule_net.attributes import N_ATTRIBUTES, RATING_MAX, RATING_MIN
from nodule_net.data.split import kfold_split, write_splits
from nodule_net.io.store import NoduleDataset, write_dataset

# A tiny network for tests: the full architecture with a few channels.
TINY = dict(widths=(4, 8), convs_per_stage=(1, 1), sam_hidden=8, caam_hidden=8, head_hidden=16)


def make_dataset(
    n_nodules: int = 12, size: int = 16, max_depth: int = 4, n_patients: int | None = None, seed: int = 0
) -> NoduleDataset:
    rng = np.random.default_rng(seed)
    depths = rng.integers(1, max_depth + 1, size=n_nodules)
    offsets = np.concatenate([[0], np.cumsum(depths)]).astype(np.int64)
    ratings = RATING_MIN + rng.random((n_nodules, N_ATTRIBUTES)) * (RATING_MAX - RATING_MIN)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    images = np.full((offsets[-1], size, size), -800.0, dtype=np.float32)
    for n in range(n_nodules):
        radius = 1 + (ratings[n, 0] - 1) / 4 * (size / 3)
        disk = (yy**2 + xx**2) <= radius**2
        images[offsets[n] : offsets[n + 1]][:, disk] = 40.0
    images += rng.normal(0, 20, images.shape).astype(np.float32)
    n_patients = n_patients or n_nodules
    patient = rng.integers(0, n_patients, size=n_nodules)
    return NoduleDataset(
        images=images,
        offsets=offsets,
        ratings=ratings,
        reader_ratings=np.repeat(ratings[:, None], 4, axis=1),
        n_readers=np.full(n_nodules, 4),
        nodule_id=np.array([f"LIDC-IDRI-{patient[n]:04d}/s1/n{n}" for n in range(n_nodules)]),
        patient_id=np.array([f"LIDC-IDRI-{p:04d}" for p in patient]),
        scan_id=patient.astype(np.int64),
        spacing_mm=np.ones((n_nodules, 3)),
        bbox=np.zeros((n_nodules, 6), dtype=np.int64),
        slice_index=np.arange(offsets[-1], dtype=np.int64),
        attrs={"source": "synthetic"},
    )


def write_stage_inputs(folder: Path, train: dict, size: int = 16) -> None:
    """What the train stage reads, in ``folder``: 12 tiny nodules of ``size``² px (``nodules.h5``), 2 folds
    (``splits.json``) and ``params.yaml`` (the repository's, folds [0, 1], the ``sam`` variant,
    ``train`` updated with ``train``)."""
    data = make_dataset(n_nodules=12, size=size, max_depth=3, seed=2)
    write_dataset(folder / "nodules.h5", data)
    write_splits(
        folder / "splits.json", kfold_split(data.nodule_id, data.patient_id, n_folds=2, seed=0, val_fraction=0.2)
    )
    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    params["folds"] = [0, 1]
    params["model"] |= {"variant": "sam"}
    params["train"] |= train
    (folder / "params.yaml").write_text(yaml.safe_dump(params))


def train_argv(out: str = ".", *extra: str) -> list[str]:
    """pipeline/train.py's arguments on :func:`write_stage_inputs`'s files, its outputs (models,
    checkpoints ``ckpt``, dvclive ``live``) under ``out``, then ``extra`` (e.g. ``--fold 1``)."""
    outputs = [f"{out}/{name}" if out != "." else name for name in ("models", "ckpt", "live")]
    return [
        "--dataset", "nodules.h5", "--splits", "splits.json",
        "--models", outputs[0], "--checkpoints", outputs[1], "--live", outputs[2], *extra,
    ]  # fmt: skip
