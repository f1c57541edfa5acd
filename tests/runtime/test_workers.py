"""Process pools leave Ctrl-C to the parent and end with one line when a worker dies; results keep their order."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from conftest import popen_interruptible
from nodule_net.runtime.workers import WorkerDied, process_pool

# A stage-like program with a pool of 2 busy workers. Spawned workers import the main file
# as ``__mp_main__`` before any initializer runs; the sleep holds them there, as heavy
# imports (torch, pydicom) do in the real stages.
PROGRAM = textwrap.dedent("""
    import os
    import sys
    import time

    from nodule_net.runtime.workers import process_pool

    if __name__ == "__mp_main__":
        open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w").close()
        time.sleep(5)

    if __name__ == "__main__":
        try:
            with process_pool(2, stage="test", resume="run it again") as pool:
                print("started", flush=True)
                list(pool.imap(time.sleep, [0.05] * 2000, describe=str))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
""")


def test_workers_ignore_sigint_and_the_parent_keeps_its_handler() -> None:
    before = signal.getsignal(signal.SIGINT)
    with process_pool(1, stage="test", resume="run it again") as pool:
        assert list(pool.imap(signal.getsignal, [signal.SIGINT], describe=str)) == [signal.SIG_IGN]
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_while_workers_start_gives_one_line_and_exit_130(tmp_path) -> None:
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) while the workers are
    still importing: the case a pool initializer alone does not cover."""
    program = tmp_path / "stage.py"
    program.write_text(PROGRAM)
    proc = popen_interruptible([sys.executable, str(program), str(tmp_path)], start_new_session=True)
    try:
        assert proc.stdout.readline().strip() == "started"
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("worker-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # until both workers are importing (sleeping in the main file)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert err == "interrupted\n"


def test_results_come_in_the_order_of_the_items_whatever_the_chunks() -> None:
    items = list(range(-25, 0))
    with process_pool(2, stage="test", resume="run it again") as pool:
        assert list(pool.imap(abs, items, describe=str, chunksize=4)) == [abs(i) for i in items]
        assert list(pool.imap(abs, items, describe=str)) == [abs(i) for i in items]  # a pool serves many maps
        assert list(pool.imap(abs, [], describe=str)) == []


def test_a_workers_error_reaches_the_caller_as_raised() -> None:
    waits = []
    with (
        pytest.raises(ValueError, match="invalid literal for int"),
        process_pool(2, stage="test", resume="run it again") as pool,
    ):
        list(pool.imap(int, ["1", "2", "x", "4"], describe=str, while_waiting=lambda: waits.append(1)))


# A pool's caller, as a stage would be: each job notes its pid and item, then sleeps; the one
# given as argv[2] (if any) kills its own worker. A WorkerDied is printed as the stage wrapper does.
KILLED = textwrap.dedent("""
    import multiprocessing
    import os
    import signal
    import sys
    import time

    from nodule_net.runtime.workers import WorkerDied, process_pool


    def job(item):
        open(os.path.join(sys.argv[1], f"job-{item}-{os.getpid()}"), "w").close()
        if item == int(sys.argv[2]):
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(0.5 if int(sys.argv[2]) >= 0 else 600)  # -1: sleep until the test kills a worker
        return item * item


    if __name__ == "__mp_main__":
        open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w").close()

    if __name__ == "__main__":
        try:
            with process_pool(2, stage="squares", resume="run it again") as pool:
                print(list(pool.imap(job, range(12), describe=lambda i: f"squaring {i}", chunksize=2)))
        except WorkerDied as err:
            print(f"error: {err}", file=sys.stderr)
            print(f"{len(multiprocessing.active_children())} children left")
            sys.exit(1)
""")


def run_killed(tmp_path, victim: int, kill_job: int | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """Run KILLED; with ``kill_job``, SIGKILL the worker that runs that job once it has started it."""
    program = tmp_path / "squares.py"
    program.write_text(KILLED)
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(program), str(tmp_path), str(victim)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        if kill_job is not None:
            deadline = time.monotonic() + 60
            while not (started := list(tmp_path.glob(f"job-{kill_job}-*"))) and time.monotonic() < deadline:
                time.sleep(0.02)  # no event to wait on across processes: the job's marker file
            os.kill(int(started[0].name.rsplit("-", 1)[1]), signal.SIGKILL)
        out, err = proc.communicate(timeout=120)  # the old multiprocessing.Pool waited forever here
    finally:
        proc.kill()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err), time.monotonic() - start


def assert_no_worker_left(tmp_path) -> None:
    workers = [int(p.name.split("-")[1]) for p in tmp_path.glob("worker-*")]
    assert len(workers) == 2
    for pid in workers:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.slow
def test_a_worker_that_dies_ends_the_map_with_one_line_naming_its_item(tmp_path) -> None:
    done, seconds = run_killed(tmp_path, victim=5)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()  # no BrokenPipeError tracebacks from the other worker
    pid = next(p.name.rsplit("-", 1)[1] for p in tmp_path.glob("job-5-*"))
    assert line == f"error: squares: worker process {pid} was killed by SIGKILL while squaring 5; run it again."
    assert done.stdout == "0 children left\n"
    assert seconds < 60
    assert_no_worker_left(tmp_path)


def test_a_worker_killed_from_outside_is_told_apart_from_the_others(tmp_path) -> None:
    """Both workers are busy (jobs 0 and 2, the first of each one's chunk); the one running job 2
    is killed: the line names job 2, not the other worker's (which the pool then terminates)."""
    done, seconds = run_killed(tmp_path, victim=-1, kill_job=2)
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    pid = next(p.name.rsplit("-", 1)[1] for p in tmp_path.glob("job-2-*"))
    assert line == f"error: squares: worker process {pid} was killed by SIGKILL while squaring 2; run it again."
    assert seconds < 60
    assert_no_worker_left(tmp_path)


def worker_pid(_: object) -> int:
    return os.getpid()


def test_a_worker_that_died_between_two_maps_is_named_by_the_next() -> None:
    """Killed while idle: the next map says so (whether submit or the wait notices) and names its first item."""
    with pytest.raises(WorkerDied) as died, process_pool(1, stage="test", resume="run it again") as pool:
        (pid,) = pool.imap(worker_pid, [None], describe=str)
        os.kill(pid, signal.SIGKILL)
        list(pool.imap(abs, [-1, -2, -3], describe=lambda i: f"taking abs({i})"))
    assert str(died.value) == (
        f"test: worker process {pid} was killed by SIGKILL before taking abs(-1) and 2 more; run it again."
    )
    assert not psutil.pid_exists(pid)
