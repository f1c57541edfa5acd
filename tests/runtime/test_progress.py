"""Progress lines: time stamps in a log only, flushed; durations; the ETA of a run; the heartbeat."""

from __future__ import annotations

import io
import re

import pytest

from nodule_net.runtime import progress
from nodule_net.runtime.progress import EpochClock, format_duration, progress_line, with_heartbeat

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Log(io.StringIO):
    """A pipe to a log file: not a terminal, and it counts its flushes."""

    flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_a_line_is_time_stamped_in_a_log_and_flushed_at_once() -> None:
    log = Log()
    progress_line("fold 0 epoch 1/2: something", file=log)
    assert re.fullmatch(STAMP + r"fold 0 epoch 1/2: something\n", log.getvalue())
    assert log.flushes >= 1  # a pipe would otherwise hold a worker's lines until it exits


def test_a_line_on_a_terminal_has_no_stamp(monkeypatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr("sys.stdout", terminal)  # the default stream is read at each call
    progress_line("fold 0 epoch 1/2: something")
    assert terminal.getvalue() == "fold 0 epoch 1/2: something\n"


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (42.4, "42s"), (59.6, "1m00s"), (125, "2m05s"), (3725, "1h02m"), (90061, "25h01m")]
)
def test_durations_read_in_their_two_largest_units(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_the_eta_is_the_mean_epoch_time_of_this_run_times_the_epochs_left() -> None:
    now = FakeClock()
    clock = EpochClock(1, 12, now)
    now.t += 30  # epoch 1 took 30 s
    assert clock.left(1) == pytest.approx(11 * 30)
    assert clock.timing(1) == "elapsed 30s, ETA 5m30s"
    now.t += 90  # epochs 2–3 took 45 s each: the mean is 40 s
    assert clock.left(3) == pytest.approx(9 * 40)
    now.t += 20  # half of epoch 4 took 20 s: 3.5 epochs in 140 s
    assert clock.left(4, 0.5) == pytest.approx(8.5 * 40)
    assert clock.left(12) == 0 and clock.timing(12) == "elapsed 2m20s, ETA 0s"


def test_resumed_epochs_take_no_time_in_the_estimate() -> None:
    now = FakeClock()
    clock = EpochClock(11, 12, now)  # resumed after epoch 10
    now.t += 30
    assert clock.left(11) == pytest.approx(30)  # one epoch done in 30 s, one to go
    assert EpochClock(11, 12, now).left(10) is None  # nothing done yet: no estimate
    assert EpochClock(11, 12, now).timing(10, 0.0).endswith("ETA unknown")


def test_the_heartbeat_beats_only_after_its_interval_and_leaves_the_items_alone() -> None:
    now = FakeClock()
    beats: list[int] = []
    seen = []
    for item in with_heartbeat(iter("abcdefg"), beats.append, every=60, now=now):
        seen.append(item)
        now.t += 25  # each item takes 25 s
    assert seen == list("abcdefg")
    assert beats == [3, 6]  # 75 s after the start (3 items done), then 75 s after that beat


def test_the_heartbeat_interval_is_read_at_each_call(monkeypatch) -> None:
    monkeypatch.setattr(progress, "HEARTBEAT_S", 0.0)
    beats: list[int] = []
    assert list(with_heartbeat(range(3), beats.append)) == [0, 1, 2]
    assert beats == [1, 2]  # every item but the first: none is done before it
