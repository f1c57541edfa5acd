"""The annotation database's statistics (lidc-stats' computation) on a few patients."""

import pytest

from nodule_net.data.lidc_stats import lidc_stats


@pytest.mark.slow
def test_scans_all_counts_second_scans():
    first = lidc_stats("first", workers=1, progress=False, patients=["LIDC-IDRI-0132"])
    every = lidc_stats("all", workers=1, progress=False, patients=["LIDC-IDRI-0132"])
    assert first["scans"] == 1 and every["scans"] == 2
    assert every["nodules"] > first["nodules"]
