import numpy as np
import pytest

from nodule_net.data.stats import PAPER, format_comparison, interobserver_mae, slice_histogram, summarise

NAN = np.nan


def test_interobserver_mae_pools_all_pairs():
    rr = np.full((2, 4, 9), NAN)
    rr[0, :3, :] = np.array([1.0, 2.0, 4.0])[:, None]  # pairs: |1-2|, |1-4|, |2-4| = 1, 3, 2
    rr[1, :2, :] = np.array([5.0, 5.0])[:, None]  # one pair: 0
    rr[1, 1, 8] = 3.0  # malignancy pair differs by 2
    ib = interobserver_mae(rr)
    np.testing.assert_allclose(ib[:8], (1 + 3 + 2 + 0) / 4)
    assert ib[8] == pytest.approx((1 + 3 + 2 + 2) / 4)


def test_single_reader_nodules_give_no_pairs():
    rr = np.full((3, 4, 9), NAN)
    rr[:, 0] = 3.0
    assert np.isnan(interobserver_mae(rr)).all()


def test_summarise_counts_and_table():
    rr = np.full((3, 4, 9), NAN)
    rr[:, 0] = 2.0
    rr[:, 1] = 3.0
    stats = summarise(
        np.array([1, 4, 4]), np.array([[5, 6], [10, 8], [7, 7]]), rr, np.array(["a", "a", "b"]), np.array([1, 1, 2])
    )
    assert stats["nodules"] == 3 and stats["patients"] == 2 and stats["scans"] == 2
    assert stats["slices_per_nodule"]["min"] == 1 and stats["slices_per_nodule"]["max"] == 4
    assert stats["slices_per_nodule"]["mean"] == pytest.approx(3.0)
    assert stats["box_px"]["mean_side"] == pytest.approx((5 + 6 + 10 + 8 + 7 + 7) / 6, abs=1e-3)
    assert stats["box_px"]["height_max"] == 10 and stats["box_px"]["width_min"] == 6
    assert stats["readers_per_nodule"] == {"2": 3}
    assert stats["interobserver_mae"]["mean"] == pytest.approx(1.0)
    assert slice_histogram(np.array([1, 4, 4])) == {"1": 1, "4": 2}
    table = format_comparison(stats)
    assert "2622" in table and "0.62" in table and str(PAPER["patients"]) in table
