"""Score one nodule with the trained fold models: of a CT series of one's own, or of an extracted dataset.

The nodule is cropped exactly as ``extract`` cropped the models' training nodules (a square
around the box, :func:`nodule_net.data.preprocess.nodule_patch` on HU slices read by
:mod:`nodule_net.data.dicom`, with the ``extract`` settings their model files record), or taken
from an extracted dataset by its id. Every fold model found scores it
(:mod:`nodule_net.evaluation.inference`); the report is their mean with its spread (std, min–max),
the SAM weight of each slice and the strongest CAAM relations.

Coordinates are those of :class:`nodule_net.data.dicom.Series` (rows ``i``, columns ``j``,
slice index ``k``), as in ``bbox`` and ``slice_index`` of ``nodules.h5``. Boxes are half-open
(``i0 i1 j0 j1 k0 k1``). A centre plus a diameter becomes the box of the voxels whose centres
lie within the diameter's half on each axis.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nodule_net.attributes import ABBREVIATIONS, RATING_MAX, RATING_MIN, attribute_index, denormalise
from nodule_net.config import ExtractConfig, ModelConfig
from nodule_net.data.dicom import Series, read_hu, read_series, voxel_from_mm
from nodule_net.data.preprocess import nodule_patch, square_box
from nodule_net.evaluation.analysis import normalise_rows
from nodule_net.evaluation.inference import LoadedModel, Predictions, describe_crop, predict_volume
from nodule_net.io.checkpoint import extract_record
from nodule_net.io.store import read_dataset

TOP_RELATIONS = 5  # CAAM relations printed (the JSON holds the whole matrix)
# Below this share of the crop's square inside the image, the crop is mostly padding air: not a
# nodule like those the models learnt from (the box or diameter is wrong), so it is refused.
MIN_CROP_INSIDE = 0.5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetNodule:
    """A nodule of an extracted dataset (``nodules.h5``), by its id (e.g. ``LIDC-IDRI-0001/s1/n0``)."""

    dataset: str
    nodule_id: str


@dataclass(frozen=True)
class SeriesNodule:
    """A nodule of a CT series folder: a half-open ``box``, or one centre (mm or voxels) with ``diameter_mm``.

    ``slices``: with ``box``, only these slice indices (default: every slice of the box).
    """

    series: str
    box: tuple[int, int, int, int, int, int] | None = None
    centre_mm: tuple[float, float, float] | None = None
    centre_voxel: tuple[float, float, float] | None = None
    diameter_mm: float | None = None
    slices: list[int] | None = None


# --- locations → box (pure) ---------------------------------------------------------------


def box_from_centre(centre: tuple[float, float, float], diameter_mm: float, series: Series) -> tuple[int, ...]:
    """The half-open box of the voxels within ``diameter_mm``/2 of ``centre`` (i, j, k) on each axis.

    Slices are clipped to the series; rows and columns are not (the crop pads with air,
    as extract does near the image edge). Raises ``ValueError`` for a centre outside the volume.
    """
    if not diameter_mm > 0:
        raise ValueError(f"--diameter-mm {diameter_mm}: give the nodule's diameter in mm (> 0).")
    limits = (series.shape[0], series.shape[1], len(series.z))
    if not all(-0.5 <= c < n - 0.5 for c, n in zip(centre, limits, strict=True)):
        i, j, k = centre
        raise ValueError(f"centre (i={i:.1f}, j={j:.1f}, k={k:.1f}) is outside the volume ({series.describe()}).")
    radii = (
        diameter_mm / 2 / series.spacing[0],
        diameter_mm / 2 / series.spacing[1],
        diameter_mm / 2 / series.slice_spacing,
    )
    box = []
    for c, r in zip(centre, radii, strict=True):
        lo, hi = math.ceil(c - r - 1e-9), math.floor(c + r + 1e-9) + 1
        nearest = round(c)  # a diameter below one voxel still keeps the centre's voxel
        box += [min(lo, nearest), max(hi, nearest + 1)]
    box[4], box[5] = max(box[4], 0), min(box[5], len(series.z))
    return tuple(box)


def check_box(box: tuple[int, ...], series: Series, extent_fraction: float) -> None:
    """Raise ``ValueError`` for a box with no slices, rows or columns, one outside the volume,
    or one whose crop (its square at ``extent_fraction``) lies mostly outside the image."""
    i0, i1, j0, j1, k0, k1 = box
    if k1 <= k0:
        raise ValueError(f"box slices [{k0}, {k1}) hold no slice: k1 must be greater than k0 (half-open box).")
    if i1 <= i0 or j1 <= j0:
        raise ValueError(f"box rows [{i0}, {i1}) × columns [{j0}, {j1}) are empty: i1 > i0 and j1 > j0 are needed.")
    rows, columns = series.shape
    if k0 < 0 or k1 > len(series.z) or i1 <= 0 or j1 <= 0 or i0 >= rows or j0 >= columns:
        raise ValueError(f"box {list(box)} is outside the volume ({series.describe()}; slices 0–{len(series.z) - 1}).")
    r0, r1, c0, c1 = square_box(i0, i1, j0, j1, extent_fraction)
    inside = max(0, min(r1, rows) - max(r0, 0)) * max(0, min(c1, columns) - max(c0, 0)) / ((r1 - r0) * (c1 - c0))
    if inside < MIN_CROP_INSIDE:
        raise ValueError(
            f"box {list(box)} is cropped as the square rows [{r0}, {r1}) × columns [{c0}, {c1}), "
            f"{inside:.0%} of it inside the volume ({series.describe()}): mostly outside; give a box "
            "(or a centre and diameter) that covers the nodule itself."
        )


def crop_series(series: Series, box: tuple[int, ...], slices: list[int] | None, config: ExtractConfig) -> np.ndarray:
    """(M, side, side) HU patches of ``slices`` (default: every slice of the box), as extract crops them."""
    check_box(box, series, config.extent_fraction)
    ks = list(range(box[4], box[5])) if slices is None else [int(k) for k in slices]
    if not ks:
        raise ValueError("--slices is empty: name at least one slice.")
    outside = [k for k in ks if not 0 <= k < len(series.z)]
    if outside:
        raise ValueError(f"slice(s) {outside} are outside the series (slices 0–{len(series.z) - 1}).")
    return np.stack(
        [
            nodule_patch(read_hu(series.index.slices[series.z[k]].path), box, config.extent_fraction, config.image_side)
            for k in ks
        ]
    )


def training_crop(record: dict | None, models_dir: str | Path) -> ExtractConfig:
    """The extract settings the models were trained on: their record, else extract's defaults (said in one line)."""
    if record is None:
        assumed = ExtractConfig()
        log.warning(
            f"{models_dir}: the fold models do not record the crop they were trained on (written before "
            f"model files held it); assuming extract's defaults, {describe_crop(assumed.record())} — "
            "retrain them (`dvc repro train`) if their data was extracted otherwise."
        )
        return assumed
    return ExtractConfig(**{name: record[name] for name in ExtractConfig.RECORDED if name in record})


def check_params_agree(crop: ExtractConfig, params: ExtractConfig, params_path: str | Path) -> None:
    """Say in one line where ``params`` (the ``extract`` section of ``params_path``) differs from ``crop``."""
    differ = [
        f"extract.{name}={getattr(params, name)} (the models': {getattr(crop, name)})"
        for name in ExtractConfig.RECORDED
        if getattr(params, name) != getattr(crop, name)
    ]
    if differ:
        log.warning(
            f"{params_path} differs from what the models were trained on: {', '.join(differ)}; cropping as "
            f"the models were trained ({describe_crop(crop.record())})."
        )


def check_dataset_crop(data, dataset: str | Path, crop: ExtractConfig, models_dir: str | Path) -> None:
    """Raise ``ValueError`` if ``data``'s nodules were cropped otherwise than the models' training nodules."""
    stored = extract_record(data.attrs) or {"image_side": int(data.images.shape[-1])}
    if any(stored[key] != getattr(crop, key) for key in ("image_side", "extent_fraction") if key in stored):
        raise ValueError(
            f"{dataset} holds nodules cropped with {describe_crop(stored)} but the models in {models_dir} "
            f"were trained on {describe_crop(crop.record())}; score a nodule of the dataset they were "
            "trained on, or give its series folder and --box."
        )


# --- ensemble (pure) -----------------------------------------------------------------------


def summarise_ensemble(per_fold: dict[int, Predictions], config: ModelConfig) -> dict:
    """Mean, spread and per-fold values of the folds' scores on the original scales; SAM; CAAM.

    A classifier's malignancy column (``model.malignancy: classify``) is P(malignant),
    reported as ``prob_malignant`` instead of a score.
    """
    attributes = config.attributes
    classify = config.classify_column
    scores = np.stack([p.scores[0] for p in per_fold.values()]).astype(np.float64)  # (F, K) normalised
    rated = denormalise(scores, attributes)
    if classify is not None:
        rated[:, classify] = scores[:, classify]

    def spread(values: np.ndarray) -> dict:
        return {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
            "folds": {str(f): float(v) for f, v in zip(per_fold, values, strict=True)},
        }

    result: dict[str, Any] = {"scores": {a: spread(rated[:, c]) for c, a in enumerate(attributes) if c != classify}}
    if classify is not None:
        result["prob_malignant"] = spread(rated[:, classify])
    # The folds share one model config (load_fold_models checks it): all have SAM and CAAM weights, or none.
    slice_weights = [p.slice_weights[0] for p in per_fold.values() if p.slice_weights is not None]
    caam_weights = [p.caam_weights[0] for p in per_fold.values() if p.caam_weights is not None]
    if slice_weights:
        weights = np.stack(slice_weights).astype(np.float64)  # (F, M)
        result["sam_weights"] = {
            "mean": weights.mean(0).tolist(),
            "std": weights.std(0).tolist(),
            "folds": {str(f): w.tolist() for f, w in zip(per_fold, weights, strict=True)},
        }
    if caam_weights and len(attributes) > 1:
        # Each fold's matrix is row-normalised first (as Fig. 6): folds differ in scale.
        matrix = np.mean([normalise_rows(w) for w in caam_weights], axis=0)  # (K, K)
        result["caam"] = {"normalised_weights": matrix.tolist(), "top": top_relations(matrix, attributes)}
    return result


def top_relations(matrix: np.ndarray, attributes: tuple[str, ...], n: int = TOP_RELATIONS) -> list[dict]:
    """The ``n`` largest off-diagonal entries (i, j): the weight of attribute j for attribute i."""
    k = len(attributes)
    pairs = [(float(matrix[i, j]), i, j) for i in range(k) for j in range(k) if i != j and np.isfinite(matrix[i, j])]
    pairs.sort(key=lambda p: -p[0])
    return [{"attribute": attributes[i], "uses": attributes[j], "weight": w} for w, i, j in pairs[:n]]


# --- the command -----------------------------------------------------------------------------


def predict_nodule(volume: np.ndarray, models: dict[int, LoadedModel], device: torch.device) -> dict:
    """The ensemble's summary for one cropped nodule (M, side, side) in HU."""
    per_fold = {fold: predict_volume(m, volume, device) for fold, m in models.items()}
    return summarise_ensemble(per_fold, next(iter(models.values())).model.config)


def _dataset_volume(
    source: DatasetNodule, crop: ExtractConfig, models_dir: str | Path, attributes: tuple[str, ...]
) -> tuple[np.ndarray, dict, dict]:
    """(M, side, side) volume, input description and the readers' mean ratings of a dataset's nodule."""
    data = read_dataset(source.dataset)
    check_dataset_crop(data, source.dataset, crop, models_dir)
    where = np.flatnonzero(data.nodule_id == source.nodule_id)
    if len(where) == 0:
        raise ValueError(f"{source.dataset}: no nodule {source.nodule_id!r} (ids look like {data.nodule_id[0]}).")
    n = int(where[0])
    truth = {a: float(data.ratings[n, attribute_index(a)]) for a in attributes}
    described = {
        "dataset": str(source.dataset),
        "nodule_id": source.nodule_id,
        "box": data.bbox[n].tolist(),
        "slices": data.slice_index[data.offsets[n] : data.offsets[n + 1]].tolist(),
    }
    return data.slices(n), described, truth


def _series_volume(source: SeriesNodule, crop: ExtractConfig) -> tuple[np.ndarray, dict]:
    """(M, side, side) HU volume and input description of a series' nodule."""
    series = read_series(source.series)
    box: tuple[int, ...]
    if source.box is not None:
        box = tuple(source.box)
    elif source.diameter_mm is not None and source.centre_mm is not None:
        box = box_from_centre(voxel_from_mm(source.centre_mm, series), source.diameter_mm, series)
    elif source.diameter_mm is not None and source.centre_voxel is not None:
        i, j, k = (float(v) for v in source.centre_voxel)
        box = box_from_centre((i, j, k), source.diameter_mm, series)
    else:
        raise ValueError(f"{source.series}: give a box, or a centre (in mm or voxels) with the nodule's diameter.")
    volume = crop_series(series, box, source.slices, crop)
    ks = list(range(box[4], box[5])) if source.slices is None else list(source.slices)
    described = {
        "series": str(source.series),
        "series_uid": series.uid,
        "box": list(box),
        "slices": ks,
        "z_mm": [float(series.z[k]) for k in ks],
    }
    return volume, described


def predict(
    source: DatasetNodule | SeriesNodule,
    models: dict[int, LoadedModel],
    crop: ExtractConfig,
    device: torch.device,
    models_dir: str | Path,
    crop_recorded: bool = True,
) -> dict:
    """Everything `nodule-net predict` reports about ``source``, as a dict (``--json`` prints it as is).

    ``models``: the fold models (:func:`nodule_net.evaluation.inference.load_fold_models`) and
    ``crop`` the extract settings they were trained on (:func:`training_crop`), which the nodule
    is cropped with; ``crop_recorded``: whether their model files record it.
    """
    config = next(iter(models.values())).model.config
    truth = None
    if isinstance(source, DatasetNodule):
        volume, described, truth = _dataset_volume(source, crop, models_dir, config.attributes)
    else:
        volume, described = _series_volume(source, crop)
    result = {
        "input": described,
        "models": {
            "folder": str(models_dir),
            "folds": list(models),
            "variant": config.variant,
            "malignancy": config.malignancy,
            "extract": crop.record(),
            "extract_recorded": crop_recorded,
        },
    }
    result |= predict_nodule(volume, models, device)
    if truth is not None:
        result["truth"] = truth
    return result


def format_result(result: dict) -> str:
    """The human-readable report of :func:`predict`'s dict."""
    source, models = result["input"], result["models"]
    box = source["box"]
    where = (
        f"nodule {source['nodule_id']} of {source['dataset']}"
        if "nodule_id" in source
        else f"series {source['series']}"
    )
    lines = [
        f"{where}: box rows {box[0]}–{box[1]}, columns {box[2]}–{box[3]}, slices "
        f"{', '.join(map(str, source['slices']))} (half-open box, {len(source['slices'])} slices)",
        f"models: {models['folder']}, {len(models['folds'])} folds ({', '.join(map(str, models['folds']))}), "
        f"variant {models['variant']}, crop {describe_crop(models['extract'])}"
        f"{'' if models['extract_recorded'] else ' (assumed)'}; scores are the folds' mean, spread their std "
        "and min–max",
        "",
    ]
    truth = result.get("truth")
    lines.append(
        f"{'attribute':22}{'score':>7}{'std':>7}{'min–max':>14}{'scale':>8}" + (f"{'truth':>8}" if truth else "")
    )
    for a, s in result["scores"].items():
        c = attribute_index(a)
        name = f"{a.replace('_', ' ')} ({ABBREVIATIONS[c]})"
        line = (
            f"{name:22}{s['mean']:>7.2f}{s['std']:>7.2f}{s['min']:>8.2f}–{s['max']:<5.2f}"
            f"{int(RATING_MIN[c])}–{int(RATING_MAX[c]):<4}"
        )
        lines.append(line + (f"{truth[a]:>6.2f}" if truth else ""))
    if "prob_malignant" in result:
        p = result["prob_malignant"]
        lines.append(
            f"{'P(malignant)':22}{p['mean']:>7.2f}{p['std']:>7.2f}{p['min']:>8.2f}–{p['max']:<5.2f}"
            "(benign/malignant classifier)"
        )
    if "sam_weights" in result:
        weights = result["sam_weights"]["mean"]
        lines += [
            "",
            "SAM weight per slice (mean over folds; they sum to 1): "
            + ", ".join(f"k={k} {w:.3f}" for k, w in zip(source["slices"], weights, strict=True)),
        ]
    if "caam" in result:
        lines += ["", "strongest CAAM relations (row-normalised weights, mean over folds; 1 = the row's largest):"]
        lines += [f"  {r['attribute']} uses {r['uses']}: {r['weight']:.2f}" for r in result["caam"]["top"]]
    return "\n".join(lines)
