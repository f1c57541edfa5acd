"""Writing files so that a failure never leaves a half-written one behind, and checking up front that we can
(a writable folder, room on its disk, memory to build the content); values made JSON-ready."""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import psutil  # a dependency of dvc's; the memory available, as the OS counts it


def _megabytes(n: float) -> str:
    return f"{n / 1e6:,.0f} MB" if n >= 1e6 else f"{n / 1e3:,.0f} kB"


def check_writable(path: str | os.PathLike, need_bytes: int = 0) -> None:
    """Fail before the work, not after it, if ``path`` (a file or folder to be written) cannot be.

    Creates ``path``'s parent folder, writes and removes a probe file in it, and checks
    that its filesystem has ``need_bytes`` free (the caller's estimate of the output
    size). Raises ``ValueError`` with one sentence naming the path.
    """
    path = Path(path)
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # A real write, not os.access: root passes every permission check, yet a read-only
        # filesystem still refuses it.
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(
            f"Cannot write {path}: {folder} is not writable ({err.strerror or err}); "
            "make it writable or point the output elsewhere, then re-run."
        ) from None
    # An older `path` keeps its space until atomic_path's rename, so `free` is what the new copy gets.
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise ValueError(
            f"Cannot write {path}: it needs about {_megabytes(need_bytes)} but only "
            f"{_megabytes(free)} are free on {folder}'s disk; free some space, then re-run."
        )


def check_memory(path: str | os.PathLike, need_bytes: int, advice: str) -> None:
    """Fail before the work if building ``path`` needs more than the ``need_bytes`` of memory available.

    Raises ``ValueError`` with one sentence naming ``path``, both sizes and ``advice`` (what to change).
    """
    available = psutil.virtual_memory().available
    if available < need_bytes:
        raise ValueError(
            f"Cannot build {path}: it needs about {_megabytes(need_bytes)} of memory but only "
            f"{_megabytes(available)} are available; {advice}, then re-run."
        )


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write; it replaces ``path`` when the block succeeds.

    If the block raises (or the process is killed), ``path`` keeps its previous content
    and the temporary file is removed (or, after a kill, left as ``<name>.partial``).
    The block's own exception is what propagates: a failing clean-up (on a read-only or
    full disk) never hides it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        yield tmp
        os.replace(tmp, path)  # atomic on POSIX within one filesystem
    except BaseException:
        # The original error matters; a leftover .partial is overwritten next time.
        with suppress(OSError):
            tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def jsonable(value, significant: int | None = None):
    """``value`` with numpy arrays/numbers as lists/floats and NaN as None (JSON ``null``),
    floats rounded to ``significant`` digits if given."""
    if isinstance(value, dict):
        return {str(k): jsonable(v, significant) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [jsonable(v, significant) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if math.isnan(value):
            return None
        return float(f"{value:.{significant}g}") if significant else float(value)
    return value
