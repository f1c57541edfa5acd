"""The report's marks, Holm values, baseline row, empty-cell marks, figure and provenance, on in-memory experiments.

No DVC here: :class:`Experiments` is fed hand-made predictions and JSON outputs, so every
expected value is computed in the test from the same arrays (tests/experiments/test_report.py
runs the real thing on DVC experiments).
"""

from __future__ import annotations

import functools
import gc
import hashlib
import subprocess
from datetime import datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from statsmodels.stats.multitest import multipletests

from nodule_net.attributes import ATTRIBUTES
from nodule_net.experiments.records import ExperimentRecord
from nodule_net.experiments.report import (
    BASELINE_ROW,
    MISSING,
    PAPER_NA,
    UNDEFINED,
    Experiments,
    build_sections,
    direction_mark,
    draw_differences,
    plot_differences,
    provenance_lines,
)

COLUMNS = (*ATTRIBUTES, "mean")
N = 16  # nodules
# Per-variant error scale: SAM clearly better than none, CAAM clearly worse, CAAM+ASCMM about the same.
NOISE = {"t1-none": 0.6, "t1-sam": 0.1, "t1-caam": 1.6, "t1-caam_ascmm": 0.62}
BASELINE_MAE = {**{a: 0.5 + 0.01 * k for k, a in enumerate(ATTRIBUTES)}, "mean": 0.54}


def _predictions(name: str) -> pd.DataFrame:
    rng = np.random.default_rng(sorted(NOISE).index(name))
    truth = np.random.default_rng(99).integers(1, 6, size=(N, len(ATTRIBUTES))).astype(float)
    pred = truth + NOISE[name] * rng.standard_normal(truth.shape)
    pred[:, ATTRIBUTES.index("internal_structure")] = truth[:, ATTRIBUTES.index("internal_structure")]  # no error
    frame = pd.DataFrame({"nodule_id": [f"LIDC-IDRI-{i:04d}/s1/n0" for i in range(N)]})
    for k, a in enumerate(ATTRIBUTES):
        frame[f"true_{a}"], frame[f"pred_{a}"] = truth[:, k], pred[:, k]
    return frame


@functools.cache
def _errors(name: str) -> pd.DataFrame:
    frame = _predictions(name)
    errors = pd.DataFrame({a: (frame[f"pred_{a}"] - frame[f"true_{a}"]).abs() for a in ATTRIBUTES})
    return errors.assign(mean=errors.mean(axis=1))


def _record(name: str, **params) -> ExperimentRecord:
    base = {"data": {"source": "phantom"}, "train": {"epochs": 1, "device": "auto"}, "folds": [0, 1], "seed": 0}
    rev = hashlib.sha1(name.encode()).hexdigest()
    return ExperimentRecord(name, rev, "0" * 40, "2026-12-01T10:00:00", "success", base | params)


class InMemory(Experiments):
    """Experiments whose outputs are the dicts and frames above instead of files at a revision."""

    def __init__(self, outputs: dict[str, dict[str, dict]]) -> None:
        super().__init__(".", {name: _record(name) for name in outputs})
        self.outputs = outputs

    def output(self, name: str, var: str) -> dict | None:
        return self.outputs[name].get(var) if self.get(name) else None

    def predictions(self, name: str) -> pd.DataFrame | None:
        return _predictions(name) if self.get(name) and name in NOISE else None


def _statsmodels_holm(p_values: list[float]) -> np.ndarray:
    gc.freeze()  # multipletests runs gc.collect(): seconds over pytest's heap, without the freeze
    try:
        return multipletests(p_values, method="holm")[1]
    finally:
        gc.unfreeze()


def _mae_json(name: str) -> dict:
    errors = _errors(name)
    return {
        "mae": {c: float(errors[c].mean()) for c in COLUMNS},
        "baseline_mae": BASELINE_MAE,
        "folds": {"0": {"n_test": N // 2}, "1": {"n_test": N - N // 2}},
    }


@pytest.fixture(scope="module")
def sections():
    outputs: dict[str, dict[str, dict]] = {name: {"mae": _mae_json(name)} for name in NOISE}  # t1-full missing
    rates = {"accuracy": 0.5, "sensitivity": float("nan"), "specificity": 0.5, "precision": 0.4, "auc": 0.6}
    outputs["t5-classify"] = {"analysis": {"benign_malignant": rates}}
    sections, panels = build_sections(InMemory(outputs))
    return {s.key: s for s in sections}, panels


def _row(table, label: str) -> list[str]:
    return next(row for row in table.rows if row[0] == label)


def _table(section, caption_start: str):
    return next(t for t in section.tables if t.caption.startswith(caption_start))


def test_direction_mark() -> None:
    assert direction_mark(-0.1, 0.01, 0.03) == "↓†"  # lower error, significant after Holm too
    assert direction_mark(-0.1, 0.01, 0.2) == "↓*"  # lower error, uncorrected only
    assert direction_mark(+0.1, 0.01, 0.04) == "↑†"
    assert direction_mark(+0.1, 0.04, 0.08) == "↑*"
    assert direction_mark(-0.1, 0.2, 0.4) == ""
    assert direction_mark(-0.1, float("nan"), float("nan")) == ""


def test_marks_carry_the_direction_of_each_difference(sections) -> None:
    ours = _table(sections[0]["1"], "Ours").rows
    none = _errors("t1-none")
    labels = {"SAM": "t1-sam", "CAAM": "t1-caam", "CAAM+ASCMM": "t1-caam_ascmm"}
    holm = {
        c: _statsmodels_holm([stats.ttest_rel(_errors(n)[c], none[c]).pvalue for n in labels.values()])
        for c in COLUMNS
        if c != "internal_structure"
    }
    for k, (label, name) in enumerate(labels.items()):
        row = _row(_table(sections[0]["1"], "Ours"), label)
        for j, column in enumerate(COLUMNS):
            errors = _errors(name)[column]
            cell = row[1 + j]
            assert cell.startswith(f"{errors.mean():.3f}")
            if column == "internal_structure":
                assert cell == f"{errors.mean():.3f}"  # no variance, no test, no mark
                continue
            p = stats.ttest_rel(errors, none[column]).pvalue
            arrow = "↓" if (errors - none[column]).mean() < 0 else "↑"
            expected = "" if p >= 0.05 else arrow + ("†" if holm[column][k] < 0.05 else "*")
            assert cell == f"{errors.mean():.3f}{expected}", (label, column)
    assert _row(_table(sections[0]["1"], "Ours"), "SAM")[10].endswith("↓†")  # much better
    assert _row(_table(sections[0]["1"], "Ours"), "CAAM")[10].endswith("↑†")  # much worse
    assert _row(_table(sections[0]["1"], "Ours"), "No Attention")[10] == f"{none['mean'].mean():.3f}"
    assert len(ours) == 6  # five methods and the baseline row
    paper = _table(sections[0]["1"], "Paper")
    assert _row(paper, "SAM")[10] == "0.404↓*" and _row(paper, "No Attention")[10] == "0.455"


def test_holm_adjusted_p_values_are_statsmodels_over_the_tables_comparisons(sections) -> None:
    table = _table(sections[0]["1"], "Holm-adjusted")
    none = _errors("t1-none")
    names = ["t1-sam", "t1-caam", "t1-caam_ascmm"]  # t1-full is missing: not in the family
    for j, column in enumerate(COLUMNS):
        raw = [stats.ttest_rel(_errors(n)[column], none[column]).pvalue for n in names]
        cells = [_row(table, label)[1 + j] for label in ("SAM", "CAAM", "CAAM+ASCMM")]
        if column == "internal_structure":
            assert cells == [UNDEFINED] * 3
            continue
        adjusted = _statsmodels_holm(raw)
        assert cells == ["<0.001" if p < 0.001 else f"{p:.3f}" for p in adjusted]
        assert all(a >= r for a, r in zip(adjusted, raw, strict=True))
    assert _row(table, "SAM+CAAM+ASCMM")[1:] == [MISSING] * len(COLUMNS)
    assert "one family per column: the 3 tests vs No Attention" in table.caption


def test_the_trivial_baseline_row_is_in_tables_1_2_and_4(sections) -> None:
    by_key = sections[0]
    expected3 = [f"{BASELINE_MAE[c]:.3f}" for c in COLUMNS]
    assert _row(_table(by_key["1"], "Ours"), BASELINE_ROW)[1:] == [
        *expected3,
        "baseline_mae of t1-none (" + _record("t1-none").short_rev + ")",
    ]
    assert _row(_table(by_key["2"], "Ours"), BASELINE_ROW)[1:11] == expected3
    # Table 4 takes it from the full model's run, which is missing here.
    assert _row(by_key["4"].tables[0], BASELINE_ROW)[1:11] == [MISSING] * 10


def test_missing_paper_na_and_undefined_have_their_own_marks(sections) -> None:
    by_key = sections[0]
    assert _row(_table(by_key["1"], "Ours"), "SAM+CAAM+ASCMM")[1:] == [MISSING] * 10 + ["t1-full: missing"]
    assert _row(by_key["4"].tables[0], "MTMR-Net, Liu et al. [12]")[9] == PAPER_NA  # the paper's N/A
    assert _row(by_key["5"].tables[0], "Song et al. 2017 [39]")[1:6] == ["84.2", "84.0", "84.3", PAPER_NA, PAPER_NA]
    classifier = _row(by_key["5"].tables[0], "Proposed, classifier (ours)")
    assert classifier[1:6] == ["50.0", UNDEFINED, "50.0", "40.0", "60.0"]  # a rate of no cases
    p_sam = _row(_table(by_key["1"], "Paired t-test"), "SAM")
    assert p_sam[1 + ATTRIBUTES.index("internal_structure")] == UNDEFINED  # no variance
    assert len({MISSING, PAPER_NA, UNDEFINED}) == 3


@pytest.mark.slow
def test_significance_figure_has_one_panel_per_table_with_method_names(sections, tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    panels = sections[1]
    assert [p.title for p in panels] == ["Table 1: attention modules", "Table 2: 2D slices vs 3D volume"]
    assert [t.label for t in panels[0].rows] == ["SAM", "CAAM", "CAAM+ASCMM", "SAM+CAAM+ASCMM"]
    assert [t.label for t in panels[1].rows] == ["2D Slice-based + SAM", "3D Volume-based"]
    fig = draw_differences(panels)
    assert fig is not None
    assert fig.get_suptitle().startswith("Difference in mean MAE")
    axes = fig.get_axes()
    assert [ax.get_title(loc="left") for ax in axes] == [
        "Table 1: attention modules (vs No Attention)",
        "Table 2: 2D slices vs 3D volume (vs 2D Slice-based)",
    ]
    assert [t.get_text() for t in axes[0].get_yticklabels()] == ["SAM", "CAAM", "CAAM+ASCMM"]  # drawn ones
    assert [t.get_text() for t in axes[1].get_yticklabels()] == ["2D Slice-based + SAM"]
    notes = [t.get_text() for t in axes[0].texts]
    assert notes[0] == "↓†  p < 0.001, Holm-adjusted p < 0.001" and notes[1].startswith("↑†  p < 0.001")
    assert notes[2].startswith("n.s.  p = 0.")
    plt.close(fig)
    assert plot_differences(panels, tmp_path / "significance.png")
    assert (tmp_path / "significance.png").stat().st_size > 1000
    assert not plot_differences([], tmp_path / "none.png") and not (tmp_path / "none.png").exists()


def test_provenance_names_commit_dates_versions_device_and_every_shared_setting(tmp_path: Path) -> None:
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "--allow-empty", "-m", "The baseline"], cwd=tmp_path, check=True)
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    params = {"data": {"source": "phantom"}, "train": {"epochs": 1, "device": "auto", "augment": True}, "seed": 0}
    records = [
        ExperimentRecord(name, "a" * 40, head, stamp, "success", params | {"lambda": lam, "folds": folds})
        for name, stamp, lam, folds in (
            ("t1-none", "2026-12-01T10:02:07", 0.1, [0, 1]),
            ("s1-lambda-0", "2026-12-01T11:40:00", 0.0, [0, 1, 2]),
        )
    ]
    lines = provenance_lines(tmp_path, records, listed=3, written=datetime(2026, 12, 1, 12, 5))
    text = "\n".join(lines)
    assert lines[0] == "## Provenance"
    assert (
        "2 finished experiments in the tables, finished between 2026-12-01 10:02 and 2026-12-01 11:40 (1 others" in text
    )
    assert f"- **Baseline commit** `{head[:7]}` (" in text and "every experiment): The baseline" in text
    for package in ("nodule-net", "torch", "dvc", "pylidc"):
        assert f"{package} {metadata.version(package)}" in text
    assert "2026-12-01 12:05" in text
    assert "- **Device**: `train.device=auto` (not recorded) in every experiment." in text
    recorded = "\n".join(provenance_lines(tmp_path, records, 3, trained_on={"t1-none": "cpu", "s1-lambda-0": None}))
    assert "`train.device=auto` → cpu in t1-none; `train.device=auto` (not recorded) in s1-lambda-0." in recorded
    assert "  - `train`: `augment=true`, `device=auto`, `epochs=1`" in text
    assert "  - `seed=0`" in text and "`data`: `source=phantom`" in text
    assert "`lambda`" in text.split("Settings every experiment shares")[1].split("\n")[0]  # a grid key, named
    assert "**Settings differ between experiments** (rows may not be comparable): `folds`: t1-none=[0, 1], " in text
