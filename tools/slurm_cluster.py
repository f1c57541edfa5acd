"""`python -m tools.slurm_cluster`: a private one-node Slurm on localhost, for testing `nodule-net grid --slurm`.

munged, slurmctld and slurmd of Debian's ``munge`` and ``slurm-wlm`` (``make install`` installs
them as root), started from a configuration in a folder of their own — never the machine's
``/etc/slurm`` or ``/etc/munge`` — on free ports: one node, ``localhost``, with 2 CPUs (a
machine with fewer still offers 2: ``config_overrides``), ``ProctrackType=proctrack/linuxproc``
and ``TaskPlugin=task/none`` (no cgroups needed). Jobs run as the user who started the cluster
(root: slurmd must be able to start jobs as that user). Clients find the cluster through
``SLURM_CONF`` (:attr:`Cluster.env`).

The daemons run in the foreground as children of the process that started them, each with a
parent-death signal: if that process dies, even by SIGKILL, they die with it. :func:`stop`
cancels the jobs and waits for them (their processes are not the daemons' children), then ends
the daemons. Where the cluster cannot start (no binaries, not root), :class:`ClusterUnavailable`
says why, so that a test can skip with that reason.

    python -m tools.slurm_cluster up DIR          # start, print `export SLURM_CONF=...`, stop on Ctrl-C
    python -m tools.slurm_cluster run DIR -- CMD  # start, run CMD with SLURM_CONF set, stop
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
# Debian's packages of them (`make install` installs these where it can).
PACKAGES = "slurm-wlm munge"
NODE = "localhost"
CPUS = 2
# Seconds between SIGTERM and SIGKILL when Slurm ends a job (its default, 30, would slow every requeue test).
KILL_WAIT_S = 5
START_TIMEOUT_S = 30.0
# /usr/sbin holds the daemons but is not on every user's PATH.
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
_PR_SET_PDEATHSIG = 1  # prctl(2)


class ClusterUnavailable(RuntimeError):
    """The cluster cannot start here; the message says why (a test skips with it)."""


@dataclass
class Cluster:
    """A running private cluster: its folder, the environment its clients need, its daemons."""

    root: Path
    env: dict[str, str]  # os.environ plus SLURM_CONF and the daemons' folder on PATH
    sockets: Path  # a short folder for the Unix sockets (see start), removed by stop
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command (``scontrol``, ``squeue`` …) against this cluster, run in its folder
        (where sbatch writes the ``slurm-<job>.out`` of a job that names no ``--output``)."""
        done = subprocess.run(list(args), env=self.env, capture_output=True, text=True, cwd=self.root)
        if check and done.returncode != 0:
            raise RuntimeError(f"`{' '.join(args)}` exited with {done.returncode}: {done.stderr.strip()}")
        return done


def missing_binaries() -> list[str]:
    return [name for name in BINARIES if shutil.which(name, path=SEARCH_PATH) is None]


def unavailable_reason() -> str | None:
    """Why the cluster cannot start on this machine, or None."""
    missing = missing_binaries()
    if missing:
        return (
            f"{', '.join(missing)} not installed (Debian: apt-get install {PACKAGES}, which `make install` "
            "runs as root)"
        )
    if os.geteuid() != 0:
        return "slurmd must run as root to start jobs; run the tests as root (e.g. in a container)"
    return None


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def slurm_conf(root: Path, ports: list[int], cpus: int, sockets: Path) -> str:
    """The whole slurm.conf of a one-node cluster whose files all live under ``root``, its Unix
    sockets (munged's, slurmd's spool) under ``sockets``."""
    ctld_port, slurmd_port = ports
    return f"""\
# A private one-node Slurm for tests (tools/slurm_cluster.py); every file under {root}.
ClusterName=nodule-net-test
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={sockets}/munge/munge.socket
SlurmUser={_user()}
StateSaveLocation={root}/state
SlurmdSpoolDir={sockets}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
PlugStackConfig={root}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
KillWait={KILL_WAIT_S}
# Finished jobs stay visible to squeue and scontrol for an hour (the tests read their states).
MinJobAge=3600
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=test Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _die_with_parent() -> None:
    """In the daemon's child, before exec: SIGTERM when the process that started it ends."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _start(cluster: Cluster, name: str, args: list[str]) -> None:
    log = (cluster.root / "log" / f"{name}.out").open("w")
    with log:
        cluster.daemons[name] = subprocess.Popen(
            args, env=cluster.env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent
        )


def _log_tail(root: Path, lines: int = 8) -> str:
    tails = []
    for path in [*sorted((root / "log").glob("*")), root / "munge" / "munged.log"]:
        if path.is_file() and (text := path.read_text(errors="replace").strip()):
            tails.append(f"{path.name}: " + " | ".join(text.splitlines()[-lines:]))
    return "; ".join(tails)


def start(root: str | os.PathLike, cpus: int = CPUS) -> Cluster:
    """Start munged, slurmctld and slurmd with their files under ``root`` (created); wait until the node is idle.

    Raises :class:`ClusterUnavailable` where they cannot run here or do not come up in
    ``START_TIMEOUT_S`` (with the daemons' last log lines); nothing is left running then.
    """
    if (reason := unavailable_reason()) is not None:
        raise ClusterUnavailable(reason)
    root = Path(root).resolve()
    # A Unix socket's path has at most 107 bytes, and slurmd names a job step's socket
    # <spool>/<node>_<job>.<step> (~25 bytes): under a deep ``root`` (pytest-xdist's tmp_path)
    # the steps cannot start, and the jobs are requeued for ever. The sockets live in /tmp.
    sockets = Path(tempfile.mkdtemp(prefix="nn-slurm-"))
    for folder in (root / "munge", root / "state", root / "log", sockets / "munge", sockets / "spool"):
        folder.mkdir(parents=True, exist_ok=True)
    for folder in (root / "munge", sockets / "munge"):
        folder.chmod(0o700)  # munged refuses a key or socket folder others can write to
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    (root / "plugstack.conf").write_text("")
    (root / "slurm.conf").write_text(slurm_conf(root, _free_ports(2), cpus, sockets))
    env = os.environ | {"SLURM_CONF": str(root / "slurm.conf"), "PATH": SEARCH_PATH}
    cluster = Cluster(root, env, sockets)
    munge = root / "munge"
    socket = sockets / "munge" / "munge.socket"
    try:
        _start(
            cluster,
            "munged",
            [
                "munged",
                "--foreground",
                "--force",  # as root, and with a socket folder only root can enter
                f"--socket={socket}",
                f"--key-file={key}",
                f"--pid-file={munge}/munged.pid",
                f"--log-file={munge}/munged.log",
                f"--seed-file={munge}/munged.seed",
            ],
        )
        _wait(socket.exists, cluster, "munged's socket")
        _start(cluster, "slurmctld", ["slurmctld", "-D", "-f", str(cluster.conf)])
        _start(cluster, "slurmd", ["slurmd", "-D", "-f", str(cluster.conf), "-N", NODE])
        idle = lambda: cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout.strip() == "idle"  # noqa: E731
        _wait(idle, cluster, "an idle node")
    except BaseException:
        stop(cluster)
        raise
    return cluster


def _wait(ready, cluster: Cluster, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not ready():
        dead = [name for name, p in cluster.daemons.items() if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(dead)} exited" if dead else f"no {what} after {START_TIMEOUT_S:.0f} s"
            raise ClusterUnavailable(f"the private Slurm did not start ({why}): {_log_tail(cluster.root)}")
        time.sleep(0.2)


def stop(cluster: Cluster, timeout_s: float = 30.0) -> None:
    """Cancel every job and wait for it to end, then end the daemons (SIGTERM, then SIGKILL)."""
    if cluster.daemons.get("slurmctld") is not None and cluster.daemons["slurmctld"].poll() is None:
        cluster.run("scancel", "--full", "--user", _user(), check=False)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            listed = cluster.run("squeue", "-h", "-o", "%T", check=False)
            if listed.returncode != 0 or not listed.stdout.strip():
                break
            time.sleep(0.5)
    for name in ("slurmd", "slurmctld", "munged"):  # clients first: slurmd talks to slurmctld, both to munged
        process = cluster.daemons.pop(name, None)
        if process is None or process.poll() is not None:
            continue
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    shutil.rmtree(cluster.sockets, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.slurm_cluster", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start, print the SLURM_CONF to export, stop on Ctrl-C or SIGTERM")
    up.add_argument("dir", help="folder for the configuration, state and logs (created)")
    run = sub.add_parser("run", help="start, run a command with SLURM_CONF set, stop; exits with its status")
    run.add_argument("dir", help="folder for the configuration, state and logs (created)")
    run.add_argument("cmd", nargs=argparse.REMAINDER, help="the command, after --")
    args = parser.parse_args(argv)
    try:
        cluster = start(args.dir)
    except ClusterUnavailable as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    try:
        if args.command == "up":
            print(f"export SLURM_CONF={cluster.conf}  # one node, {NODE}, {CPUS} CPUs; Ctrl-C stops it", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            while True:
                time.sleep(3600)
        command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
        return subprocess.run(command, env=cluster.env).returncode
    except KeyboardInterrupt:
        return 130
    finally:
        stop(cluster)


if __name__ == "__main__":
    sys.exit(main())
