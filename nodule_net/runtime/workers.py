"""Process pools for the stages that render or read many scans in parallel.

A :class:`ProcessPool` is a ``spawn`` :class:`concurrent.futures.ProcessPoolExecutor` with
three things added: Ctrl-C is left to the parent, a worker that dies (``kill -9``, the
out-of-memory killer, a crash in C code) ends the stage with one line naming the item it
was working on, and the workers die with their parent. ``multiprocessing.Pool`` silently
replaces a dead worker and never resubmits its task, so its results were awaited forever;
the executor notices the dead process at once (``BrokenProcessPool``) and stops the other
workers.

A parent killed outright (``kill -9``, the out-of-memory killer) cannot stop its workers,
which would otherwise go on for ever: each worker asks Linux for SIGKILL when its parent
dies (``PR_SET_PDEATHSIG``) and, where that is not available or the parent died before the
worker asked, a thread of its own watches the parent's pid (:func:`_die_with_parent`).

Whatever a worker is sent at start-up goes through a pipe that the parent writes while
it starts the process; a worker killed then must not leave the parent blocked on a full
pipe, so an initializer's arguments stay small (a path, a few numbers), never a dataset.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, MutableSequence, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import connection, get_context
from typing import Any, cast

# How often ``imap`` looks for a dead worker and runs ``while_waiting`` while no result arrives, in seconds.
POLL_S = 0.2
# How long a terminated worker may take to go before it is killed, in seconds.
TERMINATE_S = 10.0
# How often a worker's thread looks whether its parent is still alive, in seconds.
PARENT_WATCH_S = 1.0
# prctl(2)'s option "signal me when my parent dies" (linux/prctl.h).
_PR_SET_PDEATHSIG = 1
# multiprocessing's resource tracker outlives a parent killed outright, frees the pool's semaphores
# and then warns about them, after the shell prompt is back. It gets the parent's -W options.
_QUIET_TRACKER = "ignore:resource_tracker:UserWarning"


class WorkerDied(ValueError):
    """A pool worker ended without returning its task; the message is one line naming the item.

    A ValueError so that the stage wrapper (``params.user_errors_exit``) prints it as one
    ``error: ...`` line and exits 1: the cause lies outside the code (a kill, memory).
    """


# In each worker: this worker's two entries of the pool's shared slots, (pid, 1 + the index
# of the item it is working on), written here and read by the parent after a death.
# A ctypes c_longlong array: indexing one gives Python ints.
_slots: MutableSequence[int] | None = None
_slot = -1


def _ask_for_sigkill_at_parent_death() -> None:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)``: Linux kills this process when the thread that started it ends.

    Pools are started from the main thread, so that thread's end is the parent's. Nothing
    where the call is not available (not Linux, no libc): the parent watch covers that.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _die_with_parent(parent: int) -> None:
    """End this worker within ``PARENT_WATCH_S`` of the death of ``parent``, its parent's pid.

    PR_SET_PDEATHSIG where Linux has it; a daemon thread that polls ``os.getppid()`` (an
    orphan is handed to init or a subreaper, so the pid changes) covers every other case,
    including a parent that died before this worker got here (its first look is at once).
    The worker ends as a SIGKILL would end it: it holds nothing that a clean exit would save
    (checkpoints and outputs are written atomically), and an orphan has nobody to report to.
    """
    _ask_for_sigkill_at_parent_death()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_WATCH_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _start_worker(slots, parent: int, initializer: Callable[..., None] | None, *initargs: object) -> None:
    """Worker initializer: ignore SIGINT, die with ``parent``, claim a slot, then run ``initializer(*initargs)``.

    Ctrl-C reaches the whole process group, but only the parent should act on it. The
    worker was started with SIGINT blocked (:func:`_sigint_blocked`); ignored first, then
    unblocked, a Ctrl-C that came meanwhile is dropped.
    """
    global _slots, _slot
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    _die_with_parent(parent)
    with slots.get_lock():
        _slots = slots.get_obj()
        _slot = next(k for k in range(0, len(_slots), 2) if _slots[k] == 0)
        _slots[_slot] = os.getpid()
    if initializer is not None:
        initializer(*initargs)


def _run_chunk(fn: Callable[[Any], Any], first: int, chunk: list) -> list:
    """``[fn(item) for item in chunk]``, noting in this worker's slot which item (``first`` + i) runs."""
    assert _slots is not None, "chunks run only in a ProcessPool worker, after _start_worker"
    results = []
    for i, item in enumerate(chunk):
        _slots[_slot + 1] = first + i + 1  # one aligned store: no lock, so a kill cannot leave one held
        results.append(fn(item))
    return results


@contextlib.contextmanager
def _sigint_blocked() -> Iterator[None]:
    """SIGINT blocked in this thread meanwhile, so that processes spawned now start with it blocked.

    A worker still importing (before any initializer runs) would otherwise die of a Ctrl-C
    with a traceback of its own; a blocked signal waits, and the worker ignores it once
    it can (:func:`_start_worker`). This process still acts on a Ctrl-C at once: Python runs
    its handler in the main thread whichever thread the signal reached, and a Ctrl-C held
    back here is delivered when the block ends.
    """
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def spawn_context() -> Any:
    """multiprocessing's ``spawn`` context, for the pools and for anything shared with their workers.

    Use it before creating a lock or queue for them: the first one starts the resource tracker,
    which is told here not to warn about what a parent killed outright left it to free.
    """
    if _QUIET_TRACKER not in sys.warnoptions:
        sys.warnoptions.append(_QUIET_TRACKER)
    return get_context("spawn")


def _how_it_ended(exitcode: int | None) -> str:
    """``multiprocessing``'s exit code in words: negative is the signal that ended the process."""
    if exitcode is not None and exitcode < 0:
        try:
            return f"was killed by {signal.Signals(-exitcode).name}"
        except ValueError:  # a real-time signal has no name
            return f"was killed by signal {-exitcode}"
    return f"exited with code {exitcode}"


class ProcessPool:
    """``workers`` spawn processes that leave Ctrl-C to the parent and whose death is one line.

    Use as a context manager. Leaving it normally waits for the workers to finish; leaving
    it by an exception (a worker's error, a dead worker, a Ctrl-C: the parent prints one
    line) terminates them and waits until every one has gone, so no worker writes after
    the caller has cleaned up. A dead worker raises :class:`WorkerDied`:
    ``"<stage>: worker process <pid> was killed by SIGKILL while <describe(item)>; <resume>."``
    """

    def __init__(
        self, workers: int, initializer: Callable[..., None] | None, initargs: tuple, stage: str, resume: str
    ) -> None:
        context = spawn_context()
        self._slots = context.Array("q", 2 * workers)  # per worker: pid, 1 + index of its item (0: none yet)
        self._executor = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(self._slots, os.getpid(), initializer, *initargs),
        )
        self._processes: dict[int, Any] = {}  # pid → multiprocessing.Process, every worker ever started
        self._numbered = 0  # items of earlier imap calls: the slots number the items of all of them
        self._stage, self._resume = stage, resume

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self._executor.shutdown(wait=True)
        else:
            self._stop()

    def imap(
        self,
        fn: Callable[[Any], Any],
        items: Iterable,
        describe: Callable[[Any], str],
        chunksize: int = 1,
        while_waiting: Callable[[], None] | None = None,
    ) -> Iterator:
        """``fn(item)`` for each of ``items`` in the workers; the results in the order of ``items``.

        ``describe(item)`` says what a worker does with it, for the one line of a death
        (``"extracting LIDC-IDRI-0003/s3"``). ``while_waiting()``, if given, runs here at
        least every ``POLL_S`` seconds while results are awaited. The first error of any
        item is raised as soon as it arrives (as the worker raised it), not in item order.
        """
        items, base = list(items), self._numbered
        self._numbered += len(items)
        futures: list[Future] = []
        with _sigint_blocked():  # submit starts the workers
            for first in range(0, len(items), chunksize):
                try:
                    futures.append(
                        self._executor.submit(_run_chunk, fn, base + first, items[first : first + chunksize])
                    )
                except BrokenProcessPool:  # a worker died since the last call, or one started by this one
                    raise self._died(items, base, futures, chunksize, describe) from None
        # The executor keeps its processes in a private dict; their exit codes say which one died.
        self._processes.update(self._executor._processes or {})
        sentinels = [process.sentinel for process in self._processes.values()]
        order = {future: n for n, future in enumerate(futures)}
        pending, next_chunk = set(futures), 0
        while next_chunk < len(futures):
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=order.__getitem__):
                if isinstance(future.exception(), BrokenProcessPool):
                    raise self._died(items, base, futures, chunksize, describe) from None
                if future.exception() is not None:
                    future.result()  # raises it
            # The executor may never notice a death (CPython 3.11's, at least): its thread that watches the
            # workers collects their sentinels when a submit wakes it, which is before that submit
            # starts its process, so the last process started may be one it does not watch. A worker
            # leaves only at shutdown, so any that has ended while items are pending has died.
            if not done and connection.wait(sentinels, timeout=0):
                raise self._died(items, base, futures, chunksize, describe) from None
            while next_chunk < len(futures) and futures[next_chunk].done():
                yield from futures[next_chunk].result()
                next_chunk += 1
            if while_waiting is not None:
                while_waiting()

    def _stop(self) -> None:
        """Terminate every worker and wait until all have gone (killed after ``TERMINATE_S``)."""
        self._processes.update(self._executor._processes or {})
        for process in self._processes.values():
            process.terminate()
        for process in self._processes.values():
            process.join(TERMINATE_S)
            if process.exitcode is None:
                process.kill()
                process.join()
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _died(
        self, items: list, base: int, futures: list[Future], chunksize: int, describe: Callable[[Any], str]
    ) -> WorkerDied:
        """The error for a broken pool, after stopping the other workers (the executor sends them SIGTERM).

        ``items`` are this call's, numbered from ``base`` in the slots; ``futures`` are the chunks submitted.
        """
        self._stop()
        slots = cast("Sequence[int]", self._slots.get_obj())  # c_longlong: indexing gives Python ints
        working = {slots[k]: slots[k + 1] - 1 - base for k in range(0, len(slots), 2) if slots[k]}  # pid → index
        ended = sorted(self._processes.values(), key=lambda p: p.pid)
        dead = [p for p in ended if p.exitcode != -signal.SIGTERM] or ended
        first = dead[0]
        index = working.get(first.pid, -1)

        def returned(i: int) -> bool:  # item i's result arrived (``futures`` may lack the last chunks)
            future = futures[i // chunksize] if i // chunksize < len(futures) else None
            return future is not None and future.done() and not future.cancelled() and future.exception() is None

        if index >= 0 and not returned(index):
            what = f"while {describe(items[index])}"
        else:  # it died starting up or between two items
            unfinished = [i for i in range(len(items)) if not returned(i)]
            what = f"before {describe(items[unfinished[0]])}" if unfinished else "after the last item"
            if len(unfinished) > 1:
                what += f" and {len(unfinished) - 1} more"
        others = f" (and {len(dead) - 1} other workers)" if len(dead) > 1 else ""
        return WorkerDied(
            f"{self._stage}: worker process {first.pid}{others} {_how_it_ended(first.exitcode)} {what}; {self._resume}."
        )


def process_pool(
    workers: int, initializer: Callable[..., None] | None = None, initargs: tuple = (), *, stage: str, resume: str
) -> ProcessPool:
    """A :class:`ProcessPool` of ``workers`` spawn processes; ``initializer(*initargs)`` runs in each.

    ``stage`` and ``resume`` make the one line of a dead worker: ``stage`` names the stage
    or command, ``resume`` says what happens next (``"nothing was written; `dvc repro`
    reruns the stage"``).
    """
    return ProcessPool(workers, initializer, initargs, stage, resume)
