"""`nodule-net grid --slurm` without a cluster: its sbatch options, its batch scripts run by bash against
stand-in `git` and `dvc` commands, the status it reads from Slurm and the tasks, and what it refuses.

The real thing, against a private Slurm, is tests/integration/test_slurm_grid.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from nodule_net.config import load_params
from nodule_net.experiments import grid, slurm
from nodule_net.experiments.slurm import DataStages, classify, data_key, error_line, node_local_reason
from nodule_net.experiments.slurm_scripts import (
    Layout,
    Paths,
    array_script,
    data_script,
    for_data_job,
    sbatch_options,
    with_defaults,
)

REPO = Path(__file__).resolve().parents[2]
COMMIT = "0123456789abcdef0123456789abcdef01234567"
TRACKED = ("metrics/dataset.json",)

# Stand-ins for git and dvc: each appends its argv (one line) to $CALLS and exits $FAIL_<name> (default 0).
STAND_IN = """#!/bin/bash
echo "$(basename "$0") $*" >> "$CALLS"
env="OMP_NUM_THREADS=$OMP_NUM_THREADS CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"
echo "$env PYTHONPATH=$PYTHONPATH" > "$CALLS.env"
code="FAIL_$(basename "$0")"
if [ -n "${!code:-}" ] && [[ "$*" == *"exp run"* ]]; then echo "error: no GPU" >&2; exit "${!code}"; fi
"""


def test_sbatch_options_are_grouped_and_spelled_long() -> None:
    tokens = ["--partition", "gpu", "--gres=gpu:1", "-c", "4", "-Jname", "--requeue", "-t", "1:00:00"]
    assert sbatch_options(tokens) == [
        ("--partition", "gpu"),
        ("--gres", "gpu:1"),
        ("--cpus-per-task", "4"),
        ("--job-name", "name"),
        ("--requeue", None),
        ("-t", "1:00:00"),
    ]


@pytest.mark.parametrize("tokens", [["--array=0-3"], ["-o", "x.log"], ["--dependency=afterok:1"], ["-a", "1"]])
def test_options_nodule_net_sets_itself_are_refused(tokens: list[str]) -> None:
    with pytest.raises(ValueError, match="nodule-net grid --slurm sets it itself"):
        sbatch_options(tokens)


def test_a_stray_word_is_refused() -> None:
    with pytest.raises(ValueError, match="stray: not an option of nodule-net grid or sbatch"):
        sbatch_options(["--requeue=yes", "stray"])


def test_user_options_replace_the_defaults_and_the_data_job_asks_for_no_gpu() -> None:
    defaults = dict(with_defaults([]))
    assert defaults == {"--cpus-per-task": "2", "--requeue": None, "--open-mode": "append"}
    mine = with_defaults(sbatch_options(["-c", "8", "--no-requeue", "--gres=gpu:2", "--wait", "-p", "gpu"]))
    assert ("--cpus-per-task", "2") not in mine and ("--cpus-per-task", "8") in mine
    assert ("--requeue", None) not in mine and ("--no-requeue", None) in mine
    assert [name for name, _ in for_data_job(mine)] == ["--open-mode", "--cpus-per-task", "--no-requeue", "-p"]


@pytest.fixture()
def tree(tmp_path: Path) -> dict:
    """A grid folder, a repository path, a cache, and a bin folder of stand-in git and dvc (as the venv's)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("git", "dvc"):
        (bin_dir / name).write_text(STAND_IN)
        (bin_dir / name).chmod(0o755)
    layout = Layout(tmp_path / "slurm" / COMMIT[:12])
    for folder in (layout.state, layout.work_tree("t1-full"), layout.data_tree):
        folder.mkdir(parents=True)
    (tmp_path / "cache").mkdir()
    paths = Paths(tmp_path / "repo", COMMIT, tmp_path / "cache", bin_dir)
    return {"layout": layout, "paths": paths, "calls": tmp_path / "calls", "tmp": tmp_path}


def _run_script(text: str, tree: dict, env: dict[str, str]) -> subprocess.CompletedProcess:
    script = tree["tmp"] / "job.sh"
    script.write_text(text)
    base = {"PATH": os.environ["PATH"], "CALLS": str(tree["calls"]), "SLURM_JOB_ID": "41", "HOME": str(tree["tmp"])}
    return subprocess.run(["bash", str(script)], env=base | env, capture_output=True, text=True)


def _calls(tree: dict) -> list[str]:
    return tree["calls"].read_text().splitlines() if tree["calls"].exists() else []


def _experiments() -> dict[str, list[str]]:
    chosen = grid.select_experiments(["t1-none", "t1-full"])
    return {e.name: grid.set_params(grid.experiment_overrides(e, ["train.epochs=2"])) for e in chosen}


def test_array_task_runs_its_experiment_with_the_grids_set_params(tree: dict) -> None:
    arguments = _experiments()
    text = array_script(tree["paths"], tree["layout"], "nn", arguments, "k1", TRACKED, with_defaults([]))
    assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0
    assert "#SBATCH --array=0-1\n" in text and "#SBATCH --requeue\n" in text and "#SBATCH --cpus-per-task=2\n" in text
    task = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "42", "SLURM_CPUS_PER_TASK": "3"}
    done = _run_script(text, tree, task)
    assert done.returncode == 0, done.stderr
    work = tree["layout"].work_tree("t1-full")
    full = grid.select_experiments(["t1-full"])[0]
    queued = grid.queue_command(full, ["train.epochs=2"])
    assert _calls(tree) == [
        f"git reset --quiet --hard {COMMIT}",
        f"git fetch --quiet {tree['layout'].data_tree} refs/exps/01/{COMMIT[2:]}/data-k1",
        "git checkout --quiet FETCH_HEAD -- dvc.lock metrics/dataset.json",
        "dvc checkout --quiet --with-deps split",
        " ".join(["dvc", "exp", "run", *queued[4:]]),  # `--name t1-full -S …` exactly as `nodule-net grid` queues it
        f"dvc exp push --no-cache {tree['paths'].repo} t1-full",
    ]
    assert (tree["calls"].parent / "calls.env").read_text().split() == [
        "OMP_NUM_THREADS=3",  # torch's threads: the task's CPUs
        "CUDA_VISIBLE_DEVICES=",  # no GPU allocated: the CPU, not somebody else's GPU
        f"PYTHONPATH={work}",
    ]
    assert (tree["layout"].state / "t1-full").read_text().split()[:2] == ["done", "42_1"]
    assert "== t1-full: task 42_1, attempt 1, on " in done.stdout


def test_a_task_with_gpus_keeps_slurms_cuda_visible_devices_and_a_failure_is_its_last_word(tree: dict) -> None:
    text = array_script(tree["paths"], tree["layout"], "nn", _experiments(), "k1", TRACKED, [])
    task = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_JOB_ID": "42", "SLURM_RESTART_COUNT": "2"}
    gpus = {"SLURM_JOB_GPUS": "3", "CUDA_VISIBLE_DEVICES": "0", "FAIL_dvc": "3"}
    done = _run_script(text, tree, task | gpus)
    assert done.returncode == 3
    assert "CUDA_VISIBLE_DEVICES=0" in (tree["calls"].parent / "calls.env").read_text()
    assert not any(call.startswith("dvc exp push") for call in _calls(tree))
    assert (tree["layout"].state / "t1-full").read_text().split()[:2] == ["failed:3", "42_1"]
    assert "attempt 3" in done.stdout


def test_a_node_that_does_not_see_the_cache_fails_in_one_line(tree: dict) -> None:
    tree["paths"].cache.rmdir()
    text = array_script(tree["paths"], tree["layout"], "nn", _experiments(), "k1", TRACKED, [])
    done = _run_script(text, tree, {"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_JOB_ID": "42"})
    assert done.returncode == 1 and _calls(tree) == []
    assert done.stderr.startswith("error: ") and "does not see the DVC cache" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_data_job_runs_the_data_stages_as_an_experiment_and_records_it(tree: dict) -> None:
    options = with_defaults(for_data_job(sbatch_options(["--gres=gpu:1", "-p", "cpu"])))
    text = data_script(tree["paths"], tree["layout"], "nn-data", ["-S", "phantom.patients=8"], "k1", options)
    assert "--gres" not in text and "#SBATCH -p cpu\n" in text  # the data job asks for no GPU
    done = _run_script(text, tree, {})
    assert done.returncode == 0, done.stderr
    assert _calls(tree) == [
        f"git reset --quiet --hard {COMMIT}",
        f"git update-ref -d refs/exps/01/{COMMIT[2:]}/data-k1",
        "dvc exp run --name data-k1 -S phantom.patients=8 split",
    ]
    assert tree["layout"].data_state("k1").read_text().split() == ["done", "41"]


def test_sbatch_short_option_lines_are_valid_for_sbatch(tree: dict) -> None:
    text = array_script(
        tree["paths"], tree["layout"], "nn", _experiments(), "k1", TRACKED, sbatch_options(["-p", "gpu"])
    )
    assert "#SBATCH -p gpu\n" in text  # sbatch reads `-p=gpu` as the partition "=gpu"


def test_data_key_follows_the_data_params_only() -> None:
    stages = DataStages(("data.source", "extract", "folds", "phantom", "seed", "split"), TRACKED)
    base = load_params(REPO / "params.yaml")
    other_training = load_params(REPO / "params.yaml")
    object.__setattr__(other_training.train, "epochs", 1)
    other_data = load_params(REPO / "params.yaml")
    object.__setattr__(other_data.phantom, "patients", 3)
    assert data_key(stages, base) == data_key(stages, other_training) != data_key(stages, other_data)


@pytest.mark.parametrize(
    ("done", "dvc_state", "task", "squeue", "word", "expected"),
    [
        (True, "success", "9_0", ("RUNNING", "None"), ("running", "9_0"), ("done", "")),
        (False, "queued", None, None, None, ("pending", "in DVC's own queue (dvc queue status)")),
        (False, None, None, None, None, ("missing", "")),
        (False, None, "9_0", ("PENDING", "Dependency"), None, ("pending", "Dependency")),
        (False, None, "9_0", ("REQUEUED", "None"), ("running", "9_0"), ("pending", "")),
        (False, None, "9_0", ("RUNNING", "None"), ("running", "9_0"), ("running", "")),
        (False, None, "9_0", ("FAILED", "NonZeroExitCode"), ("failed:1", "9_0"), ("failed", "exit 1")),
        (False, None, "9_0", None, ("failed:1", "9_0"), ("failed", "exit 1")),
        (
            False,
            None,
            "9_0",
            ("TIMEOUT", "TimeLimit"),
            ("running", "9_0"),
            ("failed", "ended without a last word, killed (Slurm: TIMEOUT)"),
        ),
        (
            False,
            None,
            "9_0",
            ("CANCELLED", "DependencyNeverSatisfied"),
            None,
            ("failed", "never started (Slurm: CANCELLED (DependencyNeverSatisfied))"),
        ),
        (
            False,
            None,
            "12_0",
            None,
            ("failed:1", "9_0"),
            ("failed", "never started (Slurm no longer lists it)"),
        ),  # an older task's word
        (
            False,
            None,
            "9_0",
            ("COMPLETED", "None"),
            ("done", "9_0"),
            ("failed", "the task finished but its experiment is not in the repository (push refused?)"),
        ),
    ],
)
def test_classify(done, dvc_state, task, squeue, word, expected) -> None:
    assert classify(done, dvc_state, task, squeue, word) == expected


def test_error_line_is_the_last_attempts_error(tmp_path: Path) -> None:
    log = tmp_path / "9_0.log"
    log.write_text(
        "== t1-sam: task 9_0, attempt 1\nerror: an old one\n"
        "slurmstepd: error: *** JOB 9 ON n1 CANCELLED AT 2026-12-01T10:00:00 DUE TO JOB REQUEUE ***\n"
        "== t1-sam: task 9_0, attempt 2\nRunning stage 'train@0':\n"
        "2026-12-01 10:01:00 error: train.device='cuda' but no CUDA GPU is visible; use `auto` or `cpu`.\n"
        "ERROR: failed to reproduce 'train@0': failed to run: python -m pipeline.train, exited with 1\n"
    )
    assert (
        error_line(log)
        == "2026-12-01 10:01:00 error: train.device='cuda' but no CUDA GPU is visible; use `auto` or `cpu`."
    )
    log.write_text("== t1-sam: task 9_0, attempt 1\nslurmstepd: error: *** JOB 9 CANCELLED DUE TO TIME LIMIT ***\n")
    assert error_line(log) == "slurmstepd: error: *** JOB 9 CANCELLED DUE TO TIME LIMIT ***"
    assert error_line(tmp_path / "absent.log") == ""


def test_node_local_paths_are_refused_on_a_cluster_of_other_nodes(tmp_path: Path) -> None:
    mounts = [("/", "ext4"), ("/scratch", "tmpfs"), ("/home", "nfs4")]
    assert node_local_reason(Path("/home/me/nodule-net"), mounts) is None
    assert node_local_reason(Path("/scratch/me/cache"), mounts) == "it is on tmpfs (/scratch)"
    assert node_local_reason(Path("/tmp/x"), mounts) == "it is under /tmp"
    slurm.check_shared({"DVC cache": Path("/tmp/x")}, ["localhost"])  # one node, this machine: anything goes
    with pytest.raises(
        ValueError, match=r"The DVC cache /tmp/x is not on a file system every node sees \(it is under /tmp\)"
    ):
        slurm.check_shared({"DVC cache": Path("/tmp/x")}, ["node01", "node02"])


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture()
def dvc_project(tmp_path: Path) -> Path:
    """A committed git + DVC repository with the project's params.yaml and dvc.yaml (no stage run)."""
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    _git(tmp_path, "init", "-q")
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "slurm test")
    return tmp_path


@pytest.mark.slow
def test_dry_run_prints_both_scripts_and_submits_nothing(dvc_project: Path, tmp_path_factory, monkeypatch) -> None:
    only_git = tmp_path_factory.mktemp("bin")
    (only_git / "git").symlink_to(shutil.which("git"))
    monkeypatch.setenv("PATH", str(only_git))  # no sbatch anywhere: a dry run needs none
    printed: list[str] = []
    chosen = slurm.submit_grid(
        dvc_project,
        ["train.epochs=2"],
        ["--gres=gpu:1"],
        dry_run=True,
        names=["t1-full", "t1-none"],
        echo=printed.append,
    )
    assert [e.name for e in chosen] == ["t1-none", "t1-full"]
    text = "\n".join(printed)
    assert "\nname=data-" in text and '\ndvc exp run --name "$name" -S train.epochs=2 split\n' in text
    assert (
        "t1-full) set_params=(" + " ".join(grid.set_params(grid.experiment_overrides(chosen[1], ["train.epochs=2"])))
        in text
    )
    assert "#SBATCH --gres=gpu:1" in text and "sbatch --parsable --dependency=afterok:<data job>" in text
    assert not (dvc_project / "slurm").exists()
    with pytest.raises(ValueError, match=r"^sbatch, sinfo, squeue, scancel are not on PATH \(`nodule-net grid"):
        slurm.submit_grid(dvc_project, names=["t1-none"])
    _fake_command(only_git / "sbatch")  # sbatch alone: sinfo would be a bare [Errno 2] part-way
    with pytest.raises(ValueError, match=r"^sinfo, squeue, scancel are not on PATH \(`nodule-net grid --slurm` runs"):
        slurm.submit_grid(dvc_project, names=["t1-none"])
    assert not (dvc_project / "slurm").exists()


def _fake_command(path: Path) -> None:
    """An executable at ``path`` that would fail if it were run (the checks must not run it)."""
    path.write_text('#!/bin/sh\necho "$0 must not run" >&2\nexit 99\n')
    path.chmod(0o755)


@pytest.mark.parametrize(
    ("present", "missing"),
    [
        (("sbatch",), "sinfo, squeue, scancel are"),
        (("sbatch", "sinfo", "squeue"), "scancel is"),
        (("sinfo", "squeue", "scancel"), "sbatch is"),
    ],
)
def test_a_missing_slurm_command_is_one_line_naming_it(tmp_path: Path, monkeypatch, present, missing) -> None:
    for name in present:
        _fake_command(tmp_path / name)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ValueError) as refused:
        slurm.check_slurm_commands()
    assert str(refused.value) == (
        f"{missing} not on PATH (`nodule-net grid --slurm` runs sbatch, sinfo, squeue, scancel): submit from a "
        "Slurm login node, or put the folder of Slurm's commands on PATH (or see the scripts with --dry-run)."
    )
    for name in slurm.SLURM_COMMANDS:
        _fake_command(tmp_path / name)
    slurm.check_slurm_commands()  # all four present: nothing to say, and none of them run


@pytest.mark.slow
def test_uncommitted_changes_and_bad_overrides_are_refused_before_anything(dvc_project: Path) -> None:
    with pytest.raises(ValueError, match=r"train\.epochs"):
        slurm.submit_grid(dvc_project, ["train.epochs=0"], names=["t1-none"])
    (dvc_project / "params.yaml").write_text(
        (dvc_project / "params.yaml").read_text().replace("epochs: 12", "epochs: 3")
    )
    with pytest.raises(ValueError, match=r"^Uncommitted changes to params.yaml: Slurm tasks start from HEAD"):
        slurm.submit_grid(dvc_project, names=["t1-none"])


def test_sbatch_options_reach_grid_only_with_slurm(monkeypatch) -> None:
    from nodule_net.cli.main import main

    seen = {}
    monkeypatch.setattr(
        slurm, "submit_grid", lambda repo, extra, sbatch, dry_run, names, slurm_dir: seen.update(locals())
    )
    main(["grid", "--slurm", "--exp", "t1-none", "--partition", "gpu", "-S", "train.epochs=1", "--gres=gpu:1"])
    assert seen["sbatch"] == ["--partition", "gpu", "--gres=gpu:1"] and seen["extra"] == ["train.epochs=1"]
    assert seen["names"] == ["t1-none"]
    with pytest.raises(SystemExit) as exit_info:
        main(["grid", "--partition", "gpu"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit):
        main(["report", "--gres=gpu:1"])


@pytest.mark.slow
def test_status_needs_slurm_and_a_grid(dvc_project: Path, monkeypatch, capsys) -> None:
    from nodule_net.cli.main import main

    monkeypatch.chdir(dvc_project)
    with pytest.raises(SystemExit):
        main(["grid", "--status"])
    assert "--status goes with --slurm" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["grid", "--slurm", "--status"])
    assert "No Slurm grid at commit" in capsys.readouterr().err


@pytest.mark.slow
def test_resubmission_skips_what_is_done_and_refuses_other_params(dvc_project: Path, monkeypatch) -> None:
    from nodule_net.experiments.records import ExperimentRecord

    raw = yaml.safe_load((dvc_project / "params.yaml").read_text())
    raw["model"]["variant"] = "none"  # t1-none's cell; the rest as committed
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=dvc_project, capture_output=True, text=True
    ).stdout.strip()
    done = ExperimentRecord("t1-none", "f" * 40, commit, "2026-12-01T10:00:00", "success", raw)
    monkeypatch.setattr(slurm.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(slurm, "cluster_nodes", lambda: ["localhost"])
    monkeypatch.setattr(slurm, "slurm_jobs", dict)
    monkeypatch.setattr(slurm, "experiment_records", lambda repo, commit: {"t1-none": done})
    printed: list[str] = []
    assert slurm.submit_grid(dvc_project, names=["t1-none"], echo=printed.append) == []
    assert printed == [
        "skipped t1-none (done)",
        f"Nothing to submit: every experiment named is done, pending or running at commit {commit[:7]}.",
    ]
    with pytest.raises(
        ValueError,
        match=r"^t1-none: done, pending or running at commit \w{7} with other params than these; nothing was",
    ):
        slurm.submit_grid(dvc_project, ["train.epochs=2"], names=["t1-none"])
