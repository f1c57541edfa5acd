"""`nodule-net grid --slurm`: the paper's grid as one Slurm array job, each task one named DVC experiment.

Slurm schedules, DVC keeps params, metrics and outputs. Each experiment runs exactly as
``nodule-net grid`` + ``dvc queue`` would run it (its name, the same ``-S`` list, the same
checks before anything is submitted), but in a work tree of its own, so that no two tasks
share DVC's repository lock (treeverse/dvc#7419):

- **Work trees** are git clones of the user's repository at the grid's commit, made at
  submission under ``<slurm dir>/<commit[:12]>/<name>`` (default ``<repo>/slurm/…``, on the
  file system the repository is on, which every node sees). Clones, not ``git worktree``s:
  worktrees share every ref but HEAD, and DVC keeps a workspace run's state in refs
  (``refs/exps/exec/…``), which concurrent tasks would overwrite. A work tree stays after its
  task: its git-ignored ``data/checkpoints`` let a requeued or resubmitted task resume from
  the last finished epoch. The parent repository's DVC ignores the clones (each is a repo of
  its own); git should too (``/slurm/`` in .gitignore).
- **One DVC cache**: every work tree's ``cache.dir`` is the repository's cache (``dvc cache
  dir``), so outputs are stored once, and linked into the work trees rather than copied
  where the file system allows (``cache.type = reflink,hardlink,copy``).
- **Data stages once**: a data job runs ``dvc exp run -S <overrides> split`` in its own work
  tree; the array starts after it succeeds (``--dependency=afterok``) and every task takes
  phantom, extract and split from the data job's experiment and the cache, unchanged, so DVC
  skips them. A grid folder keeps one data job per value of the params the data stages read
  (:func:`data_key`): a later submission with the same data params submits none.
- **Results**: a finished task pushes its experiment into the repository (``dvc exp push
  --no-cache <repo> <name>``; its outputs are in the shared cache already), where ``dvc exp
  show``, ``dvc.api`` and ``nodule-net report`` find it as if it had run under ``dvc queue``.
- **Status and resubmission**: ``--status`` joins what DVC has finished, what ``squeue``
  knows and each task's last word (``state/<name>``); submitting again submits only the
  failed and missing experiments.

The batch scripts are written by :mod:`nodule_net.experiments.slurm_scripts`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nodule_net.config import Params, validate_params
from nodule_net.experiments.grid import (
    Experiment,
    check_against_schema,
    check_overrides,
    check_params,
    experiment_overrides,
    paper_grid,
    select_experiments,
    set_params,
    uncommitted,
)
from nodule_net.experiments.records import PARAMS_FILE, ExperimentRecord, exp_show, parse_exp_show
from nodule_net.experiments.slurm_scripts import (
    DATA,
    DATA_TARGET,
    Layout,
    Paths,
    array_script,
    data_script,
    for_data_job,
    sbatch_options,
    with_defaults,
)

SLURM_DIR = "slurm"  # the grid folders' parent, relative to the repository (--slurm-dir)
JOB_PREFIX = "nodule-net"  # job names: nodule-net-<commit7>, nodule-net-<commit7>-data
# How the work trees link outputs from the shared cache: no copy where the file system allows.
CACHE_TYPE = "reflink,hardlink,copy"
# Paths that are local to one machine on a cluster (and file systems that always are).
NODE_LOCAL_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run")
NODE_LOCAL_FILESYSTEMS = ("tmpfs", "ramfs")
# Slurm job states (squeue's %T), by what they mean for an experiment.
PENDING_STATES = ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD")
RUNNING_STATES = ("RUNNING", "COMPLETING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "STOPPED", "RESIZING")
ACTIVE_STATES = (*PENDING_STATES, *RUNNING_STATES)
LOG_TAIL = 30  # lines the status view's command shows of a failed task's log
# Slurm's client commands a submission runs on this machine: sbatch submits, sinfo lists the nodes
# (check_shared), squeue the earlier jobs, scancel withdraws the data job when the array is refused.
SLURM_COMMANDS = ("sbatch", "sinfo", "squeue", "scancel")

say = functools.partial(print, flush=True)


@dataclass(frozen=True)
class Submission:
    """One ``nodule-net grid --slurm`` that submitted an array: a line of ``submissions.jsonl``."""

    job: str  # the array job's id
    data_job: str | None  # the data job it waits for (None: one of an earlier submission had finished)
    experiments: list[str]  # by task index
    set_params: dict[str, list[str]]  # name → its `-S` arguments
    data_key: str  # which data job serves it (:func:`data_key`)
    sbatch: list[str]  # the sbatch options as given
    time: str


@dataclass(frozen=True)
class TaskStatus:
    """Where one experiment of a Slurm grid stands."""

    name: str
    state: str  # pending | running | done | failed | missing
    task: str | None  # "<array job>_<index>" of its latest submission
    log: Path | None
    detail: str = ""  # Slurm's reason, or the error that ended it


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"`git {' '.join(args)}` failed in {repo}: {done.stderr.strip()}")
    return done.stdout.strip()


def head_commit(repo: Path) -> str:
    return _git(repo, "rev-parse", "--verify", "HEAD")


@dataclass(frozen=True)
class DataStages:
    """What the data stages (``split`` and the stages it depends on, in dvc.yaml) read and write."""

    params: tuple[str, ...]  # the params.yaml keys they read (``phantom``, ``data.source`` …)
    tracked: tuple[str, ...]  # their outputs that git tracks (``cache: false``)


def dvc_facts(repo: Path) -> tuple[Path, DataStages]:
    """The repository's DVC cache folder (as ``dvc cache dir`` reports it) and its data stages."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo, warnings.catch_warnings():
        # DVC's outputs trie calls a pygtrie property that pygtrie deprecates; nothing to act on here.
        warnings.filterwarnings("ignore", message="_NoneStep.value", category=DeprecationWarning)
        stages = dvc_repo.stage.collect(f"{repo / 'dvc.yaml'}:{DATA_TARGET}", with_deps=True)
        params = [key for s in stages for dep in s.params if dep.def_path == PARAMS_FILE for key in dep.params]
        tracked = [str(out.def_path) for s in stages for out in s.outs if not out.use_cache]
        return Path(dvc_repo.cache.local_cache_dir).resolve(), DataStages(tuple(sorted(set(params))), tuple(tracked))


def grid_layout(repo: Path, commit: str, slurm_dir: str | os.PathLike | None = None) -> Layout:
    """The grid folder of ``commit``: ``<slurm_dir>/<commit[:12]>`` (``slurm_dir`` relative to the repository)."""
    return Layout((repo / (slurm_dir or SLURM_DIR) / commit[:12]).resolve())


def data_key(stages: DataStages, params: Params) -> str:
    """Which data job serves an experiment: one per value of the params its data stages read."""
    tree = asdict(params)

    def value(key: str):
        node: Any = tree
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    text = json.dumps({key: value(key) for key in stages.params}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def node_local_reason(path: Path, mounts: Sequence[tuple[str, str]] | None = None) -> str | None:
    """Why ``path`` is on one machine only (a folder like /tmp, or tmpfs), or None.

    ``mounts``: (mount point, file system type) pairs, default /proc/mounts. A shared file
    system cannot be told from a local disk this way; that the nodes see the cache is checked
    by every job itself.
    """
    path = path.resolve()
    local = [*NODE_LOCAL_DIRS, *([os.environ["TMPDIR"]] if os.environ.get("TMPDIR") else [])]
    for folder in local:
        if path == Path(folder) or Path(folder) in path.parents:
            return f"it is under {folder}"
    if mounts is None:
        try:
            with open("/proc/mounts") as f:
                mounts = [(line.split()[1], line.split()[2]) for line in f if len(line.split()) > 2]
        except OSError:
            return None
    best = max(
        (m for m in mounts if path == Path(m[0]) or Path(m[0]) in path.parents), key=lambda m: len(m[0]), default=None
    )
    if best is not None and best[1] in NODE_LOCAL_FILESYSTEMS:
        return f"it is on {best[1]} ({best[0]})"
    return None


def check_slurm_commands() -> None:
    """Refuse (``ValueError``, one line) a submission from a machine that lacks one of :data:`SLURM_COMMANDS`.

    Checked before anything is prepared: without it a missing ``sinfo`` or ``squeue`` would be a
    bare ``[Errno 2]`` part-way, and a missing ``scancel`` would leave a data job behind.
    """
    missing = [name for name in SLURM_COMMANDS if shutil.which(name) is None]
    if missing:
        names = ", ".join(missing)
        raise ValueError(
            f"{names} {'is' if len(missing) == 1 else 'are'} not on PATH (`nodule-net grid --slurm` runs "
            f"{', '.join(SLURM_COMMANDS)}): submit from a Slurm login node, or put the folder of Slurm's "
            "commands on PATH (or see the scripts with --dry-run)."
        )


def cluster_nodes() -> list[str]:
    """The node names ``sinfo`` lists (empty when it cannot say)."""
    done = subprocess.run(["sinfo", "-h", "-N", "-o", "%N"], capture_output=True, text=True)
    return sorted(set(done.stdout.split())) if done.returncode == 0 else []


def this_host(nodes: Sequence[str]) -> bool:
    """Whether every node is this machine (a one-node cluster: any local path is shared)."""
    names = {"localhost", socket.gethostname(), socket.gethostname().split(".")[0]}
    return bool(nodes) and set(nodes) <= names


def check_shared(paths: Mapping[str, Path], nodes: Sequence[str]) -> None:
    """Refuse (``ValueError``) a path the tasks need that only this machine sees, on a cluster of other nodes."""
    if this_host(nodes):
        return
    for what, path in paths.items():
        if (reason := node_local_reason(path)) is not None:
            raise ValueError(
                f"The {what} {path} is not on a file system every node sees ({reason}); move it to shared "
                "storage (for the DVC cache: `dvc cache dir /shared/…`, or --slurm-dir for the work trees)."
            )


def slurm_jobs() -> dict[str, tuple[str, str]] | None:
    """``squeue``'s jobs of this user, finished ones included while Slurm keeps them: id → (state, reason).

    Array tasks are listed one by one (``13_2``). None when squeue does not answer.
    """
    done = subprocess.run(
        ["squeue", "--noheader", "--array", "--me", "--states=all", "--format=%i|%T|%r"],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return None
    jobs = {}
    for line in done.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            jobs[parts[0]] = (parts[1], parts[2])
    return jobs


def read_submissions(layout: Layout) -> list[Submission]:
    if not layout.submissions.is_file():
        return []
    with layout.submissions.open() as f:
        return [Submission(**json.loads(line)) for line in f if line.strip()]


def latest_tasks(submissions: Sequence[Submission]) -> dict[str, tuple[Submission, int]]:
    """Each experiment's latest submission and its task index there."""
    latest: dict[str, tuple[Submission, int]] = {}
    for submission in submissions:
        for index, name in enumerate(submission.experiments):
            latest[name] = (submission, index)
    return latest


def last_word(layout: Layout, name: str) -> tuple[str, str] | None:
    """The task's own last word (``running``, ``done``, ``failed:<exit code>``) and its task id, or None."""
    path = layout.state / name
    if not path.is_file():
        return None
    parts = path.read_text().split()
    return (parts[0], parts[1]) if len(parts) >= 2 else None


def error_line(log: Path | None) -> str:
    """What ended the last attempt in ``log``: its last one-line error, else Slurm's own note, else ''.

    The stages print ``error: …``; DVC ``ERROR: …``; slurmstepd ``*** JOB … CANCELLED … ***``.
    """
    if log is None or not log.is_file():
        return ""
    lines = log.read_text(errors="replace").splitlines()
    starts = [k for k, line in enumerate(lines) if line.startswith("== ")]
    attempt = lines[starts[-1] if starts else 0 :]
    for pattern in (r"\berror: ", r"\bERROR: ", r"\*\*\* "):
        found = [line.strip() for line in attempt if re.search(pattern, line)]
        if found:
            return found[-1] if pattern != r"\bERROR: " else found[0]
    return ""


def classify(
    done: bool,
    dvc_state: str | None,
    task: str | None,
    slurm: tuple[str, str] | None,
    word: tuple[str, str] | None,
) -> tuple[str, str]:
    """An experiment's state and a detail, from what DVC, Slurm and the task itself say.

    ``done``: the experiment is finished in the repository; ``dvc_state``: its state in DVC's own
    queue otherwise; ``task``: the task id of its latest submission (None: never submitted);
    ``slurm``: squeue's (state, reason) of that task (None: Slurm no longer lists it); ``word``:
    the task's last word and the task id that wrote it.
    """
    if done:
        return "done", ""
    if dvc_state in ("queued", "running"):
        return ("pending" if dvc_state == "queued" else "running"), "in DVC's own queue (dvc queue status)"
    if task is None:
        return "missing", ""
    if slurm is not None and slurm[0] in PENDING_STATES:
        return "pending", slurm[1] if slurm[1] != "None" else ""
    if slurm is not None and slurm[0] in RUNNING_STATES:
        return "running", ""
    said = word[0] if word is not None and word[1] == task else None
    ended = f"Slurm: {slurm[0]}" if slurm is not None else "Slurm no longer lists it"
    if said == "done":
        return "failed", "the task finished but its experiment is not in the repository (push refused?)"
    if said is not None and said.startswith("failed:"):
        return "failed", f"exit {said.split(':', 1)[1]}"
    if said == "running":
        return "failed", f"ended without a last word, killed ({ended})"
    reason = f" ({slurm[1]})" if slurm is not None and slurm[1] not in ("None", "") else ""
    return "failed", f"never started ({ended}{reason})"


def experiment_records(repo: Path, commit: str) -> dict[str, ExperimentRecord]:
    """The repository's experiments of ``commit`` by name, a finished one before any other."""
    chosen: dict[str, ExperimentRecord] = {}
    for record in parse_exp_show(exp_show(repo)):
        if record.baseline == commit and (record.name not in chosen or record.done):
            chosen[record.name] = record
    return chosen


def grid_status(
    layout: Layout,
    names: Sequence[str],
    records: Mapping[str, ExperimentRecord],
    jobs: Mapping[str, tuple[str, str]] | None,
) -> list[TaskStatus]:
    """The status of each of ``names`` in this grid folder."""
    latest = latest_tasks(read_submissions(layout))
    statuses = []
    for name in names:
        record = records.get(name)
        submission, index = latest.get(name, (None, 0))
        task = f"{submission.job}_{index}" if submission is not None else None
        slurm = (jobs or {}).get(task) if task is not None else None
        state, detail = classify(
            record is not None and record.done,
            record.state if record is not None else None,
            task,
            slurm,
            last_word(layout, name),
        )
        log = layout.task_log(submission.job, index) if submission is not None else None
        if state == "failed" and (error := error_line(log)):
            detail = f"{detail}: {error}"
        statuses.append(TaskStatus(name, state, task, log, detail))
    return statuses


def data_status(layout: Layout, jobs: Mapping[str, tuple[str, str]] | None) -> list[TaskStatus]:
    """The data jobs of this grid folder, oldest first (``task``: the job id)."""
    seen: dict[str, TaskStatus] = {}
    for submission in read_submissions(layout):
        job = submission.data_job
        if job is None or job in seen:
            continue
        slurm = (jobs or {}).get(job)
        marker = layout.data_state(submission.data_key)
        detail = ""
        if marker.is_file() and marker.read_text().split()[1:2] == [job]:
            state = "done"
        elif slurm is not None and slurm[0] in PENDING_STATES:
            state = "pending"
        elif slurm is not None and slurm[0] in RUNNING_STATES:
            state = "running"
        else:
            state, detail = "failed", error_line(layout.data_log(job)) or "see its log"
        seen[job] = TaskStatus(DATA, state, job, layout.data_log(job), detail)
    return list(seen.values())


def _count(n: int) -> str:
    return f"{n} experiment{'s' * (n != 1)}"


def _relative(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _same_params(record: ExperimentRecord, params: Params) -> bool:
    try:
        return validate_params(record.params, f"experiment {record.name}") == params
    except ValueError:
        return False


def _sbatch(script: Path, dependency: str | None) -> str:
    """Submit ``script``; its job id (``ValueError`` with sbatch's message if refused)."""
    command = ["sbatch", "--parsable", *([f"--dependency={dependency}"] if dependency else []), str(script)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        message = " ".join((done.stderr.strip() or done.stdout.strip()).split())
        raise ValueError(f"`{' '.join(command)}` failed: {message}")
    return done.stdout.strip().split(";")[0]


def _prepare_work_tree(work: Path, paths: Paths) -> None:
    """A clone of the repository at the grid's commit using the shared cache (an existing one is kept)."""
    from dvc.config import Config

    if not (work / ".git").exists():
        work.parent.mkdir(parents=True, exist_ok=True)
        _git(work.parent, "clone", "--quiet", "--no-checkout", str(paths.repo), str(work))
        _git(work, "checkout", "--quiet", "--detach", paths.commit)
    config = Config(dvc_dir=str(work / ".dvc"))
    with config.edit("local") as local:
        local.setdefault("cache", {}).update({"dir": str(paths.cache), "type": CACHE_TYPE})


def _submit(layout: Layout, text: str, dependency: str | None) -> str:
    """Submit the batch script ``text``; it is kept as ``logs/<job id>.sh``. Returns the job id."""
    layout.logs.mkdir(parents=True, exist_ok=True)
    script = layout.logs / f"submitting-{uuid.uuid4().hex[:8]}.sh"
    script.write_text(text)
    try:
        job = _sbatch(script, dependency)
    except ValueError:
        script.unlink()
        raise
    script.rename(layout.script(job))
    return job


def _slurm_state(jobs: Mapping[str, tuple[str, str]] | None, job: str) -> str | None:
    return (jobs or {}).get(job, (None, ""))[0]


def submit_grid(
    repo: str | Path,
    extra: Sequence[str] = (),
    sbatch: Sequence[str] = (),
    dry_run: bool = False,
    names: Sequence[str] | None = None,
    slurm_dir: str | os.PathLike | None = None,
    echo: Callable[[str], None] = say,
) -> list[Experiment]:
    """Submit the grid (or the experiments ``names``) of HEAD as one Slurm array job; the submitted ones.

    Checks as ``nodule-net grid`` does (overrides against the schema, uncommitted changes), and
    refuses with one line: a Slurm command missing (:func:`check_slurm_commands`); a repository,
    cache or grid folder only this machine sees on a cluster of other nodes; an experiment that is
    done, pending or running with other params than these. Experiments done, pending or running
    with these params are skipped; the failed and missing ones are submitted. With ``dry_run``
    prints the scripts and the sbatch commands of every experiment named, and submits nothing.
    """
    repo = Path(repo).resolve()
    experiments = select_experiments(names) if names else list(paper_grid())
    options = sbatch_options(sbatch)
    check_overrides(extra)
    check_params(repo / PARAMS_FILE)
    params = check_against_schema(repo, extra, experiments)
    dirty = uncommitted(repo)
    if dirty and not dry_run:
        raise ValueError(
            f"Uncommitted changes to {', '.join(dirty[:5])}{' …' if len(dirty) > 5 else ''}: Slurm tasks "
            "start from HEAD; commit them first (or run with --dry-run)."
        )
    if not dry_run:
        check_slurm_commands()
    commit = head_commit(repo)
    layout = grid_layout(repo, commit, slurm_dir)
    cache, stages = dvc_facts(repo)
    paths = Paths(repo, commit, cache, Path(sys.executable).parent)
    if not dry_run:
        paths.cache.mkdir(parents=True, exist_ok=True)  # DVC makes it on first use; the jobs check that they see it
    arguments = {e.name: set_params(experiment_overrides(e, extra)) for e in experiments}
    key = data_key(stages, params[experiments[0].name])  # the grid's keys are not data params: one key for all
    jobs: Mapping[str, tuple[str, str]] = {}
    todo = experiments
    if not dry_run:
        check_shared({"repository": repo, "DVC cache": paths.cache, "grid folder": layout.folder}, cluster_nodes())
        jobs = slurm_jobs() or {}
        records = experiment_records(repo, commit)
        statuses = {s.name: s for s in grid_status(layout, [e.name for e in experiments], records, jobs)}
        latest = latest_tasks(read_submissions(layout))
        clashes = [
            e.name
            for e in experiments
            if (statuses[e.name].state == "done" and not _same_params(records[e.name], params[e.name]))
            or (
                statuses[e.name].state in ("pending", "running")
                and e.name in latest
                and latest[e.name][0].set_params[e.name] != arguments[e.name]
            )
        ]
        if clashes:
            raise ValueError(
                f"{', '.join(clashes)}: done, pending or running at commit {commit[:7]} with other params than "
                f"these; nothing was submitted. Names are unique per commit: remove them first (`dvc exp remove "
                f"{' '.join(clashes)}`, or scancel), or submit these params from a new commit."
            )
        skipped = [s for s in statuses.values() if s.state in ("done", "pending", "running")]
        if skipped:
            echo(
                "skipped "
                + ", ".join(
                    f"{s.name} ({s.state}{' ' + s.task if s.task and s.state != 'done' else ''})" for s in skipped
                )
            )
        todo = [e for e in experiments if statuses[e.name].state in ("failed", "missing")]
        if not todo:
            echo(f"Nothing to submit: every experiment named is done, pending or running at commit {commit[:7]}.")
            return []

    # The data job: none if one succeeded for these overrides, the one still pending or running for
    # them, or a new one; a new one waits for the other unfinished data jobs of this grid folder, so
    # that two never compute the same stages at once.
    new_data, waits_for, data_after = True, None, None
    if not dry_run:
        unfinished = [
            s for s in read_submissions(layout) if s.data_job and _slurm_state(jobs, s.data_job) in ACTIVE_STATES
        ]
        same = [s.data_job for s in unfinished if s.data_key == key]
        if layout.data_state(key).is_file():
            new_data = False
        elif same:
            new_data, waits_for = False, same[-1]
        elif unfinished:
            data_after = "afterany:" + ":".join(dict.fromkeys(str(s.data_job) for s in unfinished))

    job_name = f"{JOB_PREFIX}-{commit[:7]}"
    todo_arguments = {e.name: arguments[e.name] for e in todo}
    texts = {
        "data": data_script(
            paths, layout, f"{job_name}-{DATA}", set_params(extra), key, with_defaults(for_data_job(options))
        ),
        "array": array_script(paths, layout, job_name, todo_arguments, key, stages.tracked, with_defaults(options)),
    }
    if dry_run:
        echo(f"# {layout.folder}/logs/<data job>.sh\n{texts['data']}")
        echo(f"# {layout.folder}/logs/<array job>.sh\n{texts['array']}")
        echo(f"sbatch --parsable {layout.folder}/logs/<data job>.sh")
        echo(f"sbatch --parsable --dependency=afterok:<data job> {layout.folder}/logs/<array job>.sh")
        if dirty:
            echo(f"note: uncommitted changes to {', '.join(dirty[:5])}; a submission refuses until they are committed")
        echo(f"\nwould submit {_count(len(todo))} of commit {commit[:7]} ({' '.join(todo_arguments)}).")
        return todo

    layout.state.mkdir(parents=True, exist_ok=True)
    for experiment in todo:
        _prepare_work_tree(layout.work_tree(experiment.name), paths)
    data_job = None
    if new_data:
        _prepare_work_tree(layout.data_tree, paths)
        data_job = waits_for = _submit(layout, texts["data"], data_after)
    try:
        job = _submit(layout, texts["array"], f"afterok:{waits_for}" if waits_for else None)
    except ValueError:
        if data_job is not None:  # all or nothing
            subprocess.run(["scancel", data_job], capture_output=True)
        raise
    submission = Submission(
        job=job,
        data_job=waits_for,
        experiments=[e.name for e in todo],
        set_params=todo_arguments,
        data_key=key,
        sbatch=list(sbatch),
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    with layout.submissions.open("a") as f:
        f.write(json.dumps(asdict(submission)) + "\n")

    folder = _relative(layout.folder)
    if data_job is not None:
        echo(f"data job {data_job}: phantom, extract and split of {commit[:7]} → {folder}/logs/{DATA}-{data_job}.log")
    after = f" after data job {submission.data_job}" if submission.data_job else ""
    echo(
        f"array job {job}: {_count(len(todo))} ({' '.join(todo_arguments)}), "
        f"{'task 0' if len(todo) == 1 else f'tasks 0-{len(todo) - 1}'}{after}"
        f" → {folder}/logs/{job}_<task>.log (script {folder}/logs/{job}.sh)"
    )
    echo("Next:")
    echo("  nodule-net grid --slurm --status   # pending / running / done / failed per experiment, with its log")
    echo("  squeue --me                        # Slurm's own view")
    echo("  nodule-net report                  # the paper's tables from the finished experiments → report/report.md")
    return todo


def print_status(
    repo: str | Path, slurm_dir: str | os.PathLike | None = None, echo: Callable[[str], None] = say
) -> list[TaskStatus]:
    """Print, per experiment submitted at HEAD, its state, task, log and what ended it if it failed."""
    repo = Path(repo).resolve()
    commit = head_commit(repo)
    layout = grid_layout(repo, commit, slurm_dir)
    submissions = read_submissions(layout)
    if not submissions:
        raise ValueError(
            f"No Slurm grid at commit {commit[:7]} ({_relative(layout.submissions)} is missing); submit one with "
            "`nodule-net grid --slurm`."
        )
    jobs = slurm_jobs() if shutil.which("squeue") else None
    names = list(dict.fromkeys(name for s in submissions for name in s.experiments))
    statuses = grid_status(layout, names, experiment_records(repo, commit), jobs)
    heading = f"Slurm grid of commit {commit[:7]} in {_relative(layout.folder)}"
    echo(heading + ("" if jobs is not None else " (squeue does not answer: states from the tasks' own records)"))
    for s in [*data_status(layout, jobs), *statuses]:
        label = "(data stages)" if s.name == DATA else s.name
        echo(f"  {label:24} {s.state:8} {s.task or '':10} {_relative(s.log) if s.log else ''}")
        if s.state == "failed":
            echo(f"  {'':24} {s.detail}")
            if s.log is not None and s.log.is_file():
                echo(f"  {'':24} tail -n {LOG_TAIL} {_relative(s.log)}")
    counts = {state: sum(s.state == state for s in statuses) for state in ("done", "running", "pending", "failed")}
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    left = len(paper_grid()) - len({*names} & {e.name for e in paper_grid()})
    echo(
        f"{summary}; {left} of the grid's {len(paper_grid())} never submitted at this commit."
        if left
        else f"{summary}."
    )
    if counts["failed"]:
        echo(
            "Submitting the same command again resubmits the failed and missing ones only "
            "(done, pending and running ones are skipped)."
        )
    return statuses
