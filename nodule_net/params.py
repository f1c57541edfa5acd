"""``params.yaml``: one schema, validated once, up front; and one-line errors for stage scripts.

Every key of ``params.yaml`` has one row in :data:`SCHEMA`: its dotted name, a
:class:`Rule` (the type and allowed range or choices, which also converts the value) and,
for the few optional keys, a default. :func:`load_params` checks the whole file against
it before any stage does work, so a bad value fails with one sentence naming the key,
the value and what is allowed, and stage scripts get typed values (no re-casting).

To add a param: add it to ``params.yaml`` (with a comment), to docs/parameters.md's table,
and one row here, e.g. ``"train.warmup": Param(integer(low=0))``; give a ``default`` only
for a key that may be absent from older ``params.yaml`` files.
"""

from __future__ import annotations

import difflib
import errno
import functools
import logging
import math
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

import nodule_net
from nodule_net.attributes import ABBREVIATIONS, ATTRIBUTES


class _Rejected(Exception):
    """A value a :class:`Rule` does not allow."""


@dataclass(frozen=True)
class Rule:
    """What a param may be: ``allowed`` says it in words, ``parse`` returns the typed value or raises."""

    allowed: str  # completes "it must be ...", e.g. "an integer ≥ 1"
    parse: Callable[[Any], Any]


def integer(low: int | None = None, high: int | None = None) -> Rule:
    def parse(value: Any) -> int:
        # bool is an int subclass in Python; `epochs: true` is a mistake, not 1. So is 1.5.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Rejected
        if (low is not None and value < low) or (high is not None and value > high):
            raise _Rejected
        return value

    if low is not None and high is not None:
        return Rule(f"an integer in [{low}, {high}]", parse)
    return Rule("an integer" + (f" ≥ {low}" if low is not None else f" ≤ {high}" if high is not None else ""), parse)


def number(low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite float in the interval; numeric strings too (YAML 1.1 reads ``1e-4`` as a string)."""

    def parse(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise _Rejected
        try:
            x = float(value)
        except ValueError:
            raise _Rejected from None
        # Written so that NaN fails every comparison and is rejected.
        if not math.isfinite(x):
            raise _Rejected
        if low is not None and not (x > low if low_open else x >= low):
            raise _Rejected
        if high is not None and not (x < high if high_open else x <= high):
            raise _Rejected
        return x

    if low is not None and high is not None:
        allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"a number {'>' if low_open else '≥'} {low:g}"
    else:
        allowed = "a number"
    return Rule(allowed, parse)


def boolean() -> Rule:
    """``true`` or ``false`` only: :func:`read_yaml` leaves YAML 1.1's ``yes``/``on``/... strings, as DVC does."""

    def parse(value: Any) -> bool:
        if not isinstance(value, bool):
            raise _Rejected
        return value

    return Rule("true or false (write true or false: DVC reads yes/no/on/off as strings)", parse)


def choice(*options: str) -> Rule:
    def parse(value: Any) -> str:
        if not isinstance(value, str) or value not in options:
            raise _Rejected
        return value

    return Rule("one of " + " | ".join(options), parse)


def text(pattern: str | None = None, meaning: str = "a non-empty string") -> Rule:
    """A non-empty string, matching ``pattern`` (a full-match regex) when given."""

    def parse(value: Any) -> str:
        if not isinstance(value, str) or not value or (pattern is not None and not re.fullmatch(pattern, value)):
            raise _Rejected
        return value

    return Rule(meaning, parse)


def optional(rule: Rule) -> Rule:
    """``null`` or what ``rule`` allows."""
    return Rule(f"null or {rule.allowed}", lambda value: None if value is None else rule.parse(value))


def either(first: Rule, second: Rule) -> Rule:
    def parse(value: Any) -> Any:
        try:
            return first.parse(value)
        except _Rejected:
            return second.parse(value)

    return Rule(f"{first.allowed}, or {second.allowed}", parse)


def list_of(rule: Rule, length: int | None = None, min_length: int = 1, meaning: str | None = None) -> Rule:
    def parse(value: Any) -> list:
        if not isinstance(value, list) or len(value) < min_length or (length is not None and len(value) != length):
            raise _Rejected
        return [rule.parse(v) for v in value]

    count = f"{length}" if length is not None else f"at least {min_length}"
    return Rule(meaning or f"a list of {count} items, each {rule.allowed}", parse)


def fold_list() -> Rule:
    """``[0, 1, ..., k-1]`` with k ≥ 2: train runs once per entry, split makes k folds."""

    def parse(value: Any) -> list[int]:
        folds = list_of(integer(low=0), min_length=2).parse(value)
        if folds != list(range(len(folds))):
            raise _Rejected
        return folds

    return Rule("the list [0, 1, ..., k-1] with k ≥ 2 (k = the number of folds)", parse)


REQUIRED = object()  # default of a key params.yaml must contain


@dataclass(frozen=True)
class Param:
    rule: Rule
    default: Any = REQUIRED


# The one table of valid params. docs/parameters.md says what each one means.
SCHEMA: dict[str, Param] = {
    "seed": Param(integer(low=0)),
    "lambda": Param(number(low=0)),
    "data.source": Param(choice("phantom", "lidc")),
    "data.lidc_root": Param(optional(text(meaning="a path"))),
    "data.phantom_root": Param(text(meaning="a path")),
    "data.dataset": Param(text(meaning="a path")),
    "phantom.patients": Param(either(integer(low=1), list_of(
        text(r"LIDC-IDRI-\d{4}"), meaning="a list of patient ids like LIDC-IDRI-0001"))),
    "phantom.all_slices": Param(boolean()),
    "phantom.margin_slices": Param(integer(low=0)),
    "phantom.workers": Param(integer(low=1)),
    "extract.scans_per_patient": Param(choice("first", "all")),
    "extract.clevel": Param(number(low=0, high=1, low_open=True)),
    "extract.extent_fraction": Param(number(low=0, high=1, low_open=True)),
    # The backbone halves the side 3 times before global pooling: ≥ 8. At most 512, LIDC's own matrix:
    # resampling a ≈16-px box to more pixels than its scan has adds nothing, and the cost grows as the
    # side²: extract holds all slices × side² float32 in memory (1 GB per 1,000 slices at 512) and
    # training as many activations per slice. pipeline/extract.py checks memory and disk for the value.
    "extract.image_side": Param(integer(low=8, high=512)),
    "extract.workers": Param(integer(low=1)),
    "folds": Param(fold_list()),
    "split.group_by_patient": Param(boolean()),
    "split.val_fraction": Param(number(low=0, high=1, low_open=True, high_open=True)),
    # Choices kept equal to nodule_net.model.VARIANTS by tests/test_params.py (this module must not import torch).
    "model.variant": Param(choice("none", "sam", "caam", "caam_ascmm", "full", "3d")),
    "model.attribute": Param(optional(choice(*ATTRIBUTES, *ABBREVIATIONS))),
    "model.malignancy": Param(choice("regress", "classify"), default="regress"),  # optional key
    "train.epochs": Param(integer(low=1)),
    "train.lr": Param(number(low=0, low_open=True)),
    "train.betas": Param(list_of(number(low=0, high=1, high_open=True), length=2)),
    "train.weight_decay": Param(number(low=0)),
    "train.batch_nodules": Param(integer(low=1)),
    "train.augment": Param(boolean()),
    "train.device": Param(text(r"auto|cpu|cuda(:\d+)?", meaning="auto | cpu | cuda | cuda:N")),
    "train.precision": Param(choice("fp32", "bf16"), default="fp32"),  # optional key
    # Optional key: true trains the k folds side by side (nodule_net.side_by_side); auto: on CUDA only.
    "train.folds_together": Param(either(choice("auto"), boolean()), default="auto"),
    # Optional key: folds trained at once in processes on a CPU (nodule_net.fold_processes); auto: one per fold.
    "train.fold_processes": Param(either(choice("auto"), integer(low=1)), default="auto"),
}

# Sections: every proper prefix of a dotted key ("train" for "train.lr").
_SECTIONS = {".".join(key.split(".")[:i]) for key in SCHEMA for i in range(1, key.count(".") + 1)}


# Keys that were renamed: the old name gets a pointer to the new one.
_RENAMED = {"extract.size": "extract.image_side"}  # DVC's run-cache ignores any param named `size`


def _unknown(path: Path, key: str) -> ValueError:
    if key in _RENAMED:
        return ValueError(f"{path}: {key} was renamed to {_RENAMED[key]}; rename it in {path.name}.")
    section, _, name = key.rpartition(".")
    siblings = [k for k in [*SCHEMA, *_SECTIONS] if k.rpartition(".")[0] == section]
    if siblings:  # a known section (or the top level): compare names within it
        by_name = {k.rpartition(".")[2]: k for k in siblings}
        close = [by_name[n] for n in difflib.get_close_matches(name, by_name, n=1, cutoff=0.6)]
    else:  # a misspelt section ("trian.epochs"): compare whole keys
        close = difflib.get_close_matches(key, [*SCHEMA, *_SECTIONS], n=1, cutoff=0.6)
    if close:
        hint = f"did you mean {close[0]!r}?"
    else:
        hint = f"valid keys{f' in {section}' if section else ''}: {', '.join(sorted(siblings))}."
    return ValueError(f"{path}: unknown key {key!r}; {hint}")


def _leaves(path: Path, tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{dotted key: raw value}`` of ``tree``, rejecting keys the schema does not know."""
    found: dict[str, Any] = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if key in SCHEMA:
            found[key] = value
        elif key in _SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"{path}: {key} must be a section of keys (like `{key}:` followed by indented "
                                 f"`key: value` lines), got {value!r}.")
            found |= _leaves(path, value, key + ".")
        else:
            raise _unknown(path, key)
    return found


def validate_params(raw: Any, path: str | Path = "params.yaml") -> dict:
    """The params as a nested dict of typed values, defaults filled in.

    Raises ``ValueError`` (one line naming ``path``, the key, the value and what is
    allowed) on the first unknown, missing or out-of-range key.
    """
    path = Path(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must be a mapping of params (`key: value` lines), got {type(raw).__name__}.")
    leaves = _leaves(path, raw)
    params: dict = {}
    for key, param in SCHEMA.items():
        if key in leaves:
            try:
                value = param.rule.parse(leaves[key])
            except _Rejected:
                raise ValueError(f"{path}: {key} = {leaves[key]!r} is not allowed; "
                                 f"it must be {param.rule.allowed}.") from None
        elif param.default is not REQUIRED:
            value = param.default
        else:
            raise ValueError(f"{path}: missing key {key} (it must be {param.rule.allowed}); "
                             "see docs/parameters.md.")
        *sections, name = key.split(".")
        node = params
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = value
    return params


class _Yaml12Booleans(yaml.SafeLoader):
    """PyYAML's safe loader with YAML 1.2's booleans (``true``/``false`` only), as DVC reads params.yaml.

    PyYAML implements YAML 1.1, where ``yes``/``no``/``on``/``off`` are booleans too; DVC's
    ruamel parser (YAML 1.2) reads them as strings, so `dvc params diff` and `dvc exp run -S`
    would see another value than the stages. Here they stay strings and :func:`boolean` refuses them.
    """


_Yaml12Booleans.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Yaml12Booleans.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def read_yaml(stream: Any) -> Any:
    """``yaml.safe_load`` with YAML 1.2's booleans (:class:`_Yaml12Booleans`): for params and ``-S`` values."""
    return yaml.load(stream, Loader=_Yaml12Booleans)  # safe: a SafeLoader subclass


def load_params(path: str | Path = "params.yaml") -> dict:
    """``params.yaml`` validated against :data:`SCHEMA` (see :func:`validate_params`)."""
    with open(path) as f:
        try:
            raw = read_yaml(f)
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            line = f" at line {where.line + 1}" if where is not None else ""
            raise ValueError(f"{path}: not valid YAML{line} ({getattr(err, 'problem', None) or err}).") from None
    return validate_params(raw, path)


_DISK_FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)

# Exit status of a process ended by Ctrl-C (128 + SIGINT), as shells report it.
INTERRUPTED_EXIT = 130
INTERRUPTED = "interrupted; no output was left half-written, and `dvc repro` runs this stage again"


def foreign_package(script: str | Path) -> str | None:
    """Why ``script`` (a stage script or module) must not run with the imported ``nodule_net``, or None.

    A second clone sharing a venv would otherwise run the first clone's code through the
    editable install; ``python -m pipeline.<stage>`` from the repo root puts the
    checkout's own package first on ``sys.path``.
    """
    checkout = Path(script).resolve().parents[1]
    package = Path(nodule_net.__file__).resolve().parent
    if package.parent == checkout:
        return None
    return (f"{script} belongs to the checkout {checkout} but imported nodule_net from {package}; "
            "run stages from the repo root as dvc.yaml does (`python -m pipeline.<stage>`).")


# pyproject.toml's `name = "nodule-net"` in any spelling pip treats as the same (PEP 503); a regex,
# not tomllib, which Python 3.10 lacks.
_OUR_NAME = re.compile(r'^name\s*=\s*["\']nodule[-_.]net["\']\s*$', re.MULTILINE | re.IGNORECASE)


def _is_checkout(folder: Path) -> bool:
    """Whether ``folder`` is the root of a nodule-net checkout: the package, and dvc.yaml or our pyproject.toml."""
    if not (folder / "nodule_net").is_dir():
        return False
    pyproject = folder / "pyproject.toml"
    return (folder / "dvc.yaml").is_file() or (pyproject.is_file() and bool(_OUR_NAME.search(pyproject.read_text())))


def foreign_checkout(cwd: str | Path | None = None) -> str | None:
    """Why a command run in ``cwd`` (default: the current folder) must not use the imported ``nodule_net``, or None.

    The console script ``nodule-net`` of a venv shared by two clones imports the package
    of the clone that was installed (``pip install -e .``), whatever folder it runs in; its
    ``main`` lives in that package, so :func:`foreign_package` cannot see it. The
    checkout ``cwd`` lies in (it or its nearest parent that is one) must be the package's.
    """
    here = Path(Path.cwd() if cwd is None else cwd).resolve()
    checkout = next((folder for folder in (here, *here.parents) if _is_checkout(folder)), None)
    package = Path(nodule_net.__file__).resolve().parent
    if checkout is None or package.parent == checkout:
        return None
    return (f"{checkout} is a nodule-net checkout, but this command imported nodule_net from {package}; "
            f"run `pip install -e .` in {checkout} (or use that clone's own venv), then re-run.")


def user_errors_exit(main: Callable[..., None] | None = None, *, interrupted: str = INTERRUPTED) -> Callable:
    """Run a stage's (or the CLI's) ``main``; a user mistake prints one line naming the problem and exits 1.

    Ctrl-C prints the one line ``interrupted`` and exits 130. Before anything runs, the
    ``nodule_net`` package must be the one of ``main``'s own checkout (:func:`foreign_package`)
    and of the checkout the current folder is in (:func:`foreign_checkout`). Anything else (a
    bug) keeps its traceback. Use as ``@user_errors_exit`` or ``@user_errors_exit(interrupted=...)``.
    """
    if main is None:
        return functools.partial(user_errors_exit, interrupted=interrupted)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        script = getattr(sys.modules.get(main.__module__), "__file__", None)
        try:
            if (script is not None and (problem := foreign_package(script))) or (problem := foreign_checkout()):
                raise ValueError(problem)
            return main(*args, **kwargs)
        except (ValueError, FileNotFoundError) as err:  # DicomError is a ValueError
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        except OSError as err:
            if err.errno not in _DISK_FULL_OR_READ_ONLY:
                raise
            # The up-front check (files.check_writable) passed, but the disk filled up meanwhile.
            print(f"error: cannot write {err.filename or 'an output'}: {err.strerror}; "
                  "free some space or make it writable, then re-run.", file=sys.stderr)
            sys.exit(1)
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr)
            sys.exit(INTERRUPTED_EXIT)

    return wrapper
