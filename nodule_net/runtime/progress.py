"""Progress lines that a person can follow on a terminal and in a log.

On a terminal (stdout a TTY) a line is written as it is, between tqdm's bars, which only a
terminal draws. In a log — a DVC stage's output, ``dvc queue logs``, a Slurm job's file —
it starts with the local time (``2026-12-01 15:40:02``), so a reader can tell when each line
was written, and it is flushed at once: a pipe is block-buffered, and a worker process's
lines would otherwise wait there until it exits. Loops too long to be silent without a bar
print a line every :data:`HEARTBEAT_S` seconds (:func:`with_heartbeat`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import IO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

# Local time, to the second: what a reader compares with the clock on the wall.
TIMESTAMP = "%Y-%m-%d %H:%M:%S"
# The longest silence of a loop that draws no bar, in seconds.
HEARTBEAT_S = 60.0


def is_terminal(stream: IO[str] | None = None) -> bool:
    """Whether ``stream`` (default: the current ``sys.stdout``) is a terminal."""
    stream = sys.stdout if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def progress_line(text: str, file: IO[str] | None = None) -> None:
    """Write ``text`` as one line to ``file`` (default: the current ``sys.stdout``), time-stamped
    where that is not a terminal, and flush it."""
    stream = sys.stdout if file is None else file
    if not is_terminal(stream):
        text = f"{datetime.now().strftime(TIMESTAMP)} {text}"
    tqdm.write(text, file=stream)
    stream.flush()


def format_duration(seconds: float) -> str:
    """``seconds`` ≥ 0 to the second, in the two largest units: 42 → ``42s``, 125 → ``2m05s``, 3725 → ``1h02m``."""
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class EpochClock:
    """The elapsed time of a run that trains epochs ``first``…``epochs`` (1-based) and an estimate
    of what is left, from the mean epoch time so far.

    Epochs before ``first`` (resumed from a checkpoint) took no time in this run, so they
    neither count as done nor slow the estimate down. ``now``: the clock (seconds).
    """

    def __init__(self, first: int, epochs: int, now: Callable[[], float] = time.monotonic) -> None:
        self.first, self.epochs, self.now = first, epochs, now
        self.started = now()

    def elapsed(self) -> float:
        return self.now() - self.started

    def left(self, epoch: int, fraction: float = 1.0) -> float | None:
        """Seconds left once ``fraction`` (0–1] of ``epoch`` is done: the mean time of this run's
        epochs so far times the epochs still to go; None before this run has done anything."""
        done = epoch - self.first + fraction
        return self.elapsed() / done * (self.epochs - epoch + 1 - fraction) if done > 0 else None

    def timing(self, epoch: int, fraction: float = 1.0) -> str:
        """``elapsed 6m12s, ETA 18m36s`` after ``fraction`` of ``epoch``."""
        left = self.left(epoch, fraction)
        eta = format_duration(left) if left is not None else "unknown"
        return f"elapsed {format_duration(self.elapsed())}, ETA {eta}"


def with_heartbeat(
    items: Iterable[T],
    beat: Callable[[int], None],
    every: float | None = None,
    now: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """``items`` unchanged, calling ``beat(done)`` (the items done so far) before the next item
    whenever ``every`` seconds (default :data:`HEARTBEAT_S`) have passed since the start or the last beat."""
    every = HEARTBEAT_S if every is None else every
    last = now()
    for done, item in enumerate(items):
        if done and now() - last >= every:
            beat(done)
            last = now()
        yield item
