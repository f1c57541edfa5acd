"""`python -m tools.gpu_check`: the GPU measurements of docs/speed.md, in one run.

Made for a lent GPU machine that has PyTorch (with numpy, h5py, pandas, scipy,
scikit-learn, matplotlib, PyYAML) but no network and no time to spare: nothing is
installed, DVC is not needed, and every step runs in its own subprocess with its own
time limit, so a step that fails or overruns leaves the others' results. The only
extra package is pydicom (the tests' conftest imports the extractor), carried as a
wheel. The phantom's dataset and folds (``data/nodules.h5``, ``data/splits.json``,
from ``dvc repro split``) travel with the checkout.

Steps, in this order (``--steps`` picks some):

- ``environment``: GPU, driver, torch, CUDA, cuDNN, Python → ``environment.json``
- ``tests``: the tests that skip without CUDA (GPU against CPU, no host sync per step,
  side by side on the GPU, fused Adam) → their output in the log, rc in ``summary.json``
- ``bench``: ``nodule-net bench --device cuda`` at fp32 (the full plan) → ``bench-fp32.json``
- ``phantom``: the phantom's folds trained with ``params.yaml`` on the GPU and evaluated,
  at fp32 and at bf16 (``train.precision``), then fp32 one fold after another and fp32
  with the next seed (the seed-to-seed spread that "within noise" is judged by): pooled
  test MAE and wall time of each → ``phantom.json``, rewritten after each run
- ``bench-bf16``: the quick bench at bf16 → ``bench-bf16.json``

Everything lands in ``--out`` (at most 8 files): the step files, ``summary.json``
(each step's exit status, seconds, whether it ran out of time) and ``gpu-check.log``
(every step's output, also echoed to stdout).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Each step's time limit (s); the whole run is also held to --budget-s.
STEP_LIMITS: dict[str, int] = {"environment": 60, "tests": 180, "bench": 300, "phantom": 300, "bench-bf16": 120}
STEPS = tuple(STEP_LIMITS)

# The tests that skip without CUDA, and the fused-Adam test that has a CUDA case (pytest -k).
GPU_TESTS = ("tests/training/test_train.py", "tests/data/test_batches.py", "tests/training/test_side_by_side.py")
GPU_TEST_SELECTION = "gpu or cuda or fused_adam"

# The phantom runs: changes to params.yaml's train section (TrainConfig fields; "seed": an offset to the seed).
PHANTOM_RUNS: dict[str, dict] = {
    "fp32": {"precision": "fp32"},
    "bf16": {"precision": "bf16"},
    "fp32_one_fold_at_a_time": {"precision": "fp32", "folds_together": False, "fold_processes": 1},
    "fp32_next_seed": {"precision": "fp32", "seed": 1},
}
QUICK_PHANTOM_RUNS = ("fp32", "bf16")


def write_json(path: Path, value) -> None:
    from nodule_net.io.files import write_text_atomic

    write_text_atomic(path, json.dumps(value, indent=2) + "\n")


# --- steps: each runs in its own process (`--step NAME`) --------------------------------


def environment(device_name: str) -> dict:
    """What the measurements ran on."""
    import numpy as np
    import torch

    env: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
    }
    if torch.cuda.is_available():
        device = torch.device(device_name if device_name.startswith("cuda") else "cuda")
        props = torch.cuda.get_device_properties(device)
        env |= {
            "gpu": props.name,
            "gpu_memory_gib": round(props.total_memory / 2**30, 1),
            "capability": f"{props.major}.{props.minor}",
            "multiprocessors": props.multi_processor_count,
            "cudnn": torch.backends.cudnn.version(),
            "bf16_supported": torch.cuda.is_bf16_supported(),
        }
    try:
        smi = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        env["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.TimeoutExpired) as err:
        env["nvidia_smi"] = f"not run: {err}"
    return env


def bench(device_name: str, quick: bool, precision: str) -> dict:
    """One `nodule-net bench` run; its text report goes to stdout."""
    import torch

    from nodule_net.training.bench import FULL, QUICK, format_bench, run_bench
    from nodule_net.training.run import check_precision

    device = torch.device(device_name)
    check_precision(precision, device)
    result = run_bench(
        device,
        QUICK if quick else FULL,
        precision=precision,
        progress=lambda message: print(f"bench: {message}", flush=True),
    )
    result["command"] = (
        f"python -m tools.gpu_check --steps bench{'-bf16' if precision != 'fp32' else ''}"
        f" --device {device_name}" + (" --quick" if quick else "")
    )
    print(format_bench(result), flush=True)
    return result


def phantom_runs(
    dataset: str,
    splits_path: str,
    params_path: str,
    device_name: str,
    runs: dict[str, dict],
    out_path: Path,
    epochs: int | None = None,
) -> dict:
    """Train every fold of ``params_path`` for each of ``runs`` and score the test folds.

    Returns ``{"runs": {name: {...}}}`` with per run: its overrides, the training's wall
    seconds, the pooled test ``mae`` (per attribute and ``mean``), ``baseline_mae`` and
    each fold's best epoch. Written to ``out_path`` after every run.
    """
    import torch

    from nodule_net.config import load_params
    from nodule_net.data.split import fold_indices, read_splits
    from nodule_net.evaluation.evaluate import mae_metrics, predict_folds
    from nodule_net.io.checkpoint import extract_record, model_path
    from nodule_net.io.files import jsonable
    from nodule_net.io.store import read_dataset
    from nodule_net.training.fit import save_model
    from nodule_net.training.plan import train_folds

    params = load_params(params_path)
    data, splits = read_dataset(dataset), read_splits(splits_path)
    model_config = params.model
    parts = {k: fold_indices(splits, k, data.nodule_id.tolist()) for k in params.folds}
    device = torch.device(device_name)
    report: dict = {"dataset": dataset, "nodules": len(data), "folds": params.folds, "device": device_name, "runs": {}}
    for name, overrides in runs.items():
        changes = {k: v for k, v in overrides.items() if k != "seed"} | {"device": device_name}
        if epochs is not None:
            changes["epochs"] = epochs
        config = dataclasses.replace(params.train, **changes, seed=params.train.seed + overrides.get("seed", 0))
        print(f"phantom: {name} ({overrides}), {config.epochs} epochs", flush=True)
        start = time.perf_counter()
        results = train_folds(data, parts, model_config, config, progress=False)  # the plan from config
        seconds = time.perf_counter() - start
        with tempfile.TemporaryDirectory() as models:
            paths = {k: model_path(models, k) for k in results}
            for k, result in results.items():
                save_model(paths[k], result, model_config, k, extract=extract_record(data.attrs))
            metrics = mae_metrics(data, predict_folds(data, splits, paths, device))
        report["runs"][name] = jsonable(
            {
                "overrides": overrides,
                "precision": config.precision,
                "seed": config.seed,
                "epochs": config.epochs,
                "seconds": seconds,
                "mae": metrics["mae"],
                "baseline_mae": metrics["baseline_mae"],
                "best_epoch": {str(k): r.best_epoch for k, r in results.items()},
            }
        )
        print(
            f"phantom: {name}: pooled test MAE {metrics['mae']['mean']:.4f} "
            f"(baseline {metrics['baseline_mae']['mean']:.4f}), training {seconds:.1f} s",
            flush=True,
        )
        write_json(out_path, report)
    return report


def run_step(step: str, args: argparse.Namespace) -> int:
    out = Path(args.out)
    if step == "environment":
        env = environment(args.device)
        print(json.dumps(env, indent=2))
        write_json(out / "environment.json", env)
    elif step == "tests":
        # -p no:cacheprovider: the checkout on a lent machine may be read-only for pytest's cache.
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-rs",
                "-p",
                "no:cacheprovider",
                "-k",
                GPU_TEST_SELECTION,
                *GPU_TESTS,
            ]
        ).returncode
    elif step in ("bench", "bench-bf16"):
        precision = "bf16" if step == "bench-bf16" else "fp32"
        result = bench(args.device, args.quick or precision == "bf16", precision)
        write_json(out / f"bench-{precision}.json", result)
    elif step == "phantom":
        runs = {name: PHANTOM_RUNS[name] for name in (QUICK_PHANTOM_RUNS if args.quick else PHANTOM_RUNS)}
        phantom_runs(
            args.dataset,
            args.splits,
            args.params,
            args.device,
            runs,
            out / "phantom.json",
            epochs=1 if args.quick else None,
        )
    else:
        raise ValueError(f"unknown step {step!r}; the steps are {', '.join(STEPS)}")
    return 0


# --- the driver: every step in a subprocess with its own limit ---------------------------


def run_all(args: argparse.Namespace, steps: list[str]) -> dict:
    """Each step in turn, each in a subprocess limited to its share of the time left; returns the summary."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    summary: dict = {"device": args.device, "quick": args.quick, "steps": {}}
    with open(out / "gpu-check.log", "a") as log:
        for step in steps:
            left = deadline - time.monotonic()
            if left < 10:
                summary["steps"][step] = {"skipped": "no time left in --budget-s"}
                continue
            limit = min(STEP_LIMITS[step], left)
            header = f"== {step} (limit {limit:.0f} s) =="
            print(header, flush=True)
            log.write(header + "\n")
            command = [
                sys.executable,
                "-m",
                "tools.gpu_check",
                "--step",
                step,
                "--out",
                str(out),
                "--device",
                args.device,
                "--dataset",
                args.dataset,
                "--splits",
                args.splits,
                "--params",
                args.params,
            ] + (["--quick"] if args.quick else [])
            start = time.monotonic()
            process = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=os.environ | {"PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
            timed_out = _relay(process, log, start + limit)
            summary["steps"][step] = {
                "rc": process.returncode,
                "seconds": round(time.monotonic() - start, 1),
                "timed_out": timed_out,
            }
            print(f"== {step}: {summary['steps'][step]} ==", flush=True)
            write_json(out / "summary.json", summary)
    write_json(out / "summary.json", summary)
    return summary


def _relay(process: subprocess.Popen, log, deadline: float) -> bool:
    """Copy the step's output to stdout and the log until it exits or ``deadline``; True if it was killed."""
    import selectors
    import signal

    stdout = process.stdout
    assert stdout is not None, "run_all starts every step with stdout=PIPE"
    selector = selectors.DefaultSelector()
    selector.register(stdout, selectors.EVENT_READ)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.killpg(process.pid, signal.SIGKILL)  # the step and any workers it started
            process.wait()
            log.write("(killed: out of time)\n")
            return True
        if selector.select(timeout=min(left, 1.0)):
            line = stdout.readline()
            if not line:  # end of output: the step exited
                process.wait()
                return False
            sys.stdout.write(line)
            log.write(line)
            log.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default="gpu-check", help="folder for the results (default: gpu-check)")
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N, or cpu (to try the script out)")
    parser.add_argument("--steps", default=",".join(STEPS), help=f"comma-separated, of {', '.join(STEPS)}")
    parser.add_argument("--budget-s", type=float, default=540, help="seconds for all steps together (default 540)")
    parser.add_argument("--quick", action="store_true", help="quick benches, one phantom epoch, fp32 and bf16 only")
    parser.add_argument("--dataset", default="data/nodules.h5")
    parser.add_argument("--splits", default="data/splits.json")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--step", help=argparse.SUPPRESS)  # one step, in this process (what run_all starts)
    args = parser.parse_args(argv)
    if args.step:
        return run_step(args.step, args)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    if unknown := [s for s in steps if s not in STEP_LIMITS]:
        parser.error(f"--steps: unknown {', '.join(unknown)}; the steps are {', '.join(STEPS)}")
    summary = run_all(args, steps)
    return 0 if all(s.get("rc") == 0 for s in summary["steps"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
