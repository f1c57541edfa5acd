"""Dataset statistics (paper §3.1 and the IB row of Table 4), as pure functions of arrays."""

from __future__ import annotations

import numpy as np

from nodule_net.attributes import ABBREVIATIONS, ATTRIBUTES

# What the paper reports, for side-by-side printing (§3.1, Fig. 4, Table 4 "IB").
PAPER = {
    "patients": 875,
    "nodules": 2622,
    "slices_per_nodule": {"min": 1, "max": 45, "mean": 5.6},
    "box_px": {"mean_side": 15.8, "height_min": 5, "height_max": 98, "width_min": 5, "width_max": 86},
    "interobserver_mae": dict(zip(ATTRIBUTES, [0.84, 0.02, 0.20, 0.85, 0.85, 0.79, 0.67, 0.46, 0.88], strict=True))
    | {"mean": 0.62},
}


def interobserver_mae(reader_ratings: np.ndarray) -> np.ndarray:
    """MAE over all pairs of readers' ratings of a nodule, pooled over all pairs: (9,).

    ``reader_ratings``: (N, R, 9), NaN where a reader is absent or where one rating was
    outside its scale (then that pair counts for the other attributes only). Nodules with a
    single reader contribute no pair.
    """
    rr = np.asarray(reader_ratings, dtype=np.float64)
    total = np.zeros(rr.shape[-1])
    pairs = np.zeros(rr.shape[-1], dtype=np.int64)
    for a in range(rr.shape[1]):
        for b in range(a + 1, rr.shape[1]):
            both = ~np.isnan(rr[:, a]) & ~np.isnan(rr[:, b])  # (N, 9)
            total += np.where(both, np.abs(rr[:, a] - rr[:, b]), 0.0).sum(axis=0)
            pairs += both.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, total / np.maximum(pairs, 1), np.nan)


def slice_histogram(n_slices: np.ndarray) -> dict[str, int]:
    """Count of nodules per number of slices (Fig. 4), keys as strings for JSON."""
    values, counts = np.unique(np.asarray(n_slices), return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)}


def summarise(
    n_slices: np.ndarray, box_hw: np.ndarray, reader_ratings: np.ndarray, patient_ids: np.ndarray, scan_ids: np.ndarray
) -> dict:
    """The dataset's numbers in the paper's terms.

    ``n_slices`` (N,) slices kept per nodule; ``box_hw`` (N, 2) consensus-box height and
    width in pixels; ``reader_ratings`` (N, R, 9) with NaN fill; ids (N,).
    """
    n_slices = np.asarray(n_slices)
    box_hw = np.asarray(box_hw)
    n_readers = (~np.isnan(np.asarray(reader_ratings)).all(axis=2)).sum(axis=1)  # a reader rates some attribute
    ib = interobserver_mae(reader_ratings)
    return {
        "nodules": len(n_slices),
        "patients": len(set(np.asarray(patient_ids).tolist())),
        "scans": len(set(np.asarray(scan_ids).tolist())),
        "slices_total": int(n_slices.sum()),
        "slices_per_nodule": {
            "min": int(n_slices.min()),
            "max": int(n_slices.max()),
            "mean": round(float(n_slices.mean()), 3),
            "histogram": slice_histogram(n_slices),
        },
        "box_px": {
            "mean_side": round(float(box_hw.mean()), 3),
            "height_min": int(box_hw[:, 0].min()),
            "height_max": int(box_hw[:, 0].max()),
            "width_min": int(box_hw[:, 1].min()),
            "width_max": int(box_hw[:, 1].max()),
        },
        "readers_per_nodule": {str(k): int((n_readers == k).sum()) for k in sorted(set(n_readers.tolist()))},
        "interobserver_mae": {a: round(float(v), 4) for a, v in zip(ATTRIBUTES, ib, strict=True)}
        | {"mean": round(float(np.nanmean(ib)), 4)},
    }


def format_comparison(ours: dict, paper: dict = PAPER) -> str:
    """A plain-text table of our numbers next to the paper's."""
    s, p = ours["slices_per_nodule"], paper["slices_per_nodule"]
    b, pb = ours["box_px"], paper["box_px"]
    lines = [
        f"{'':26}{'ours':>22}{'paper':>22}",
        f"{'patients':26}{ours['patients']:>22}{paper['patients']:>22}",
        f"{'nodules':26}{ours['nodules']:>22}{paper['nodules']:>22}",
        f"{'scans':26}{ours['scans']:>22}{'':>22}",
        f"{'slices/nodule min-max':26}{str(s['min']) + '-' + str(s['max']):>22}"
        f"{str(p['min']) + '-' + str(p['max']):>22}",
        f"{'slices/nodule mean':26}{s['mean']:>22.2f}{p['mean']:>22.2f}",
        f"{'box mean side (px)':26}{b['mean_side']:>22.2f}{pb['mean_side']:>22.2f}",
        f"{'box height min-max':26}{str(b['height_min']) + '-' + str(b['height_max']):>22}"
        f"{str(pb['height_min']) + '-' + str(pb['height_max']):>22}",
        f"{'box width min-max':26}{str(b['width_min']) + '-' + str(b['width_max']):>22}"
        f"{str(pb['width_min']) + '-' + str(pb['width_max']):>22}",
        "",
        "inter-observer MAE (IB, Table 4)",
        f"{'':6}" + "".join(f"{a:>6}" for a in ABBREVIATIONS) + f"{'Mean':>6}",
    ]
    for name, table in (("ours", ours["interobserver_mae"]), ("paper", paper["interobserver_mae"])):
        lines.append(f"{name:6}" + "".join(f"{table[a]:>6.2f}" for a in ATTRIBUTES) + f"{table['mean']:>6.2f}")
    return "\n".join(lines)
