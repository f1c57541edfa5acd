"""`nodule-net mae-table --exp`: DVC experiments side by side, from `dvc exp show --json`."""

from __future__ import annotations

import pytest

from nodule_net.attributes import ATTRIBUTES
from nodule_net.cli import mae_table
from nodule_net.cli.main import main

SUMMARY = "metrics/summary.json"


def _summary(value: float) -> dict:
    return {"data": {"mae": dict.fromkeys(ATTRIBUTES, value) | {"mean": value}, "baseline_mae": {"mean": 0.9}}}


def _experiment(name: str, rev: str, value: float, state: str | None = None) -> dict:
    executor = {"state": state} if state else None
    revision = {"rev": rev, "name": name, "data": {"timestamp": "2026-12-01T10:00:00", "metrics": {}}, "error": None}
    if state is None:  # a queued experiment has no metrics of its own yet
        revision["data"]["metrics"] = {SUMMARY: _summary(value)}
    return {"name": name, "executor": executor, "revs": [revision]}


# The shape of `dvc exp show --json` (DVC 3): the workspace, then HEAD with its experiments.
EXP_SHOW = [
    {"rev": "workspace", "name": None, "data": {"metrics": {SUMMARY: _summary(0.1)}}, "experiments": None},
    {
        "rev": "bb1a1e3058bd172bfa39a4a7a9a635a84c7fd21a",
        "name": "main",
        "data": {"metrics": {SUMMARY: _summary(0.5)}},
        "experiments": [
            _experiment("t1-none", "a9134bd" + "0" * 33, 0.75),
            _experiment("t1-sam", "fd77ce3" + "0" * 33, 0.0, state="queued"),
        ],
    },
]


@pytest.fixture
def exp_show(monkeypatch) -> None:
    monkeypatch.setattr(mae_table, "exp_show", lambda repo: EXP_SHOW)


@pytest.mark.usefixtures("exp_show")
def test_mae_table_compares_the_baseline_and_an_experiment_in_the_order_given(capsys) -> None:
    main(["mae-table", "--exp", "t1-none", "main"])
    rows = [line.split("|")[1:-1] for line in capsys.readouterr().out.splitlines()[2:4]]
    assert [cells[0].strip() for cells in rows] == ["t1-none", "main"]
    assert [c.strip() for c in rows[0][1:]] == ["0.750"] * 10 + ["-", "0.900"]
    assert rows[1][10].strip() == "0.500"  # the baseline's own mean, not the workspace's


@pytest.mark.usefixtures("exp_show")
def test_mae_table_refuses_unknown_and_unfinished_experiments(capsys) -> None:
    for name, message in (("t9", "No experiment or baseline named t9"), ("t1-sam", "t1-sam is queued")):
        with pytest.raises(SystemExit) as exit_info:
            main(["mae-table", "--exp", name])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
