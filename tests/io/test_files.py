import errno
import sys
from collections import namedtuple
from pathlib import Path

import pytest

from nodule_net.data.phantom import read_manifest
from nodule_net.io import files
from nodule_net.io.files import atomic_path, check_writable, write_text_atomic
from nodule_net.io.store import write_dataset
from synthetic_nodules import make_dataset

Usage = namedtuple("Usage", "total used free")  # what shutil.disk_usage returns


def test_atomic_path_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "out.json"
    write_text_atomic(target, "first")
    write_text_atomic(target, "second")
    assert target.read_text() == "second"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.json"]


def test_atomic_path_keeps_old_content_on_failure(tmp_path):
    target = tmp_path / "out.csv"
    target.write_text("complete old file")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half of a new fi")
        raise RuntimeError("killed half-way")
    assert target.read_text() == "complete old file"
    assert [p.name for p in tmp_path.iterdir()] == ["out.csv"]


def test_cleanup_failure_never_hides_the_original_error(tmp_path, monkeypatch):
    """On a read-only disk the clean-up's unlink fails too; the caller must see the write's own error."""
    target = tmp_path / "out.h5"

    def read_only_unlink(self, missing_ok=False):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "unlink", read_only_unlink)
    with pytest.raises(RuntimeError, match="the real problem"), atomic_path(target):
        raise RuntimeError("the real problem")


def test_check_writable_creates_the_folder_and_checks_free_space(tmp_path, monkeypatch):
    out = tmp_path / "data" / "nodules.h5"
    check_writable(out, need_bytes=1000)
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []  # the probe file is gone
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: Usage(10**9, 10**9 - 5 * 10**6, 5 * 10**6))
    check_writable(out, need_bytes=4 * 10**6)
    with pytest.raises(ValueError) as err:
        check_writable(out, need_bytes=240 * 10**6)
    assert str(err.value) == (
        f"Cannot write {out}: it needs about 240 MB but only 5 MB are free on {out.parent}'s "
        "disk; free some space, then re-run."
    )


def test_check_writable_names_a_read_only_folder(tmp_path, monkeypatch):
    """Tests run as root, which ignores permission bits: simulate the filesystem's refusal."""

    def refuse(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(files.tempfile, "mkstemp", refuse)
    out = tmp_path / "models" / "fold0" / "model.pt"
    with pytest.raises(ValueError) as err:
        check_writable(out, need_bytes=0)
    assert str(err.value) == (
        f"Cannot write {out}: {out.parent} is not writable (Read-only file system); "
        "make it writable or point the output elsewhere, then re-run."
    )


def test_a_stage_stops_before_the_work_when_the_disk_is_full(tmp_path, monkeypatch, capsys):
    """The split stage (small and quick) with a nearly full disk: one line, exit 1, nothing read or written."""
    import pipeline.split

    params = tmp_path / "params.yaml"
    params.write_text((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    write_dataset(tmp_path / "nodules.h5", make_dataset(n_nodules=6, size=8, max_depth=2))
    monkeypatch.setattr(files.shutil, "disk_usage", lambda path: Usage(10**9, 10**9, 10))
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "split",
            "--dataset",
            str(tmp_path / "nodules.h5"),
            "--out",
            str(tmp_path / "splits.json"),
            "--params",
            str(params),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        pipeline.split.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: Cannot write {tmp_path / 'splits.json'}: it needs about") and "\n" not in err
    assert not (tmp_path / "splits.json").exists()


Memory = namedtuple("Memory", "total available")  # the fields of psutil.virtual_memory() read here


def test_check_memory_names_what_and_how_much(monkeypatch):
    monkeypatch.setattr(files.psutil, "virtual_memory", lambda: Memory(8 * 10**9, 2 * 10**9))
    files.check_memory("data/nodules.h5", 10**9, "lower extract.image_side")
    with pytest.raises(ValueError) as err:
        files.check_memory("data/nodules.h5", 3 * 10**9, "lower extract.image_side")
    assert str(err.value) == (
        "Cannot build data/nodules.h5: it needs about 3,000 MB of memory but only 2,000 MB "
        "are available; lower extract.image_side, then re-run."
    )


def test_extract_stops_before_the_work_when_the_dataset_would_not_fit_in_memory(
    tmp_path, monkeypatch, capsys, tiny_phantom
):
    """image_side 512 (the ceiling) on a machine with 50 MB free: one line naming the param, nothing written."""
    import pipeline.extract

    params = tmp_path / "params.yaml"
    params.write_text(
        (Path(__file__).resolve().parents[2] / "params.yaml")
        .read_text()
        .replace("  image_side: 64 ", "  image_side: 512 ")
        .replace("  workers: 2 ", "  workers: 1 ")
    )
    monkeypatch.setattr(files.psutil, "virtual_memory", lambda: Memory(10**9, 50 * 10**6))
    out, stats = tmp_path / "nodules.h5", tmp_path / "dataset.json"
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "extract",
            "--phantom-root",
            str(tiny_phantom),
            "--out",
            str(out),
            "--stats",
            str(stats),
            "--params",
            str(params),
        ],
    )
    with pytest.raises(SystemExit) as exit_info:
        pipeline.extract.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    slices = sum(s["slices"] for s in read_manifest(tiny_phantom)["scans"])
    need = 3 * slices * 512**2 * 4
    assert err == (
        f"error: Cannot build {out}: it needs about {need / 1e6:,.0f} MB of memory but only 50 MB are "
        "available; lower extract.image_side (memory grows as its square) or free some memory, "
        "then re-run.\n"
    )
    assert not out.exists() and not stats.exists()
