"""tools/slurm_cluster.py: the private one-node Slurm runs an array job and leaves nothing running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tools import slurm_cluster

# One worker runs every test that starts a private Slurm (tests/conftest.py): never two clusters at once.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"


@pytest.fixture()
def cluster_or_skip():
    if (reason := slurm_cluster.unavailable_reason()) is not None:
        pytest.skip(f"no private Slurm: {reason}")


def test_an_array_job_runs_and_stop_ends_every_daemon_and_job(cluster_or_skip, tmp_path: Path) -> None:
    cluster = slurm_cluster.start(tmp_path / "cluster")
    pids = [p.pid for p in cluster.daemons.values()]
    try:
        paths = re.findall(r"=(?:socket=)?(/\S+)", cluster.conf.read_text())
        # Not /etc: every file in the folder, the Unix sockets in a short one of their own (107-byte limit).
        mine = (str(tmp_path), str(cluster.sockets))
        assert len(paths) >= 8 and all(p.startswith(mine) or p == "/bin/true" for p in paths)
        assert len(str(cluster.sockets / "spool" / "localhost_4294967295.4294967291")) < 108
        script = tmp_path / "job.sh"
        script.write_text(f"#!/bin/bash\n#SBATCH --output={tmp_path}/%A_%a.log\necho task $SLURM_ARRAY_TASK_ID\n")
        cluster.run("sbatch", "--wait", "--array=0-1", "--cpus-per-task=1", str(script))
        assert sorted(p.read_text() for p in tmp_path.glob("*_*.log")) == ["task 0\n", "task 1\n"]
        cluster.run("sbatch", "--wrap=sleep 600")  # still running when the cluster stops
    finally:
        slurm_cluster.stop(cluster)
    assert not [pid for pid in pids if _alive(pid)] and not cluster.sockets.exists()
    left = subprocess.run(["pgrep", "-f", "sleep 600"], capture_output=True, text=True).stdout.split()
    assert not [pid for pid in left if Path(f"/proc/{pid}/environ").exists() and str(cluster.conf) in _environ(pid)]


def _environ(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_run_gives_a_command_the_cluster(cluster_or_skip, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tools.slurm_cluster", "run", str(tmp_path / "c"), "--", "sinfo", "-h", "-o", "%D %c"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1", str(slurm_cluster.CPUS)]
