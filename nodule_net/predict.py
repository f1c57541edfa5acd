"""`nodule-net predict`: score a nodule of your own CT series with the trained fold models.

The nodule is cropped exactly as ``extract`` cropped the models' training nodules (a square
around the box, :func:`nodule_net.preprocess.nodule_patch` on HU slices read by
:mod:`nodule_net.dicom`, with the ``extract`` settings their model files record), or taken
from an extracted dataset by its id. Every fold model found scores it
(:mod:`nodule_net.inference`); the report is their mean with its spread (std, min–max),
the SAM weight of each slice and the strongest CAAM relations.

Coordinates: rows ``i`` and columns ``j`` of the image, and ``k`` the index of a slice
among the series' distinct z positions sorted upward — for a complete series that is
pylidc's slice index, as in ``bbox`` and ``slice_index`` of ``nodules.h5``. Boxes are
half-open (``i0 i1 j0 j1 k0 k1``). A centre plus a diameter becomes the box of the voxels
whose centres lie within the diameter's half on each axis. Axial series, as LIDC's.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import pydicom
import torch

from nodule_net.analysis import normalise_rows
from nodule_net.attributes import ABBREVIATIONS, RATING_MAX, RATING_MIN, attribute_index, denormalise
from nodule_net.checkpoint import extract_record
from nodule_net.dicom import DicomError, SeriesIndex, index_series, read_hu
from nodule_net.extract import ExtractConfig
from nodule_net.inference import LoadedModel, Predictions, describe_crop, load_fold_models, predict_volume
from nodule_net.params import load_params
from nodule_net.preprocess import nodule_patch, square_box
from nodule_net.store import read_dataset

TOP_RELATIONS = 5  # CAAM relations printed (the JSON holds the whole matrix)
# Below this share of the crop's square inside the image, the crop is mostly padding air: not a
# nodule like those the models learnt from (the box or diameter is wrong), so it is refused.
MIN_CROP_INSIDE = 0.5

log = logging.getLogger(__name__)
_SERIES_TAGS = ["Modality", "SeriesInstanceUID"]  # what tells one CT series from anything else


@dataclass(frozen=True)
class Series:
    """One CT series folder: its slices by z and the geometry to turn millimetres into voxels."""

    index: SeriesIndex  # from nodule_net.dicom.index_series, as extract uses it
    uid: str
    z: np.ndarray  # (K,) distinct slice positions, ascending; slice k is at z[k]
    shape: tuple[int, int]  # rows, columns
    spacing: tuple[float, float]  # mm between rows, between columns (DICOM PixelSpacing)
    origin: np.ndarray  # (3,) ImagePositionPatient of the first slice (x, y of every slice)
    row_direction: np.ndarray  # (3,) unit vector along a row (increasing column j)
    column_direction: np.ndarray  # (3,) unit vector along a column (increasing row i)

    @property
    def slice_spacing(self) -> float:
        return float(np.median(np.diff(self.z))) if len(self.z) > 1 else 1.0

    def describe(self) -> str:
        return f"{self.shape[0]} × {self.shape[1]} pixels × {len(self.z)} slices"


def read_series(folder: str | Path) -> Series:
    """The one CT series in ``folder`` (its ``.dcm`` files, not subfolders).

    Raises ``DicomError`` (a ValueError) when the folder holds no readable DICOM file,
    a modality other than CT, or more than one series.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DicomError(f"{folder}: no such folder; pass the folder that holds one series' .dcm files.")
    headers = []
    for path in sorted(folder.glob("*.dcm")) + sorted(folder.glob("*.DCM")):
        try:
            headers.append(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_SERIES_TAGS))
        except Exception:  # unreadable files are set aside, as index_series does
            continue
    if not headers:
        raise DicomError(f"{folder}: no readable DICOM (.dcm) file; pass the folder that holds one series.")
    modalities = sorted({str(h.get("Modality", "")) for h in headers})
    if modalities != ["CT"]:
        raise DicomError(f"{folder}: modality {', '.join(m or '(none)' for m in modalities)}, not CT; "
                         "predict scores CT series only.")
    uids = sorted({str(h.get("SeriesInstanceUID", "")).strip() for h in headers})
    if len(uids) != 1:
        raise DicomError(f"{folder}: holds {len(uids)} DICOM series ({', '.join(u[-12:] for u in uids)}); "
                         "pass a folder with the files of one series.")
    index = index_series(folder, uids[0])
    header = pydicom.dcmread(index.slices[min(index.slices)].path, stop_before_pixels=True)  # the lowest slice
    orientation = np.array([float(v) for v in header.ImageOrientationPatient])
    return Series(index=index, uid=uids[0], z=np.array(sorted(index.slices)),
                  shape=(int(header.Rows), int(header.Columns)),
                  spacing=(float(header.PixelSpacing[0]), float(header.PixelSpacing[1])),
                  origin=np.array([float(v) for v in header.ImagePositionPatient]),
                  row_direction=orientation[:3], column_direction=orientation[3:])


# --- locations → box (pure) ---------------------------------------------------------------


def voxel_from_mm(point_mm: tuple[float, float, float], series: Series) -> tuple[float, float, float]:
    """(i, j, k) of a patient-coordinate point (x, y, z in mm); k interpolated between slice positions."""
    offset = np.asarray(point_mm, dtype=np.float64) - series.origin
    i = float(offset @ series.column_direction) / series.spacing[0]
    j = float(offset @ series.row_direction) / series.spacing[1]
    z = float(point_mm[2])
    half = series.slice_spacing / 2
    if not series.z[0] - half <= z <= series.z[-1] + half:
        raise ValueError(f"z = {z:.2f} mm is outside the series (slices from {series.z[0]:.2f} to "
                         f"{series.z[-1]:.2f} mm).")
    k = float(np.interp(z, series.z, np.arange(len(series.z)))) if len(series.z) > 1 else 0.0
    return i, j, k


def box_from_centre(centre: tuple[float, float, float], diameter_mm: float, series: Series) -> tuple[int, ...]:
    """The half-open box of the voxels within ``diameter_mm``/2 of ``centre`` (i, j, k) on each axis.

    Slices are clipped to the series; rows and columns are not (the crop pads with air,
    as extract does near the image edge). Raises ``ValueError`` for a centre outside the volume.
    """
    if not diameter_mm > 0:
        raise ValueError(f"--diameter-mm {diameter_mm}: give the nodule's diameter in mm (> 0).")
    limits = (series.shape[0], series.shape[1], len(series.z))
    if not all(-0.5 <= c < n - 0.5 for c, n in zip(centre, limits)):
        i, j, k = centre
        raise ValueError(f"centre (i={i:.1f}, j={j:.1f}, k={k:.1f}) is outside the volume ({series.describe()}).")
    radii = (diameter_mm / 2 / series.spacing[0], diameter_mm / 2 / series.spacing[1],
             diameter_mm / 2 / series.slice_spacing)
    box = []
    for c, r in zip(centre, radii):
        lo, hi = math.ceil(c - r - 1e-9), math.floor(c + r + 1e-9) + 1
        nearest = int(round(c))  # a diameter below one voxel still keeps the centre's voxel
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
        raise ValueError(f"box {list(box)} is cropped as the square rows [{r0}, {r1}) × columns [{c0}, {c1}), "
                         f"{inside:.0%} of it inside the volume ({series.describe()}): mostly outside; give a box "
                         "(or a centre and diameter) that covers the nodule itself.")


def crop_series(series: Series, box: tuple[int, ...], slices: list[int] | None, config: ExtractConfig) -> np.ndarray:
    """(M, side, side) HU patches of ``slices`` (default: every slice of the box), as extract crops them."""
    check_box(box, series, config.extent_fraction)
    ks = list(range(box[4], box[5])) if slices is None else [int(k) for k in slices]
    if not ks:
        raise ValueError("--slices is empty: name at least one slice.")
    outside = [k for k in ks if not 0 <= k < len(series.z)]
    if outside:
        raise ValueError(f"slice(s) {outside} are outside the series (slices 0–{len(series.z) - 1}).")
    return np.stack([nodule_patch(read_hu(series.index.slices[series.z[k]].path), box, config.extent_fraction,
                                  config.image_side) for k in ks])


def training_crop(record: dict | None, models_dir: str | Path) -> ExtractConfig:
    """The extract settings the models were trained on: their record, else extract's defaults (said in one line)."""
    if record is None:
        assumed = ExtractConfig()
        log.warning(f"{models_dir}: the fold models do not record the crop they were trained on (written before "
                    f"model files held it); assuming extract's defaults, {describe_crop(asdict(assumed))} — retrain "
                    "them (`dvc repro train`) if their data was extracted otherwise.")
        return assumed
    return ExtractConfig(**{f.name: record[f.name] for f in fields(ExtractConfig) if f.name in record})


def check_params_agree(crop: ExtractConfig, params_path: str | Path) -> None:
    """Validate ``params_path`` (if it exists) and say in one line where its ``extract`` differs from ``crop``."""
    path = Path(params_path)
    if not path.exists():
        return
    section = load_params(path)["extract"]
    differ = [f"extract.{f.name}={section[f.name]} (the models': {getattr(crop, f.name)})"
              for f in fields(ExtractConfig) if section[f.name] != getattr(crop, f.name)]
    if differ:
        log.warning(f"{path} differs from what the models were trained on: {', '.join(differ)}; cropping as the "
                    f"models were trained ({describe_crop(asdict(crop))}).")


def check_dataset_crop(data, dataset: str | Path, crop: ExtractConfig, models_dir: str | Path) -> None:
    """Raise ``ValueError`` if ``data``'s nodules were cropped otherwise than the models' training nodules."""
    stored = extract_record(data.attrs) or {"image_side": int(data.images.shape[-1])}
    if any(stored[key] != getattr(crop, key) for key in ("image_side", "extent_fraction") if key in stored):
        raise ValueError(f"{dataset} holds nodules cropped with {describe_crop(stored)} but the models in {models_dir} "
                         f"were trained on {describe_crop(asdict(crop))}; score a nodule of the dataset they were "
                         "trained on, or give its series folder and --box.")


# --- ensemble (pure) -----------------------------------------------------------------------


def summarise_ensemble(per_fold: dict[int, Predictions], config) -> dict:
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
        return {"mean": float(values.mean()), "std": float(values.std()), "min": float(values.min()),
                "max": float(values.max()), "folds": {str(f): float(v) for f, v in zip(per_fold, values)}}

    result = {"scores": {a: spread(rated[:, c]) for c, a in enumerate(attributes) if c != classify}}
    if classify is not None:
        result["prob_malignant"] = spread(rated[:, classify])
    first = next(iter(per_fold.values()))
    if first.slice_weights is not None:
        weights = np.stack([p.slice_weights[0] for p in per_fold.values()]).astype(np.float64)  # (F, M)
        result["sam_weights"] = {"mean": weights.mean(0).tolist(), "std": weights.std(0).tolist(),
                                 "folds": {str(f): w.tolist() for f, w in zip(per_fold, weights)}}
    if first.caam_weights is not None and len(attributes) > 1:
        # Each fold's matrix is row-normalised first (as Fig. 6): folds differ in scale.
        matrix = np.mean([normalise_rows(p.caam_weights[0]) for p in per_fold.values()], axis=0)  # (K, K)
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


def run_predict(args) -> dict:
    """Everything `nodule-net predict` reports, as a dict (``--json`` prints it as is)."""
    from nodule_net.device import resolve_device

    device = resolve_device(args.device, what="--device")
    models, record = load_fold_models(args.models, device)  # first: no models is the first thing to say
    config = next(iter(models.values())).model.config
    crop = training_crop(record, args.models)
    check_params_agree(crop, args.params)
    source: dict
    truth = None
    if args.nodule_id is not None:
        data = read_dataset(args.dataset)
        check_dataset_crop(data, args.dataset, crop, args.models)
        where = np.flatnonzero(data.nodule_id == args.nodule_id)
        if len(where) == 0:
            raise ValueError(f"{args.dataset}: no nodule {args.nodule_id!r} (ids look like {data.nodule_id[0]}).")
        n = int(where[0])
        volume = data.slices(n)
        truth = {a: float(data.ratings[n, attribute_index(a)]) for a in config.attributes}
        source = {"dataset": str(args.dataset), "nodule_id": args.nodule_id, "box": data.bbox[n].tolist(),
                  "slices": data.slice_index[data.offsets[n]:data.offsets[n + 1]].tolist()}
    else:
        series = read_series(args.series)
        if args.box is not None:
            box = tuple(args.box)
        else:
            centre = (voxel_from_mm(args.centre_mm, series) if args.centre_mm is not None
                      else tuple(float(v) for v in args.centre_voxel))
            box = box_from_centre(centre, args.diameter_mm, series)
        volume = crop_series(series, box, args.slices, crop)
        ks = list(range(box[4], box[5])) if args.slices is None else list(args.slices)
        source = {"series": str(args.series), "series_uid": series.uid, "box": list(box), "slices": ks,
                  "z_mm": [float(series.z[k]) for k in ks]}
    result = {"input": source, "models": {"folder": str(args.models), "folds": list(models),
                                          "variant": config.variant, "malignancy": config.malignancy,
                                          "extract": asdict(crop), "extract_recorded": record is not None}}
    result |= predict_nodule(volume, models, device)
    if truth is not None:
        result["truth"] = truth
    return result


def format_result(result: dict) -> str:
    """The human-readable report of :func:`run_predict`'s dict."""
    source, models = result["input"], result["models"]
    box = source["box"]
    where = (f"nodule {source['nodule_id']} of {source['dataset']}" if "nodule_id" in source
             else f"series {source['series']}")
    lines = [f"{where}: box rows {box[0]}–{box[1]}, columns {box[2]}–{box[3]}, slices "
             f"{', '.join(map(str, source['slices']))} (half-open box, {len(source['slices'])} slices)",
             f"models: {models['folder']}, {len(models['folds'])} folds ({', '.join(map(str, models['folds']))}), "
             f"variant {models['variant']}, crop {describe_crop(models['extract'])}"
             f"{'' if models['extract_recorded'] else ' (assumed)'}; scores are the folds' mean, spread their std "
             "and min–max", ""]
    truth = result.get("truth")
    lines.append(f"{'attribute':22}{'score':>7}{'std':>7}{'min–max':>14}{'scale':>8}" + (f"{'truth':>8}" if truth else ""))
    for a, s in result["scores"].items():
        c = attribute_index(a)
        name = f"{a.replace('_', ' ')} ({ABBREVIATIONS[c]})"
        line = (f"{name:22}{s['mean']:>7.2f}{s['std']:>7.2f}{s['min']:>8.2f}–{s['max']:<5.2f}"
                f"{int(RATING_MIN[c])}–{int(RATING_MAX[c]):<4}")
        lines.append(line + (f"{truth[a]:>6.2f}" if truth else ""))
    if "prob_malignant" in result:
        p = result["prob_malignant"]
        lines.append(f"{'P(malignant)':22}{p['mean']:>7.2f}{p['std']:>7.2f}{p['min']:>8.2f}–{p['max']:<5.2f}"
                     "(benign/malignant classifier)")
    if "sam_weights" in result:
        weights = result["sam_weights"]["mean"]
        lines += ["", "SAM weight per slice (mean over folds; they sum to 1): " + ", ".join(
            f"k={k} {w:.3f}" for k, w in zip(source["slices"], weights))]
    if "caam" in result:
        lines += ["", "strongest CAAM relations (row-normalised weights, mean over folds; 1 = the row's largest):"]
        lines += [f"  {r['attribute']} uses {r['uses']}: {r['weight']:.2f}" for r in result["caam"]["top"]]
    return "\n".join(lines)


def main_predict(args) -> None:
    """The CLI's entry: check which input was given, predict, print a report or JSON."""
    location = [args.centre_mm is not None, args.centre_voxel is not None, args.box is not None]
    if args.nodule_id is not None:
        if args.series is not None or any(location):
            raise ValueError("--nodule-id takes a nodule from --dataset; give it without a series or a location.")
    else:
        if args.series is None:
            raise ValueError("give a DICOM series folder and a location, or --dataset and --nodule-id.")
        if sum(location) != 1:
            raise ValueError("give exactly one location: --centre-mm X Y Z, --centre-voxel I J K, or --box I0 I1 J0 J1 K0 K1.")
        if (args.centre_mm is not None or args.centre_voxel is not None) == (args.diameter_mm is None):
            raise ValueError("--diameter-mm goes with --centre-mm or --centre-voxel (and only with them).")
    if args.slices is not None and args.box is None:
        raise ValueError("--slices picks slices of a --box; give --box too.")
    result = run_predict(args)
    print(json.dumps(result, indent=2) if args.json else format_result(result))

