"""Process pools for the stages that render or read many scans in parallel.

A :class:`ProcessPool` is a ``spawn`` :class:`concurrent.futures.ProcessPoolExecutor` with
two things added: Ctrl-C is left to the parent, and a worker that dies (``kill -9``, the
out-of-memory killer, a crash in C code) ends the stage with one line naming the item it
was working on. ``multiprocessing.Pool`` silently replaces a dead worker and never
resubmits its task, so its results were awaited forever; the executor notices the dead
process at once (``BrokenProcessPool``) and stops the other workers.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, MutableSequence, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from typing import Any, cast

# How often ``imap``'s ``while_waiting`` runs while no result arrives, in seconds.
POLL_S = 0.2
# How long a terminated worker may take to go before it is killed, in seconds.
TERMINATE_S = 10.0


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


def _start_worker(slots, initializer: Callable[..., None] | None, *initargs: object) -> None:
    """Worker initializer: ignore SIGINT, claim a slot, then run the caller's ``initializer(*initargs)``.

    Ctrl-C reaches the whole process group, but only the parent should act on it.
    """
    global _slots, _slot
    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored meanwhile, so that processes spawned now inherit that (only the main thread may set it).

    A worker still importing (before any initializer runs) would otherwise die of a Ctrl-C
    with a traceback of its own.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


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
        context = get_context("spawn")
        self._slots = context.Array("q", 2 * workers)  # per worker: pid, 1 + index of its item (0: none yet)
        self._executor = ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(self._slots, initializer, *initargs)
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
        with _sigint_ignored():  # submit starts the workers
            for first in range(0, len(items), chunksize):
                try:
                    futures.append(
                        self._executor.submit(_run_chunk, fn, base + first, items[first : first + chunksize])
                    )
                except BrokenProcessPool:  # a worker died since the last call, or one started by this one
                    raise self._died(items, base, futures, chunksize, describe) from None
        # The executor keeps its processes in a private dict; their exit codes say which one died.
        self._processes.update(self._executor._processes or {})
        order = {future: n for n, future in enumerate(futures)}
        pending, next_chunk = set(futures), 0
        while next_chunk < len(futures):
            done, pending = wait(pending, timeout=POLL_S if while_waiting else None, return_when=FIRST_COMPLETED)
            for future in sorted(done, key=order.__getitem__):
                if isinstance(future.exception(), BrokenProcessPool):
                    raise self._died(items, base, futures, chunksize, describe) from None
                if future.exception() is not None:
                    future.result()  # raises it
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
