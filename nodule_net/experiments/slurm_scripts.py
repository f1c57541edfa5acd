"""The batch scripts of `nodule-net grid --slurm`, as text, and the sbatch options they carry.

Two plain bash scripts a user could have written (kept next to the logs, as submitted):

- the **data job**: ``dvc exp run --name data-<key> -S <overrides> split`` in its own work
  tree, so that the phantom, extract and split stages run once, into the shared DVC cache;
- the **array job**: task ``i`` takes the data job's results (the data stages' ``dvc.lock``
  entries and dataset statistics from its experiment, their outputs from the cache: ``git
  checkout`` + ``dvc checkout``),
  so that DVC finds the data stages unchanged, then runs experiment ``names[i]`` as ``dvc
  exp run --name <name> -S …`` (the ``-S`` list of ``nodule-net grid``) in its own work
  tree, and pushes the finished experiment to the repository.

Not DVC's run-cache: it skips every stage with an output that is ``cache: false`` and neither a
metric nor a plot (``extract``'s dataset statistics), so it would not spare the tasks extract.

Nothing here runs anything: :mod:`nodule_net.experiments.slurm` writes the scripts and submits them.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

# The options every array job gets unless the user gives the same option: requeue-able tasks
# whose log continues across attempts, 2 CPUs (train.fold_processes=auto trains 2 folds at once on a
# CPU), and tasks cancelled rather than left pending for ever when their data job failed.
DEFAULT_OPTIONS: tuple[tuple[str, str | None], ...] = (
    ("--cpus-per-task", "2"),
    ("--requeue", None),
    ("--open-mode", "append"),
)
# Set by nodule-net itself from the grid's layout and its data job: not the user's to give.
RESERVED = (
    "--array",
    "--output",
    "--error",
    "--dependency",
    "--kill-on-invalid-dep",
    "--wrap",
    "--chdir",
    "--parsable",
)
# Options that would make the data job wait for GPUs it does not use (it gets the user's other options).
GPU_OPTIONS = (
    "--gres",
    "--gpus",
    "--gpus-per-node",
    "--gpus-per-task",
    "--gpus-per-socket",
    "--gpu-bind",
    "--gpu-freq",
    "--cpus-per-gpu",
    "--mem-per-gpu",
)
# sbatch's short options of the long ones above (and of --job-name), as sbatch(1) lists them.
SHORT = {
    "-a": "--array",
    "-c": "--cpus-per-task",
    "-d": "--dependency",
    "-D": "--chdir",
    "-e": "--error",
    "-G": "--gpus",
    "-J": "--job-name",
    "-o": "--output",
    "-W": "--wait",
}
# Opposite flags: giving one replaces the default of the other.
OPPOSITES = {"--requeue": "--no-requeue", "--no-requeue": "--requeue"}


def sbatch_options(tokens: Sequence[str]) -> list[tuple[str, str | None]]:
    """The user's sbatch arguments as ``(--long-name, value or None)`` pairs, in their order.

    ``--name=value``, ``--name value``, ``-x value`` and ``-xvalue`` are accepted: every token that
    does not start with ``-`` is the value of the option before it (the grid's own command line has
    no positional arguments). Raises ``ValueError`` for options nodule-net sets itself.
    """
    options: list[tuple[str, str | None]] = []
    for token in tokens:
        if not token.startswith("-"):
            if not options or options[-1][1] is not None:
                raise ValueError(f"{token}: not an option of nodule-net grid or sbatch; sbatch options start with -.")
            options[-1] = (options[-1][0], token)
            continue
        if token.startswith("--"):
            name, eq, value = token.partition("=")
            options.append((name, value if eq else None))
        else:
            name, value = token[:2], token[2:]
            options.append((SHORT.get(name, name), value or None))
    for name, _ in options:
        if name in RESERVED:
            raise ValueError(
                f"sbatch {name}: nodule-net grid --slurm sets it itself (one task per experiment, logs under the "
                "grid folder, the data job first); leave it out."
            )
    return options


def with_defaults(options: Sequence[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """:data:`DEFAULT_OPTIONS` that the user did not give (or give the opposite of), then the user's."""
    given = {name for name, _ in options} | {OPPOSITES[name] for name, _ in options if name in OPPOSITES}
    return [option for option in DEFAULT_OPTIONS if option[0] not in given] + list(options)


def for_data_job(options: Sequence[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """The user's options without the GPU requests and ``--wait`` (the data job needs no GPU; nobody waits on it)."""
    return [(name, value) for name, value in options if name not in (*GPU_OPTIONS, "--wait")]


def option_text(name: str, value: str | None) -> str:
    """``--name=value``, ``-x value`` or the flag alone (sbatch would read ``-x=value`` as the value ``=value``)."""
    if value is None:
        return name
    return f"{name}={value}" if name.startswith("--") else f"{name} {value}"


@dataclass(frozen=True)
class Layout:
    """Where one commit's Slurm grid lives: ``<slurm dir>/<commit[:12]>/`` (docs/cluster.md)."""

    folder: Path  # absolute

    def work_tree(self, name: str) -> Path:
        """Experiment ``name``'s git clone; its data/checkpoints survive requeues and resubmissions."""
        return self.folder / name

    @property
    def data_tree(self) -> Path:
        return self.folder / DATA

    @property
    def logs(self) -> Path:
        return self.folder / "logs"

    @property
    def state(self) -> Path:
        return self.folder / "state"

    @property
    def submissions(self) -> Path:
        return self.folder / "submissions.jsonl"

    def task_log(self, job: str, index: int) -> Path:
        return self.logs / f"{job}_{index}.log"

    def data_log(self, job: str) -> Path:
        return self.logs / f"{DATA}-{job}.log"

    def script(self, job: str) -> Path:
        return self.logs / f"{job}.sh"

    def data_state(self, key: str) -> Path:
        return self.state / f"{DATA}-{key}"


# The data job's work tree and the prefix of its log, state and experiment; no experiment of the grid has this name.
DATA = "data"
# The data job runs the stage of this name and those it depends on (dvc.yaml: phantom, extract, split).
DATA_TARGET = "split"
# Where DVC keeps the experiments of a baseline commit (refs/exps/<2 hex>/<38 hex>/<name>), in bash.
EXPERIMENT_REF = "refs/exps/${commit:0:2}/${commit:2}"


def data_experiment(key: str) -> str:
    """The name of the data job's experiment, in its own work tree (never pushed)."""
    return f"{DATA}-{key}"


@dataclass(frozen=True)
class Paths:
    """What both scripts need to know about the user's side, all absolute."""

    repo: Path  # the user's clone: tasks push their experiments to it
    commit: str  # the grid's commit (40 hex digits)
    cache: Path  # the shared DVC cache (the repository's `dvc cache dir`)
    venv_bin: Path  # the folder of the python running nodule-net: its dvc and python run the stages


def _q(value: str | Path) -> str:
    return shlex.quote(str(value))


def _sbatch_lines(options: Sequence[tuple[str, str | None]]) -> list[str]:
    return [f"#SBATCH {option_text(name, value)}" for name, value in options]


def _settings(paths: Paths) -> list[str]:
    """The lines both scripts open with: strict bash, the user's side, the check that this node sees the cache."""
    return [
        "set -euo pipefail",
        "",
        f"repo={_q(paths.repo)}",
        f"commit={paths.commit}",
        f"cache={_q(paths.cache)}",
        f"venv={_q(paths.venv_bin)}",
        'if [ ! -d "$cache" ]; then',
        '  echo "error: $(hostname) does not see the DVC cache $cache; put the repository and its cache on a'
        ' file system every node mounts (docs/cluster.md)." >&2',
        "  exit 1",
        "fi",
    ]


# The stages' environment, once ``$work`` (the work tree) is set.
STAGE_ENVIRONMENT = (
    "# The venv's dvc, and the `python` that the stage commands call; this work tree's own nodule_net",
    "# first (not the editable install's, which follows the repository's working tree).",
    'export PATH="$venv:$PATH"',
    'export PYTHONPATH="$work${PYTHONPATH:+:$PYTHONPATH}"',
    "# torch's threads: the CPUs Slurm gave the task (the same count gives the same numbers).",
    'export OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
)


def data_script(
    paths: Paths,
    layout: Layout,
    job_name: str,
    set_params: Sequence[str],
    key: str,
    options: Sequence[tuple[str, str | None]],
) -> str:
    """The data job: phantom, extract and split once, with the grid's extra ``-S`` (``set_params``)."""
    lines = [
        "#!/bin/bash",
        f"# nodule-net grid --slurm, commit {paths.commit[:7]}: the data stages (phantom, extract, split), once.",
        "# They run here, into the repository's DVC cache, with the overrides every experiment gets, as",
        "# an experiment of this work tree; the experiments' array job starts after this job succeeds",
        "# (--dependency=afterok) and takes them from it instead of recomputing them.",
        "# Submitted as: sbatch <this file>",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --output={layout.logs}/{DATA}-%j.log",
        *_sbatch_lines(options),
        *_settings(paths),
        f"work={_q(layout.data_tree)}",
        *STAGE_ENVIRONMENT,
        "",
        f"name={data_experiment(key)}",
        f'ref="{EXPERIMENT_REF}/$name"  # where DVC keeps experiment $name of $commit',
        "",
        'echo "== data stages of commit ${commit:0:7}: job $SLURM_JOB_ID on $(hostname), $(date -Iseconds)"',
        'cd "$work"',
        'git reset --quiet --hard "$commit"  # the commit\'s tracked files; the git-ignored data/ stays',
        'git update-ref -d "$ref"  # a requeued data job runs again',
        " ".join(['dvc exp run --name "$name"', *map(_q, set_params), DATA_TARGET]),
        f'echo "done $SLURM_JOB_ID" > {_q(layout.data_state(key))}',
        "",
    ]
    return "\n".join(lines)


def array_script(
    paths: Paths,
    layout: Layout,
    job_name: str,
    set_params: Mapping[str, Sequence[str]],
    key: str,
    tracked: Sequence[str],
    options: Sequence[tuple[str, str | None]],
) -> str:
    """The array job: task ``i`` runs the ``i``-th experiment of ``set_params`` (name → its ``-S`` arguments),
    on the data stages of data job ``key``, whose git-tracked outputs are ``tracked`` (besides dvc.lock)."""
    names = list(set_params)
    cases = [f"  {name}) set_params=({' '.join(map(_q, args))}) ;;" for name, args in set_params.items()]
    lines = [
        "#!/bin/bash",
        f"# nodule-net grid --slurm, commit {paths.commit[:7]}: {len(names)} experiments, one array task each.",
        "# Task i runs experiment names[i] as `dvc exp run --name <name> -S ...`, the -S list of",
        "# `nodule-net grid`, in its own work tree (a git clone at the commit, <grid folder>/<name>) whose",
        "# DVC cache is the repository's: no two tasks share DVC's repository lock, every output lands",
        "# in one cache, and the data stages are restored from it. The finished experiment is pushed to",
        "# the repository (`dvc exp push`), where `dvc exp show` and `nodule-net report` see it. Requeued",
        "# or resubmitted, a task resumes from the fold checkpoints in its work tree (data/checkpoints).",
        "# Submitted as: sbatch [--dependency=afterok:<data job>] <this file>",
        f"#SBATCH --job-name={job_name}",
        f"#SBATCH --array=0-{len(names) - 1}",
        f"#SBATCH --output={layout.logs}/%A_%a.log",
        "#SBATCH --kill-on-invalid-dep=yes",
        *_sbatch_lines(options),
        *_settings(paths),
        f"grid={_q(layout.folder)}",
        f'data_ref="{EXPERIMENT_REF}/{data_experiment(key)}"  # the data job\'s experiment',
        "",
        f"names=({' '.join(map(_q, names))})",
        'name="${names[$SLURM_ARRAY_TASK_ID]}"',
        'case "$name" in',
        *cases,
        "esac",
        'work="$grid/$name"',
        'task="${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
        *STAGE_ENVIRONMENT,
        "",
        "# The task's last word, read by `nodule-net grid --slurm --status`: running, then done or failed.",
        "say() {",
        '  echo "$1 $task $(hostname) $(date -Iseconds)" > "$grid/state/$name.tmp"',
        '  mv "$grid/state/$name.tmp" "$grid/state/$name"',
        "}",
        'trap \'code=$?; if [ "$code" != 0 ]; then say "failed:$code"; fi\' EXIT',
        'echo "== $name: task $task, attempt $((${SLURM_RESTART_COUNT:-0} + 1)), on $(hostname), $(date -Iseconds)"',
        "say running",
        "",
        "# GPUs: only those Slurm allocated (--gres=gpu:N sets CUDA_VISIBLE_DEVICES, and train.device=auto",
        "# takes a free one of them); a task given none trains on the CPU rather than on another job's GPU.",
        'if [ -z "${SLURM_JOB_GPUS:-}" ]; then',
        '  export CUDA_VISIBLE_DEVICES=""',
        '  echo "no GPU allocated to this task (sbatch --gres=gpu:N): train.device=auto trains on the CPU"',
        "fi",
        'cd "$work"',
        'git reset --quiet --hard "$commit"  # the commit\'s tracked files; the git-ignored data/ stays',
        "# The data stages as the data job left them: their dvc.lock entries and git-tracked outputs from",
        "# its experiment, their other outputs from the shared cache, so that DVC finds them unchanged here",
        "# (their params are this experiment's: the same data job serves the same data params).",
        'git fetch --quiet "$grid/data" "$data_ref"',
        " ".join(["git checkout --quiet FETCH_HEAD -- dvc.lock", *map(_q, tracked)]),
        f"dvc checkout --quiet --with-deps {DATA_TARGET}",
        'dvc exp run --name "$name" "${set_params[@]}"',
        'dvc exp push --no-cache "$repo" "$name"  # the outputs are in the shared cache already',
        "say done",
        "",
    ]
    return "\n".join(lines)
