"""`nodule-net report` on two real DVC experiments (the session's shared repository: tiny phantom, 1 epoch, 2 folds)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from scipy import stats

from nodule_net.attributes import ATTRIBUTES
from nodule_net.experiments.records import pipeline_var
from nodule_net.experiments.report import (
    MISSING,
    PAPER_NA,
    UNDEFINED,
    Experiments,
    build_sections,
    load_experiments,
    select,
)

REPO = Path(__file__).resolve().parents[2]
# With test_exp_remote.py on one worker: the session's experiment repository is built once (tests/conftest.py).
pytestmark = pytest.mark.xdist_group("experiments")


def _run(cmd: list[str], cwd: Path, env: dict) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def project(experiment_repo: Path) -> Path:
    """The session's git + DVC copy of the pipeline (tests/conftest.py) on one phantom patient (4 nodules)
    with experiments t1-none, t5-classify, t1-sam; each experiment's predictions are also copied aside
    (``<name>.csv``)."""
    return experiment_repo


@pytest.fixture(scope="module")
def built(project: Path):
    """The experiments as the report reads them (one `dvc exp show`), and its sections."""
    exps = load_experiments(project)
    return exps, {s.key: s for s in build_sections(exps)[0]}


def _row(table, label: str) -> list[str]:
    return next(row for row in table.rows if row[0] == label)


def _table(section, caption_start: str):
    return next(t for t in section.tables if t.caption.startswith(caption_start))


def _abs_errors(path: Path) -> pd.DataFrame:
    frame = pd.read_csv(path).set_index("nodule_id").sort_index()
    return pd.DataFrame({a: (frame[f"pred_{a}"] - frame[f"true_{a}"]).abs() for a in ATTRIBUTES})


@pytest.mark.integration
def test_tables_have_cells_for_the_experiments_and_dashes_for_the_rest(built) -> None:
    exps, sections = built
    assert {"t1-none", "t1-sam"} <= set(exps.records)
    assert list(sections) == ["1", "2", "3", "4", "5", "S1", "S2"]
    ours = sections["1"].tables[0]
    mae = exps.output("t1-none", "mae")["mae"]
    none_row = _row(ours, "No Attention")
    assert none_row[1:11] == [f"{mae[a]:.3f}" for a in (*ATTRIBUTES, "mean")]
    assert none_row[-1] == f"t1-none ({exps.records['t1-none'].rev[:7]})"
    assert all(cell != MISSING for cell in _row(ours, "SAM")[1:11])
    assert _row(ours, "CAAM")[1:] == [MISSING] * 10 + ["t1-caam: missing"]
    assert _row(sections["2"].tables[0], "3D Volume-based")[-1] == "t2-3d: missing"
    assert "Rests on 4 nodules in 2 folds" in sections["1"].notes[0]
    assert all(row[1] == MISSING for row in sections["S1"].tables[0].rows)  # no λ experiment ran
    assert _row(sections["S2"].tables[0], "Individual")[1:11] == [MISSING] * 10
    ib = exps.output("t1-none", "dataset_stats")["interobserver_mae"]
    assert _row(sections["4"].tables[0], "IB (ours)")[1:11] == [f"{ib[a]:.2f}" for a in (*ATTRIBUTES, "mean")]
    assert _row(sections["4"].tables[0], "MTMR-Net, Liu et al. [12]")[9] == PAPER_NA  # the paper's N/A


@pytest.mark.integration
def test_t_test_and_bootstrap_are_on_the_paired_per_nodule_errors(project: Path, built) -> None:
    none, sam = _abs_errors(project.parent / "t1-none.csv"), _abs_errors(project.parent / "t1-sam.csv")
    assert list(none.index) == list(sam.index) and len(none) == 4
    section = built[1]["1"]
    p_row, ci_row = _row(_table(section, "Paired t-test"), "SAM"), _row(_table(section, "Difference"), "SAM")
    for k, attribute in enumerate(ATTRIBUTES):
        p = stats.ttest_rel(sam[attribute], none[attribute]).pvalue
        assert p_row[1 + k] == (UNDEFINED if np.isnan(p) else "<0.001" if p < 0.001 else f"{p:.3f}")
    difference = sam.mean(axis=1) - none.mean(axis=1)
    p_mean = stats.ttest_rel(sam.mean(axis=1), none.mean(axis=1)).pvalue
    assert p_row[-1] == ("<0.001" if p_mean < 0.001 else f"{p_mean:.3f}")
    assert ci_row[1] == f"{difference.mean():+.3f}" and ci_row[3] == "4"
    low, high = (float(v) for v in ci_row[2].strip("[]").split(", "))
    assert difference.min() - 1e-3 <= low <= difference.mean() <= high <= difference.max() + 1e-3


@pytest.mark.integration
def test_per_fold_values_are_read_from_the_files_at_each_experiments_revision(project: Path, built) -> None:
    exps = built[0]
    summary = pipeline_var(project, "summary")
    workspace = json.loads((project / pipeline_var(project, "mae")).read_text())  # t1-sam's: it ran last
    for name in ("t1-none", "t1-sam"):
        record = exps.records[name]
        assert list(record.metrics) == [summary]  # DVC's metrics: the summary alone
        for var in ("mae", "analysis"):  # git-tracked: the experiment's commit holds them
            path = pipeline_var(project, var)
            committed = subprocess.run(["git", "show", f"{record.rev}:{path}"], cwd=project, capture_output=True)
            assert exps.output(name, var) == json.loads(committed.stdout), (name, var)
        stats = json.loads((project / pipeline_var(project, "dataset_stats")).read_text())  # from DVC's cache
        assert exps.output(name, "dataset_stats") == stats  # one dataset for both experiments
        mae = exps.output(name, "mae")
        assert sorted(mae["folds"]) == ["0", "1"] and sum(f["n_test"] for f in mae["folds"].values()) == 4
        assert record.metrics[summary]["mae"]["mean"] == mae["mae"]["mean"]
    assert exps.output("t1-none", "mae") != workspace and exps.output("t1-sam", "mae") == workspace
    assert exps.output("t1-nope", "mae") is None


@pytest.mark.integration
def test_selecting_experiments(built) -> None:
    exps = built[0]
    only_none = Experiments(exps.repo, select(exps.records, ["t1-none"]))
    ours = build_sections(only_none)[0][0].tables[0]
    assert _row(ours, "SAM")[1:] == [MISSING] * 10 + ["t1-sam: missing"]  # exists in DVC, left out
    assert _row(ours, "No Attention")[1] != MISSING
    with pytest.raises(ValueError, match="No experiment named t1-nope"):
        select(exps.records, ["t1-nope"])


@pytest.mark.integration
def test_report_command_writes_markdown_and_figures(project: Path, tmp_path: Path) -> None:
    # The copy's own command: in a checkout, `nodule-net` refuses another checkout's package.
    done = subprocess.run(
        [sys.executable, "-m", "nodule_net.cli.main", "report", "--out", str(tmp_path)],
        cwd=project,
        env=os.environ | {"PYTHONPATH": str(project)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert str(tmp_path / "report.md") in done.stdout
    text = (tmp_path / "report.md").read_text()
    assert text.splitlines()[0].startswith("**Synthetic pixels, not real CT:**")
    for key in ("1", "2", "3", "4", "5", "S1", "S2"):
        assert f"## Table {key}. " in text
    assert "| CAAM | " + " | ".join([MISSING] * 10) + " | t1-caam: missing |" in text
    assert "t1-sam (" in text and "Rests on 4 nodules in 2 folds" in text
    assert (tmp_path / "table_s1_lambda.png").stat().st_size > 1000
    assert (tmp_path / "significance.png").stat().st_size > 1000
    head = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=project, capture_output=True, text=True)
    provenance = text.split("## Provenance")[1].split("## Marks")[0]
    assert f"- **Baseline commit** `{head.stdout.strip()}` (" in provenance and "): tiny pipeline" in provenance
    assert "- **Device**: `train.device=cpu` → cpu in every experiment." in provenance  # as train recorded it
    assert "  - `train`: " in provenance and "`epochs=2`" in provenance and "`folds=[0, 1]`" in provenance
    assert "| Training-fold mean (trivial baseline) | " in text.split("## Table 2.")[0]
    assert text.count("| Training-fold mean (trivial baseline) | ") == 3  # Tables 1, 2 and 4


def test_report_out_that_is_a_file_is_refused_before_the_work(tmp_path: Path, capsys, monkeypatch) -> None:
    from nodule_net.cli.main import main
    from nodule_net.experiments import report

    monkeypatch.setattr(report, "exp_show", lambda *args, **kwargs: pytest.fail("read DVC before checking --out"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "report.md"
    out.write_text("an older report\n")
    with pytest.raises(SystemExit) as exited:
        main(["report", "--out", str(out)])
    assert exited.value.code == 1
    assert capsys.readouterr().err == (
        f"error: --out {out} is a file, but the report is a folder (report.md and "
        f"its figures): name a folder, or move {out} away.\n"
    )
    assert out.read_text() == "an older report\n"


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory) -> Path:
    """A tiny git + DVC repository whose experiments t1-sam failed (run from DVC's queue) and t1-caam is queued."""
    repo = tmp_path_factory.mktemp("unfinished")
    params = {
        "lambda": 0.1,
        "model": {"variant": "full", "attribute": None, "malignancy": "regress"},
        "train": {"epochs": 1},
    }
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    fail_at_zero = (
        "python -c \"import sys, yaml; sys.exit(yaml.safe_load(open('params.yaml'))['train']['epochs'] == 0)\""
    )
    (repo / "dvc.yaml").write_text(
        yaml.safe_dump(
            {
                "vars": [{"predictions": "predictions.csv"}],
                "stages": {"train": {"cmd": fail_at_zero, "params": ["lambda", "model", "train"]}},
            }
        )
    )
    env = os.environ | {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
    dvc = [sys.executable, "-m", "dvc"]
    _run([*git, "init", "-q"], repo, env)
    _run([*dvc, "init", "-q"], repo, env)
    _run([*git, "add", "."], repo, env)
    _run([*git, "commit", "-qm", "one stage"], repo, env)
    _run([*dvc, "exp", "run", "--queue", "--name", "t1-sam", "-S", "train.epochs=0"], repo, env)
    _run([*dvc, "exp", "run", "--run-all"], repo, env)  # runs the queue: t1-sam fails
    _run([*dvc, "exp", "run", "--queue", "--name", "t1-caam"], repo, env)
    states = {r.name: r.state for r in load_experiments(repo).records.values()}
    assert states == {"t1-sam": "failed", "t1-caam": "queued"}
    return repo


@pytest.mark.integration
def test_report_of_a_failed_experiment_says_so_and_exits_1(
    unfinished: Path, tmp_path: Path, capsys, monkeypatch
) -> None:
    from nodule_net.cli.main import main

    monkeypatch.chdir(unfinished)
    with pytest.raises(SystemExit) as exited:
        main(["report", "--exp", "t1-sam", "t1-caam", "--out", str(tmp_path / "report")])
    assert exited.value.code == 1
    error = capsys.readouterr().err
    assert (
        error.startswith(
            "error: --exp t1-sam (failed), t1-caam (queued): not finished, so the report would have "
            "no numbers for them; "
        )
        and error.count("\n") == 1
    )
    assert "`dvc queue logs t1-sam`" in error
    assert not (tmp_path / "report").exists()


@pytest.mark.integration
def test_report_without_a_finished_experiment_exits_1(unfinished: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    from nodule_net.cli.main import main

    monkeypatch.chdir(unfinished)
    with pytest.raises(SystemExit) as exited:
        main(["report", "--out", str(tmp_path / "report")])
    assert exited.value.code == 1
    error = capsys.readouterr().err
    assert (
        error.startswith(
            "error: No finished experiment of the paper's grid at HEAD (DVC lists 1 failed, "
            "1 queued), so there is nothing to report; "
        )
        and error.count("\n") == 1
    )
    assert not (tmp_path / "report").exists()
