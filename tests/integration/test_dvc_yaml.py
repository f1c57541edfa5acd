"""dvc.yaml against the code: stage commands run the checkout's own package, and each stage's
hand-kept ``deps`` list exactly the package modules its script imports (directly or not)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from nodule_net.runtime.imports import import_closure
from nodule_net.training.fingerprint import TRAINING_CODE

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def stage_body(name: str) -> dict:
    stage = STAGES[name]
    return stage["do"] if "foreach" in stage or "matrix" in stage else stage


def stage_script(name: str) -> Path:
    """The script a stage's ``cmd`` runs: ``python -m pipeline.<module> ...`` from the repo root."""
    cmd = " ".join(stage_body(name)["cmd"].split())
    match = re.match(r"python -m pipeline\.(\w+) ", cmd)
    assert match, f"stage {name}: cmd must start with `python -m pipeline.<stage>` (the checkout's own code): {cmd}"
    return REPO / "pipeline" / f"{match[1]}.py"


def test_import_closure_follows_imports_transitively(tmp_path) -> None:
    package = tmp_path / "nodule_net"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from nodule_net.b import thing\n")
    (package / "b.py").write_text("import numpy\n\ndef f():\n    from nodule_net import c\n")
    (package / "c.py").write_text("from . import d\n")
    (package / "d.py").write_text("")
    (package / "unused.py").write_text("")
    script = tmp_path / "pipeline" / "s.py"
    script.parent.mkdir()
    script.write_text("from nodule_net.a import x\nimport os\n")
    assert {p.name for p in import_closure(script, package)} == {"__init__.py", "a.py", "b.py", "c.py", "d.py"}


@pytest.mark.parametrize("name", sorted(STAGES))
def test_stage_deps_are_the_scripts_import_closure(name: str) -> None:
    script = stage_script(name)
    code = {p.relative_to(REPO).as_posix() for p in import_closure(script)} | {script.relative_to(REPO).as_posix()}
    deps = {d for d in stage_body(name)["deps"] if d.endswith(".py")}
    missing, stale = sorted(code - deps), sorted(deps - code)
    assert not missing, f"dvc.yaml stage {name}: deps lack {missing}, which {script.name} imports"
    assert not stale, f"dvc.yaml stage {name}: deps list {stale}, which {script.name} never imports"


def test_training_code_is_what_train_imports() -> None:
    """The checkpoint fingerprint covers every module that training runs (derived, not hand-kept)."""
    assert {
        "training/fit.py",
        "model/net.py",
        "data/batches.py",
        "io/store.py",
        "io/files.py",
        "io/checkpoint.py",
    } <= set(TRAINING_CODE)
    package = REPO / "nodule_net"
    assert {p.relative_to(package).as_posix() for p in import_closure(package / "training" / "fit.py")} <= set(
        TRAINING_CODE
    )
    assert "data/phantom.py" not in TRAINING_CODE and "experiments/report.py" not in TRAINING_CODE


def test_the_params_stage_checks_the_whole_file_first_and_writes_nothing() -> None:
    """Its params are all of params.yaml (DVC: an empty entry), so any change runs it, a new key included;
    first in dvc.yaml, so that `dvc repro` (which runs independent stages in dvc.yaml's order) checks
    before the long stages; no outs, so that it never makes another stage re-run.
    (tests/integration/test_dvc_params_stage.py runs it under DVC.)"""
    stage = STAGES["params"]
    assert next(iter(STAGES)) == "params"
    assert stage["params"] == [{"params.yaml": None}]
    assert stage["cmd"] == "python -m pipeline.params --params params.yaml"
    assert not {"outs", "metrics", "plots"} & set(stage)
