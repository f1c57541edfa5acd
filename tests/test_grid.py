"""The experiment grid: what it holds, its names, overrides, and queuing in a real DVC repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodule_net import grid
from nodule_net.attributes import ATTRIBUTES
from nodule_net.experiments import exp_show, parse_exp_show


def test_grid_holds_every_paper_experiment_once() -> None:
    experiments = grid.paper_grid()
    names = [e.name for e in experiments]
    assert len(names) == len(set(names)) == 5 + 1 + 5 + 9 + 1  # Tables 1, 2, S1 (λ=0.1 shared), S2, 5
    by_name = {e.name: e.settings for e in experiments}
    assert by_name["t1-none"] == {"model.variant": "none", "model.attribute": None, "model.malignancy": "regress",
                                  "lambda": 0.1}
    assert by_name["t2-3d"]["model.variant"] == "3d"
    assert by_name["t5-classify"]["model.malignancy"] == "classify"
    assert {by_name[grid.attribute_name(a)]["model.attribute"] for a in ATTRIBUTES} == set(ATTRIBUTES)
    # Every λ of Table S1 (0, 0.01, 0.1, 0.5, 1, 10) has exactly one experiment; 0.1 is Table 1's full model.
    lambdas = sorted(s["lambda"] for n, s in by_name.items() if n.startswith("s1-") or n == "t1-full")
    assert lambdas == [0.0, 0.01, 0.1, 0.5, 1.0, 10.0]
    assert grid.lambda_name(0.1) == "t1-full" and grid.lambda_name(0.5) == "s1-lambda-0.5"
    assert all(by_name[n]["model.variant"] == "full" for n in by_name if n.startswith(("s1-", "s2-")))


def test_names_are_valid_git_ref_names() -> None:
    """DVC stores experiments as refs/exps/<baseline>/<name>: dots and underscores must be legal there."""
    for experiment in grid.paper_grid():
        ref = f"refs/exps/ab/cdef0123/{experiment.name}"
        assert subprocess.run(["git", "check-ref-format", ref]).returncode == 0, experiment.name
    assert subprocess.run(["git", "check-ref-format", "refs/exps/ab/cd/s1-lambda-0..5"]).returncode != 0


def test_queue_command_passes_extra_overrides_first() -> None:
    experiment = {e.name: e for e in grid.paper_grid()}["s1-lambda-0"]
    command = grid.queue_command(experiment, ["train.epochs=2", "phantom.patients=12"])
    assert command[:6] == ["dvc", "exp", "run", "--queue", "--name", "s1-lambda-0"]
    assert command[6:] == ["-S", "train.epochs=2", "-S", "phantom.patients=12", "-S", "model.variant=full",
                           "-S", "model.attribute=null", "-S", "model.malignancy=regress", "-S", "lambda=0.0"]


@pytest.mark.parametrize(("override", "match"), [("lambda=0.5", "sets lambda itself"),
                                                 ("+model.variant=sam", "sets model.variant itself"),
                                                 ("train.epochs", "expected key=value")])
def test_bad_overrides_are_refused(override: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        grid.check_overrides([override])


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args], cwd=repo,
                   check=True, capture_output=True)


@pytest.fixture()
def git_repo(tmp_path: Path) -> Path:
    """A committed git repository with the grid's params and a one-line DVC stage."""
    params = {"lambda": 0.1, "model": {"variant": "full", "attribute": None, "malignancy": "regress"},
              "train": {"epochs": 12}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"show": {
        "cmd": "python -c \"print('ok')\"", "params": ["lambda", "model", "train"]}}}))
    _git(tmp_path, "init", "-q")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "grid test")
    return tmp_path


@pytest.fixture()
def dvc_repo(git_repo: Path) -> Path:
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=git_repo, check=True)
    _git(git_repo, "add", ".")
    _git(git_repo, "commit", "-qm", "dvc init")
    return git_repo


def test_queue_grid_queues_named_experiments_with_overrides(dvc_repo: Path) -> None:
    printed: list[str] = []
    two = grid.paper_grid()[:2]
    grid.queue_grid(dvc_repo, ["train.epochs=2"], experiments=two, echo=printed.append)
    queued = {r.name: r for r in parse_exp_show(exp_show(dvc_repo))}
    assert set(queued) == {"t1-none", "t1-sam"}
    assert all(r.state == "queued" for r in queued.values())
    assert queued["t1-none"].param("model.variant") == "none" and queued["t1-sam"].param("model.variant") == "sam"
    assert queued["t1-sam"].param("train.epochs") == 2  # the pass-through override
    assert printed[0].startswith("queued t1-none") and any("dvc queue start -j N" in line for line in printed)


def test_queue_grid_refuses_uncommitted_changes_and_dry_run_only_prints(git_repo: Path) -> None:
    (git_repo / "params.yaml").write_text((git_repo / "params.yaml").read_text().replace("epochs: 12", "epochs: 3"))
    with pytest.raises(ValueError, match="Uncommitted changes to params.yaml"):
        grid.queue_grid(git_repo)
    printed: list[str] = []
    # No DVC repository here: a dry run never calls dvc.
    grid.queue_grid(git_repo, ["train.epochs=2"], dry_run=True, echo=printed.append)
    assert printed[0] == ("dvc exp run --queue --name t1-none -S train.epochs=2 -S model.variant=none "
                          "-S model.attribute=null -S model.malignancy=regress -S lambda=0.1")
    assert sum(line.startswith("dvc exp run --queue") for line in printed) == len(grid.paper_grid())
    assert any("would refuse" in line for line in printed)


def test_params_without_a_grid_key_are_refused(git_repo: Path) -> None:
    params = yaml.safe_load((git_repo / "params.yaml").read_text())
    del params["model"]["malignancy"]
    (git_repo / "params.yaml").write_text(yaml.safe_dump(params))
    _git(git_repo, "commit", "-qam", "no malignancy key")
    with pytest.raises(ValueError, match="params.yaml has no model.malignancy"):
        grid.queue_grid(git_repo)
