"""Process pools leave Ctrl-C to the parent: one line from the parent, no traceback from any worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

from nodule_net.workers import process_pool

# A stage-like program with a pool of 2 busy workers. Spawned workers import the main file
# as ``__mp_main__`` before any initializer runs; the sleep holds them there, as heavy
# imports (torch, pydicom) do in the real stages.
PROGRAM = textwrap.dedent("""
    import os
    import sys
    import time

    from nodule_net.workers import process_pool

    if __name__ == "__mp_main__":
        open(os.path.join(sys.argv[1], f"worker-{os.getpid()}"), "w").close()
        time.sleep(5)

    if __name__ == "__main__":
        try:
            with process_pool(2) as pool:
                print("started", flush=True)
                list(pool.imap(time.sleep, [0.05] * 2000))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
""")


def test_workers_ignore_sigint_and_the_parent_keeps_its_handler() -> None:
    before = signal.getsignal(signal.SIGINT)
    with process_pool(1) as pool:
        assert pool.apply(signal.getsignal, (signal.SIGINT,)) == signal.SIG_IGN
    assert signal.getsignal(signal.SIGINT) is before


def test_ctrl_c_while_workers_start_gives_one_line_and_exit_130(tmp_path) -> None:
    """SIGINT to the whole process group (what a terminal's Ctrl-C does) while the workers are
    still importing: the case a pool initializer alone does not cover."""
    program = tmp_path / "stage.py"
    program.write_text(PROGRAM)
    # A suite started in the background (`pytest &`) passes SIGINT down ignored: undo that in the child.
    proc = subprocess.Popen([sys.executable, str(program), str(tmp_path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
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
