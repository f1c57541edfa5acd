"""Where training and inference run.

``train.device: auto`` on a machine with several GPUs takes a *free* one: each GPU has a
lock file, and a process holds an exclusive ``flock`` on the file of the GPU it uses for
as long as it lives. The kernel drops the lock when the process exits, however it exits
(kill -9 and crashes included), so ``dvc queue start -j N`` runs N experiments on N GPUs
without hand-set ``CUDA_VISIBLE_DEVICES`` and nothing is left to clean up.
"""

from __future__ import annotations

import fcntl
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

# Where the per-GPU lock files live; every process sharing the GPUs must see the same
# (local, not NFS) directory. Overridden by this environment variable.
GPU_LOCK_DIR_ENV = "NODULE_NET_GPU_LOCK_DIR"
# How often a process waiting for a GPU tries the locks again.
GPU_POLL_SECONDS = 2.0


class GpuLock(NamedTuple):
    """A GPU this process holds: its torch index, its identity and the open, flocked lock file."""

    index: int  # type: ignore[assignment]  # the field shadows tuple.index, which nothing here calls
    gpu_id: str
    fd: int


# The one GPU lock of this process (train and evaluate may both resolve `auto`; a process
# never holds two GPUs). Never released explicitly: it goes when the process does.
_held: GpuLock | None = None


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def gpu_lock_dir() -> Path:
    """``$NODULE_NET_GPU_LOCK_DIR``, else ``<tmp>/nodule-net-gpu-locks`` (shared by all users)."""
    return Path(os.environ.get(GPU_LOCK_DIR_ENV) or Path(tempfile.gettempdir()) / "nodule-net-gpu-locks")


def visible_gpu_ids() -> list[str]:
    """Identities of the CUDA GPUs this process sees, in torch's index order.

    UUIDs rather than indices: processes started with different ``CUDA_VISIBLE_DEVICES``
    number the same physical GPU differently, but agree on its UUID (and so on its lock).
    """
    return [str(torch.cuda.get_device_properties(i).uuid) for i in range(torch.cuda.device_count())]


def try_lock_gpu(gpu_id: str, lock_dir: str | os.PathLike) -> int | None:
    """An open descriptor of ``<lock_dir>/<gpu_id>.lock`` holding its exclusive flock, or None if taken."""
    lock_dir = Path(lock_dir)
    try:
        lock_dir.mkdir(parents=True)
        lock_dir.chmod(0o1777)  # like /tmp: every user's jobs share the GPUs, so every user creates lock files
    except FileExistsError:
        pass
    name = re.sub(r"[^\w.-]", "_", gpu_id) + ".lock"
    # Read-only suffices for flock, so a lock file created by another user (mode 0644) still works.
    fd = os.open(lock_dir / name, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def acquire_gpu(
    gpu_ids: Sequence[str],
    lock_dir: str | os.PathLike | None = None,
    poll_s: float = GPU_POLL_SECONDS,
    timeout_s: float | None = None,
    say: Callable[[str], None] = _say,
    what: str = "train.device",
) -> GpuLock:
    """Lock the first free GPU of ``gpu_ids`` (see :func:`visible_gpu_ids`).

    When every GPU is taken, ``say`` one line and try again every ``poll_s`` seconds —
    waiting rather than falling back to the CPU, where a run sized for a GPU would take
    hours to days (docs/speed.md); a queue with more workers than GPUs simply waits its
    turn. ``timeout_s`` (None: wait for ever) raises TimeoutError. :func:`release_gpu` (or
    the end of the process) frees the GPU. ``what`` names the setting that asked for ``auto``.
    """
    if not gpu_ids:
        raise ValueError("No GPU to lock: the list of GPU ids is empty.")
    lock_dir = Path(lock_dir) if lock_dir is not None else gpu_lock_dir()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    said = False
    while True:
        for index, gpu_id in enumerate(gpu_ids):
            if (fd := try_lock_gpu(gpu_id, lock_dir)) is not None:
                return GpuLock(index, gpu_id, fd)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"All {len(gpu_ids)} GPUs stayed locked for {timeout_s} s (lock files in {lock_dir}).")
        if not said:
            say(
                f"{what}=auto: all {len(gpu_ids)} GPUs are taken by other nodule-net processes "
                f"(locks in {lock_dir}); waiting for one to be freed."
            )
            said = True
        time.sleep(poll_s if deadline is None else max(0.0, min(poll_s, deadline - time.monotonic())))


def release_gpu(lock: GpuLock) -> None:
    """Free ``lock``'s GPU for other processes (closing the descriptor drops the flock)."""
    os.close(lock.fd)


# The devices nodule-net runs on (as `train.device` and the commands' --device allow them, besides `auto`).
DEVICE_PATTERN = r"cpu|cuda(:\d+)?"


def _setting(name: str, what: str) -> str:
    """How an error names the setting: ``--device cuda:3`` for a flag, ``train.device='cuda:3'`` for a param."""
    return f"{what} {name}" if what.startswith("-") else f"{what}={name!r}"


def parse_device(name: str, what: str = "train.device") -> torch.device:
    """The torch device ``cpu``, ``cuda`` or ``cuda:N`` names, present on this machine; no lock taken.

    Raises ``ValueError`` (one line naming ``what``, the param or flag it came from) for
    anything else, for CUDA without a visible GPU, and for a GPU index this machine lacks:
    torch would accept ``cuda:7`` here and fail on first use.
    """
    if not re.fullmatch(DEVICE_PATTERN, name):
        raise ValueError(f"{_setting(name, what)} is not a device: use auto, cpu, cuda or cuda:N.")
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{_setting(name, what)} but no CUDA GPU is visible; use `auto` or `cpu`.")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(
                f"{_setting(name, what)}: this machine sees {count} CUDA GPU{'s' * (count != 1)} "
                f"(cuda:0 to cuda:{count - 1}); use one of them, `auto` or `cpu`."
            )
    return device


def resolve_device(name: str, what: str = "train.device") -> torch.device:
    """The torch device for ``train.device`` (or the setting ``what`` names, e.g. ``--device``).

    ``auto`` → a free CUDA GPU among those visible (``CUDA_VISIBLE_DEVICES`` is respected),
    locked for the rest of this process's life and made the current device — the same one
    however often it is called — else the CPU. ``cpu``, ``cuda`` and ``cuda:N`` are used
    as given (:func:`parse_device`), without a lock: an explicit choice is the user's, so
    auto processes may share it.
    """
    global _held
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        if _held is None:
            _held = acquire_gpu(visible_gpu_ids(), what=what)
            torch.cuda.set_device(_held.index)  # kernels and allocations that take the current device land here too
            _say(f"{what}=auto: using GPU {_held.index} ({_held.gpu_id})")
        return torch.device("cuda", _held.index)
    return parse_device(name, what)


def device_label(device: torch.device) -> str:
    """``device`` as a run's record names it: ``cpu``, or ``cuda:0 (NVIDIA H200)`` with the card's name."""
    if device.type != "cuda":
        return str(device)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
