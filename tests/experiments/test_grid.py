"""The experiment grid: what it holds, its names, overrides, and queuing in a real DVC repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodule_net.attributes import ATTRIBUTES
from nodule_net.experiments import grid
from nodule_net.experiments.records import exp_show, parse_exp_show

REPO = Path(__file__).resolve().parents[2]


def test_grid_holds_every_paper_experiment_once() -> None:
    experiments = grid.paper_grid()
    names = [e.name for e in experiments]
    assert len(names) == len(set(names)) == 5 + 1 + 5 + 9 + 1  # Tables 1, 2, S1 (λ=0.1 shared), S2, 5
    by_name = {e.name: e.settings for e in experiments}
    assert by_name["t1-none"] == {
        "model.variant": "none",
        "model.attribute": None,
        "model.malignancy": "regress",
        "lambda": 0.1,
    }
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
    assert command[6:] == [
        "-S",
        "train.epochs=2",
        "-S",
        "phantom.patients=12",
        "-S",
        "model.variant=full",
        "-S",
        "model.attribute=null",
        "-S",
        "model.malignancy=regress",
        "-S",
        "lambda=0.0",
    ]


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("lambda=0.5", "sets lambda itself"),
        ("+model.variant=sam", "sets model.variant itself"),
        ("train.epochs", "expected key=value"),
    ],
)
def test_bad_overrides_are_refused(override: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        grid.check_overrides([override])


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture()
def git_repo(tmp_path: Path) -> Path:
    """A committed git repository with the project's params.yaml and a one-line DVC stage."""
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    (tmp_path / "dvc.yaml").write_text(
        yaml.safe_dump(
            {"stages": {"show": {"cmd": "python -c \"print('ok')\"", "params": ["lambda", "model", "train"]}}}
        )
    )
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


@pytest.mark.integration
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


@pytest.mark.slow
def test_queue_grid_refuses_uncommitted_changes_and_dry_run_only_prints(git_repo: Path) -> None:
    (git_repo / "params.yaml").write_text((git_repo / "params.yaml").read_text().replace("epochs: 12", "epochs: 3"))
    with pytest.raises(ValueError, match=r"Uncommitted changes to params\.yaml"):
        grid.queue_grid(git_repo)
    printed: list[str] = []
    # No DVC repository here: a dry run never calls dvc.
    grid.queue_grid(git_repo, ["train.epochs=2"], dry_run=True, echo=printed.append)
    assert printed[0] == (
        "dvc exp run --queue --name t1-none -S train.epochs=2 -S model.variant=none "
        "-S model.attribute=null -S model.malignancy=regress -S lambda=0.1"
    )
    assert sum(line.startswith("dvc exp run --queue") for line in printed) == len(grid.paper_grid())
    assert any("would refuse" in line for line in printed)


def test_params_without_a_grid_key_are_refused(git_repo: Path) -> None:
    params = yaml.safe_load((git_repo / "params.yaml").read_text())
    del params["model"]["malignancy"]
    (git_repo / "params.yaml").write_text(yaml.safe_dump(params))
    _git(git_repo, "commit", "-qam", "no malignancy key")
    with pytest.raises(ValueError, match=r"params\.yaml has no model\.malignancy"):
        grid.queue_grid(git_repo)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("train.epochs=0", r"params.yaml with -S train.epochs=0: train.epochs = 0 is not allowed; it must be"),
        # The schema's own words, as every stage of `dvc exp run -S +trian.epochs=1` would say them.
        ("trian.epochs=1", r"params.yaml with -S trian.epochs=1: unknown key 'trian'; did you mean 'train'\?"),
        ("+train.epoch=1", r"unknown key 'train.epoch'; did you mean 'train.epochs'\?"),
        ("~train.augment", r"missing key train.augment"),
        # DVC writes the string 'yes'; the stages read params.yaml with YAML 1.2's booleans, and so does the check.
        ("split.group_by_patient=yes", r"split.group_by_patient = 'yes' is not allowed; it must be true or false"),
        ("train.epochs=1,2", r"-S train.epochs=1,2 is a sweep"),
        ("train.epochs=[1", r"-S train.epochs=\[1: DVC refuses it: no viable alternative at input '\[1'"),
    ],
)
def test_overrides_are_checked_against_the_params_schema_before_queuing(
    git_repo: Path, override: str, match: str
) -> None:
    """As DVC would write them into params.yaml, then the schema of every stage; a dry run checks them too."""
    printed: list[str] = []
    with pytest.raises(ValueError, match=match):
        grid.queue_grid(git_repo, [override], dry_run=True, echo=printed.append)
    assert printed == []  # refused before the first command


@pytest.mark.slow
def test_overrides_are_read_as_dvc_reads_them(git_repo: Path) -> None:
    """Hydra's grammar, not YAML's: 1e-3 is a number (PyYAML would read the string '1e-3' and refuse it)."""
    printed: list[str] = []
    grid.queue_grid(git_repo, ["train.lr=1e-3", "train.betas=[0.5,0.9]"], dry_run=True, echo=printed.append)
    assert printed[0].startswith("dvc exp run --queue --name t1-none -S train.lr=1e-3 -S train.betas=[0.5,0.9] ")
    train = grid.overridden_params(git_repo / "params.yaml", ["train.lr=1e-3", "train.betas=[0.5,0.9]"]).train
    assert (train.lr, train.betas) == (0.001, (0.5, 0.9))


def test_dvcs_whole_message_when_it_refuses_an_override(git_repo: Path) -> None:
    """A key the schema knows (a default fills it) but params.yaml lacks: Hydra says how to add it."""
    params = yaml.safe_load((git_repo / "params.yaml").read_text())
    del params["train"]["precision"]
    (git_repo / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ValueError) as refused:
        grid.queue_grid(git_repo, ["train.precision=bf16"], dry_run=True, echo=lambda line: None)
    message = str(refused.value)
    assert "\n" not in message and "DVC refuses it" in message
    # Not only the last line of DVC's message (`object_type=dict`): the part that says what to do.
    assert "Could not override 'train.precision'" in message and "use +train.precision=bf16" in message


def test_grid_subset_by_name(git_repo: Path) -> None:
    printed: list[str] = []
    grid.queue_grid(git_repo, names=["t5-classify", "t1-sam"], dry_run=True, echo=printed.append)
    commands = [line for line in printed if line.startswith("dvc exp run")]
    assert [c.split()[5] for c in commands] == ["t1-sam", "t5-classify"]  # in the grid's order
    with pytest.raises(ValueError, match=r"No experiment t1-nope in the grid; its names: t1-none, t1-sam, "):
        grid.queue_grid(git_repo, names=["t1-nope"], dry_run=True)


def test_grid_command_queues_a_subset(git_repo: Path, capsys, monkeypatch) -> None:
    from nodule_net.cli.main import main

    monkeypatch.chdir(git_repo)
    main(["grid", "--dry-run", "--exp", "t2-3d", "-S", "train.epochs=2"])
    out = capsys.readouterr().out
    assert [line.split()[5] for line in out.splitlines() if line.startswith("dvc exp run")] == ["t2-3d"]
    assert "would queue 1 experiments with -S train.epochs=2." in out


def _queued_names(repo: Path) -> list[str]:
    return sorted(r.name for r in parse_exp_show(exp_show(repo)) if r.state == "queued")


@pytest.mark.integration
def test_a_second_grid_queues_nothing_and_names_every_clash(dvc_repo: Path) -> None:
    """A finished t1-none and a queued t1-sam at HEAD: a grid with both queues none of its three."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", "t1-none"],
        cwd=dvc_repo,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    grid.queue_grid(dvc_repo, experiments=grid.paper_grid()[1:2], echo=lambda line: None)  # t1-sam
    three = grid.paper_grid()[:3]  # t1-none, t1-sam, t1-caam: the clash is not the first name
    with pytest.raises(ValueError) as refused:
        grid.queue_grid(dvc_repo, experiments=three, echo=lambda line: None)
    message = str(refused.value)
    assert "2 of 3 names are taken at this commit (finished: t1-none; queued: t1-sam); nothing was queued" in message
    assert "`dvc exp remove t1-none t1-sam`" in message and "`nodule-net grid --exp t1-caam`" in message
    assert _queued_names(dvc_repo) == ["t1-sam"]  # once, and t1-caam not queued


@pytest.mark.integration
def test_a_dvc_refusal_mid_queue_is_shown_whole_and_undone(dvc_repo: Path) -> None:
    """DVC refuses the second experiment (a name git cannot store): the first is taken out of the queue again."""
    first = grid.paper_grid()[0]
    bad = grid.Experiment("s1-lambda-0..5", "Table S1", first.settings)
    with pytest.raises(ValueError) as refused:
        grid.queue_grid(dvc_repo, experiments=[first, bad], echo=lambda line: None)
    message = str(refused.value)
    assert message.startswith("dvc exp run --queue --name s1-lambda-0..5 failed: ")
    assert "Invalid exp name s1-lambda-0..5, the exp name must follow rules in https://" in message
    assert "t1-none was taken out of the queue again; nothing is queued" in message
    assert _queued_names(dvc_repo) == []


@pytest.mark.slow
def test_dry_run_into_a_closed_pipe_exits_quietly(git_repo: Path) -> None:
    """`nodule-net grid --dry-run | head`: the reader has gone before the first line (deterministic EPIPE)."""
    read, write = os.pipe()
    os.close(read)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "nodule_net.cli.main", "grid", "--dry-run"],
            cwd=git_repo,
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")
