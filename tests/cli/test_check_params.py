"""`nodule-net check-params`: the schema's one line for what DVC's own parser would meet first, or `ok`."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodule_net.cli.main import main

REPO = Path(__file__).resolve().parents[2]
PARAMS = (REPO / "params.yaml").read_text()


def _check(path: Path, capsys) -> tuple[int, list[str], list[str]]:
    """Exit code, stdout lines and stderr lines of `nodule-net check-params PATH`."""
    try:
        main(["check-params", str(path)])
        code = 0
    except SystemExit as exited:
        code = exited.code
    out, err = capsys.readouterr()
    return code, out.splitlines(), err.splitlines()


def test_the_repositorys_params_yaml_is_ok(capsys) -> None:
    assert _check(REPO / "params.yaml", capsys) == (0, [f"{REPO / 'params.yaml'}: ok"], [])


@pytest.mark.parametrize(
    ("text", "line"),
    [
        (
            PARAMS.replace("  epochs: 12 ", "  epohcs: 12 "),
            "unknown key 'train.epohcs'; did you mean 'train.epochs'?",
        ),
        (PARAMS + "trian:\n  epochs: 1\n", "unknown key 'trian'; did you mean 'train'?"),
        (
            PARAMS + "learning_rate: 0.1\n",
            "unknown key 'learning_rate'; valid keys: data, extract, folds, lambda, model, phantom, seed, split, "
            "train.",
        ),
        # DVC would say `failed to resolve 'stages.train.foreach' in 'dvc.yaml': expected list/dictionary, got int`.
        (
            PARAMS.replace("folds: [0, 1, 2, 3, 4] ", "folds: 5 "),
            "folds = 5 is not allowed; it must be the list [0, 1, ..., k-1] with k ≥ 2 (k = the number of folds).",
        ),
    ],
    ids=["nested", "section", "top_level", "folds_not_a_list"],
)
def test_a_wrong_key_is_one_line_naming_the_file_and_the_key(tmp_path: Path, capsys, text: str, line: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert text != PARAMS  # the replacement above found its line
    assert _check(path, capsys) == (1, [], [f"error: {path}: {line}"])


@pytest.mark.parametrize("text", ["", "# only a comment\n"], ids=["empty", "comments_only"])
def test_an_empty_file_is_one_line_saying_so(tmp_path: Path, capsys, text: str) -> None:
    """DVC would say `Could not find 'folds'` (dvc.yaml's foreach), naming neither the file nor what to do."""
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert _check(path, capsys) == (
        1,
        [],
        [
            f"error: {path} is empty, but it must hold the params (every key of docs/parameters.md); "
            f"restore it (`git checkout {path}`)."
        ],
    )


def test_a_missing_file_is_one_line_naming_it(tmp_path: Path, capsys) -> None:
    path = tmp_path / "nowhere.yaml"
    assert _check(path, capsys) == (
        1,
        [],
        [f"error: {path}: no such params file; run in the repository root (which holds params.yaml) or name the file."],
    )
