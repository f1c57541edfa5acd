"""tools.gpu_check: the one-run GPU measurements, tried out on the CPU with tiny data."""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synthetic_nodules import write_stage_inputs
from tools import gpu_check

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_inputs(tmp_path) -> list[str]:
    """The --dataset/--splits/--params arguments for 12 tiny nodules, 2 folds, 1-thread training on the CPU."""
    write_stage_inputs(tmp_path, {"device": "cpu", "fold_processes": 1})
    return [
        "--dataset",
        str(tmp_path / "nodules.h5"),
        "--splits",
        str(tmp_path / "splits.json"),
        "--params",
        str(tmp_path / "params.yaml"),
    ]


def without_dvc_and_pylidc(tmp_path: Path, monkeypatch) -> None:
    """Make the steps' subprocesses fail to import what a lent GPU machine lacks."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(
        "import sys\nfor name in ('dvc', 'dvclive', 'pylidc', 'sqlalchemy'):\n    sys.modules[name] = None\n"
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "site"), str(REPO)]))


@pytest.mark.slow
def test_phantom_step_trains_and_scores_each_precision(tmp_path, tiny_inputs, capsys, monkeypatch) -> None:
    without_dvc_and_pylidc(tmp_path, monkeypatch)
    out = tmp_path / "out"
    rc = gpu_check.main(
        [
            "--device",
            "cpu",
            "--quick",
            "--steps",
            "environment,phantom",
            "--out",
            str(out),
            "--budget-s",
            "300",
            *tiny_inputs,
        ]
    )
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [summary["steps"][s]["rc"] for s in ("environment", "phantom")] == [0, 0]
    assert json.loads((out / "environment.json").read_text())["cuda_available"] in (True, False)
    runs = json.loads((out / "phantom.json").read_text())["runs"]
    assert list(runs) == list(gpu_check.QUICK_PHANTOM_RUNS)
    for name, run in runs.items():
        assert run["precision"] == name and run["epochs"] == 1 and run["seconds"] > 0
        assert set(run["best_epoch"]) == {"0", "1"}
        assert 0 < run["mae"]["mean"] < 5 and math.isfinite(run["baseline_mae"]["mean"])
    # bf16 rounds the forward: the same seeds give other weights, so other test predictions.
    assert runs["bf16"]["mae"]["mean"] != runs["fp32"]["mae"]["mean"]
    assert runs["bf16"]["baseline_mae"] == runs["fp32"]["baseline_mae"]
    log = (out / "gpu-check.log").read_text()
    assert "phantom: bf16: pooled test MAE" in log and "phantom: bf16: pooled test MAE" in capsys.readouterr().out


@pytest.mark.slow
def test_a_step_out_of_time_is_killed_and_the_next_still_runs(tmp_path, tiny_inputs, monkeypatch) -> None:
    monkeypatch.setitem(gpu_check.STEP_LIMITS, "phantom", 1)  # importing torch alone takes longer
    out = tmp_path / "out"
    rc = gpu_check.main(
        ["--device", "cpu", "--quick", "--steps", "phantom,environment", "--out", str(out), *tiny_inputs]
    )
    assert rc == 1
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert steps["phantom"]["timed_out"] and steps["phantom"]["rc"] != 0 and steps["phantom"]["seconds"] < 10
    assert steps["environment"] == {"rc": 0, "seconds": steps["environment"]["seconds"], "timed_out": False}
    assert not (out / "phantom.json").exists()
    assert "(killed: out of time)" in (out / "gpu-check.log").read_text()


def test_an_exhausted_budget_skips_the_remaining_steps(tmp_path, tiny_inputs) -> None:
    out = tmp_path / "out"
    assert (
        gpu_check.main(
            ["--device", "cpu", "--steps", "environment,bench", "--budget-s", "5", "--out", str(out), *tiny_inputs]
        )
        == 1
    )
    steps = json.loads((out / "summary.json").read_text())["steps"]
    assert set(steps) == {"environment", "bench"} and all("skipped" in s for s in steps.values())


def test_the_phantom_runs_change_train_config_fields() -> None:
    from nodule_net.config import TrainConfig

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(set(run) <= fields for run in gpu_check.PHANTOM_RUNS.values()), gpu_check.PHANTOM_RUNS
    assert set(gpu_check.QUICK_PHANTOM_RUNS) <= set(gpu_check.PHANTOM_RUNS)


def test_unknown_steps_are_named() -> None:
    with pytest.raises(SystemExit):
        gpu_check.main(["--steps", "bench,benhc"])


def _cuda_only_tests() -> set[tuple[str, str]]:
    """(file, test function) of every test that is marked to skip without CUDA, whole or for one parameter."""
    found = set()
    for path in sorted((REPO / "tests").rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                marks = "".join(ast.unparse(d) for d in node.decorator_list)
                if "cuda.is_available()" in marks:
                    found.add((path.relative_to(REPO).as_posix(), node.name))
    return found


@pytest.mark.slow
def test_the_tests_step_selects_every_cuda_only_test() -> None:
    cuda_only = _cuda_only_tests()
    assert len(cuda_only) >= 5  # today: 5 tests in 3 files
    assert {file for file, _ in cuda_only} <= set(gpu_check.GPU_TESTS)
    listed = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            "-k",
            gpu_check.GPU_TEST_SELECTION,
            *gpu_check.GPU_TESTS,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    selected = {
        (line.split("::")[0], line.split("::")[1].split("[")[0]) for line in listed.splitlines() if "::" in line
    }
    assert cuda_only <= selected
