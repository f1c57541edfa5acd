"""Process pools for the stages that render or read many scans in parallel."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from multiprocessing import get_context
from multiprocessing.pool import Pool


def _ignore_sigint(initializer: Callable[..., None] | None = None, *initargs: object) -> None:
    """Pool initializer: Ctrl-C reaches the whole process group, but only the parent should act on it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)


def process_pool(workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = ()) -> Pool:
    """A ``spawn`` pool of ``workers`` processes that leave Ctrl-C to the parent (use it as a context manager).

    The parent gets the KeyboardInterrupt, prints one line and terminates the pool;
    otherwise every worker would print a traceback of its own. Workers are started with
    SIGINT ignored, which they inherit, so a Ctrl-C while they are still importing (before
    any initializer runs) is ignored too; the initializer covers workers started later.
    ``initializer(*initargs)``, if given, runs in each worker after that.
    """
    args = (initializer, *initargs)
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        return get_context("spawn").Pool(workers, initializer=_ignore_sigint, initargs=args)
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        return get_context("spawn").Pool(workers, initializer=_ignore_sigint, initargs=args)
    finally:
        signal.signal(signal.SIGINT, previous)
