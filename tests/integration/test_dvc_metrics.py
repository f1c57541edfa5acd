"""DVC's own tables stay readable: one curated metrics file (a few dozen keys), the full files as
plain git-tracked outputs, and `dvc plots show`'s folder out of git."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodule_net.evaluation.evaluate import summary_metrics
from nodule_net.io.files import jsonable

REPO = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).with_name("dvc")
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
VARS = {key: value for block in DVC_YAML["vars"] for key, value in block.items()}
MAX_KEYS = 60  # `dvc metrics show --json`: a few dozen values a researcher compares
MAX_DIFF_LINES = 40  # `dvc metrics diff` between two ablations, header included


def _bodies() -> dict[str, dict]:
    return {name: stage.get("do", stage) for name, stage in DVC_YAML["stages"].items()}


def _entries(body: dict, kind: str) -> dict[str, dict]:
    """A stage's ``outs``/``metrics``/``plots`` as path → options."""
    entries: dict[str, dict] = {}
    for entry in body.get(kind) or []:
        entries |= {entry: {}} if isinstance(entry, str) else entry
    return entries


def _flat(tree: dict, prefix: str = "") -> dict:
    """Dotted keys, as DVC names metrics."""
    flat = {}
    for key, value in tree.items():
        flat |= _flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
    return flat


def _committed_summary() -> dict:
    """The summary the evaluate stage writes from the committed full metrics files."""
    mae, analysis = (json.loads((REPO / VARS[key]).read_text()) for key in ("mae", "analysis"))
    return jsonable(summary_metrics(mae, analysis))


def test_the_summary_is_the_only_dvc_metrics_file() -> None:
    declared = {name: _entries(body, "metrics") for name, body in _bodies().items()}
    assert declared.pop("evaluate") == {"${summary}": {"cache": False}}
    assert not any(declared.values()) and "metrics" not in DVC_YAML
    assert VARS["summary"] == "metrics/summary.json"


@pytest.mark.parametrize(
    ("stage", "path"), [("evaluate", "${mae}"), ("evaluate", "${analysis}"), ("evaluate", "${attention}")]
)
def test_the_full_metrics_files_are_git_tracked_outputs(stage: str, path: str) -> None:
    assert _entries(_bodies()[stage], "outs")[path] == {"cache": False}


@pytest.mark.parametrize(
    ("stage", "path"), [("extract", "${dataset_stats}"), ("train", "${train_live}/fold${item}/metrics.json")]
)
def test_extract_and_train_keep_their_summaries_in_dvcs_cache(stage: str, path: str) -> None:
    """DVC leaves a stage with a git-tracked output other than a metric or plot out of its run-cache
    (dvc.stage.Stage.run): extract and train, the stages queued experiments restore from it, have none."""
    outs = _entries(_bodies()[stage], "outs")
    assert path in outs and not outs[path]
    assert all(not entry or entry.get("cache", True) for entry in outs.values())


def test_evaluate_draws_the_training_curves_of_the_train_stages_folder() -> None:
    evaluate = _bodies()["evaluate"]
    assert "${train_live}" in evaluate["deps"] and "--live ${train_live}" in " ".join(evaluate["cmd"].split())


def test_the_committed_summary_holds_the_committed_full_files_values() -> None:
    """The summary `dvc repro` committed beside mae.json and analysis.json: the same values, in order."""
    committed = json.loads((REPO / VARS["summary"]).read_text())
    assert committed == _committed_summary() and list(committed) == list(_committed_summary())
    assert len(_flat(committed)) <= MAX_KEYS


def test_dvc_plots_output_is_git_ignored() -> None:
    ignored = subprocess.run(["git", "check-ignore", "-q", "dvc_plots/index.html"], cwd=REPO)
    assert ignored.returncode == 0, "add /dvc_plots/ to .gitignore: `dvc plots show` writes it"


def _dvc(repo: Path, *args: str) -> str:
    env = os.environ | {"DVC_NO_ANALYTICS": "1", "DVC_SITE_CACHE_DIR": str(repo.parent / "dvc-site-cache")}
    done = subprocess.run([str(DVC), *args], cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _git_commit(repo: Path, message: str) -> None:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.org"]
    subprocess.run(["git", "add", "-A"], cwd=repo, check=True)
    subprocess.run(["git", *identity, "commit", "-q", "-m", message], cwd=repo, check=True)


@pytest.mark.integration
@pytest.mark.skipif(not DVC.exists(), reason=f"no dvc executable beside {sys.executable}")
def test_dvc_metrics_show_and_diff_list_the_summary_only(tmp_path) -> None:
    """DVC itself on this dvc.yaml with the committed full files: the keys it shows, the diff's length."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("dvc.yaml", "params.yaml", VARS["mae"], VARS["analysis"]):
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text((REPO / name).read_text())
    # DVC-cached, so not in a clone: numbers of the same shape that DVC must not list either.
    (repo / VARS["dataset_stats"]).write_text(json.dumps({"nodules": 173, "interobserver_mae": {"mean": 0.5}}))
    for fold in range(5):
        (repo / VARS["train_live"] / f"fold{fold}").mkdir(parents=True)
        summary = {"train_loss": 0.3, "val_mae": 0.4, "step": 12, "best_epoch": 12, "best_val_mae": 0.4}
        (repo / VARS["train_live"] / f"fold{fold}" / "metrics.json").write_text(json.dumps(summary))
    summary = _committed_summary()
    (repo / VARS["summary"]).write_text(json.dumps(summary, indent=2) + "\n")
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    _dvc(repo, "init", "-q")
    _git_commit(repo, "baseline")

    shown = json.loads(_dvc(repo, "metrics", "show", "--json"))
    (workspace,) = shown.values()
    assert list(workspace["data"]) == [VARS["summary"]]  # not mae.json, analysis.json, dataset.json, fold<k>/
    keys = _flat(workspace["data"][VARS["summary"]]["data"])
    assert keys == _flat(summary) and len(keys) <= MAX_KEYS

    # An ablation without ASCMM, SAM and CAAM (model.variant=none), every other value changed.
    ablation = {group: {k: v + 0.01 for k, v in values.items()} for group, values in summary.items()}
    for group in ("aux_mae", "sam", "caam"):
        ablation.pop(group)
    (repo / VARS["summary"]).write_text(json.dumps(ablation, indent=2) + "\n")
    _git_commit(repo, "variant none")
    diff = _dvc(repo, "metrics", "diff", "HEAD~1", "HEAD").splitlines()
    assert len(diff) == 1 + len(keys) <= MAX_DIFF_LINES  # a header and one row per summary key
    assert [line.split()[1] for line in diff[1:]] == sorted(keys)  # DVC sorts the rows by key
    assert not any("folds" in line or "by_depth" in line for line in diff)
