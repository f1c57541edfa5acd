"""Experiments shared between machines with DVC itself: `dvc exp push` on one, `dvc exp pull` on another.

Two clones stand in for two machines: a bare git repository is the shared git remote and a
local folder the DVC remote. Machine A is the session's experiment repository (a copy of this
working tree with its DVC remote committed, so the test exercises the current code, and two
experiments run on a one-patient phantom: tests/conftest.py); it pushes one of them; machine B
clones the git remote, pulls the experiment and reads its metrics and predictions.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import dvc.api
import pandas as pd
import pytest

from repo_copies import experiment_env, run

# With test_report.py on one worker: the session's experiment repository is built once.
pytestmark = [pytest.mark.integration, pytest.mark.xdist_group("experiments")]

BIN = Path(sys.executable).parent  # the venv: `dvc`, and the `python` that stage commands call
EXPERIMENT = "t1-sam"  # the shared repository's last experiment: A's workspace holds its results


@pytest.fixture(scope="module")
def machines(experiment_repo: Path, tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("exp-remote")
    a, origin, b = experiment_repo, root / "origin.git", root / "machine-b"
    env = experiment_env(a, Path(sys.executable))
    dvc = str(BIN / "dvc")
    run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(origin)], root, env)
    # Machine A: the project with a shared DVC remote configured and committed, and its experiments.
    run(["git", "remote", "add", "origin", str(origin)], a, env)
    run(["git", "push", "--quiet", "origin", "main"], a, env)
    run([dvc, "exp", "push", "origin", EXPERIMENT], a, env)

    # Machine B: a plain clone of the git remote; the DVC remote comes with .dvc/config.
    run(["git", "clone", "--quiet", str(origin), str(b)], root, env)
    run([dvc, "exp", "pull", "origin", EXPERIMENT], b, env)
    shown = json.loads(run([dvc, "exp", "show", "--json"], b, env))
    (experiment,) = [
        rev
        for commit in shown
        for group in commit.get("experiments") or ()
        for rev in group["revs"]
        if rev["name"] == EXPERIMENT
    ]
    return SimpleNamespace(a=a, b=b, experiment=experiment)


def test_pulled_experiment_shows_the_params_and_metrics_machine_a_got(machines):
    data = machines.experiment["data"]
    params = data["params"]["params.yaml"]["data"]
    assert (params["phantom"]["patients"], params["folds"], params["train"]["epochs"]) == (
        ["LIDC-IDRI-0003"],
        [0, 1],
        2,
    )
    assert list(data["metrics"]) == ["metrics/summary.json"]  # the one DVC metrics file
    summary = data["metrics"]["metrics/summary.json"]["data"]
    # The workspace of A holds the experiment's results (a workspace `dvc exp run` applies them).
    assert summary == json.loads((machines.a / "metrics/summary.json").read_text())


def test_pulled_experiment_has_its_full_metrics_files_in_its_commit(machines):
    """Per-fold values (git-tracked) and dvclive's summary (DVC-cached): B reads both at the experiment."""
    mae = json.loads(dvc.api.read("metrics/mae.json", repo=str(machines.b), rev=EXPERIMENT))
    assert mae == json.loads((machines.a / "metrics/mae.json").read_text())
    assert {mae["folds"][k]["n_test"] for k in ("0", "1")} == {2}
    summary = machines.experiment["data"]["metrics"]["metrics/summary.json"]["data"]
    assert summary["mae"] == mae["mae"] and summary["baseline_mae"] == {"mean": mae["baseline_mae"]["mean"]}
    live = json.loads(dvc.api.read("metrics/train/fold1/metrics.json", repo=str(machines.b), rev=EXPERIMENT))
    assert live == json.loads((machines.a / "metrics/train/fold1/metrics.json").read_text())
    assert live["best_epoch"] in (1, 2)


def test_pulled_outputs_are_in_b_s_cache_and_read_through_dvc_api(machines):
    predictions = machines.experiment["data"]["outs"]["data/predictions.csv"]["hash"]
    assert (machines.b / ".dvc/cache/files/md5" / predictions[:2] / predictions[2:]).is_file()
    text = dvc.api.read("data/predictions.csv", repo=str(machines.b), rev=EXPERIMENT)  # a name is a rev
    assert text == (machines.a / "data/predictions.csv").read_text()
    table = pd.read_csv(io.StringIO(text))
    assert sorted(table["fold"]) == [0, 0, 1, 1] and table["nodule_id"].str.startswith("LIDC-IDRI-0003/").all()
