"""Checkpoint and model files: unreadable or foreign ones are named in one line and never run code."""

from __future__ import annotations

import errno
import os
import pickle

import numpy as np
import pytest
import torch

from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.io.checkpoint import (
    extract_record,
    load_checkpoint,
    model_path,
    read_model_file,
    save_checkpoint,
)
from nodule_net.io.checkpoint import (
    save_model as save_model_file,
)
from nodule_net.training.fit import FitResult, fit, save_model
from synthetic_nodules import make_dataset

CPU = torch.device("cpu")
TINY = dict(widths=(4, 8), convs_per_stage=(1, 1), sam_hidden=8, caam_hidden=8, head_hidden=16)

pytestmark = pytest.mark.usefixtures("one_thread")


class RunsCode:
    """Unpickling this calls os.mkdir(marker): what a crafted checkpoint would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def valid_state(fingerprint: str = "run-a", epoch: int = 2) -> dict:
    return {
        "fingerprint": fingerprint,
        "epoch": epoch,
        "model": {"w": torch.ones(3)},
        "optimizer": {},
        "best_model": {"w": torch.ones(3)},
        "best_epoch": 1,
        "best_val_mae": 0.5,
        "history": [(1, 1.0, 0.5), (2, 0.9, 0.6)],
    }


def write_truncated(path) -> None:
    save_checkpoint(valid_state(), path)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])


def write_text(path) -> None:
    path.write_text("this is not a checkpoint\n")


def write_pickle_with_code(path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"version": 1, "payload": RunsCode(str(path.parent / "ran"))}, f, protocol=2)


def write_torch_file_with_code(path) -> None:
    torch.save({"version": 1, "payload": RunsCode(str(path.parent / "ran"))}, path)


def write_wrong_structure(path) -> None:
    torch.save({"version": 1, "fingerprint": "run-a"}, path)  # no epoch, model, ...


def write_a_list(path) -> None:
    torch.save([torch.zeros(2)], path)


BAD_FILES = [
    write_truncated,
    write_text,
    write_pickle_with_code,
    write_torch_file_with_code,
    write_wrong_structure,
    write_a_list,
]


@pytest.mark.parametrize("write", BAD_FILES)
def test_unreadable_checkpoint_is_moved_aside_with_one_line(tmp_path, capsys, write) -> None:
    path = tmp_path / "fold0.pt"
    write(path)
    damaged = path.read_bytes()
    assert load_checkpoint(path, "run-a", epochs=5, device=CPU) is None
    out = capsys.readouterr().out.strip()
    assert len(out.splitlines()) == 1
    assert out.startswith(f"{path}: unreadable or foreign checkpoint (")
    assert out.endswith(f"); moved it to {path}.corrupt and starting afresh.")
    assert not path.exists() and (tmp_path / "fold0.pt.corrupt").read_bytes() == damaged
    assert not (tmp_path / "ran").exists()  # no pickled code ran


def test_checkpoint_of_another_run_is_ignored_not_moved(tmp_path, capsys) -> None:
    path = tmp_path / "fold0.pt"
    save_checkpoint(valid_state("run-a"), path)
    assert load_checkpoint(path, "run-b", epochs=5, device=CPU) is None
    assert (
        capsys.readouterr().out.strip()
        == f"{path}: checkpoint of other params, data or training code; starting afresh."
    )
    assert path.exists()
    state = load_checkpoint(path, "run-a", epochs=5, device=CPU)
    assert state["epoch"] == 2 and state["history"] == [(1, 1.0, 0.5), (2, 0.9, 0.6)]


def test_training_with_a_corrupt_checkpoint_starts_afresh(tmp_path) -> None:
    data = make_dataset(n_nodules=8, size=16, max_depth=2, seed=0)
    parts = {"train": np.arange(6), "val": np.arange(6, 8)}
    config = TrainConfig(epochs=1, batch_nodules=4)
    path = tmp_path / "fold0.pt"
    path.write_bytes(b"PK\x03\x04 truncated zip")
    resumed = fit(data, parts, ModelConfig(**TINY), config, 0, path, progress=False, device=CPU)
    fresh = fit(data, parts, ModelConfig(**TINY), config, 0, None, progress=False, device=CPU)
    assert resumed.history == fresh.history
    assert (tmp_path / "fold0.pt.corrupt").read_bytes() == b"PK\x03\x04 truncated zip"
    assert load_checkpoint(path, "other", 1, CPU) is None and path.exists()  # a sound checkpoint was written


@pytest.mark.parametrize("write", [write_truncated, write_text, write_pickle_with_code, write_a_list])
def test_unreadable_model_file_is_one_line_naming_it(tmp_path, write) -> None:
    path = tmp_path / "model.pt"
    write(path)
    with pytest.raises(ValueError) as err:
        read_model_file(path, CPU)
    message = str(err.value)
    assert message.startswith(f"{path}: unreadable model file (") and "\n" not in message
    assert message.endswith("); delete it and re-run `dvc repro train`.")
    assert not (tmp_path / "ran").exists()


def test_a_fit_without_a_selected_epoch_is_never_saved(tmp_path) -> None:
    path = model_path(tmp_path, 0)
    empty = FitResult(None, 0.0, 1.0, 0, float("inf"), [])
    with pytest.raises(ValueError, match="not written: fold 0 has no selected epoch"):
        save_model(path, empty, ModelConfig(**TINY), 0)
    nan = FitResult({"w": torch.ones(1)}, 0.0, 1.0, 1, float("nan"), [])
    with pytest.raises(ValueError, match="no selected epoch"):
        save_model(path, nan, ModelConfig(**TINY), 0)
    assert not path.exists()


def _fill_the_disk_at(path) -> None:
    """Make the next atomic write of ``path`` hit a real full disk: its temporary sibling is /dev/full,
    whose writes fail with ENOSPC (a tiny full filesystem would need a mount, which a test cannot do)."""
    path.with_name(path.name + ".partial").symlink_to("/dev/full")


def test_a_disk_that_fills_while_saving_is_one_enospc_error_naming_the_path(tmp_path) -> None:
    path = tmp_path / "fold0.pt"
    save_checkpoint(valid_state(epoch=1), path)
    _fill_the_disk_at(path)
    with pytest.raises(OSError) as err:
        save_checkpoint(valid_state(epoch=2), path)  # torch alone: RuntimeError "... iostream error"
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(path)
    assert err.value.strerror == f"No space left on device (the disk holding {tmp_path} is full)"
    assert load_checkpoint(path, "run-a", epochs=5, device=CPU)["epoch"] == 1  # the previous one is intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fold0.pt"]  # the temporary file is gone


def test_a_model_file_records_the_crop_of_its_training_data(tmp_path) -> None:
    path = model_path(tmp_path, 0)
    attrs = {"source": "phantom", "params": '{"clevel": 0.5, "extent_fraction": 0.8, "image_side": 32}'}  # as read
    crop = extract_record(attrs)
    assert crop == {"clevel": 0.5, "extent_fraction": 0.8, "image_side": 32}
    assert extract_record({"params": dict(crop)}) == crop and extract_record({}) is None  # in memory; not recorded
    save_model_file(path, {"w": torch.ones(2)}, {}, 0.0, 1.0, 0, 1, 0.5, extract=crop)
    assert read_model_file(path, CPU)["extract"] == crop
    old = torch.load(path, weights_only=True)
    del old["extract"]
    torch.save(old, path)  # a model file written before the record existed still reads
    assert "extract" not in read_model_file(path, CPU)
    old["extract"] = {"image_side": "abc"}
    torch.save(old, path)
    with pytest.raises(ValueError, match=r"unreadable model file \(its extract record .* is not"):
        read_model_file(path, CPU)
