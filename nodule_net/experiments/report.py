"""`nodule-net report`: the paper's Tables 1–5, S1 and S2 from the repository's DVC experiments.

Reads the experiments queued by :mod:`nodule_net.experiments.grid` through DVC (see
:mod:`nodule_net.experiments.records`), puts each into its row of the paper's tables, next to the
paper's published numbers (:mod:`nodule_net.experiments.paper_results`), adds paired t-tests and
bootstrap intervals against the attention-free model (:mod:`nodule_net.experiments.significance`),
and writes ``<out>/report.md`` with its figures. A cell whose experiment is missing,
unfinished or failed reads "—", and each table names the experiment (and revision)
behind every row and the nodules and folds it rests on.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from nodule_net.attributes import ABBREVIATIONS, ATTRIBUTES
from nodule_net.experiments import grid, paper_results
from nodule_net.experiments.records import (
    ExperimentRecord,
    exp_show,
    latest_by_name,
    parse_exp_show,
    pipeline_var,
    read_predictions,
)
from nodule_net.experiments.significance import Comparison, absolute_errors, compare, pair_errors
from nodule_net.io.files import check_writable, write_text_atomic

MISSING = "—"
ALPHA = 0.05  # the paper's significance level (Table 1's asterisks)
MAE_COLUMNS = (*ATTRIBUTES, "mean")
MAE_HEADER = [*ABBREVIATIONS, "Mean"]
# Params that may differ between the experiments of one report without changing what they measure.
IGNORED_PARAMS = ("train.device", "phantom.workers", "extract.workers")

TABLE1_ROWS = (
    ("none", "No Attention"),
    ("sam", "SAM"),
    ("caam", "CAAM"),
    ("caam_ascmm", "CAAM+ASCMM"),
    ("full", "SAM+CAAM+ASCMM"),
)
TABLE2_ROWS = (("none", "2D Slice-based"), ("sam", "2D Slice-based + SAM"), ("3d", "3D Volume-based"))
TABLE5_HEADER = ["Accuracy", "Sensitivity", "Specificity", "Precision", "AUC"]


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


def _fmt(value: float | None, digits: int = 3, mark: str = "") -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return MISSING
    return f"{value:.{digits}f}{mark}"


def _fmt_p(p: float | None) -> str:
    if p is None or np.isnan(p):
        return MISSING
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _mae_cells(row: dict | None, digits: int = 3, marks: dict[str, str] | None = None) -> list[str]:
    row = row or {}
    return [_fmt(row.get(c), digits, (marks or {}).get(c, "")) for c in MAE_COLUMNS]


def _flatten(params: dict, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat |= _flatten(value, name + ".")
        else:
            flat[name] = value
    return flat


class Experiments:
    """The experiments a report draws on, by name; predictions are read once, when first needed."""

    def __init__(self, repo: str | Path, records: dict[str, ExperimentRecord], predictions_path: str) -> None:
        self.repo = Path(repo)
        self.records = records
        self.predictions_path = predictions_path
        self.used: set[str] = set()
        self._predictions: dict[str, pd.DataFrame] = {}

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

    def mae(self, name: str, key: str = "mae") -> dict | None:
        record = self.get(name)
        metrics = record.metrics_with("baseline_mae") if record else None
        return (metrics or {}).get(key)

    def nodules_and_folds(self, name: str) -> tuple[int, int] | None:
        record = self.get(name)
        metrics = record.metrics_with("baseline_mae") if record else None
        if not metrics or "folds" not in metrics:
            return None
        folds = metrics["folds"]
        return sum(int(f.get("n_test", 0)) for f in folds.values()), len(folds)

    def predictions(self, name: str) -> pd.DataFrame | None:
        if self.get(name) is None:
            return None
        if name not in self._predictions:
            self._predictions[name] = read_predictions(self.repo, self.records[name], self.predictions_path)
        return self._predictions[name]


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


def _mae_section(
    exps: Experiments, key: str, title: str, rows: Sequence[tuple[str, str]], paper: dict[str, dict]
) -> tuple[Section, dict[str, Comparison | str]]:
    """Tables 1 and 2: our MAE rows (``*``: p < 0.05 vs no attention), the paper's, the tests."""
    names = {variant: (grid.THREE_D if variant == "3d" else grid.variant_name(variant)) for variant, _ in rows}
    baseline = names["none"]
    tested = [names[v] for v, _ in rows if v != "none"]
    comparisons = _comparisons(exps, tested, baseline)
    ours = []
    for variant, label in rows:
        result = comparisons.get(names[variant])
        significant = isinstance(result, Comparison) and result.p_values["mean"] < ALPHA
        ours.append(
            [
                label,
                *_mae_cells(exps.mae(names[variant]), marks={"mean": "*" if significant else ""}),
                exps.label(names[variant]),
            ]
        )
    paper_rows = [
        [
            label,
            *_mae_cells(paper[v], marks={"mean": "*" if key == "1" and v in paper_results.TABLE1_SIGNIFICANT else ""}),
        ]
        for v, label in rows
    ]
    labels = dict(rows)
    p_rows, ci_rows, why = [], [], []
    for variant, _ in rows[1:]:
        result = comparisons[names[variant]]
        if isinstance(result, Comparison):
            p_rows.append([labels[variant], *[_fmt_p(result.p_values.get(c)) for c in MAE_COLUMNS]])
            interval = MISSING if np.isnan(result.ci_low) else f"[{result.ci_low:+.3f}, {result.ci_high:+.3f}]"
            ci_rows.append([labels[variant], f"{result.mean_difference:+.3f}", interval, str(result.n)])
        else:
            p_rows.append([labels[variant], *[MISSING] * len(MAE_COLUMNS)])
            ci_rows.append([labels[variant], MISSING, MISSING, MISSING])
            if exps.get(names[variant]) and exps.get(baseline):  # both ran, yet they cannot be paired
                why.append(f"{labels[variant]}: no test: {result}")
    section = Section(
        key,
        title,
        [
            Table(
                f"Ours (MAE; `*`: paired t-test p < 0.05 on the per-nodule mean absolute error vs {labels['none']})",
                ["Method", *MAE_HEADER, "Experiment"],
                ours,
            ),
            Table(
                "Paper" + (" (`*`: p < 0.05 vs No Attention)" if key == "1" else ""),
                ["Method", *MAE_HEADER],
                paper_rows,
            ),
            Table(
                f"Paired t-test p-values vs {labels['none']} (scipy.stats.ttest_rel on per-nodule absolute errors; "
                "Mean: on each nodule's mean error over attributes)",
                ["Method", *MAE_HEADER],
                p_rows,
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
    return section, comparisons


def table3(exps: Experiments) -> Section:
    """Auxiliary (ASCMM) vs final predictions of CAAM+ASCMM (the paper's) and of the full model."""
    ours = []
    for variant, label in (("caam_ascmm", "CAAM+ASCMM"), ("full", "SAM+CAAM+ASCMM")):
        name = grid.variant_name(variant)
        for key, kind in (("aux_mae", "Auxiliary"), ("mae", "Final")):
            ours.append([f"{kind} ({label})", *_mae_cells(exps.mae(name, key)), exps.label(name)])
    paper = [
        [kind, *_mae_cells(paper_results.TABLE3[key])] for key, kind in (("aux_mae", "Auxiliary"), ("mae", "Final"))
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
    """The paper's published rows, then ours: the IB of our dataset and the proposed (full) model."""
    full = grid.variant_name("full")
    paper = [[label, *_mae_cells(row, 2), "paper"] for label, row in paper_results.TABLE4.items()]
    # The IB belongs to the dataset: take it from the full model's run, else from any finished one.
    ib_name = next(
        (
            n
            for n in [full, *(e.name for e in grid.paper_grid())]
            if (r := exps.get(n)) and r.metrics_with("interobserver_mae")
        ),
        None,
    )
    dataset = None
    ib_source = "no finished experiment"
    if ib_name and (ib_record := exps.get(ib_name)) and (dataset := ib_record.metrics_with("interobserver_mae")):
        ib_source = f"dataset of {exps.label(ib_name)} ({dataset.get('nodules', '?')} nodules)"
    ours = [
        ["IB (ours)", *_mae_cells(dataset["interobserver_mae"] if dataset else None, 2), ib_source],
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
    return _fmt(None if value is None else 100 * float(value), 1)


def table5(exps: Experiments) -> Section:
    """Benign–malignant classification: the paper's rows, then our regression and classifier models."""
    paper = [[label, *[_fmt(v, 1) for v in values], "paper"] for label, values in paper_results.TABLE5.items()]
    ours, counts = [], []
    for name, label in (
        (grid.variant_name("full"), "Proposed, malignancy score > 3 (ours, regression)"),
        (grid.CLASSIFIER, "Proposed, classifier (ours)"),
    ):
        record = exps.get(name)
        metrics = (record.metrics_with("benign_malignant") or {}).get("benign_malignant") if record else None
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
            paper.append([f"{lam:g}", *_mae_cells(paper_results.TABLE_S1[lam])])
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
        ["Individual", *_mae_cells(paper_results.TABLE_S2["individual"])],
        ["Proposed", *_mae_cells(paper_results.TABLE_S2["proposed"])],
    ]
    return Section(
        "S2",
        "Performance of individually trained attributes (MAE)",
        [Table("Ours", ["Method", *MAE_HEADER, "Experiment"], ours), Table("Paper", ["Method", *MAE_HEADER], paper)],
        ["Individual: " + ", ".join(exps.label(n) for n in names) + ".", _rests_on(exps, [*names, full])],
    )


def build_sections(exps: Experiments) -> tuple[list[Section], dict[str, Comparison | str]]:
    """Every table of the report, and the comparisons against no attention (for the figure)."""
    s1, c1 = _mae_section(
        exps,
        "1",
        "Prediction performance per attribute with or without our attention modules",
        TABLE1_ROWS,
        paper_results.TABLE1,
    )
    s2, c2 = _mae_section(
        exps,
        "2",
        "Comparison of performance between the 2D slice-based model against its 3D volume-based version",
        TABLE2_ROWS,
        paper_results.TABLE2,
    )
    return [s1, s2, table3(exps), table4(exps), table5(exps), table_s1(exps), table_s2(exps)], c1 | c2


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
    """The settings all experiments share, and any that differ (which would make rows incomparable)."""
    if not records:
        return []
    flat = {r.name: _flatten(r.params) for r in records}
    keys = sorted(set().union(*flat.values()) - set(grid.GRID_KEYS) - set(IGNORED_PARAMS))
    shared: list[str] = []
    differing: list[str] = []
    for key in keys:
        values = {repr(f.get(key)) for f in flat.values()}
        (shared if len(values) == 1 else differing).append(key)
    wanted = ("data.source", "phantom.patients", "train.epochs", "folds", "seed", "split.group_by_patient")
    first = flat[records[0].name]
    lines = ["Shared settings: " + ", ".join(f"`{k}={first.get(k)}`" for k in wanted if k in shared) + "."]
    if differing:
        lines.append(
            "**Settings differ between experiments** (rows may not be comparable): "
            + "; ".join(f"`{k}`: " + ", ".join(f"{name}={f.get(k)}" for name, f in flat.items()) for k in differing[:5])
            + "."
        )
    return lines


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


def _plot_differences(comparisons: dict[str, Comparison | str], path: Path) -> bool:
    """Forest plot of Δ mean MAE vs no attention with bootstrap intervals; False if nothing to draw."""
    done = {name: c for name, c in comparisons.items() if isinstance(c, Comparison) and not np.isnan(c.ci_low)}
    if not done:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 0.5 * len(done) + 1.2))
    names = list(done)
    y = np.arange(len(names))
    mid = [done[n].mean_difference for n in names]
    err = [
        [m - done[n].ci_low for n, m in zip(names, mid, strict=True)],
        [done[n].ci_high - m for n, m in zip(names, mid, strict=True)],
    ]
    ax.errorbar(mid, y, xerr=err, fmt="o", capsize=3)
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_yticks(y, names)
    ax.invert_yaxis()
    ax.set_xlabel("Δ mean MAE vs t1-none (95% bootstrap CI)")
    fig.tight_layout()
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
    records = select(latest_by_name(parse_exp_show(exp_show(repo, all_commits))), names)
    return Experiments(repo, records, pipeline_var(repo, "predictions"))


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
    sections, comparisons = build_sections(exps)
    used = [records[n] for n in sorted(exps.used)]
    lines = [source_line(used), "", "# nodule-net report: the paper's tables from this repository's experiments", ""]
    lines += [
        f"Generated by `nodule-net report` from {len(used)} finished experiments "
        f"({len(records) - len(used)} others listed but not finished or not in a table; "
        "`dvc exp show` lists them). A cell reads " + MISSING + " where its experiment is missing, "
        "queued, running or failed; each row names its experiment and revision.",
        "",
    ]
    lines += [*settings_lines(used), ""]
    if _plot_differences(comparisons, out / "significance.png"):
        lines += ["![Differences vs no attention](significance.png)", ""]
    _plot_lambda(exps, out / "table_s1_lambda.png")
    for section in sections:
        lines += render_section(section)
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines).rstrip() + "\n")
    return path


def main_report(out: str, names: Sequence[str] | None, all_commits: bool) -> None:
    """The CLI's entry: write the report in the current repository and say where it is."""
    path = write_report(os.getcwd(), out, names, all_commits)
    print(f"report → {path}")
