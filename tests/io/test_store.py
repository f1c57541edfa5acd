"""nodules.h5: round trip, and a one-line error naming the file and the first bad nodule or field on read."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from nodule_net.io.store import read_dataset, write_dataset
from synthetic_nodules import make_dataset


@pytest.fixture
def written(tmp_path):
    data = make_dataset(n_nodules=6, size=8, max_depth=3, seed=0)
    path = tmp_path / "nodules.h5"
    write_dataset(path, data)
    return path, data


def test_round_trip_keeps_every_field_and_nan_for_absent_readers(tmp_path) -> None:
    data = make_dataset(n_nodules=6, size=8, max_depth=3, seed=0)
    data.reader_ratings[2, 3] = np.nan  # reader 4 did not rate nodule 2: legitimate
    write_dataset(tmp_path / "d.h5", data)
    back = read_dataset(tmp_path / "d.h5")
    for field in ("images", "offsets", "ratings", "reader_ratings", "n_readers", "nodule_id", "bbox"):
        np.testing.assert_array_equal(getattr(back, field), getattr(data, field))
    assert np.isnan(back.reader_ratings[2, 3]).all() and back.attrs["source"] == "synthetic"


def rewrite(path, name: str, value: np.ndarray) -> None:
    """Replace one dataset in an existing file, as damage or an older writer would."""
    with h5py.File(path, "a") as f:
        del f[name]
        f.create_dataset(name, data=value)


def one_line_error(path) -> str:
    with pytest.raises(ValueError) as err:
        read_dataset(path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{path}: ") and "dvc repro -f extract" in message
    return message


def test_nan_rating_names_the_nodule(written) -> None:
    path, data = written
    ratings = data.ratings.copy()
    ratings[4, 8] = np.nan
    rewrite(path, "ratings", ratings)
    assert f"nodule {data.nodule_id[4]} has malignancy rating nan" in one_line_error(path)


def test_rating_outside_its_range_names_the_nodule(written) -> None:
    path, data = written
    ratings = data.ratings.copy()
    ratings[1, 1] = 5.0  # internal structure is rated 1–4
    rewrite(path, "ratings", ratings)
    assert f"nodule {data.nodule_id[1]} has internal_structure rating 5.0, outside its range 1–4" in one_line_error(
        path
    )


def test_infinite_pixel_names_its_nodule(written) -> None:
    path, data = written
    images = data.images.copy()
    s = int(data.offsets[3]) + 1 if data.n_slices[3] > 1 else int(data.offsets[3])
    images[s, 2, 2] = np.inf
    rewrite(path, "images", images)
    assert f"nodule {data.nodule_id[3]} has non-finite pixels (slice {s})" in one_line_error(path)


def test_infinite_reader_rating_is_rejected(written) -> None:
    path, data = written
    reader = data.reader_ratings.copy()
    reader[0, 1, 0] = -np.inf
    rewrite(path, "reader_ratings", reader)
    assert f"nodule {data.nodule_id[0]} has an infinite reader rating" in one_line_error(path)


@pytest.mark.parametrize(
    ("offsets", "message"),
    [
        (lambda o: o + 1, "offsets starts at 1, not 0"),
        (lambda o: np.concatenate([o[:3], o[2:3], o[4:]]), "nodule LIDC-IDRI-0002/s1/n2 has no slices"),
        (lambda o: np.concatenate([o[:-1], o[-1:] + 2]), "offsets ends at 12 but images holds 10 slices"),
        (lambda o: o[:-1], "ratings has shape (6, 9), expected (5, 9) for 5 nodules and 10 slices"),
    ],
)
def test_offsets_must_be_a_csr_index(written, offsets, message) -> None:
    path, data = written
    assert data.offsets.tolist() == [0, 3, 5, 7, 8, 9, 10] and data.nodule_id[2] == "LIDC-IDRI-0002/s1/n2"
    rewrite(path, "offsets", offsets(data.offsets))
    assert message in one_line_error(path)


def test_inconsistent_shapes_name_the_field(written) -> None:
    path, data = written
    rewrite(path, "bbox", data.bbox[:, :4])
    assert "bbox has shape (6, 4), expected (6, 6) for 6 nodules" in one_line_error(path)


def test_missing_dataset_is_named(written) -> None:
    path, _ = written
    with h5py.File(path, "a") as f:
        del f["spacing_mm"]
    assert "the dataset 'spacing_mm' is missing" in one_line_error(path)


@pytest.mark.parametrize("keep", [0.5, 0.001])
def test_truncated_file_is_one_line(written, keep: float) -> None:
    path, _ = written
    content = path.read_bytes()
    path.write_bytes(content[: int(len(content) * keep)])
    assert "unreadable HDF5 file" in one_line_error(path)


def test_not_hdf5_at_all(tmp_path) -> None:
    path = tmp_path / "nodules.h5"
    path.write_text("not a dataset")
    assert "unreadable HDF5 file" in one_line_error(path)


def test_unsound_dataset_is_never_written(tmp_path) -> None:
    data = make_dataset(n_nodules=4, size=8, max_depth=2, seed=1)
    bad = dataclasses.replace(data, ratings=np.where(np.arange(9) == 0, np.nan, data.ratings))
    with pytest.raises(
        ValueError, match=rf"nodules.h5 not written: nodule {data.nodule_id[0]} has subtlety rating nan"
    ):
        write_dataset(tmp_path / "nodules.h5", bad)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("name", "value", "held", "expected"),
    [
        ("nodule_id", np.arange(6), "int64", "strings"),
        ("patient_id", np.zeros(6), "float64", "strings"),
        ("images", np.array([b"x"] * 10, dtype=object), "strings", "floating-point numbers"),
        ("ratings", np.full((6, 9), b"3", dtype="S1"), "strings", "floating-point numbers"),
        ("bbox", np.zeros((6, 6)), "float64", "integers"),
        ("n_readers", np.ones(6, dtype=bool), "bool", "integers"),
    ],
)
def test_a_field_of_the_wrong_dtype_is_named(written, name: str, value: np.ndarray, held: str, expected: str) -> None:
    """Right names, wrong dtypes (another writer, an old file): one line before any data is read."""
    path, _ = written
    rewrite(path, name, value)
    assert f"the dataset {name!r} holds {held}, expected {expected}" in one_line_error(path)


def _full_disk_exit(path, data, capsys) -> str:
    """What `extract` prints when write_dataset(path, data) meets a full disk (the stage's wrapper, in process)."""
    from nodule_net.cli.errors import user_errors_exit

    with pytest.raises(SystemExit) as exit_info:
        user_errors_exit(lambda: write_dataset(path, data))()
    assert exit_info.value.code == 1
    return capsys.readouterr().err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full (Linux's always-full device) here")
def test_a_full_disk_is_one_line_and_keeps_the_previous_dataset(written, capsys) -> None:
    """A real ENOSPC from the kernel: the temporary file is /dev/full, whose every write fails with ENOSPC."""
    path, _ = written
    before = path.read_bytes()
    partial = path.with_name(path.name + ".partial")
    partial.symlink_to("/dev/full")
    err = _full_disk_exit(path, make_dataset(n_nodules=6, size=8, max_depth=3, seed=1), capsys)
    assert err == (
        f"error: cannot write {path}: No space left on device; free some space or make it writable, then re-run.\n"
    )
    assert not partial.is_symlink() and not partial.exists()
    assert path.read_bytes() == before


# Writes the dataset (about 1.3 MB) into a 1 MB tmpfs mounted in the child's own user and mount
# namespaces, behind the stage's wrapper; then lists what the folder holds.
_FILL_A_SMALL_DISK = """
set -e
mount -t tmpfs -o size=1m tmpfs "$1"
head -c 300000 /dev/zero > "$1/nodules.h5"
set +e
"$2" -c '
import sys
from synthetic_nodules import make_dataset
from nodule_net.cli.errors import user_errors_exit
from nodule_net.io.store import write_dataset
user_errors_exit(lambda: write_dataset(sys.argv[1], make_dataset(n_nodules=40, size=64, max_depth=3, seed=0)))()
' "$1/nodules.h5"
status=$?
ls -A "$1"; wc -c < "$1/nodules.h5"
exit $status
"""


def _can_mount_a_tmpfs() -> bool:
    try:
        done = subprocess.run(
            ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt"],
            capture_output=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@pytest.mark.skipif(not _can_mount_a_tmpfs(), reason="no unprivileged user namespaces (unshare -rm) to mount a tmpfs")
def test_a_disk_that_fills_while_writing_is_one_line_without_a_crash(tmp_path) -> None:
    """A real small filesystem that fills half-way through the file: h5py used to print a RuntimeError per
    dataset (masking ENOSPC) and the process then died of a segfault; a previous file stays as it was."""
    folder = tmp_path / "disk"
    folder.mkdir()
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--mount",
            "sh",
            "-c",
            _FILL_A_SMALL_DISK,
            "sh",
            str(folder),
            sys.executable,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr[-2000:]
    assert done.stderr.splitlines() == [
        f"error: cannot write {folder / 'nodules.h5'}: No space left on device; "
        "free some space or make it writable, then re-run."
    ]
    assert done.stdout.split() == ["nodules.h5", "300000"]  # no .partial; the previous file untouched
