"""`nodule-net bench`: the operator counter, the depth sampler, the projection, and a tiny end-to-end run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from nodule_net.cli.main import main
from nodule_net.config import ModelConfig
from nodule_net.training import bench
from nodule_net.training.bench import (
    LIDC_SLICES_PER_NODULE,
    Plan,
    Protocol,
    count_ops,
    format_bench,
    lidc_depth_mean,
    measure_fold_processes,
    project_protocol,
    resident_synthetic,
    run_bench,
    sample_depths,
)

TINY = dict(widths=(4, 8), convs_per_stage=(1, 1), sam_hidden=8, caam_hidden=8, head_hidden=16)

pytestmark = pytest.mark.usefixtures("one_thread")


def test_counter_counts_outermost_aten_ops_by_region() -> None:
    w = torch.ones(3, requires_grad=True)
    optimizer = torch.optim.SGD([w], lr=0.1)
    x = torch.ones(2, 3)

    def step() -> None:
        # forward: linear (its t/matmul inside are not outermost), sum; backward() adds ones_like
        loss = torch.nn.functional.linear(x, w[None]).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    counts = count_ops(step)
    # Forward: unsqueeze (w[None]), linear, sum, and the ones_like seed of backward().
    assert counts["forward"] == 4
    # Backward: sum's expand; linear's mm, its t, and the transposes around it; unsqueeze's squeeze;
    # AccumulateGrad's detach. Whatever the exact list, no inner op may be counted twice:
    assert counts["backward"] >= 4
    assert counts["optimizer"] >= 1  # SGD's add_ (foreach or not)
    assert counts["total"] == counts["forward"] + counts["backward"] + counts["optimizer"]


def test_counter_does_not_count_nested_aten_ops() -> None:
    x = torch.ones(4, 4)
    assert count_ops(lambda: torch.nn.functional.linear(x, x))["total"] == 1  # aten::linear only
    assert count_ops(lambda: (x + 1).exp_().sum())["forward"] == 3


def test_counter_tells_a_foreach_adam_from_a_fused_one() -> None:
    torch.manual_seed(0)
    layers = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    x = torch.ones(2, 3)
    step_counts = {}
    for name, kwargs in (("foreach", dict(foreach=True)), ("fused", dict(fused=True))):
        optimizer = torch.optim.Adam(layers.parameters(), **kwargs)

        def step(optimizer: torch.optim.Optimizer = optimizer) -> None:
            loss = layers(x).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        step()
        step_counts[name] = count_ops(step)
    # The same forward and backward, only the optimiser differs; fused Adam is one kernel call
    # plus the step-counter increment.
    # linear, relu, linear, sum, ones_like
    assert step_counts["foreach"]["forward"] == step_counts["fused"]["forward"] == 5
    assert step_counts["foreach"]["backward"] == step_counts["fused"]["backward"]
    assert step_counts["fused"]["optimizer"] == 2
    assert step_counts["foreach"]["optimizer"] > 4 + 2 * 4  # foreach ops plus bias corrections per tensor (.item())


def test_lidc_depth_table_matches_the_paper() -> None:
    assert min(LIDC_SLICES_PER_NODULE) == 1 and max(LIDC_SLICES_PER_NODULE) == 45
    assert sum(LIDC_SLICES_PER_NODULE.values()) == 2625
    assert lidc_depth_mean() == pytest.approx(5.6, abs=0.05)


@pytest.mark.parametrize("n", [12, 48, 300])
def test_sampled_depths_follow_lidc(n: int) -> None:
    depths = sample_depths(n, seed=0)
    assert len(depths) == n and depths.min() >= 1 and depths.max() <= 45
    assert depths.sum() == round(n * lidc_depth_mean())  # LIDC's slices per nodule, to rounding
    lidc_depths = np.repeat(list(LIDC_SLICES_PER_NODULE), list(LIDC_SLICES_PER_NODULE.values()))
    assert np.median(depths) == pytest.approx(np.median(lidc_depths), abs=1)
    assert {2, 3} <= set(depths.tolist())  # the commonest depths are there
    np.testing.assert_array_equal(sample_depths(n, seed=0), depths)  # seeded
    assert not np.array_equal(sample_depths(n, seed=1), depths) and sorted(sample_depths(n, seed=1)) == sorted(depths)


def test_sampler_on_a_small_table() -> None:
    table = {1: 2, 2: 1, 9: 1}  # mean 13/4
    depths = sample_depths(4, table=table)
    assert sorted(depths.tolist()) == [1, 1, 2, 9]  # the quantiles already give the mean
    assert sample_depths(2, table=table).sum() == round(2 * 13 / 4)  # 6 or 7: raised within 1..9


def test_protocol_projection_arithmetic() -> None:
    hours = project_protocol(train_nodules_per_s=10.0, val_nodules_per_s=100.0)
    assert hours["train_h"] == pytest.approx(5 * 150 * 2100 / 10 / 3600)  # 43.75 h
    assert hours["validation_h"] == pytest.approx(5 * 150 * 210 / 100 / 3600)
    assert hours["total_h"] == pytest.approx(43.75 + 0.4375)
    small = project_protocol(1.0, 1.0, Protocol(folds=1, epochs=2, train_nodules=3600, val_nodules=0))
    assert small == {"train_h": 2.0, "validation_h": 0.0, "total_h": 2.0}


@pytest.mark.slow
def test_quick_bench_on_a_tiny_model_runs_and_reports_both_paths() -> None:
    plan = Plan(nodules={1: 4, 2: 4}, rounds=1, optimizer_steps=1, reference_at=(1,))  # as --quick
    result = run_bench(torch.device("cpu"), plan, ModelConfig(variant="full", **TINY), size=16)
    json.dumps(result)  # --json output
    assert result["environment"]["torch"] == torch.__version__ and result["environment"]["dtype"] == "float32"
    one = result["batches"]["1"]
    ops = result["ops_per_step"]
    assert ops["batched"]["total"] < ops["reference"]["total"]  # fewer, batched attribute layers
    assert ops["reference_foreach_adam"]["forward"] == ops["reference"]["forward"]
    assert ops["batched"]["optimizer"] == 2  # fused Adam on the CPU
    for b, paths in (("1", {"batched", "reference"}), ("2", {"batched"})):
        entry = result["batches"][b]
        assert entry["nodules"] == 4 and entry["slices"] == round(4 * lidc_depth_mean())
        for kind in ("training", "inference"):
            assert set(entry[kind]) - {"speedup"} == paths
            for path in paths:
                speed = entry[kind][path]
                assert speed["nodules_per_s"] > 0
                assert speed["slices_per_s"] == pytest.approx(speed["nodules_per_s"] * entry["slices"] / 4)
        assert result["batches"]["1"]["training"]["speedup"] == pytest.approx(
            one["training"]["reference"]["seconds"] / one["training"]["batched"]["seconds"]
        )
    projection = result["projection"]["batched"]
    assert projection["train_h"] == pytest.approx(5 * 150 * 2100 / one["training"]["batched"]["nodules_per_s"] / 3600)
    conv = result["convolutions"]
    assert 0 < conv["share"] < 1
    assert conv["max_speedup"] == pytest.approx(
        one["training"]["reference"]["seconds"] / (conv["share"] * one["training"]["batched"]["seconds"])
    )
    text = format_bench(result)
    assert "training, 1 per step" in text and "reference_foreach_adam" in text and "projected" in text
    assert f"the convolutions take {conv['share']:.0%} of a pass" in text


@pytest.mark.slow
def test_convolution_share_grows_with_the_convolutions() -> None:
    """Wider convolutions, same heads: the convolutions' share of a training pass must rise.

    The shares are profiler times over wall time, so the two models differ by a factor of 32 in
    width (about 1,000 in convolution work) to keep the gap far above a loaded machine's noise."""
    nodules = resident_synthetic(sample_depths(4), torch.device("cpu"), size=32)
    narrow, wide = (
        bench.convolution_share(ModelConfig(variant="none", **(TINY | {"widths": w})), nodules, torch.device("cpu"))
        for w in ((2, 2), (64, 128))
    )
    assert 0 < narrow < wide < 1


@pytest.mark.slow
def test_folds_in_processes_are_timed_together() -> None:
    torch.set_num_threads(2)  # auto: a process per fold, the two threads shared (the fixture restores it)
    result = measure_fold_processes(ModelConfig(variant="none", **TINY), nodules=3, rounds=2, folds=2, size=16)
    assert (result["processes"], result["threads_each"], result["nodules"]) == (2, 1, 4)  # ⌈3/2⌉ nodules each
    assert result["slices"] == sum(int(sample_depths(2, seed).sum()) for seed in (0, 1))
    assert result["slices_per_s"] == pytest.approx(result["slices"] / result["seconds"])
    assert result["nodules_per_s"] == pytest.approx(4 / result["seconds"])


@pytest.mark.slow
def test_bench_compares_the_folds_processes_with_one_process_and_the_reference(monkeypatch) -> None:
    torch.set_num_threads(2)
    measured = []

    def fake(model_config, nodules, rounds, seed, size):
        measured.append((nodules, rounds, size))
        return {
            "processes": 5,
            "threads_each": 1,
            "nodules": 5,
            "slices": 30,
            "seconds": 0.5,
            "slices_per_s": 60.0,
            "nodules_per_s": 10.0,
        }

    monkeypatch.setattr(bench, "measure_fold_processes", fake)
    plan = Plan(nodules={1: 4}, rounds=1, optimizer_steps=1, reference_at=(1,))
    result = run_bench(torch.device("cpu"), plan, ModelConfig(variant="none", **TINY), size=16)
    assert measured == [(4, 1, 16)]
    one, at_once = result["batches"]["1"]["training"], result["fold_processes"]
    assert at_once["speedup_vs_batched"] == pytest.approx(60.0 / one["batched"]["slices_per_s"])
    assert at_once["speedup_vs_reference"] == pytest.approx(60.0 / one["reference"]["slices_per_s"])
    assert result["projection"]["batched_fold_processes"]["train_h"] == pytest.approx(5 * 150 * 2100 / 10.0 / 3600)
    assert "the folds in 5 processes × 1 thread(s): 60.0 slices/s" in format_bench(result)


def test_cli_bench_rejects_a_missing_gpu(capsys, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a GPU machine too runs this check
    with pytest.raises(SystemExit):
        main(["bench", "--device", "cuda", "--quick"])
    assert "no CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_trains_the_batched_path_in_bf16_and_says_so(capsys) -> None:
    """--precision bf16: the batched path's step autocasts (more operators: the casts), the
    reference's stays fp32 (the same count), and the JSON and the header say which ran."""
    model_config = ModelConfig(variant="full", **TINY)
    ops = {
        p: bench.step_ops(model_config, torch.device("cpu"), depth=3, size=16, precision=p) for p in ("fp32", "bf16")
    }
    assert ops["bf16"]["batched"]["forward"] > ops["fp32"]["batched"]["forward"]
    assert ops["bf16"]["reference"] == ops["fp32"]["reference"]
    plan = Plan(nodules={1: 2}, rounds=1, optimizer_steps=1, reference_at=(1,))
    result = run_bench(torch.device("cpu"), plan, model_config, size=16, precision="bf16")
    assert result["environment"]["precision"] == "bf16" and result["environment"]["dtype"] == "float32"
    assert result["batches"]["1"]["training"]["batched"]["nodules_per_s"] > 0
    assert "training bf16 autocast (batched path; reference fp32)" in format_bench(result).splitlines()[0]
    with pytest.raises(SystemExit):
        main(["bench", "--precision", "fp16"])
    assert "invalid choice: 'fp16'" in capsys.readouterr().err
