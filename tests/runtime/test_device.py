"""The per-GPU lock behind `train.device: auto`, on CPU with a faked list of GPUs."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import types
from pathlib import Path

import pytest
import torch

from nodule_net.runtime import device
from nodule_net.runtime.device import GPU_LOCK_DIR_ENV, acquire_gpu, release_gpu, resolve_device, try_lock_gpu

# A child process that sees two fake GPUs, resolves `auto` twice and then holds its GPU until killed.
CHILD = """
import time, types, torch
torch.cuda.is_available = lambda: True
torch.cuda.device_count = lambda: 2
torch.cuda.get_device_properties = lambda i: types.SimpleNamespace(uuid=f"GPU-fake-{i}")
torch.cuda.set_device = lambda i: None
from nodule_net.runtime.device import resolve_device
print("device", resolve_device("auto"), resolve_device("auto"), flush=True)
time.sleep(600)
"""


@pytest.fixture
def fake_gpus(monkeypatch, tmp_path):
    """Two fake CUDA GPUs (`GPU-fake-0`, `GPU-fake-1`), locks in tmp_path, no GPU held yet; yields the lock dir."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(uuid=f"GPU-fake-{i}"))
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(device, "_held", None)
    monkeypatch.setenv(GPU_LOCK_DIR_ENV, str(tmp_path))
    yield tmp_path
    if device._held is not None:
        release_gpu(device._held)


def test_holders_get_different_gpus_and_a_third_waits_until_one_is_freed(tmp_path):
    gpus = ["GPU-a", "GPU-b"]
    first, second = acquire_gpu(gpus, tmp_path), acquire_gpu(gpus, tmp_path)
    assert (first.index, first.gpu_id, second.index, second.gpu_id) == (0, "GPU-a", 1, "GPU-b")

    said, got = [], []
    waiter = threading.Thread(target=lambda: got.append(acquire_gpu(gpus, tmp_path, poll_s=0.02, say=said.append)))
    waiter.start()
    waiter.join(0.5)  # ~25 polls while both GPUs are taken
    assert waiter.is_alive() and got == []
    assert len(said) == 1 and "all 2 GPUs are taken" in said[0] and str(tmp_path) in said[0]
    release_gpu(second)
    waiter.join(10)
    assert [(g.index, g.gpu_id) for g in got] == [(1, "GPU-b")]
    assert len(said) == 1  # the message is printed once, not per poll
    for lock in (first, got[0]):
        release_gpu(lock)


def test_wait_times_out_and_locks_follow_the_gpu_not_the_index(tmp_path):
    # A process started with CUDA_VISIBLE_DEVICES naming only GPU-b calls it index 0; the
    # lock is keyed by the UUID, so a process that sees both GPUs still avoids GPU-b.
    only_b = acquire_gpu(["GPU-b"], tmp_path)
    both = acquire_gpu(["GPU-a", "GPU-b"], tmp_path)
    assert (only_b.index, both.index, both.gpu_id) == (0, 0, "GPU-a")
    with pytest.raises(TimeoutError, match="All 2 GPUs stayed locked"):
        acquire_gpu(["GPU-a", "GPU-b"], tmp_path, poll_s=0.01, timeout_s=0.1, say=lambda line: None)
    for lock in (only_b, both):
        release_gpu(lock)
    assert try_lock_gpu("GPU-b", tmp_path) is not None


def test_auto_takes_one_gpu_per_process_and_makes_it_current(fake_gpus, monkeypatch):
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("auto") == torch.device("cuda", 0)  # evaluate after train, or a second fit
    assert current == [0]
    assert try_lock_gpu("GPU-fake-0", fake_gpus) is None
    free = try_lock_gpu("GPU-fake-1", fake_gpus)  # the second call took no second lock
    assert free is not None
    os.close(free)


def test_explicit_devices_take_no_lock(fake_gpus):
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")
    assert device._held is None and list(fake_gpus.iterdir()) == []


def test_auto_without_cuda_is_the_cpu(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "_held", None)
    monkeypatch.setenv(GPU_LOCK_DIR_ENV, str(tmp_path / "locks"))
    assert resolve_device("auto") == torch.device("cpu")
    assert not (tmp_path / "locks").exists()


def _start_child(lock_dir: Path) -> tuple[subprocess.Popen, queue.Queue]:
    """The CHILD script in a fresh interpreter; its output lines arrive on the queue."""
    env = os.environ | {GPU_LOCK_DIR_ENV: str(lock_dir)}
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        env=env,
        cwd=Path(__file__).parents[2],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in child.stdout], daemon=True).start()
    return child, lines


def _next_line(lines: queue.Queue) -> str:
    """The child's next line that says which device it got or that it waits (other lines skipped)."""
    while not (line := lines.get(timeout=60)).startswith(("device", "train.device=auto: all")):
        pass
    return line.strip()


@pytest.mark.slow
def test_processes_take_different_gpus_and_a_killed_holder_frees_its_gpu(tmp_path):
    ours = acquire_gpu(["GPU-fake-0"], tmp_path)  # this process holds GPU 0 (saves a third interpreter)
    children = [_start_child(tmp_path) for _ in range(2)]
    try:
        first = {child: _next_line(out) for child, out in children}
        # Whichever child starts first takes the free GPU 1; the other waits and says so.
        (holder,) = [child for child, line in first.items() if line.startswith("device")]
        (waiter, waiter_out) = next((child, out) for child, out in children if child is not holder)
        assert first[holder] == "device cuda:1 cuda:1"
        assert "all 2 GPUs are taken" in first[waiter]
        assert try_lock_gpu("GPU-fake-1", tmp_path) is None
        # SIGKILL: no exit handler runs, yet the kernel drops the flock and the waiter gets that GPU.
        holder.send_signal(signal.SIGKILL)
        assert holder.wait(timeout=10) == -signal.SIGKILL
        assert _next_line(waiter_out) == "device cuda:1 cuda:1"
    finally:
        for child, _ in children:
            child.kill()
            child.wait()
        release_gpu(ours)


@pytest.mark.parametrize("name", ["tpu", "cuda:x", "gpu0", "meta"])
def test_a_device_that_is_no_device_is_one_line_naming_the_setting(name):
    with pytest.raises(ValueError) as err:
        resolve_device(name, what="--device")
    assert str(err.value).startswith(f"--device {name} is not a device") and "\n" not in str(err.value)
    with pytest.raises(ValueError, match=rf"^train.device='{name}' is not a device"):
        resolve_device(name)  # the default names the param


def test_a_gpu_index_this_machine_lacks_is_one_line(fake_gpus):
    with pytest.raises(ValueError) as err:
        resolve_device("cuda:2", what="--device")
    assert str(err.value) == (
        "--device cuda:2: this machine sees 2 CUDA GPUs (cuda:0 to cuda:1); use one of them, `auto` or `cpu`."
    )


def test_cuda_without_a_gpu_names_the_setting_it_came_from(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^--device cuda but no CUDA GPU is visible; use `auto` or `cpu`\.$"):
        resolve_device("cuda", what="--device")
    with pytest.raises(ValueError, match=r"^train.device='cuda:0' but no CUDA GPU is visible"):
        resolve_device("cuda:0")
