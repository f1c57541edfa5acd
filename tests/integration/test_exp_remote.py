"""Experiments shared between machines with DVC itself: `dvc exp push` on one, `dvc exp pull` on another.

Two clones stand in for two machines: a bare git repository is the shared git remote and a
local folder the DVC remote. Machine A (a copy of this working tree, so the test exercises
the current code) runs one experiment on a one-patient phantom and pushes it; machine B
clones the git remote, pulls the experiment and reads its metrics and predictions.
"""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import dvc.api
import pandas as pd
import pytest

from repo_copies import copy_working_tree, run

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the venv: `dvc`, and the `python` that stage commands call
EXPERIMENT = "tiny"
# LIDC-IDRI-0003 has 4 nodules: 2 folds of 2 test nodules, each training on 1 and validating on 1.
PARAMS = {
    "phantom.patients": "[LIDC-IDRI-0003]",
    "phantom.workers": "1",
    "extract.workers": "1",
    "folds": "[0, 1]",
    "train.epochs": "1",
}


@pytest.fixture(scope="module")
def machines(tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("exp-remote")
    origin, store, a, b = root / "origin.git", root / "dvc-store", root / "machine-a", root / "machine-b"
    env = os.environ | {
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "OMP_NUM_THREADS": "1",  # tiny tensors on a shared 2-core machine: a second thread only waits
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "machine A",
        "GIT_AUTHOR_EMAIL": "a@example.org",
        "GIT_COMMITTER_NAME": "machine A",
        "GIT_COMMITTER_EMAIL": "a@example.org",
    }
    dvc = str(BIN / "dvc")
    run(["git", "init", "--quiet", "--bare", "--initial-branch=main", str(origin)], root, env)

    # Machine A: the project with a shared DVC remote configured and committed, then one experiment.
    a.mkdir()
    copy_working_tree(a)
    run(["git", "init", "--quiet", "--initial-branch=main"], a, env)
    run([dvc, "remote", "add", "--default", "store", str(store)], a, env)
    run(["git", "add", "."], a, env)
    run(["git", "commit", "--quiet", "-m", "baseline"], a, env)
    run(["git", "remote", "add", "origin", str(origin)], a, env)
    run(["git", "push", "--quiet", "origin", "main"], a, env)
    # The committed dvc.lock describes the 50-patient default; these params differ, so every stage runs.
    sets = [arg for key, value in PARAMS.items() for arg in ("-S", f"{key}={value}")]
    # The venv's nodule_net is an editable install of /work/main: put A's own copy first.
    run([dvc, "exp", "run", "--name", EXPERIMENT, *sets], a, env | {"PYTHONPATH": str(a)})
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
    return SimpleNamespace(a=a, b=b, store=store, experiment=experiment)


def test_pulled_experiment_shows_the_params_and_metrics_machine_a_got(machines):
    data = machines.experiment["data"]
    params = data["params"]["params.yaml"]["data"]
    assert (params["phantom"]["patients"], params["folds"], params["train"]["epochs"]) == (
        ["LIDC-IDRI-0003"],
        [0, 1],
        1,
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
    assert live["best_epoch"] == 1


def test_pulled_outputs_are_in_b_s_cache_and_read_through_dvc_api(machines):
    predictions = machines.experiment["data"]["outs"]["data/predictions.csv"]["hash"]
    assert (machines.b / ".dvc/cache/files/md5" / predictions[:2] / predictions[2:]).is_file()
    text = dvc.api.read("data/predictions.csv", repo=str(machines.b), rev=EXPERIMENT)  # a name is a rev
    assert text == (machines.a / "data/predictions.csv").read_text()
    table = pd.read_csv(io.StringIO(text))
    assert sorted(table["fold"]) == [0, 0, 1, 1] and table["nodule_id"].str.startswith("LIDC-IDRI-0003/").all()
