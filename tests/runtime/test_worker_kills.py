"""A pool worker of extract or phantom killed with SIGKILL: one line naming the scan, exit 1, no worker
left, nothing written; and with every worker alive, the pools give what one process gives."""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import yaml

from conftest import TINY_PATIENTS
from nodule_net.config import ExtractConfig
from nodule_net.data.extract import extract
from nodule_net.data.lidc import scans_for_patients
from nodule_net.data.lidc_stats import lidc_stats
from nodule_net.data.phantom import build_phantom, series_dir

REPO = Path(__file__).resolve().parents[2]
VICTIM = "LIDC-IDRI-0003"

# Every test here spawns worker processes that import torch and pylidc: seconds each.
pytestmark = pytest.mark.slow

# A caller of extract() or build_phantom() with two workers. Spawned workers run this file as
# ``__mp_main__`` before their first task: there the job of VICTIM's scan is replaced by one
# that (phantom: after writing a slice) SIGKILLs its own worker.
PROGRAM = textwrap.dedent(f"""
    import os
    import signal
    import sys
    import time
    from pathlib import Path

    from nodule_net.config import ExtractConfig
    from nodule_net.data import extract, phantom
    from nodule_net.data.lidc import scans_for_patients
    from nodule_net.runtime.workers import WorkerDied

    stage, root, marks = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])

    def die() -> None:
        (marks / f"killed-{{os.getpid()}}").write_text(str(time.monotonic()))
        os.kill(os.getpid(), signal.SIGKILL)

    if __name__ == "__mp_main__":
        (marks / f"worker-{{os.getpid()}}").touch()
        real_extract, real_write = extract.extract_scan, phantom.write_scan

        def extract_scan(scan, root, config):
            if scan.patient_id == "{VICTIM}":
                die()
            return real_extract(scan, root, config)

        def write_scan(job):
            if job.scan.patient_id == "{VICTIM}":
                folder = phantom.series_dir(job.root, job.scan)
                folder.mkdir(parents=True, exist_ok=True)
                (folder / job.scan.file_names[0]).write_bytes(b"half a scan")
                die()
            return real_write(job)

        extract.extract_scan, phantom.write_scan = extract_scan, write_scan

    if __name__ == "__main__":
        try:
            if stage == "extract":
                extract.extract(root, scans_for_patients({TINY_PATIENTS!r}, "first"), ExtractConfig(),
                                source="phantom", workers=2, progress=False)
            else:
                phantom.build_phantom(root, {TINY_PATIENTS!r}, workers=2, progress=False)
        except WorkerDied as err:
            print(time.monotonic())
            print(f"error: {{err}}", file=sys.stderr)
            sys.exit(1)
""")


def run_program(tmp_path: Path, stage: str, root: Path) -> tuple[subprocess.CompletedProcess, Path]:
    marks = tmp_path / "marks"
    marks.mkdir()
    program = tmp_path / "caller.py"
    program.write_text(PROGRAM)
    done = subprocess.run(
        [sys.executable, str(program), stage, str(root), str(marks)], capture_output=True, text=True, timeout=180
    )  # the old multiprocessing.Pool waited forever
    return done, marks


def victim_scan() -> str:
    (scan,) = scans_for_patients([VICTIM], "first")
    return scan.name


def assert_ended_soon_and_no_worker_left(done: subprocess.CompletedProcess, marks: Path) -> str:
    """The killed worker's pid, after checking that the caller raised within 30 s of the kill."""
    (killed,) = marks.glob("killed-*")
    assert float(done.stdout) - float(killed.read_text()) < 30
    workers = [int(p.name.split("-")[1]) for p in marks.glob("worker-*")]
    assert len(workers) == 2
    for pid in workers:
        assert not psutil.pid_exists(pid)
    return killed.name.split("-")[1]


def test_a_killed_extract_worker_names_its_scan_and_writes_nothing(tmp_path, tiny_phantom) -> None:
    done, marks = run_program(tmp_path, "extract", tiny_phantom)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()  # no BrokenPipeError tracebacks from the other worker
    pid = assert_ended_soon_and_no_worker_left(done, marks)
    assert line == (
        f"error: extract: worker process {pid} was killed by SIGKILL while extracting {victim_scan()}; "
        "no dataset was written; `dvc repro` reruns the stage."
    )


def test_a_killed_phantom_worker_names_its_scan_and_leaves_no_tree(tmp_path) -> None:
    root = tmp_path / "LIDC-IDRI"
    done, marks = run_program(tmp_path, "phantom", root)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    pid = assert_ended_soon_and_no_worker_left(done, marks)
    assert line == (
        f"error: phantom: worker process {pid} was killed by SIGKILL while rendering {victim_scan()}; "
        "no phantom tree was written; `dvc repro` reruns the stage."
    )
    assert not root.exists() and not root.with_name("LIDC-IDRI.partial").exists()  # not half a tree


def stage_params(tmp_path: Path) -> Path:
    values = yaml.safe_load((REPO / "params.yaml").read_text())
    values["data"]["source"] = "phantom"
    values["extract"]["workers"] = 2
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(values))
    return params


def worker_reading(stage: psutil.Process, path: Path) -> psutil.Process | None:
    """The child of ``stage`` that has ``path`` open (psutil's open_files lists regular files only)."""
    for child in stage.children():
        with contextlib.suppress(OSError):  # a child that has just ended
            for fd in os.listdir(f"/proc/{child.pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{child.pid}/fd/{fd}") == str(path):
                        return child
    return None


@pytest.mark.integration
def test_kill_9_of_a_busy_worker_of_the_extract_stage_is_one_line_and_exit_1(tmp_path, tiny_phantom) -> None:
    """`kill -9` from outside, as a user (or the out-of-memory killer) would, of the worker reading
    VICTIM's scan. One of its files is a named pipe: the worker blocks reading it (a hung network
    disk), so the test knows which worker is busy with which scan when it kills it."""
    root = tmp_path / "LIDC-IDRI"
    shutil.copytree(tiny_phantom, root)
    (scan,) = scans_for_patients([VICTIM], "first")
    stuck = series_dir(root, scan) / "stuck.dcm"
    os.mkfifo(stuck)
    out, stats = tmp_path / "nodules.h5", tmp_path / "dataset.json"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pipeline.extract",
            "--phantom-root",
            str(root),
            "--out",
            str(out),
            "--stats",
            str(stats),
            "--params",
            str(stage_params(tmp_path)),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    writer = None
    try:
        deadline = time.monotonic() + 60
        while writer is None and proc.poll() is None and time.monotonic() < deadline:
            try:  # succeeds once a reader has the pipe open; the worker then waits for data forever
                writer = os.open(stuck, os.O_WRONLY | os.O_NONBLOCK)
            except OSError:
                time.sleep(0.02)  # no event to wait on from outside: poll
        assert writer is not None, "no worker opened the pipe"
        # The open above can also meet a reader that has just let go (a first look at the file): the
        # worker that holds it for good is the one to find, once it does.
        while (worker := worker_reading(psutil.Process(proc.pid), stuck)) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert worker is not None, "no worker holds the pipe open"
        worker.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)  # the old multiprocessing.Pool waited forever
    finally:
        proc.kill()
        if writer is not None:
            os.close(writer)
    assert proc.returncode == 1
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith("INFO ")]  # the stage's progress log
    assert lines == [
        f"error: extract: worker process {worker.pid} was killed by SIGKILL while extracting "
        f"{victim_scan()}; no dataset was written; `dvc repro` reruns the stage."
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LIDC-IDRI", "params.yaml"]  # no output, no .partial


def test_extract_in_two_workers_equals_extract_in_one(tiny_phantom, tiny_scans, tiny_extracted) -> None:
    data, stats = extract(tiny_phantom, tiny_scans, ExtractConfig(), source="phantom", workers=2, progress=False)
    one, one_stats = tiny_extracted
    assert stats == one_stats
    assert list(data.nodule_id) == list(one.nodule_id)
    for field in (
        "images",
        "offsets",
        "ratings",
        "reader_ratings",
        "n_readers",
        "scan_id",
        "spacing_mm",
        "bbox",
        "slice_index",
    ):
        np.testing.assert_array_equal(getattr(data, field), getattr(one, field), err_msg=field)


def test_phantom_in_two_workers_equals_phantom_in_one(tmp_path, tiny_phantom) -> None:
    root = tmp_path / "LIDC-IDRI"
    build_phantom(root, TINY_PATIENTS, seed=0, margin=1, workers=2, progress=False)
    files = sorted(p.relative_to(tiny_phantom) for p in tiny_phantom.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())
    match, mismatch, errors = filecmp.cmpfiles(tiny_phantom, root, [str(f) for f in files], shallow=False)
    assert (mismatch, errors) == ([], []) and len(match) == len(files)  # the manifest too


def test_lidc_stats_in_two_workers_equals_lidc_stats_in_one() -> None:
    patients = ["LIDC-IDRI-0001", "LIDC-IDRI-0003", "LIDC-IDRI-0132"]
    assert lidc_stats("all", workers=2, progress=False, patients=patients) == lidc_stats(
        "all", workers=1, progress=False, patients=patients
    )
