"""The train stage and its disk: the up-front estimate counts every copy an atomic write makes,
a disk that fills up later is one line, and the model file records the crop of its training data."""

from __future__ import annotations

import dataclasses
import runpy
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
import yaml

from nodule_net.config import load_params
from nodule_net.io import files
from nodule_net.io.store import read_dataset, write_dataset
from nodule_net.model.net import NoduleNet
from synthetic_nodules import train_argv, write_stage_inputs

REPO = Path(__file__).resolve().parents[2]
Usage = namedtuple("Usage", "total used free")  # what shutil.disk_usage returns
CROP = {"clevel": 0.5, "extent_fraction": 0.8, "image_side": 16}  # the tiny dataset's own side

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.integration]


@pytest.fixture
def stage(tmp_path, monkeypatch, capsys):
    """``run()`` runs pipeline/train.py here (folds 0 and 1 one after another, 1 epoch) and returns
    (exit code, stderr), its stdout then in ``run.output``; the dataset records its extract settings as
    extract writes them."""
    write_stage_inputs(
        tmp_path, {"epochs": 1, "batch_nodules": 1, "device": "cpu", "folds_together": False, "fold_processes": 1}
    )
    data = read_dataset(tmp_path / "nodules.h5")
    write_dataset(tmp_path / "nodules.h5", dataclasses.replace(data, attrs={"source": "phantom", "params": CROP}))
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["train.py", *train_argv()])

    def run() -> tuple[int, str]:
        try:
            runpy.run_path(str(REPO / "pipeline/train.py"), run_name="__main__")
        except SystemExit as exit_info:
            captured = capsys.readouterr()
            run.output = captured.out
            return exit_info.code, captured.err.strip()
        captured = capsys.readouterr()
        run.output = captured.out
        return 0, captured.err

    return run


def test_the_up_front_check_counts_the_atomic_copies_of_every_fold(stage, tmp_path, monkeypatch) -> None:
    model_config = load_params(tmp_path / "params.yaml").model
    weights = sum(p.numel() * p.element_size() for p in NoduleNet(model_config).parameters())
    # Room for any one file (4× the weights, the checkpoint) twice over, but not for the 2 folds' checkpoints
    # (model, best model, Adam's 2 moments) and model files, each beside its temporary copy: 2 × 2 × 5 weights.
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: Usage(10**12, 10**12, 8 * weights))
    code, err = stage()
    assert code == 1 and "\n" not in err
    assert err.startswith("error: Cannot write ckpt/fold0.pt: it needs about") and "free some space" in err
    assert not Path("ckpt/fold0.pt").exists() and not Path("models").exists()


def test_a_disk_that_fills_at_a_checkpoint_is_one_line_and_the_rerun_records_the_crop(stage) -> None:
    Path("ckpt").mkdir()
    Path("ckpt/fold0.pt.partial").symlink_to("/dev/full")  # writes fail with ENOSPC: a disk full after the check
    code, err = stage()
    assert code == 1
    assert err == (
        "error: cannot write ckpt/fold0.pt: No space left on device (the disk holding ckpt is full); "
        "free some space or make it writable, then re-run."
    )
    assert not Path("ckpt/fold0.pt").exists() and not Path("ckpt/fold0.pt.partial").exists()
    code, _ = stage()  # space freed (the failed write left nothing behind): it trains
    assert code == 0
    for fold in (0, 1):
        saved = torch.load(f"models/fold{fold}/model.pt", weights_only=True)
        assert saved["extract"] == CROP and saved["fold"] == fold


def test_checkpoints_past_a_lowered_epoch_count_are_retrained_and_said_so_once(stage, tmp_path) -> None:
    """`-S train.epochs=1` over epoch-2 checkpoints: each fold trains afresh, and the log says that alone
    (not also that the checkpoint holds a finished run)."""
    params = tmp_path / "params.yaml"
    values = yaml.safe_load(params.read_text())
    values["train"]["epochs"] = 2
    params.write_text(yaml.safe_dump(values))
    assert stage()[0] == 0
    values["train"]["epochs"] = 1
    params.write_text(yaml.safe_dump(values))
    code, err = stage()
    assert code == 0, err
    out = stage.output
    assert "holds a finished run" not in out
    for fold in (0, 1):
        assert f"ckpt/fold{fold}.pt: checkpoint is at epoch 2 > train.epochs=1; starting afresh." in out
        assert f"fold {fold} epoch 1/1:" in out
