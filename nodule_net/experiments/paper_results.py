"""The paper's published results (Fu et al., §4 Tables 1–5; Supplementary Tables S1, S2).

Copied from the paper once, for the report to print beside ours. MAE rows are on the
original rating scales, in the order of :data:`nodule_net.attributes.ATTRIBUTES` plus
``mean``; None where the paper has no number (N/A). Table 4's IB row is the one in
:data:`nodule_net.data.stats.PAPER` (the dataset statistics print it too).
"""

from __future__ import annotations

from typing import cast

from nodule_net.attributes import ATTRIBUTES
from nodule_net.data.stats import PAPER as PAPER_DATASET


def _row(*values: float | None) -> dict[str, float | None]:
    """Nine attribute MAEs and the mean, keyed like ``metrics/mae.json``."""
    return dict(zip((*ATTRIBUTES, "mean"), values, strict=True))


# Table 1: rows by model.variant. Table 2 repeats `none` and `sam` and adds `3d`.
TABLE1 = {
    "none": _row(0.741, 0.031, 0.228, 0.542, 0.610, 0.483, 0.450, 0.498, 0.510, 0.455),
    "sam": _row(0.658, 0.026, 0.165, 0.489, 0.549, 0.460, 0.423, 0.409, 0.457, 0.404),
    "caam": _row(0.664, 0.024, 0.156, 0.494, 0.549, 0.462, 0.427, 0.411, 0.457, 0.405),
    "caam_ascmm": _row(0.671, 0.022, 0.146, 0.490, 0.550, 0.454, 0.423, 0.408, 0.453, 0.402),
    "full": _row(0.664, 0.020, 0.141, 0.484, 0.536, 0.460, 0.424, 0.399, 0.453, 0.398),
}
# Variants whose mean error the paper marks p < 0.05 against `none` (Table 1's asterisks).
TABLE1_SIGNIFICANT = ("sam", "caam", "caam_ascmm", "full")
TABLE2 = {
    "none": TABLE1["none"],
    "sam": TABLE1["sam"],
    "3d": _row(0.651, 0.026, 0.156, 0.528, 0.570, 0.491, 0.456, 0.432, 0.469, 0.420),
}
# Table 3: the CAAM+ASCMM variant's auxiliary (ASCMM) and final predictions.
TABLE3 = {
    "aux_mae": _row(0.681, 0.062, 0.354, 0.495, 0.567, 0.475, 0.437, 0.423, 0.462, 0.440),
    "mae": _row(0.671, 0.022, 0.146, 0.490, 0.550, 0.454, 0.423, 0.408, 0.453, 0.402),
}
# Table 4 (two decimals in the paper): label → row. MTR is Chen et al. [11]; MTMR-Net is
# Liu et al. [12], which classified malignancy rather than scoring it (N/A).
TABLE4: dict[str, dict[str, float | None]] = {
    # PAPER holds values of several types; this entry is the attribute → MAE row.
    "IB": dict(cast("dict[str, float]", PAPER_DATASET["interobserver_mae"])),
    "MTR, Chen et al. [11]": _row(0.65, 0.06, 0.33, 0.67, 0.72, 0.76, 0.70, 0.53, 0.70, 0.57),
    "MTMR-Net, Liu et al. [12]": _row(0.54, 0.03, 0.56, 0.59, 0.54, 0.54, 0.49, 0.44, None, 0.47),
    "Proposed": _row(0.66, 0.02, 0.14, 0.48, 0.54, 0.46, 0.42, 0.40, 0.45, 0.40),
}
# Table 5, in percent: accuracy, sensitivity, specificity, precision, AUC.
TABLE5_METRICS = ("accuracy", "sensitivity", "specificity", "precision", "auc")
TABLE5 = {
    "Song et al. 2017 [39]": (84.2, 84.0, 84.3, None, None),
    "Shen et al. 2017 [36]": (87.1, 77.0, 93.0, None, 93.0),
    "Xie et al. 2017 [38]": (93.4, 91.4, 94.1, None, 97.8),
    "Xie et al. 2019 [34]": (91.6, 86.5, 94.0, 87.8, 95.7),
    "Xie et al. 2019 [37]": (92.5, 84.9, 96.3, None, 95.8),
    "Liu et al. 2020 [12]": (93.5, 93.0, 89.4, None, 97.9),
    "Xu et al. 2020 [35]": (92.7, 85.6, 95.9, 90.4, 94.0),
    "Proposed": (94.7, 96.2, 82.9, 97.8, 95.9),
}
# Table S1: λ → row (the full model). The paper has no λ = 0 row.
TABLE_S1 = {
    0.01: _row(0.657, 0.020, 0.147, 0.490, 0.553, 0.449, 0.423, 0.411, 0.455, 0.401),
    0.1: _row(0.664, 0.020, 0.141, 0.484, 0.536, 0.460, 0.424, 0.400, 0.453, 0.398),
    0.5: _row(0.655, 0.027, 0.131, 0.498, 0.551, 0.458, 0.427, 0.402, 0.462, 0.401),
    1.0: _row(0.650, 0.020, 0.132, 0.494, 0.550, 0.464, 0.425, 0.414, 0.456, 0.401),
    10.0: _row(0.660, 0.018, 0.127, 0.500, 0.557, 0.455, 0.421, 0.410, 0.458, 0.401),
}
# Table S2: each attribute by its own single-attribute model, and the proposed (full) model.
TABLE_S2 = {
    "individual": _row(0.664, 0.014, 0.226, 0.475, 0.558, 0.481, 0.437, 0.411, 0.453, 0.413),
    "proposed": _row(0.664, 0.020, 0.141, 0.484, 0.536, 0.460, 0.424, 0.400, 0.453, 0.398),
}
