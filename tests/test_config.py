"""params.yaml's schema, and the stage/CLI entry wrapper: one-line errors, Ctrl-C, the checkout's own code."""

from __future__ import annotations

import copy
import dataclasses
import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import popen_interruptible
from nodule_net.cli.errors import user_errors_exit
from nodule_net.config import (
    MALIGNANCY_MODES,
    PRECISION_NAMES,
    REQUIRED,
    SCHEMA,
    SECTIONS,
    VARIANTS,
    DataConfig,
    ExtractConfig,
    ModelConfig,
    Params,
    TrainConfig,
    load_params,
    validate_params,
)

REPO = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((REPO / "params.yaml").read_text())


def with_change(change: dict[str, object], drop: tuple[str, ...] = ()) -> dict:
    """params.yaml's raw dict with dotted ``change``s set and ``drop`` keys removed."""
    raw = copy.deepcopy(RAW)
    for key, value in change.items():
        *sections, name = key.split(".")
        node = raw
        for s in sections:
            node = node.setdefault(s, {})
        node[name] = value
    for key in drop:
        *sections, name = key.split(".")
        node = raw
        for s in sections:
            node = node[s]
        del node[name]
    return raw


def test_every_key_of_params_yaml_and_its_docs_is_in_the_schema() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.train.lr == 1e-4 and params.extract.image_side == 64 and params.folds == [0, 1, 2, 3, 4]
    table = (REPO / "docs" / "parameters.md").read_text().split("\n## ")[0]  # the keys' table, above the sections
    readme_keys = set()
    for line in table.splitlines():
        if line.startswith("| `"):  # "| `train.lr`, `train.betas` | ..."
            readme_keys |= set(line.split("|")[1].replace("`", "").replace(",", " ").split())
    assert readme_keys <= set(SCHEMA), (
        f"docs/parameters.md documents keys the schema rejects: {readme_keys - set(SCHEMA)}"
    )
    required = {key for key, param in SCHEMA.items() if param.default is REQUIRED}
    assert required <= readme_keys, f"docs/parameters.md's table lacks {required - readme_keys}"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extract.clevel": 1.5}, "params.yaml: extract.clevel = 1.5 is not allowed; it must be a number in (0, 1]."),
        ({"extract.clevel": 0}, "params.yaml: extract.clevel = 0 is not allowed; it must be a number in (0, 1]."),
        (
            {"extract.image_side": 4},
            "params.yaml: extract.image_side = 4 is not allowed; it must be an integer in [8, 512].",
        ),
        (
            {"extract.image_side": 64.0},
            "params.yaml: extract.image_side = 64.0 is not allowed; it must be an integer in [8, 512].",
        ),
        # Beyond LIDC's own 512² matrix: the memory of a MemoryError, and nothing gained.
        (
            {"extract.image_side": 4096},
            "params.yaml: extract.image_side = 4096 is not allowed; it must be an integer in [8, 512].",
        ),
        ({"train.epochs": 1.5}, "params.yaml: train.epochs = 1.5 is not allowed; it must be an integer ≥ 1."),
        ({"train.epochs": True}, "params.yaml: train.epochs = True is not allowed; it must be an integer ≥ 1."),
        ({"lambda": "abc"}, "params.yaml: lambda = 'abc' is not allowed; it must be a number ≥ 0."),
        ({"seed": -1}, "params.yaml: seed = -1 is not allowed; it must be an integer ≥ 0."),
        ({"train.lr": "nan"}, "params.yaml: train.lr = 'nan' is not allowed; it must be a number > 0."),
        (
            {"folds": [0, 2]},
            "params.yaml: folds = [0, 2] is not allowed; it must be the list [0, 1, ..., k-1] with k ≥ 2",
        ),
        (
            {"train.device": "gpu"},
            "params.yaml: train.device = 'gpu' is not allowed; it must be auto | cpu | cuda | cuda:N.",
        ),
        (
            {"model.malignancy": "both"},
            "model.malignancy = 'both' is not allowed; it must be one of regress | classify.",
        ),
        ({"train.precision": "fp16"}, "train.precision = 'fp16' is not allowed; it must be one of fp32 | bf16."),
        ({"train.epoch": 3}, "params.yaml: unknown key 'train.epoch'; did you mean 'train.epochs'?"),
        ({"trian": {"epochs": 3}}, "params.yaml: unknown key 'trian'; did you mean 'train'?"),
        ({"extract.size": 32}, "params.yaml: extract.size was renamed to extract.image_side"),
        ({"train": 3}, "params.yaml: train must be a section of keys"),
    ],
)
def test_bad_values_and_keys_fail_with_one_line_naming_them(change: dict, message: str) -> None:
    with pytest.raises(ValueError) as err:
        validate_params(with_change(change), "params.yaml")
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_missing_required_key_is_named_and_optional_keys_take_their_defaults() -> None:
    with pytest.raises(ValueError, match=r"missing key train\.epochs \(it must be an integer ≥ 1\)"):
        validate_params(with_change({}, drop=("train.epochs",)))
    params = validate_params(with_change({}, drop=("model.malignancy", "train.precision")))
    assert params.model.malignancy == "regress" and params.train.precision == "fp32"


def test_values_come_back_typed() -> None:
    """YAML 1.1 reads 1e-4 (no dot) as a string; numeric strings become floats, ints stay ints."""
    params = validate_params(with_change({"train.lr": "1e-4", "train.betas": ["0.5", 0.9], "lambda": 1}))
    assert params.train.lr == 1e-4 and isinstance(params.train.lr, float)
    assert params.train.betas == (0.5, 0.9) and params.lambda_ == 1.0 and isinstance(params.lambda_, float)
    assert params.train.lambda_aux == 1.0 and isinstance(params.train.lambda_aux, float)
    assert params.phantom.patients == 50
    assert validate_params(with_change({"phantom.patients": ["LIDC-IDRI-0001"]})).phantom.patients == ["LIDC-IDRI-0001"]


def test_model_variant_choices_are_the_one_list_of_variants() -> None:
    for variant in VARIANTS:
        assert validate_params(with_change({"model.variant": variant})).model.variant == variant
    with pytest.raises(ValueError, match=r"model\.variant"):
        validate_params(with_change({"model.variant": "4d"}))
    assert SCHEMA["model.variant"].rule.allowed == "one of " + " | ".join(VARIANTS)


def leaf_keys(tree: dict, prefix: str = "") -> list[str]:
    keys = []
    for name, value in tree.items():
        keys += leaf_keys(value, f"{prefix}{name}.") if isinstance(value, dict) else [f"{prefix}{name}"]
    return keys


def test_params_yaml_holds_the_dataclass_defaults() -> None:
    """Each default is written in code and in params.yaml; this holds the two equal, key by key."""
    assert leaf_keys(RAW) == list(SCHEMA), "params.yaml's keys, in its order, are the schema's"
    params, defaults = load_params(REPO / "params.yaml"), Params()
    for key in SCHEMA:
        *sections, name = key.split(".")
        name = "lambda_" if name == "lambda" else name
        ours, theirs = params, defaults
        for section in sections:
            ours, theirs = getattr(ours, section), getattr(theirs, section)
        assert getattr(ours, name) == getattr(theirs, name), f"{key}: params.yaml and the dataclass default differ"
    assert params == defaults
    assert TrainConfig().epochs == RAW["train"]["epochs"] == 12


def test_the_schema_is_derived_from_the_dataclass_fields() -> None:
    section_keys = [
        f"{cls.section}.{f.name}"
        for cls in SECTIONS.values()
        for f in dataclasses.fields(cls)
        if "rule" in f.metadata and not f.metadata["key"]
    ]
    assert [key for key in SCHEMA if "." in key] == section_keys
    assert [key for key in SCHEMA if "." not in key] == ["seed", "lambda", "folds"]
    model_params = [f.name for f in dataclasses.fields(ModelConfig) if "rule" in f.metadata]
    assert model_params == ["variant", "attribute", "malignancy"]  # the architecture fields are not params
    optional = {key for key, param in SCHEMA.items() if param.default is not REQUIRED}
    assert optional == {"model.malignancy", "train.precision", "train.folds_together", "train.fold_processes"}
    assert [SCHEMA[key].default for key in sorted(optional)] == ["regress", "auto", "auto", "fp32"]
    assert SCHEMA["model.malignancy"].rule.allowed == "one of " + " | ".join(MALIGNANCY_MODES)
    assert SCHEMA["train.precision"].rule.allowed == "one of " + " | ".join(PRECISION_NAMES)


def test_train_carries_the_top_level_lambda_and_seed() -> None:
    params = validate_params(with_change({"lambda": 0.5, "seed": 3, "train.epochs": 2}))
    assert (params.train.lambda_aux, params.train.seed, params.train.epochs) == (0.5, 3, 2)
    assert (params.lambda_, params.seed) == (0.5, 3)
    with pytest.raises(ValueError, match=r"train.lambda_aux=0.1 and train.seed=0 must equal lambda=0.5 and seed=0"):
        dataclasses.replace(params, lambda_=0.5, seed=0, train=TrainConfig())
    assert dataclasses.replace(params, seed=4, train=dataclasses.replace(params.train, seed=4)).train.seed == 4


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TrainConfig(lr=0), "train.lr = 0 is not allowed; it must be a number > 0."),
        (
            lambda: TrainConfig(betas=(0.9, 1.0)),
            "train.betas = (0.9, 1.0) is not allowed; it must be a list of 2 items",
        ),
        (lambda: TrainConfig(seed=-1), "seed = -1 is not allowed; it must be an integer ≥ 0."),
        (
            lambda: TrainConfig(fold_processes=0),
            "train.fold_processes = 0 is not allowed; it must be one of auto, or an",
        ),
        (lambda: DataConfig(source="ct"), "data.source = 'ct' is not allowed; it must be one of phantom | lidc."),
        (lambda: ExtractConfig(image_side=4096), "extract.image_side = 4096 is not allowed; it must be an integer in"),
        (lambda: Params(folds=[1, 2]), "folds = [1, 2] is not allowed; it must be the list [0, 1, ..., k-1]"),
    ],
)
def test_configs_built_in_code_are_checked_by_the_same_rules(build, message: str) -> None:
    with pytest.raises(ValueError) as err:
        build()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_configs_built_in_code_come_back_typed() -> None:
    config = TrainConfig(lr=1, lambda_aux=0, betas=[0.5, 0.9])
    assert (config.lr, config.lambda_aux, config.betas) == (1.0, 0.0, (0.5, 0.9))
    assert isinstance(config.lr, float) and isinstance(config.lambda_aux, float)
    assert [f.name for f in dataclasses.fields(TrainConfig)] == [
        "epochs",
        "lr",
        "betas",
        "weight_decay",
        "lambda_aux",
        "batch_nodules",
        "augment",
        "device",
        "precision",
        "seed",
        "folds_together",
        "fold_processes",
    ]  # asdict() of it feeds the training fingerprint


def test_settings_that_do_not_go_together_name_the_file() -> None:
    with pytest.raises(ValueError) as err:
        validate_params(with_change({"model.malignancy": "classify", "model.attribute": "calcification"}))
    assert str(err.value).startswith("params.yaml: model.malignancy=classify needs a malignancy output")
    assert "\n" not in str(err.value)


def test_the_config_module_does_not_import_torch() -> None:
    """The CLI and every stage load it first; torch takes seconds to import."""
    done = subprocess.run(
        [sys.executable, "-c", "import sys, nodule_net.config; print('torch' in sys.modules)"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.strip() == "False", done.stderr


def test_invalid_yaml_is_one_line(tmp_path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\ntrain: [unclosed\n")
    with pytest.raises(ValueError, match=r"params.yaml: not valid YAML at line \d+") as err:
        load_params(path)
    assert "\n" not in str(err.value)


def test_wrapper_turns_errors_and_ctrl_c_into_one_line(capsys) -> None:
    @user_errors_exit
    def fails() -> None:
        raise ValueError("params.yaml: seed = -1 is not allowed")

    @user_errors_exit(interrupted="interrupted; `dvc repro` resumes from the last epoch")
    def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(SystemExit) as exit_info:
        fails()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == "error: params.yaml: seed = -1 is not allowed\n"
    with pytest.raises(SystemExit) as exit_info:
        interrupted()
    assert exit_info.value.code == 130
    assert capsys.readouterr().err == "interrupted; `dvc repro` resumes from the last epoch\n"


def test_wrapper_turns_a_full_disk_into_one_line_and_keeps_bugs_tracebacks(capsys) -> None:
    @user_errors_exit
    def disk_fills_up() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "data/nodules.h5.partial")

    @user_errors_exit
    def bug() -> None:
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(SystemExit) as exit_info:
        disk_fills_up()
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == (
        "error: cannot write data/nodules.h5.partial: No space left on device; "
        "free some space or make it writable, then re-run.\n"
    )
    with pytest.raises(OSError, match="Bad file descriptor"):
        bug()


def copy_checkout(dest: Path) -> Path:
    """A second checkout: the package and the stage scripts, no venv of its own."""
    shutil.copytree(REPO / "nodule_net", dest / "nodule_net", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "pipeline", dest / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    return dest


@pytest.mark.integration
def test_stage_scripts_refuse_another_checkouts_package(tmp_path) -> None:
    """A second clone sharing the venv: run by path it would import the first clone's nodule_net."""
    clone = copy_checkout(tmp_path / "clone")
    (clone / "params.yaml").write_text("seed: [not, valid]\n")
    env = os.environ | {"PYTHONPATH": ""}
    by_path = subprocess.run(
        [sys.executable, "pipeline/split.py", "--dataset", "x.h5", "--out", "s.json"],
        cwd=clone,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert by_path.returncode == 1
    assert by_path.stderr.strip().splitlines() == [
        f"error: {clone / 'pipeline' / 'split.py'} belongs to the checkout {clone} but imported nodule_net from "
        f"{REPO / 'nodule_net'}; run stages from the repo root as dvc.yaml does (`python -m pipeline.<stage>`)."
    ]
    as_module = subprocess.run(
        [sys.executable, "-m", "pipeline.split", "--dataset", "x.h5", "--out", "s.json"],
        cwd=clone,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    # The clone's own package ran: it got as far as reading the clone's params.yaml.
    assert as_module.returncode == 1
    assert as_module.stderr.strip() == (
        "error: params.yaml: seed = ['not', 'valid'] is not allowed; it must be an integer ≥ 0."
    )


@pytest.mark.integration
@pytest.mark.parametrize("processes", [1, 2], ids=["in_process", "fold_processes"])
def test_ctrl_c_during_training_exits_130_with_one_line(tmp_path, processes: int) -> None:
    """A real SIGINT to `python -m pipeline.train` after its first checkpoint: no traceback, exit 130
    (with the folds in worker processes too: the pool is terminated, no worker prints anything)."""
    sys.path.insert(0, str(REPO / "tests"))
    from nodule_net.data.split import kfold_split, write_splits
    from nodule_net.io.store import write_dataset
    from synthetic_nodules import make_dataset

    data = make_dataset(n_nodules=8, size=16, max_depth=2, seed=3)
    write_dataset(tmp_path / "nodules.h5", data)
    write_splits(tmp_path / "splits.json", kfold_split(data.nodule_id, data.patient_id, 2, seed=0, val_fraction=0.2))
    raw = with_change({"train.epochs": 1000, "train.device": "cpu", "folds": [0, 1], "train.fold_processes": processes})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    checkpoint = tmp_path / "ckpt" / "fold0.pt"
    cmd = [
        sys.executable,
        "-m",
        "pipeline.train",
        "--dataset",
        str(tmp_path / "nodules.h5"),
        "--splits",
        str(tmp_path / "splits.json"),
        "--fold",
        "0",
        "--models",
        str(tmp_path / "models"),
        "--checkpoints",
        str(checkpoint.parent),
        "--live",
        str(tmp_path / "live"),
        "--params",
        str(tmp_path / "params.yaml"),
    ]
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    proc = popen_interruptible(cmd, cwd=REPO, env=env)
    try:
        deadline = time.monotonic() + 90
        while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert checkpoint.exists(), proc.communicate(timeout=5)[1] if proc.poll() is not None else "no checkpoint"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "interrupted; `dvc repro` resumes from the last epoch"
    assert not (tmp_path / "models" / "fold0" / "model.pt").exists()  # no model file from an interrupted run


BOOLEAN_KEYS = [key for key, param in SCHEMA.items() if "true or false" in param.rule.allowed]


def test_every_boolean_param_is_found() -> None:
    assert BOOLEAN_KEYS == ["phantom.all_slices", "split.group_by_patient", "train.augment", "train.folds_together"]


@pytest.mark.parametrize("key", BOOLEAN_KEYS)
@pytest.mark.parametrize("word", ["yes", "no", "on", "off", "Yes", "ON", "y"])
def test_yaml_1_1_booleans_are_refused_as_dvc_reads_them(tmp_path, key: str, word: str) -> None:
    """PyYAML (YAML 1.1) reads `yes` as true; DVC (YAML 1.2) as the string 'yes' (`dvc params diff`: False → yes)."""
    from dvc.utils.serialize import loads_yaml

    text = (REPO / "params.yaml").read_text()
    section, name = key.split(".")
    line = next(ln for ln in text.splitlines() if ln.startswith(f"  {name}:"))
    path = tmp_path / "params.yaml"
    path.write_text(text.replace(line, f"  {name}: {word}"))
    assert loads_yaml(path.read_text())[section][name] == word  # what DVC records
    with pytest.raises(ValueError) as err:
        load_params(path)
    assert str(err.value).startswith(f"{path}: {key} = {word!r} is not allowed; it must be ")
    assert "write true or false" in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("word", "value"),
    [("true", True), ("True", True), ("TRUE", True), ("false", False), ("False", False), ("FALSE", False)],
)
def test_yaml_1_2_booleans_still_load(tmp_path, word: str, value: bool) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(
        (REPO / "params.yaml").read_text().replace("  group_by_patient: false", f"  group_by_patient: {word}")
    )
    assert load_params(path).split.group_by_patient is value


def test_params_yaml_reads_as_dvc_reads_it() -> None:
    """Every value of the project's params.yaml is the same to us and to DVC (ruamel, YAML 1.2)."""
    from dvc.utils.serialize import loads_yaml

    from nodule_net.config import read_yaml

    text = (REPO / "params.yaml").read_text()
    assert read_yaml(text) == loads_yaml(text)


@pytest.mark.parametrize(
    ("override", "value"),
    [("split.group_by_patient=yes", "'yes'"), ("train.augment=off", "'off'"), ("phantom.all_slices=on", "'on'")],
)
def test_dvc_exp_run_set_param_with_a_yaml_1_1_boolean_is_refused(tmp_path, override: str, value: str) -> None:
    """`dvc exp run -S split.group_by_patient=yes` writes `yes` into params.yaml (DVC's own override code)."""
    from dvc.utils.hydra import apply_overrides

    path = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", path)
    apply_overrides(path, [override])
    key = override.split("=")[0]
    with pytest.raises(ValueError, match=f"^{path}: {key} = {value} is not allowed; it must be true or false"):
        load_params(path)
    apply_overrides(path, [f"{key}=true"])
    section, name = key.split(".")
    assert getattr(getattr(load_params(path), section), name) is True


def make_checkout(dest: Path, marker: str) -> Path:
    """A second nodule-net checkout (the package, and ``marker``: dvc.yaml or pyproject.toml), no venv of its own."""
    shutil.copytree(REPO / "nodule_net", dest / "nodule_net", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / marker, dest / marker)
    return dest


@pytest.mark.slow
@pytest.mark.parametrize("marker", ["dvc.yaml", "pyproject.toml"])
def test_the_console_script_refuses_another_checkouts_package(tmp_path, marker: str) -> None:
    """`nodule-net` of a venv shared by two clones imports the first clone's package; from the second, refuse."""
    script = Path(sys.executable).with_name("nodule-net")
    assert script.exists(), "the console script of this venv (pip install -e .)"
    clone = make_checkout(tmp_path / "clone", marker)
    (clone / "sub").mkdir()
    env = os.environ | {"PYTHONPATH": ""}
    for cwd in (clone, clone / "sub"):
        done = subprocess.run(
            [str(script), "mae-table", "missing.json"], cwd=cwd, capture_output=True, text=True, env=env, timeout=60
        )
        assert done.returncode == 1
        assert done.stderr.strip().splitlines() == [
            f"error: {clone} is a nodule-net checkout, but this command imported nodule_net from "
            f"{REPO / 'nodule_net'}; "
            f"run `pip install -e .` in {clone} (or use that clone's own venv), then re-run."
        ]
    # Outside any checkout, and in the package's own checkout, the command runs (to its own error here).
    for cwd in (tmp_path, REPO):
        done = subprocess.run(
            [str(script), "mae-table", str(tmp_path / "missing.json")],
            cwd=cwd,
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        assert done.returncode == 1 and "is a nodule-net checkout" not in done.stderr, done.stderr


def test_a_folder_with_another_projects_pyproject_is_not_a_checkout(tmp_path) -> None:
    from nodule_net.cli.errors import foreign_checkout

    other = tmp_path / "other"
    shutil.copytree(REPO / "nodule_net", other / "nodule_net", ignore=shutil.ignore_patterns("__pycache__"))
    (other / "pyproject.toml").write_text('[project]\nname = "something-else"\n')
    assert foreign_checkout(other) is None
    (other / "pyproject.toml").write_text('[project]\nname = "nodule_net"\n')  # the same name, normalised
    assert foreign_checkout(other).startswith(f"{other} is a nodule-net checkout")
    assert foreign_checkout(REPO) is None and foreign_checkout(REPO / "tests") is None
