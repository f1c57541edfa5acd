"""`nodule-net grid --slurm` end to end against a real (private, one-node) Slurm: tools/slurm_cluster.py.

One run of the whole story on a one-patient phantom (4 nodules), 2 folds, 2 epochs:

1. ``--exp t1-none t1-sam t5-classify`` and, at once, ``--exp t1-full -S train.device=cuda``
   (a bad override: no GPU on the node) are submitted; the second shares the first's data job;
2. t1-sam is requeued (``scontrol requeue``) after its first epoch of fold 0;
3. once all ended, the same grid is submitted again with all four names: only t1-full is submitted.

The same three ran locally with ``dvc exp run`` in the session's shared experiment repository
(tests/repo_copies.py: the same params, a repository and cache of its own), built by whichever
test worker asked first. Then the tests look at what each step left. Each Slurm task gets 1 CPU,
hence 1 torch thread, as the local runs (``OMP_NUM_THREADS=1``): the same thread count gives
bit-identical numbers.
Skips, saying why, where the private Slurm cannot start (no slurm-wlm and munge, not root).
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

from nodule_net.experiments import grid
from nodule_net.experiments.records import pipeline_var
from repo_copies import (
    SHARED_EXPERIMENTS,
    SHOWN,
    copy_with_shared_params,
    run,
    shared_experiment_repo,
    shown_experiments,
)
from tools import slurm_cluster

# One worker runs every test that starts a private Slurm (tests/conftest.py).
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

BIN = Path(sys.executable).parent
SUBMITTED = ("t1-none", "t1-sam", "t5-classify")  # those the shared repository ran locally
BAD = "t1-full"
REQUEUED = "t1-sam"
assert set(SUBMITTED) == set(SHARED_EXPERIMENTS)
WAIT_S = 900  # the whole run takes about 3½ minutes on the 2-core development machine


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A private Slurm for this module, stopped (its jobs cancelled) however the tests end."""
    if (reason := slurm_cluster.unavailable_reason()) is not None:
        pytest.skip(f"no private Slurm: {reason}")
    try:
        running = slurm_cluster.start(tmp_path_factory.mktemp("slurm-cluster"))
    except slurm_cluster.ClusterUnavailable as err:
        pytest.skip(str(err))
    try:
        yield running
    finally:
        slurm_cluster.stop(running)


def _active(cluster, jobs: list[str]) -> list[str]:
    """Those of ``jobs`` (ids; array tasks count by their job) that Slurm lists as pending or running."""
    listed = cluster.run("squeue", "--noheader", "--array", "--format=%i").stdout.split()
    return [task for task in listed if task.split("_")[0] in jobs]


def _pending(cluster, task: str) -> bool:
    return (
        cluster.run("squeue", "--noheader", "--array", "-j", task, "--format=%T", check=False).stdout.strip()
        == "PENDING"
    )


def _wait(condition, what: str, timeout_s: float = WAIT_S, poll_s: float = 0.2):
    deadline = time.monotonic() + timeout_s
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} after {timeout_s:.0f} s")
        time.sleep(poll_s)
    return result


def _submissions(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "submissions.jsonl").read_text().splitlines()]


def _experiments(repo: Path, env: dict[str, str]) -> dict[str, dict]:
    return shown_experiments(run([str(BIN / "dvc"), "exp", "show", "--json"], repo, env))


@pytest.fixture(scope="module")
def story(cluster, tmp_path_factory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("slurm-grid")
    repo = root / "repo"
    env = cluster.env | {
        "PATH": f"{BIN}{os.pathsep}{cluster.env['PATH']}",
        "PYTHONPATH": str(repo),  # the copy's nodule_net, not the editable install's
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "slurm test",
        "GIT_AUTHOR_EMAIL": "slurm@example.org",
        "GIT_COMMITTER_NAME": "slurm test",
        "GIT_COMMITTER_EMAIL": "slurm@example.org",
    }
    copy_with_shared_params(repo)
    gitignore = (repo / ".gitignore").read_text()
    if "/slurm/" not in gitignore.split():
        (repo / ".gitignore").write_text(gitignore + "/slurm/\n")
    run(["git", "init", "--quiet", "--initial-branch=main"], repo, env)
    run(["git", "add", "."], repo, env)
    run(["git", "commit", "--quiet", "-m", "tiny grid"], repo, env)
    commit = run(["git", "rev-parse", "HEAD"], repo, env).strip()
    folder = repo / "slurm" / commit[:12]
    submit = [sys.executable, "-m", "nodule_net.cli.main", "grid", "--slurm"]

    first = run([*submit, "--exp", *SUBMITTED, "--cpus-per-task=1"], repo, env)
    bad = run([*submit, "--exp", BAD, "-S", "train.device=cuda", "--cpus-per-task=1"], repo, env)
    main, second = _submissions(folder)
    task = f"{main['job']}_{main['experiments'].index(REQUEUED)}"
    # Fold 0's checkpoint appears (renamed into place whole) when its first epoch is done: requeue then.
    checkpoint = folder / REQUEUED / pipeline_var(repo, "checkpoints") / "fold0.pt"
    _wait(checkpoint.is_file, f"{checkpoint}", poll_s=0.05)
    cluster.run("scontrol", "requeue", task)
    # Slurm holds a requeued job back for a while (its BeginTime); release it at once.
    _wait(lambda: _pending(cluster, task), f"{task} pending again")
    cluster.run("scontrol", "update", f"JobId={task}", "StartTime=now")
    # The same experiments locally: the shared repository, here built in the background unless another
    # worker has built or is building it. Not before the requeue: with proctrack/linuxproc, a requeue
    # once killed a local training process too.
    background = ThreadPoolExecutor(1)
    local_runs = background.submit(shared_experiment_repo, tmp_path_factory)

    _wait(
        lambda: not _active(cluster, [main["job"], second["job"], str(main["data_job"])]), "end of the grid", poll_s=2
    )
    status_after_first = run([*submit, "--status"], repo, env)

    again = run([*submit, "--exp", *SUBMITTED, BAD, "--cpus-per-task=1"], repo, env)
    third = _submissions(folder)[-1]
    _wait(lambda: not _active(cluster, [third["job"]]), "end of the resubmission", poll_s=2)
    local = local_runs.result(timeout=WAIT_S)
    background.shutdown()
    status_at_end = run([*submit, "--status"], repo, env)
    report = root / "report"
    run([sys.executable, "-m", "nodule_net.cli.main", "report", "--out", str(report)], repo, env)
    return SimpleNamespace(
        repo=repo,
        folder=folder,
        printed={"first": first, "bad": bad, "again": again},
        submissions=(main, second, third),
        status=(status_after_first, status_at_end),
        slurm=_experiments(repo, env),
        local=shown_experiments((local.parent / SHOWN).read_text()),
        report=(report / "report.md").read_text(),
    )


def _log(story, submission: dict, name: str) -> str:
    index = submission["experiments"].index(name)
    return (story.folder / "logs" / f"{submission['job']}_{index}.log").read_text()


def test_each_experiment_is_one_array_task_and_the_script_is_kept(story) -> None:
    main, second, _ = story.submissions
    assert main["experiments"] == list(SUBMITTED) and second["experiments"] == [BAD]
    script = (story.folder / "logs" / f"{main['job']}.sh").read_text()
    assert "#SBATCH --array=0-2\n" in script and "#SBATCH --cpus-per-task=1\n" in script
    assert f"array job {main['job']}: 3 experiments" in story.printed["first"]
    assert "nodule-net grid --slurm --status" in story.printed["first"]


def test_slurm_experiments_equal_local_dvc_exp_runs(story) -> None:
    main = story.submissions[0]
    for e in grid.select_experiments(list(SUBMITTED)):  # the same -S lists
        assert main["set_params"][e.name] == grid.set_params(grid.experiment_overrides(e, []))
    for name in SUBMITTED:
        slurm_run, local_run = story.slurm[name]["data"], story.local[name]["data"]
        assert slurm_run["params"] == local_run["params"], name
        assert slurm_run["metrics"] and slurm_run["metrics"] == local_run["metrics"], name
        assert slurm_run["outs"]["data/predictions.csv"]["hash"] == local_run["outs"]["data/predictions.csv"]["hash"]
    assert story.slurm["t5-classify"]["data"]["params"]["params.yaml"]["data"]["model"]["malignancy"] == "classify"


def test_data_stages_ran_once_in_the_data_job(story) -> None:
    main, second, third = story.submissions
    assert second["data_job"] == main["data_job"] and third["data_job"] is None  # the same data params
    data_log = (story.folder / "logs" / f"data-{main['data_job']}.log").read_text()
    for stage in ("phantom", "extract", "split"):
        assert f"Running stage '{stage}'" in data_log
    for submission in story.submissions:
        for name in submission["experiments"]:
            log = _log(story, submission, name)
            assert not re.search(r"Running stage '(phantom|extract|split)'", log), name
            if "Reproducing experiment" in log:
                assert "Stage 'extract' didn't change, skipping" in log, name


def test_a_requeued_task_resumed_from_its_checkpoint(story) -> None:
    log = _log(story, story.submissions[0], REQUEUED)
    first, second = log.split("attempt 2,")
    assert "attempt 1," in first and "DUE TO JOB REQUEUE" in first
    assert re.search(r"Resuming fold 0 from \S*checkpoints\S*fold0\.pt after epoch [12]\b", second)
    assert f"Pushed experiment {REQUEUED}" in second
    # ... and its metrics equal the uninterrupted local run's: test_slurm_experiments_equal_local_dvc_exp_runs


def test_a_bad_override_fails_its_task_alone_with_its_one_line_error(story) -> None:
    after_first = story.status[0]
    lines = after_first.splitlines()
    (row,) = [line for line in lines if line.split()[:1] == [BAD]]
    assert row.split()[1] == "failed"
    error = lines[lines.index(row) + 1]
    assert re.search(r"exit \d+: .*error: train\.device='cuda' but no CUDA GPU is visible", error)
    assert f"tail -n 30 {story.folder.relative_to(story.repo)}/logs/" in lines[lines.index(row) + 2]
    for name in SUBMITTED:
        assert [line.split()[1] for line in lines if line.split()[:1] == [name]] == ["done"]


def test_resubmission_submits_only_what_is_missing(story) -> None:
    third = story.submissions[2]
    (sam,) = grid.select_experiments([BAD])
    assert third["experiments"] == [BAD] and third["set_params"][BAD] == grid.set_params(sam.overrides())
    assert "skipped t1-none (done), t1-sam (done), t5-classify (done)" in story.printed["again"]
    assert "data job" not in story.printed["again"]  # the data stages are done
    rows = {line.split()[0]: line.split()[1] for line in story.status[1].splitlines()[1:] if line.startswith("  t")}
    assert rows == dict.fromkeys([*SUBMITTED, BAD], "done")


def test_report_fills_the_slurm_experiments_cells(story) -> None:
    for name in (*SUBMITTED, BAD):
        assert f"{name} ({story.slurm[name]['rev'][:7]})" in story.report
    assert "t1-caam: missing" in story.report
