"""The paper's grid of experiments (Tables 1, 2, 5, S1, S2), queued as named DVC experiments.

Each experiment is one ``dvc exp run --queue --name <name> -S key=value ...``; DVC's own
queue runs them (``dvc queue start -j N``) and keeps their params, metrics and outputs
for ``nodule-net report``. Every experiment sets all four keys that define a grid cell
(``model.variant``, ``model.attribute``, ``model.malignancy``, ``lambda``), so it does
not depend on what params.yaml happens to say; extra ``-S`` overrides (epochs, phantom
size, data source) pass through to every experiment.

Queued runs start from the HEAD commit in a temporary copy of the repository that
holds no git-ignored file. They share the repository's DVC cache and run-cache: DVC
checks out the outputs recorded in HEAD's ``dvc.lock`` (phantom, extract, split) from the
cache before reproducing, and a stage whose params an override changed is restored from
the run-cache once one experiment has run it (docs/experiments.md).

Queuing is all or nothing: the overrides are applied as DVC applies them and checked
against the params schema, and every name against HEAD's finished, running and queued
experiments, before the first experiment is queued; should DVC still refuse one, those
queued before it are taken out of the queue again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from nodule_net.attributes import ATTRIBUTES
from nodule_net.config import Params, read_params_file, validate_params
from nodule_net.experiments.records import PARAMS_FILE, dvc_message, taken_names

# Table 1's variants in the paper's row order; `full` is SAM+CAAM+ASCMM.
TABLE1_VARIANTS: tuple[str, ...] = ("none", "sam", "caam", "caam_ascmm", "full")
PAPER_LAMBDA = 0.1  # paper §3.2; the Table 1/2/4/5 runs use it
# Table S1's λ values (0.01, 0.1, 0.5, 1, 10) plus λ = 0, the auxiliary loss switched off.
S1_LAMBDAS: tuple[float, ...] = (0.0, 0.01, 0.1, 0.5, 1.0, 10.0)
# The four keys that place an experiment in the grid; overrides may not set them.
GRID_KEYS: tuple[str, ...] = ("model.variant", "model.attribute", "model.malignancy", "lambda")
# What queued runs are built from; uncommitted changes to these would not be in HEAD.
COMMITTED_PATHS: tuple[str, ...] = ("params.yaml", "dvc.yaml", "dvc.lock", "pyproject.toml", "nodule_net", "pipeline")

# Where else the paper reports a Table 1 experiment (the report reuses it there).
TABLE1_ALSO_IN = {
    "none": "Tables 1, 2",
    "sam": "Tables 1, 2",
    "caam_ascmm": "Tables 1, 3",
    "full": "Tables 1, 3, 4, 5, S1 (λ=0.1), S2",
}

CLASSIFIER = "t5-classify"
THREE_D = "t2-3d"


def variant_name(variant: str) -> str:
    """Table 1's experiment of a variant: ``t1-none`` … ``t1-full``."""
    return f"t1-{variant}"


def lambda_name(value: float) -> str:
    """Table S1's experiment at λ = ``value``; λ = 0.1 is Table 1's ``t1-full``, queued once."""
    return variant_name("full") if value == PAPER_LAMBDA else f"s1-lambda-{value:g}"


def attribute_name(attribute: str) -> str:
    """Table S2's single-attribute experiment: ``s2-malignancy``."""
    return f"s2-{attribute}"


@dataclass(frozen=True)
class Experiment:
    name: str  # DVC experiment name (a valid git ref component)
    tables: str  # where the paper reports it
    settings: dict  # GRID_KEYS → value

    def overrides(self) -> list[str]:
        """``key=value`` in Hydra syntax (``null`` for None, floats with a dot)."""
        return [f"{key}={_hydra_value(self.settings[key])}" for key in GRID_KEYS]


def _hydra_value(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return repr(value)  # 0.0, 0.01, 10.0: YAML reads them back as floats
    return str(value)


def _cell(
    variant: str = "full", attribute: str | None = None, malignancy: str = "regress", lam: float = PAPER_LAMBDA
) -> dict:
    return {"model.variant": variant, "model.attribute": attribute, "model.malignancy": malignancy, "lambda": lam}


def paper_grid() -> tuple[Experiment, ...]:
    """Every experiment of the paper's Tables 1, 2, 5, S1 and S2, each once."""
    experiments = [Experiment(variant_name(v), TABLE1_ALSO_IN.get(v, "Table 1"), _cell(v)) for v in TABLE1_VARIANTS]
    experiments.append(Experiment(THREE_D, "Table 2", _cell("3d")))
    experiments += [
        Experiment(lambda_name(lam), "Table S1", _cell(lam=lam))
        for lam in S1_LAMBDAS
        if lambda_name(lam) != variant_name("full")
    ]
    experiments += [Experiment(attribute_name(a), "Table S2", _cell(attribute=a)) for a in ATTRIBUTES]
    experiments.append(Experiment(CLASSIFIER, "Table 5", _cell(malignancy="classify")))
    return tuple(experiments)


def select_experiments(names: Sequence[str]) -> list[Experiment]:
    """The experiments of the grid named ``names``, in the grid's order (``ValueError`` for other names)."""
    experiments = paper_grid()
    unknown = [n for n in names if n not in {e.name for e in experiments}]
    if unknown:
        raise ValueError(
            f"No experiment {', '.join(unknown)} in the grid; its names: {', '.join(e.name for e in experiments)}."
        )
    return [e for e in experiments if e.name in names]


def _key(override: str) -> str:
    """The param key of a Hydra override (``+a.b=1`` / ``~a.b`` / ``file.yaml:a.b=1`` → ``a.b``)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split(":", 1)[1] if ":" in key else key


def check_overrides(overrides: Sequence[str]) -> None:
    """Raise ``ValueError`` for an override that is not ``key=value`` or that sets a grid key."""
    for override in overrides:
        if "=" not in override and not override.startswith("~"):
            raise ValueError(f"-S {override}: expected key=value, e.g. -S train.epochs=2.")
        if _key(override) in GRID_KEYS:
            raise ValueError(
                f"-S {override}: the grid sets {_key(override)} itself for every experiment; "
                "leave it out (only settings shared by all experiments pass through)."
            )


def _nested_has(params: dict, key: str) -> bool:
    node = params
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def check_params(params_path: str | Path) -> None:
    """Raise ``ValueError`` when params.yaml lacks a key the grid sets (DVC would refuse it).

    The file's own keys, not :class:`~nodule_net.config.Params` (which fills the optional keys in).
    """
    raw = read_params_file(params_path)
    missing = [key for key in GRID_KEYS if not _nested_has(raw, key)]
    if missing:
        raise ValueError(
            f"params.yaml has no {', '.join(missing)}; the grid sets it for every experiment. "
            "Add it to params.yaml and commit."
        )


def overridden_params(params_path: str | Path, overrides: Sequence[str], label: str = PARAMS_FILE) -> Params:
    """``params.yaml`` as a queued run will read it: DVC's own ``-S`` (Hydra) applied to a copy, validated.

    DVC's Hydra grammar, not YAML's, reads the values (``1e-3`` is a number; PyYAML would
    read a string). Raises ``ValueError`` with DVC's whole message where DVC refuses one, and
    the schema's one line (naming ``label``) where the stages would.
    """
    return validate_params(_applied(params_path, overrides), label)


def _applied(params_path: str | Path, overrides: Sequence[str]) -> dict:
    """The parsed YAML of a copy of ``params_path`` with DVC's ``-S`` applied (``ValueError`` where DVC refuses)."""
    from dvc.exceptions import InvalidArgumentError
    from dvc.utils.hydra import apply_overrides

    with tempfile.TemporaryDirectory() as folder:
        copy = Path(folder) / PARAMS_FILE
        shutil.copyfile(params_path, copy)
        try:
            apply_overrides(copy, list(overrides))
        except InvalidArgumentError as err:
            raise ValueError(f"-S {' -S '.join(overrides)}: DVC refuses it: {dvc_message(err)}") from None
        return read_params_file(copy)  # as the stages read it


def _check_override(params_path: Path, override: str, label: str) -> None:
    """Refuse one ``-S`` for params.yaml that DVC would refuse or that the schema would (in every stage)."""
    from dvc.utils.hydra import to_hydra_overrides
    from hydra.errors import OverrideParseException

    try:
        parsed = to_hydra_overrides([override])[0]
    except OverrideParseException as err:
        raise ValueError(f"-S {override}: DVC refuses it: {dvc_message(err)}") from None
    if parsed.is_sweep_override():
        raise ValueError(
            f"-S {override} is a sweep: DVC would queue every experiment once per value, as "
            "t1-none-1, t1-none-2, …, names the report does not read; give one value."
        )
    try:
        raw = _applied(params_path, [override])
    except ValueError:
        if parsed.is_add() or parsed.is_force_add() or parsed.is_delete():
            raise
        # Hydra refuses to change a key params.yaml lacks; when the schema lacks it too (a misspelt key),
        # the schema's message names the closest valid key, which DVC's does not.
        overridden_params(params_path, ["++" + override], label)
        raise
    validate_params(raw, label)


def check_against_schema(repo: Path, extra: Sequence[str], experiments: Sequence[Experiment]) -> dict[str, Params]:
    """Refuse overrides that DVC would refuse or that would fail every queued run (``-S train.epochs=0``).

    Each experiment's ``-S`` are applied to params.yaml as DVC applies them, and the result is
    checked against :data:`nodule_net.config.SCHEMA`, with the stages' one-line errors. Returns
    each experiment's :class:`~nodule_net.config.Params` by name, as its stages will read them.
    """
    from dvc.utils.cli_parse import to_path_overrides

    params_path = repo / PARAMS_FILE
    # Overrides of other params files (``other.yaml:key=value``) pass through unchecked.
    ours = to_path_overrides(extra).get(PARAMS_FILE, [])
    label = f"{PARAMS_FILE} with -S {' -S '.join(extra)}" if extra else PARAMS_FILE
    for override in ours:  # one at a time first, so that an error names its override
        _check_override(params_path, override, label)
    queued = {e.name: overridden_params(params_path, [*ours, *e.overrides()], label) for e in experiments}
    for experiment in experiments:  # the grid's own -S come last: no extra override can move a cell
        params = queued[experiment.name]
        cell = _cell(params.model.variant, params.model.attribute, params.model.malignancy, params.lambda_)
        assert cell == experiment.settings, (experiment.name, cell)
    return queued


def _clash_message(taken: dict[str, str], experiments: Sequence[Experiment], extra: Sequence[str]) -> str:
    clashes = [e.name for e in experiments if e.name in taken]
    by_state = {state: [n for n in clashes if taken[n] == state] for state in ("success", "running", "queued")}
    listed = "; ".join(
        f"{'finished' if state == 'success' else state}: {', '.join(names)}"
        for state, names in by_state.items()
        if names
    )
    message = (
        f"{len(clashes)} of {len(experiments)} names are taken at this commit ({listed}); nothing was "
        f"queued. Remove them with `dvc exp remove {' '.join(clashes)}`"
    )
    if by_state["running"]:
        message += f" (after `dvc queue kill {' '.join(by_state['running'])}`)"
    free = [e.name for e in experiments if e.name not in taken]
    if free:
        again = " ".join(["nodule-net grid --exp", *free, *(f"-S {o}" for o in extra)])
        message += f", or queue only the others with `{again}`"
    return message + "."


def _undo(repo: Path, queued: Sequence[str], in_flight: str | None = None) -> str:
    """Take ``queued`` (and ``in_flight``, if DVC got to queue it) out of the queue; says what became of them."""
    if in_flight is not None and taken_names(repo).get(in_flight) == "queued":
        queued = [*queued, in_flight]
    if not queued:
        return "nothing was queued."
    done = subprocess.run(
        [sys.executable, "-m", "dvc", "queue", "remove", *queued], cwd=repo, capture_output=True, text=True
    )
    if done.returncode != 0:
        return (
            f"{', '.join(queued)} stay queued ({dvc_message(done)}); remove them with "
            f"`dvc queue remove {' '.join(queued)}`."
        )
    were = "was" if len(queued) == 1 else "were"
    return f"{', '.join(queued)} {were} taken out of the queue again; nothing is queued."


def _print(line: str) -> None:
    """``print``, flushed; once the reader has gone (``| head``) the rest goes to /dev/null.

    Python's recipe for SIGPIPE (docs: signal, "Note on SIGPIPE"). The command goes on and
    exits 0: what it queues does not depend on who reads its output.
    """
    try:
        print(line, flush=True)
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


def uncommitted(repo: str | Path, paths: Sequence[str] = COMMITTED_PATHS) -> list[str]:
    """Files under ``paths`` that differ from HEAD or are untracked (git-ignored ones excepted)."""
    out = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all", "--", *paths],
        cwd=repo,
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        raise ValueError(f"{repo}: not a git repository ({out.stderr.strip()}); clone the project with git.")
    return [line[3:] for line in out.stdout.splitlines()]


def experiment_overrides(experiment: Experiment, extra: Sequence[str]) -> list[str]:
    """One experiment's overrides as DVC applies them: extra overrides first, then the grid's (which win)."""
    return [*extra, *experiment.overrides()]


def set_params(overrides: Sequence[str]) -> list[str]:
    """The ``-S`` arguments of ``overrides``: ``["-S", "a=1", "-S", "b=2"]``."""
    return [arg for override in overrides for arg in ("-S", override)]


def queue_command(experiment: Experiment, extra: Sequence[str]) -> list[str]:
    """The ``dvc exp run --queue`` argv of one experiment (``nodule-net grid --slurm`` runs the same ``-S``)."""
    overrides = experiment_overrides(experiment, extra)
    return ["dvc", "exp", "run", "--queue", "--name", experiment.name, *set_params(overrides)]


def queue_grid(
    repo: str | Path,
    extra: Sequence[str] = (),
    dry_run: bool = False,
    experiments: Sequence[Experiment] | None = None,
    echo=_print,
    names: Sequence[str] | None = None,
) -> list[Experiment]:
    """Queue ``experiments`` (default: :func:`paper_grid`, or those of it named ``names``) in ``repo``.

    Refuses (``ValueError``) when params/pipeline/code files have uncommitted changes:
    DVC would fold them into every queued run, which then no commit reproduces, and
    would leave out untracked files altogether; when an override fails the params schema;
    and when a name is taken at HEAD (finished, running or queued: DVC itself only refuses
    finished ones, and would queue a name twice). All or nothing. With ``dry_run`` only
    prints the commands, after the same checks except the names'.
    """
    repo = Path(repo)
    if experiments is None:
        experiments = select_experiments(names) if names else paper_grid()
    experiments = list(experiments)
    check_overrides(extra)
    check_params(repo / PARAMS_FILE)
    check_against_schema(repo, extra, experiments)
    dirty = uncommitted(repo)
    if dirty and not dry_run:
        raise ValueError(
            f"Uncommitted changes to {', '.join(dirty[:5])}{' …' if len(dirty) > 5 else ''}: queued "
            "runs start from HEAD; commit them first (or run with --dry-run)."
        )
    taken = {} if dry_run else taken_names(repo)
    if any(e.name in taken for e in experiments):
        raise ValueError(_clash_message(taken, experiments, extra))
    for position, experiment in enumerate(experiments):
        command = queue_command(experiment, extra)
        if dry_run:
            echo(" ".join(command))
            continue
        try:
            # `python -m dvc`: the dvc of this environment, whether or not it is on PATH.
            done = subprocess.run([sys.executable, "-m", *command], cwd=repo, capture_output=True, text=True)
        except KeyboardInterrupt:  # the wrapper says "interrupted" and exits 130; the queue is left as it was
            _undo(repo, [e.name for e in experiments[:position]], in_flight=experiment.name)
            raise
        if done.returncode != 0:
            raise ValueError(
                f"dvc exp run --queue --name {experiment.name} failed: {dvc_message(done)}; "
                + _undo(repo, [e.name for e in experiments[:position]])
            )
        echo(f"queued {experiment.name:24} {experiment.tables:32} {' '.join(experiment.overrides())}")
    if dirty:
        echo(
            f"note: uncommitted changes to {', '.join(dirty[:5])}; the real run would refuse until they are committed."
        )
    verb = "would queue" if dry_run else "queued"
    echo(
        f"\n{verb} {len(experiments)} experiments"
        + (f" with {' '.join('-S ' + o for o in extra)}" if extra else "")
        + ". Next:"
    )
    echo("  dvc queue start -j N     # N experiments at a time (1 on a small CPU machine)")
    echo("  dvc queue status         # progress; `dvc queue logs <name>` for one experiment's output")
    echo("  nodule-net report        # the paper's tables from the finished experiments → report/report.md")
    return experiments
