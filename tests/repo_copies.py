"""Helpers of the tests that run this repository's pipeline in copies of it (DVC remotes, Slurm)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    """stdout of ``args``; on failure an AssertionError with the command's last output lines."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-30:])
        raise AssertionError(f"`{' '.join(args)}` in {cwd} exited with {done.returncode}:\n{tail}")
    return done.stdout


def copy_working_tree(dest: Path) -> None:
    """Tracked and untracked, not ignored files of this repository (as they are now) into ``dest``."""
    listed = subprocess.run(
        ["git", "ls-files", "-coz", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    for name in filter(None, listed.split("\0")):
        if (REPO / name).is_file():  # a tracked file deleted in the working tree is listed too
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, dest / name)
