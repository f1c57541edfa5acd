"""`nodule-net report`: the paper's Tables 1–5, S1 and S2 from the repository's DVC experiments.

Reads the experiments queued by :mod:`nodule_net.experiments.grid` through DVC (see
:mod:`nodule_net.experiments.records`: params from ``dvc exp show``, every other number from
the files at each experiment's revision), puts each into its row of the paper's tables, next
to the paper's published numbers (:mod:`nodule_net.experiments.paper_results`), adds paired
t-tests (raw and Holm-adjusted) and bootstrap intervals against the attention-free model
(:mod:`nodule_net.experiments.significance`) and the training-fold mean predictor as a
trivial baseline, and writes ``<out>/report.md`` with its figures. It opens with the
provenance: baseline commit, dates, package versions, device and every shared setting.
Each table names the experiment (and revision) behind every row and the nodules and folds
it rests on; the marks of :data:`LEGEND` tell a missing experiment from the paper's N/A.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from nodule_net.attributes import ABBREVIATIONS, ATTRIBUTES
from nodule_net.experiments import grid, paper_results
from nodule_net.experiments.records import (
    ExperimentRecord,
    RevisionFiles,
    commit_date_and_subject,
    exp_show,
    latest_by_name,
    parse_exp_show,
    pipeline_var,
)
from nodule_net.experiments.significance import Comparison, absolute_errors, compare, holm, pair_errors
from nodule_net.io.files import check_writable, write_text_atomic

# Three kinds of empty cell, each its own mark.
MISSING = "—"  # no number yet: the experiment is missing, queued, running or failed
PAPER_NA = "n/a"  # the paper gives no number (its N/A)
UNDEFINED = "n.d."  # the experiment ran, but the number is not defined (a test without variance, a rate of no cases)
# Direction and strength of a difference against the attention-free model.
BETTER, WORSE = "↓", "↑"  # lower / higher MAE than the reference row
RAW, CORRECTED = "*", "†"  # p < ALPHA uncorrected only / also after Holm's correction
ALPHA = 0.05  # the paper's significance level (Table 1's asterisks)
MAE_COLUMNS = (*ATTRIBUTES, "mean")
MAE_HEADER = [*ABBREVIATIONS, "Mean"]
# Params that may differ between the experiments of one report without changing what they measure.
IGNORED_PARAMS = ("train.device", "phantom.workers", "extract.workers")
# The pipeline outputs the report reads at each experiment's revision, by their dvc.yaml var.
OUTPUT_VARS = ("predictions", "mae", "analysis", "dataset_stats", "train_live")
# Installed versions the provenance names (the experiments record none of their own).
PACKAGES = ("nodule-net", "torch", "dvc", "pylidc")
BASELINE_ROW = "Training-fold mean (trivial baseline)"

TABLE1_ROWS = (
    ("none", "No Attention"),
    ("sam", "SAM"),
    ("caam", "CAAM"),
    ("caam_ascmm", "CAAM+ASCMM"),
    ("full", "SAM+CAAM+ASCMM"),
)
TABLE2_ROWS = (("none", "2D Slice-based"), ("sam", "2D Slice-based + SAM"), ("3d", "3D Volume-based"))
TABLE5_HEADER = ["Accuracy", "Sensitivity", "Specificity", "Precision", "AUC"]

LEGEND = [
    "## Marks",
    "",
    f"- `{BETTER}{RAW}` / `{WORSE}{RAW}` after our MAE (Tables 1 and 2): lower (better) / higher (worse) than the "
    f"No Attention row, paired t-test p < {ALPHA} **uncorrected** for multiple comparisons; "
    f"`{BETTER}{CORRECTED}` / `{WORSE}{CORRECTED}`: p < {ALPHA} also after **Holm's correction** over the table's "
    "comparisons (one family per column: up to 4 tests in Table 1, 2 in Table 2; a missing or undefined test is "
    "not counted). No mark: p ≥ 0.05 or no test. Both the raw and the "
    "Holm-adjusted p-values are tabled under each table.",
    f"- `{BETTER}{RAW}` in the paper's Table 1: the paper's own asterisk (p < 0.05 vs No Attention); every marked "
    "row has the lower MAE, and the paper does not say whether it corrected for multiple comparisons.",
    f"- `{MISSING}`: no number yet: the experiment is missing, queued, running or failed (the row's last column "
    "says which).",
    f"- `{PAPER_NA}`: the paper has no number for this cell (N/A in the paper).",
    f"- `{UNDEFINED}`: the experiment ran, but the number is not defined: a t-test whose per-nodule differences "
    "are all equal (no variance), or a rate without a case to count.",
    f"- {BASELINE_ROW}: each test nodule scored with the mean rating of its fold's training nodules "
    "(`baseline_mae` of metrics/mae.json); a model that does not beat it has learnt nothing from the images.",
    "",
]


@dataclass
class Table:
    caption: str
    columns: list[str]
    rows: list[list[str]]


@dataclass
class Section:
    key: str  # "1", "2", "3", "4", "5", "S1", "S2"
    title: str  # the paper's caption
    tables: list[Table]
    notes: list[str] = field(default_factory=list)
    figure: str | None = None  # file name under the report folder


@dataclass(frozen=True)
class Tested:
    """One row of Tables 1–2 tested against the table's reference row."""

    label: str  # the method, as the table names it
    name: str  # its experiment
    result: Comparison | str  # the comparison, or why there is none
    holm: dict[str, float]  # column → Holm-adjusted p over the table's comparisons


@dataclass(frozen=True)
class Panel:
    """One table's comparisons, as the significance figure draws them."""

    title: str
    reference: str  # the reference row's method name
    rows: list[Tested]


def _undefined(value) -> bool:
    return isinstance(value, float) and np.isnan(value)


def _fmt(value: float | None, digits: int = 3, mark: str = "", absent: str = MISSING) -> str:
    if value is None:
        return absent
    if _undefined(value):
        return UNDEFINED
    return f"{value:.{digits}f}{mark}"


def _fmt_p(p: float | None) -> str:
    if p is None:
        return MISSING
    if np.isnan(p):
        return UNDEFINED
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _mae_cells(
    row: dict | None, digits: int = 3, marks: dict[str, str] | None = None, absent: str = MISSING
) -> list[str]:
    row = row or {}
    return [_fmt(row.get(c), digits, (marks or {}).get(c, ""), absent) for c in MAE_COLUMNS]


def _flatten(params: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


def _value(value: object) -> str:
    """A param value as params.yaml would spell it (``null``, ``false``, ``[0, 1]``, bare strings)."""
    return value if isinstance(value, str) else json.dumps(value)


class Experiments:
    """The experiments a report draws on, by name; each one's files are read once, when first needed."""

    def __init__(self, repo: str | Path, records: dict[str, ExperimentRecord]) -> None:
        self.repo = Path(repo)
        self.records = records
        self.used: set[str] = set()
        self._paths: dict[str, str] = {}
        self._files: dict[str, RevisionFiles] = {}
        self._predictions: dict[str, pd.DataFrame] = {}

    def path(self, var: str) -> str:
        """Where the pipeline writes output ``var`` (one of :data:`OUTPUT_VARS`), from dvc.yaml's vars."""
        if var not in self._paths:
            self._paths[var] = pipeline_var(self.repo, var)
        return self._paths[var]

    def get(self, name: str) -> ExperimentRecord | None:
        """The finished experiment ``name``, or None."""
        record = self.records.get(name)
        if record is None or not record.done:
            return None
        self.used.add(name)
        return record

    def label(self, name: str) -> str:
        """How a row names its experiment: ``t1-none (3d8cf7b)``, or why it has no numbers."""
        record = self.records.get(name)
        if record is None:
            return f"{name}: missing"
        return f"{name} ({record.short_rev})" if record.done else f"{name}: {record.state}"

    def output(self, name: str, var: str) -> dict | None:
        """The JSON output ``var`` (``mae``, ``analysis``, ``dataset_stats``) of finished experiment ``name``."""
        record = self.get(name)
        if record is None:
            return None
        if name not in self._files:
            self._files[name] = RevisionFiles(self.repo, record)
        return self._files[name].json(self.path(var))

    def mae(self, name: str, key: str = "mae") -> dict | None:
        """A row of metrics/mae.json (``mae``, ``aux_mae``, ``baseline_mae``): attribute and mean → MAE."""
        return (self.output(name, "mae") or {}).get(key)

    def nodules_and_folds(self, name: str) -> tuple[int, int] | None:
        folds = (self.output(name, "mae") or {}).get("folds")
        if not folds:
            return None
        return sum(int(f.get("n_test", 0)) for f in folds.values()), len(folds)

    def predictions(self, name: str) -> pd.DataFrame | None:
        if self.output(name, "mae") is None:  # opens the revision, and marks the experiment used
            return None
        if name not in self._predictions:
            self._predictions[name] = self._files[name].csv(self.path("predictions"))
        return self._predictions[name]

    def trained_on(self, name: str) -> str | None:
        """The device the train stage of finished experiment ``name`` resolved (its first fold's
        dvclive summary records it); None where that summary has no ``device``."""
        if self.output(name, "mae") is None:  # opens the revision, and marks the experiment used
            return None
        folds = self.records[name].param("folds") or [0]
        try:
            summary = self._files[name].json(f"{self.path('train_live')}/fold{folds[0]}/metrics.json")
        except ValueError:  # an experiment of a pipeline whose train stage kept no summary: unrecorded
            return None
        return summary.get("device")

    def close(self) -> None:
        for files in self._files.values():
            files.close()


def _rests_on(exps: Experiments, names: Sequence[str]) -> str:
    """ "Rests on N nodules in k folds", or the per-experiment counts when they differ."""
    counts = {n: c for n in names if (c := exps.nodules_and_folds(n)) is not None}
    if not counts:
        return f"None of the experiments behind our rows ({', '.join(names)}) has finished yet."
    if len(set(counts.values())) == 1:
        n, k = next(iter(counts.values()))
        return f"Rests on {n} nodules in {k} folds (pooled test folds, each nodule tested once)."
    listed = ", ".join(f"{name} {n} nodules/{k} folds" for name, (n, k) in counts.items())
    return f"Rows rest on different data: {listed}."


def _comparisons(exps: Experiments, names: Sequence[str], baseline: str) -> dict[str, Comparison | str]:
    """Each experiment against ``baseline`` on the same nodules; a string says why there is none."""
    reference = exps.predictions(baseline)
    out: dict[str, Comparison | str] = {}
    for name in names:
        other = exps.predictions(name)
        if reference is None or other is None:
            out[name] = f"needs {baseline} and {name}"
            continue
        attributes = [a for a in ATTRIBUTES if f"pred_{a}" in other and f"pred_{a}" in reference]
        try:
            paired = pair_errors(
                absolute_errors(other, attributes), absolute_errors(reference, attributes), f"{name} and {baseline}"
            )
        except ValueError as err:
            out[name] = str(err)
            continue
        out[name] = compare(paired)
    return out


def _holm_by_column(results: Sequence[Comparison | str]) -> list[dict[str, float]]:
    """Holm-adjusted p per row and column: each column's tests of the table form one family."""
    adjusted: list[dict[str, float]] = [{} for _ in results]
    for column in MAE_COLUMNS:
        raw = [r.p_values.get(column, np.nan) if isinstance(r, Comparison) else np.nan for r in results]
        for row, p in zip(adjusted, holm(raw), strict=True):
            row[column] = p
    return adjusted


def direction_mark(difference: float | None, p: float | None, p_holm: float | None) -> str:
    """``↓*`` / ``↑*`` (p < 0.05 uncorrected), ``↓†`` / ``↑†`` (also Holm-adjusted), or "" (not significant)."""
    if difference is None or p is None or not p < ALPHA:  # NaN: no test
        return ""
    arrow = BETTER if difference < 0 else WORSE
    return arrow + (CORRECTED if p_holm is not None and p_holm < ALPHA else RAW)


def _marks(tested: Tested | None) -> dict[str, str]:
    if tested is None or not isinstance(tested.result, Comparison):
        return {}
    result = tested.result
    return {
        c: direction_mark(result.differences.get(c), result.p_values.get(c), tested.holm.get(c)) for c in MAE_COLUMNS
    }


def _paper_marks(paper: dict[str, dict], variant: str, significant: bool) -> dict[str, str]:
    """The paper's asterisk on the Mean, with the direction its own numbers show."""
    if not significant:
        return {}
    lower = paper[variant]["mean"] < paper["none"]["mean"]
    return {"mean": (BETTER if lower else WORSE) + RAW}


def baseline_row(exps: Experiments, candidates: Sequence[str], digits: int = 3) -> list[str]:
    """The training-fold mean predictor's MAE (``baseline_mae``) from the first finished of ``candidates``.

    It depends on the data and folds only, so any experiment of the table gives it.
    """
    source = next((n for n in candidates if exps.mae(n, "baseline_mae")), None)
    if source is None:
        return [BASELINE_ROW, *[MISSING] * len(MAE_COLUMNS), f"needs one of {', '.join(candidates)}"]
    return [
        BASELINE_ROW,
        *_mae_cells(exps.mae(source, "baseline_mae"), digits),
        f"baseline_mae of {exps.label(source)}",
    ]


def _mae_section(
    exps: Experiments, key: str, title: str, rows: Sequence[tuple[str, str]], paper: dict[str, dict]
) -> tuple[Section, Panel]:
    """Tables 1 and 2: our MAE rows with direction marks, the baseline, the paper's, the tests."""
    names = {variant: (grid.THREE_D if variant == "3d" else grid.variant_name(variant)) for variant, _ in rows}
    labels = dict(rows)
    reference = names["none"]
    variants = [v for v, _ in rows if v != "none"]
    comparisons = _comparisons(exps, [names[v] for v in variants], reference)
    results = [comparisons[names[v]] for v in variants]
    tested = {
        v: Tested(labels[v], names[v], result, adjusted)
        for v, result, adjusted in zip(variants, results, _holm_by_column(results), strict=True)
    }
    ours = [
        [label, *_mae_cells(exps.mae(names[v]), marks=_marks(tested.get(v))), exps.label(names[v])] for v, label in rows
    ]
    ours.append(baseline_row(exps, list(names.values())))
    paper_rows = [
        [
            label,
            *_mae_cells(
                paper[v],
                marks=_paper_marks(paper, v, key == "1" and v in paper_results.TABLE1_SIGNIFICANT),
                absent=PAPER_NA,
            ),
        ]
        for v, label in rows
    ]
    p_rows, holm_rows, ci_rows, why = [], [], [], []
    for t in tested.values():
        if isinstance(t.result, Comparison):
            p_rows.append([t.label, *[_fmt_p(t.result.p_values.get(c)) for c in MAE_COLUMNS]])
            holm_rows.append([t.label, *[_fmt_p(t.holm.get(c)) for c in MAE_COLUMNS]])
            interval = UNDEFINED if np.isnan(t.result.ci_low) else f"[{t.result.ci_low:+.3f}, {t.result.ci_high:+.3f}]"
            ci_rows.append([t.label, f"{t.result.mean_difference:+.3f}", interval, str(t.result.n)])
            continue
        both_ran = bool(exps.get(t.name) and exps.get(reference))
        blank = UNDEFINED if both_ran else MISSING  # both ran, yet they cannot be paired
        p_rows.append([t.label, *[blank] * len(MAE_COLUMNS)])
        holm_rows.append([t.label, *[blank] * len(MAE_COLUMNS)])
        ci_rows.append([t.label, blank, blank, blank])
        if both_ran:
            why.append(f"{t.label}: no test: {t.result}")
    tests = sum(isinstance(r, Comparison) for r in results)
    family = f"{tests} test{'s' * (tests != 1)} vs {labels['none']} ({UNDEFINED} ones not counted)"
    section = Section(
        key,
        title,
        [
            Table(
                f"Ours (MAE; {BETTER}/{WORSE}: lower/higher than {labels['none']} at paired t-test p < {ALPHA}, "
                f"`{RAW}` uncorrected, `{CORRECTED}` also Holm-adjusted; see Marks)",
                ["Method", *MAE_HEADER, "Experiment"],
                ours,
            ),
            Table(
                "Paper" + (f" (`{BETTER}{RAW}`: the paper's p < 0.05 vs No Attention)" if key == "1" else ""),
                ["Method", *MAE_HEADER],
                paper_rows,
            ),
            Table(
                f"Paired t-test p-values vs {labels['none']}, uncorrected (scipy.stats.ttest_rel on per-nodule "
                "absolute errors; Mean: on each nodule's mean error over attributes)",
                ["Method", *MAE_HEADER],
                p_rows,
            ),
            Table(
                f"Holm-adjusted p-values (statsmodels multipletests, method holm), one family per column: the {family}",
                ["Method", *MAE_HEADER],
                holm_rows,
            ),
            Table(
                f"Difference in mean MAE vs {labels['none']} (negative: lower error), paired percentile bootstrap "
                "95% interval over nodules (10,000 resamples, seed 0)",
                ["Method", "Δ mean MAE", "95% CI", "Nodules"],
                ci_rows,
            ),
        ],
        [_rests_on(exps, list(names.values())), *why],
    )
    return section, Panel(f"Table {key}: {_PANEL_TITLES[key]}", labels["none"], list(tested.values()))


_PANEL_TITLES = {"1": "attention modules", "2": "2D slices vs 3D volume"}


def table3(exps: Experiments) -> Section:
    """Auxiliary (ASCMM) vs final predictions of CAAM+ASCMM (the paper's) and of the full model."""
    ours = []
    for variant, label in (("caam_ascmm", "CAAM+ASCMM"), ("full", "SAM+CAAM+ASCMM")):
        name = grid.variant_name(variant)
        for key, kind in (("aux_mae", "Auxiliary"), ("mae", "Final")):
            ours.append([f"{kind} ({label})", *_mae_cells(exps.mae(name, key)), exps.label(name)])
    paper = [
        [kind, *_mae_cells(paper_results.TABLE3[key], absent=PAPER_NA)]
        for key, kind in (("aux_mae", "Auxiliary"), ("mae", "Final"))
    ]
    names = [grid.variant_name("caam_ascmm"), grid.variant_name("full")]
    return Section(
        "3",
        "Comparison of performance between auxiliary and final predictions of the baseline model "
        "with CAAM and ASCMM (MAE)",
        [
            Table("Ours", ["Method", *MAE_HEADER, "Experiment"], ours),
            Table("Paper (CAAM+ASCMM)", ["Method", *MAE_HEADER], paper),
        ],
        [_rests_on(exps, names)],
    )


def table4(exps: Experiments) -> Section:
    """The paper's published rows, then ours: the IB of our dataset, the trivial baseline, the full model."""
    full = grid.variant_name("full")
    paper = [[label, *_mae_cells(row, 2, absent=PAPER_NA), "paper"] for label, row in paper_results.TABLE4.items()]
    # The IB belongs to the dataset: take it from the full model's run, else from any finished one.
    candidates = [full, *(e.name for e in grid.paper_grid() if e.name != full)]
    ib_name = next((n for n in candidates if "interobserver_mae" in (exps.output(n, "dataset_stats") or {})), None)
    dataset = exps.output(ib_name, "dataset_stats") if ib_name else None
    ib_source = (
        f"dataset of {exps.label(ib_name)} ({dataset.get('nodules', '?')} nodules)"
        if ib_name and dataset
        else "no finished experiment"
    )
    ours = [
        ["IB (ours)", *_mae_cells(dataset["interobserver_mae"] if dataset else None, 2), ib_source],
        baseline_row(exps, [full], 2),
        ["Proposed (ours)", *_mae_cells(exps.mae(full), 2), exps.label(full)],
    ]
    return Section(
        "4",
        "Comparison of prediction performance of the proposed model against the state-of-the-art (MAE)",
        [Table("Paper's rows, then ours", ["Method", *MAE_HEADER, "Source"], paper + ours)],
        [
            "IB = inter-observer variation: MAE over all pairs of radiologists' ratings per nodule "
            "(nodule_net/data/stats.py, computed by `extract` into metrics/dataset.json).",
            _rests_on(exps, [full]),
        ],
    )


def _percent(value) -> str:
    """A fraction of the metrics as a percentage cell."""
    return _fmt(None if value is None else 100 * float(value), 1)


def table5(exps: Experiments) -> Section:
    """Benign–malignant classification: the paper's rows, then our regression and classifier models."""
    # The paper's Table 5 is in percent already.
    paper = [
        [label, *[_fmt(v, 1, absent=PAPER_NA) for v in values], "paper"]
        for label, values in paper_results.TABLE5.items()
    ]
    ours, counts = [], []
    for name, label in (
        (grid.variant_name("full"), "Proposed, malignancy score > 3 (ours, regression)"),
        (grid.CLASSIFIER, "Proposed, classifier (ours)"),
    ):
        metrics = (exps.output(name, "analysis") or {}).get("benign_malignant")
        ours.append(
            [label, *[_percent((metrics or {}).get(m)) for m in paper_results.TABLE5_METRICS], exps.label(name)]
        )
        if metrics:
            counts.append(
                f"{name}: {metrics.get('n_benign', '?')} benign, {metrics.get('n_malignant', '?')} "
                f"malignant, {metrics.get('n_excluded', '?')} rated exactly 3 left out"
                + (f" (decision value: {metrics['source']})" if "source" in metrics else "")
                + "."
            )
    return Section(
        "5",
        "Comparison of benign-malignant classification against the state-of-the-art (%)",
        [Table("Paper's rows, then ours", ["Method", *TABLE5_HEADER, "Source"], paper + ours)],
        [
            "Labels from the mean malignancy rating: < 3 benign, > 3 malignant, = 3 left out.",
            *counts,
            _rests_on(exps, [grid.variant_name("full"), grid.CLASSIFIER]),
        ],
    )


def table_s1(exps: Experiments) -> Section:
    """The λ grid of the full model (λ = 0.1 is Table 1's full model)."""
    ours, paper = [], []
    for lam in grid.S1_LAMBDAS:
        name = grid.lambda_name(lam)
        ours.append([f"{lam:g}", *_mae_cells(exps.mae(name)), exps.label(name)])
        if lam in paper_results.TABLE_S1:
            paper.append([f"{lam:g}", *_mae_cells(paper_results.TABLE_S1[lam], absent=PAPER_NA)])
    return Section(
        "S1",
        "Performance with varying λ (MAE)",
        [
            Table("Ours", ["λ", *MAE_HEADER, "Experiment"], ours),
            Table("Paper (no λ = 0 row)", ["λ", *MAE_HEADER], paper),
        ],
        [
            "λ = 0 switches the auxiliary loss off (not in the paper).",
            _rests_on(exps, [grid.lambda_name(lam) for lam in grid.S1_LAMBDAS]),
        ],
        figure="table_s1_lambda.png",
    )


def table_s2(exps: Experiments) -> Section:
    """Each attribute by its own single-attribute model vs the full multi-task model."""
    individual: dict[str, float | None] = {}
    for attribute in ATTRIBUTES:
        individual[attribute] = (exps.mae(grid.attribute_name(attribute)) or {}).get(attribute)
    present = [v for v in individual.values() if v is not None]
    individual["mean"] = float(np.mean(present)) if len(present) == len(ATTRIBUTES) else None
    names = [grid.attribute_name(a) for a in ATTRIBUTES]
    done = [n for n in names if exps.get(n)]
    full = grid.variant_name("full")
    ours = [
        ["Individual", *_mae_cells(individual), f"{len(done)} of 9 s2-* experiments"],
        ["Proposed", *_mae_cells(exps.mae(full)), exps.label(full)],
    ]
    paper = [
        ["Individual", *_mae_cells(paper_results.TABLE_S2["individual"], absent=PAPER_NA)],
        ["Proposed", *_mae_cells(paper_results.TABLE_S2["proposed"], absent=PAPER_NA)],
    ]
    return Section(
        "S2",
        "Performance of individually trained attributes (MAE)",
        [Table("Ours", ["Method", *MAE_HEADER, "Experiment"], ours), Table("Paper", ["Method", *MAE_HEADER], paper)],
        ["Individual: " + ", ".join(exps.label(n) for n in names) + ".", _rests_on(exps, [*names, full])],
    )


def build_sections(exps: Experiments) -> tuple[list[Section], list[Panel]]:
    """Every table of the report, and the comparisons of Tables 1 and 2 (for the figure, one panel each)."""
    s1, p1 = _mae_section(
        exps,
        "1",
        "Prediction performance per attribute with or without our attention modules",
        TABLE1_ROWS,
        paper_results.TABLE1,
    )
    s2, p2 = _mae_section(
        exps,
        "2",
        "Comparison of performance between the 2D slice-based model against its 3D volume-based version",
        TABLE2_ROWS,
        paper_results.TABLE2,
    )
    return [s1, s2, table3(exps), table4(exps), table5(exps), table_s1(exps), table_s2(exps)], [p1, p2]


# ----------------------------------------------------------------------------- output


def render_table(table: Table) -> list[str]:
    lines = [f"*{table.caption}*", "", "| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in table.rows]
    return [*lines, ""]


def render_section(section: Section) -> list[str]:
    name = "Table " + section.key
    lines = [f"## {name}. {section.title}", ""]
    for table in section.tables:
        lines += render_table(table)
    if section.figure:
        lines += [f"![{name}]({section.figure})", ""]
    lines += [*section.notes, ""] if section.notes else []
    return lines


def source_line(records: Sequence[ExperimentRecord]) -> str:
    """The report's first line: whether its numbers come from synthetic pixels."""
    sources = sorted({str(r.param("data.source")) for r in records})
    if "phantom" in sources:
        phantom = [r.name for r in records if r.param("data.source") == "phantom"]
        which = "every experiment" if len(phantom) == len(records) else f"experiments {', '.join(phantom)}"
        return (
            f"**Synthetic pixels, not real CT:** {which} ran on the phantom (`data.source=phantom`), whose "
            "nodules are drawn from LIDC's annotations; these numbers test the pipeline, not the paper's claims."
        )
    return f"Data: LIDC-IDRI CT (`data.source={', '.join(sources)}`)."


def settings_lines(records: Sequence[ExperimentRecord]) -> list[str]:
    """Every setting all experiments share (one line per params.yaml section), and any that differ."""
    if not records:
        return []
    flat = {r.name: _flatten(r.params) for r in records}
    keys = sorted(set().union(*flat.values()) - set(grid.GRID_KEYS))
    shared: dict[str, list[str]] = {}
    differing: list[str] = []
    harmless: list[str] = []
    for key in keys:
        values = {repr(f.get(key)) for f in flat.values()}
        if len(values) == 1:
            section, _, leaf = key.rpartition(".")
            value = next(iter(flat.values())).get(key)
            shared.setdefault(section, []).append(f"`{leaf}={_value(value)}`")
        else:
            (harmless if key in IGNORED_PARAMS else differing).append(key)
    grid_keys = ", ".join(f"`{k}`" for k in grid.GRID_KEYS)
    lines = [f"- **Settings every experiment shares** (params.yaml; the grid's keys {grid_keys} set each row):"]
    lines += [f"  - {f'`{section}`: ' if section else ''}{', '.join(items)}" for section, items in shared.items()]

    def listed(names: Sequence[str]) -> str:
        return "; ".join(
            f"`{k}`: " + ", ".join(f"{name}={_value(f.get(k))}" for name, f in flat.items()) for k in names
        )

    if harmless:
        lines.append(f"- Settings that differ without changing what is measured: {listed(harmless)}.")
    if differing:
        lines.append(f"- **Settings differ between experiments** (rows may not be comparable): {listed(differing)}.")
    return lines


def _minute(iso: str) -> str:
    """An ISO 8601 time to the minute (``2026-12-01 10:42``), or as given if it is not one."""
    try:
        return datetime.fromisoformat(iso).strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def package_versions() -> dict[str, str]:
    """:data:`PACKAGES` → the version installed here (``not installed`` where it is not)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def device_line(records: Sequence[ExperimentRecord], trained_on: dict[str, str | None]) -> str:
    """What ``train.device`` each experiment set and what its train stage resolved it to
    (``trained_on``: name → the device its dvclive summary records, None if it records none)."""
    by_device: dict[str, list[str]] = {}
    for record in records:
        setting = f"`train.device={record.param('train.device', 'auto')}`"
        resolved = trained_on.get(record.name)
        by_device.setdefault(f"{setting} → {resolved}" if resolved else f"{setting} (not recorded)", []).append(
            record.name
        )
    if len(by_device) == 1:
        return f"- **Device**: {next(iter(by_device))} in every experiment."
    return "- **Device**: " + "; ".join(f"{d} in {', '.join(names)}" for d, names in by_device.items()) + "."


def provenance_lines(
    repo: str | Path,
    used: Sequence[ExperimentRecord],
    listed: int,
    written: datetime | None = None,
    trained_on: dict[str, str | None] | None = None,
) -> list[str]:
    """The report's provenance: experiments and their dates, baseline commit(s), software, device, settings."""
    written = written or datetime.now()
    lines = ["## Provenance", ""]
    stamps = sorted(r.timestamp for r in used if r.timestamp)
    when = f", finished between {_minute(stamps[0])} and {_minute(stamps[-1])}" if stamps else ""
    lines.append(
        f"- **Experiments**: {len(used)} finished experiments in the tables{when} ({listed - len(used)} others "
        "listed by `dvc exp show`, not finished or in no table). Each row names its experiment and revision."
    )
    for baseline, count in Counter(r.baseline for r in used).most_common():
        date, subject = commit_date_and_subject(repo, baseline)
        which = "every experiment" if count == len(used) else f"{count} experiments"
        lines.append(f"- **Baseline commit** `{baseline[:7]}` ({_minute(date)}, {which}): {subject}")
    versions = ", ".join(f"{name} {version}" for name, version in package_versions().items())
    lines.append(
        f"- **Software**: {versions}: the environment that wrote this report, {written:%Y-%m-%d %H:%M} (the "
        "experiments record no versions of their own; they ran with what the baseline commit installs)."
    )
    lines.append(device_line(used, trained_on or {}))
    lines += settings_lines(used)
    return [*lines, ""]


def _plot_lambda(exps: Experiments, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    ours = [(lam, m["mean"]) for lam in grid.S1_LAMBDAS if (m := exps.mae(grid.lambda_name(lam)))]
    paper = sorted((lam, row["mean"]) for lam, row in paper_results.TABLE_S1.items())
    if ours:
        ax.plot(*zip(*ours, strict=True), "o-", label="ours")
    ax.plot(*zip(*paper, strict=True), "s--", color="grey", label="paper")
    ax.set_xscale("symlog", linthresh=0.01)  # shows λ = 0 beside 0.01 … 10
    ax.set_xlabel("λ (weight of the auxiliary loss)")
    ax.set_ylabel("mean MAE")
    ax.set_title("Table S1: mean MAE vs λ")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# Points of the significance figure: lower error (better), higher error (worse), not significant.
_MARK_COLOURS = {BETTER: "tab:blue", WORSE: "tab:red", "": "dimgrey"}


def _p_text(p: float | None) -> str:
    text = _fmt_p(p)
    return f"p {text[0]} {text[1:]}" if text.startswith("<") else f"p = {text}"


def _drawable(panel: Panel) -> list[Tested]:
    return [t for t in panel.rows if isinstance(t.result, Comparison) and not np.isnan(t.result.ci_low)]


def draw_differences(panels: Sequence[Panel]):
    """Forest plot of Δ mean MAE vs each table's reference row, one panel per table; None if nothing to draw.

    Each point carries its Mean cell's mark and the raw and Holm-adjusted p of the t-test.
    Returns the matplotlib Figure (the caller saves and closes it).
    """
    drawn = [(panel, rows) for panel in panels if (rows := _drawable(panel))]
    if not drawn:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heights = [len(rows) + 1.2 for _, rows in drawn]
    fig, axes = plt.subplots(
        len(drawn), 1, figsize=(7.5, 0.45 * sum(heights) + 1.4), sharex=True, gridspec_kw={"height_ratios": heights}
    )
    axes = np.atleast_1d(axes)
    for ax, (panel, rows) in zip(axes, drawn, strict=True):
        results = [t.result for t in rows if isinstance(t.result, Comparison)]
        y = np.arange(len(rows))
        mid = np.array([r.mean_difference for r in results])
        err = np.array([mid - [r.ci_low for r in results], [r.ci_high for r in results] - mid])
        ax.axvline(0, color="grey", lw=0.8)
        for k, (t, r) in enumerate(zip(rows, results, strict=True)):
            mark = direction_mark(r.differences["mean"], r.p_values["mean"], t.holm.get("mean"))
            ax.errorbar(mid[k], k, xerr=err[:, k : k + 1], fmt="o", capsize=3, color=_MARK_COLOURS[mark[:1]])
            text = f"{mark or 'n.s.'}  {_p_text(r.p_values['mean'])}, Holm-adjusted {_p_text(t.holm.get('mean'))}"
            ax.annotate(text, (1.01, k), xycoords=("axes fraction", "data"), va="center", fontsize=8)
        ax.set_yticks(y, [t.label for t in rows])
        ax.set_ylim(len(rows) - 0.4, -0.6)
        ax.set_title(f"{panel.title} (vs {panel.reference})", fontsize=10, loc="left")
    axes[-1].set_xlabel("Δ mean MAE vs the reference row (rating units; < 0: lower error), 95% bootstrap CI")
    fig.suptitle("Difference in mean MAE against the attention-free model (paired, per nodule)", fontsize=11)
    fig.tight_layout()
    return fig


def plot_differences(panels: Sequence[Panel], path: Path) -> bool:
    """:func:`draw_differences` saved as ``path``; False (no file) if nothing to draw."""
    fig = draw_differences(panels)
    if fig is None:
        return False
    import matplotlib.pyplot as plt

    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def select(records: dict[str, ExperimentRecord], names: Sequence[str] | None) -> dict[str, ExperimentRecord]:
    """``records`` limited to ``names`` (all when None); a name DVC does not know, or not finished, is an error."""
    if not names:
        return records
    unknown = [n for n in names if n not in records]
    if unknown:
        known = ", ".join(sorted(records)) or "none"
        raise ValueError(f"No experiment named {', '.join(unknown)} (known: {known}); see `dvc exp show`.")
    unfinished = [records[n] for n in names if not records[n].done]
    if unfinished:
        them = "it" if len(unfinished) == 1 else "them"
        failed = [r.name for r in unfinished if r.state == "failed"]
        why = f"`dvc queue logs {failed[0]}` says why it failed, " if failed else ""
        raise ValueError(
            f"--exp {', '.join(f'{r.name} ({r.state})' for r in unfinished)}: not finished, so the "
            f"report would have no numbers for {them}; {why}`dvc queue status` shows the queue; "
            f"wait for {them} or leave {them} out of --exp."
        )
    return {n: records[n] for n in names}


def check_finished(records: dict[str, ExperimentRecord], all_commits: bool) -> None:
    """Refuse a report without a single number: no experiment of the paper's grid has finished."""
    if any((r := records.get(e.name)) and r.done for e in grid.paper_grid()):
        return
    states = Counter("finished (not in the grid)" if r.done else r.state for r in records.values())
    listed = ", ".join(f"{n} {state}" for state, n in sorted(states.items())) or "none"
    where = "in any commit" if all_commits else "at HEAD"
    raise ValueError(
        f"No finished experiment of the paper's grid {where} (DVC lists {listed}), so there is "
        "nothing to report; `dvc queue status` shows the queue, `dvc queue logs NAME` why one failed, "
        "`nodule-net grid` queues the grid" + ("." if all_commits else ", `--all` reads other commits' experiments.")
    )


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that is a file, before any work (the report is a folder of files)."""
    if out.exists() and not out.is_dir():
        raise ValueError(
            f"--out {out} is a file, but the report is a folder (report.md and its figures): "
            f"name a folder, or move {out} away."
        )


def load_experiments(
    repo: str | Path = ".", names: Sequence[str] | None = None, all_commits: bool = False
) -> Experiments:
    """The experiments of ``repo`` as ``dvc exp show`` lists them (HEAD's, or all commits'), by name."""
    return Experiments(repo, select(latest_by_name(parse_exp_show(exp_show(repo, all_commits))), names))


def write_report(
    repo: str | Path = ".", out: str | Path = "report", names: Sequence[str] | None = None, all_commits: bool = False
) -> Path:
    """Write ``<out>/report.md`` and its figures; returns the report's path.

    Refuses (``ValueError``, before the work) an ``out`` that is a file or cannot be written,
    a ``names`` experiment that has not finished, and a report without a finished experiment.
    """
    out = Path(out)
    check_out_folder(out)
    exps = load_experiments(repo, names, all_commits)
    records = exps.records
    check_finished(records, all_commits)
    check_writable(out / "report.md")  # creates `out`; before the statistics, not after them
    try:
        sections, panels = build_sections(exps)
        _plot_lambda(exps, out / "table_s1_lambda.png")
        trained_on = {name: exps.trained_on(name) for name in sorted(exps.used)}
    finally:
        exps.close()
    used = [records[n] for n in sorted(exps.used)]
    lines = [source_line(used), "", "# nodule-net report: the paper's tables from this repository's experiments", ""]
    lines += provenance_lines(repo, used, len(records), trained_on=trained_on)
    lines += LEGEND
    if plot_differences(panels, out / "significance.png"):
        lines += ["![Differences in mean MAE vs no attention, Tables 1 and 2](significance.png)", ""]
    for section in sections:
        lines += render_section(section)
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path


def main_report(out: str, names: Sequence[str] | None, all_commits: bool) -> None:
    """The CLI's entry: write the report in the current repository and say where it is."""
    path = write_report(os.getcwd(), out, names, all_commits)
    print(f"report → {path}")
