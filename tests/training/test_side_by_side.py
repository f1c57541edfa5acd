"""Folds side by side: the padded forward, the stacked Adam, and equality with separate `fit` runs."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nodule_net.config import ModelConfig, TrainConfig
from nodule_net.data.batches import Batch
from nodule_net.model.loss import loss_fn
from nodule_net.model.net import NoduleNet
from nodule_net.training.fit import fit
from nodule_net.training.plan import folds_together
from nodule_net.training.side_by_side import StackedAdam, fit_folds, stack_nodules
from synthetic_nodules import TINY, make_dataset, train_argv, write_stage_inputs

CPU = torch.device("cpu")  # the engines train where the plan says; these tests on the CPU

REPO = Path(__file__).resolve().parents[2]
VARIANTS_2D = ("none", "sam", "caam", "caam_ascmm", "full")
# The 3d variant pads to a fixed depth; a small one keeps its 3D convolutions cheap.
CONFIGS = [dict(variant=v) for v in VARIANTS_2D] + [dict(variant="3d", depth_3d=6)]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("pad", [0, 2])
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: c["variant"])
def test_padded_forward_equals_packed_forward(config: dict, pad: int) -> None:
    torch.manual_seed(0)
    model = NoduleNet(ModelConfig(**config, **TINY))
    images = torch.randn(3, 16, 16)
    targets = torch.rand(1, 9)
    packed = model(images, torch.zeros(3, dtype=torch.long), 1)
    padded = model.forward_padded(torch.cat([images, torch.zeros(pad, 16, 16)]), torch.arange(3 + pad) < 3)
    for name in ("scores", "aux_scores", "caam_weights"):
        a, b = getattr(padded, name), getattr(packed, name)
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b)
    if packed.slice_weights is not None:
        torch.testing.assert_close(padded.slice_weights[:3], packed.slice_weights)
        assert padded.slice_weights[3:].abs().sum() == 0
    grads = []
    for out in (packed, padded):
        model.zero_grad()
        loss_fn(out, targets, 0.1).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], msg=n)


def test_stacked_adam_equals_torch_adam_per_fold() -> None:
    gen = torch.Generator().manual_seed(0)
    shapes, k = [(4, 3), (5,)], 3
    hyper = dict(lr=1e-2, betas=(0.9, 0.99), weight_decay=0.1)
    start = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(k)]
    per_fold = [[t.clone().requires_grad_() for t in fold] for fold in start]
    optimizers = [torch.optim.Adam(p, **hyper) for p in per_fold]
    stacked = StackedAdam(torch.stack([torch.cat([t.ravel() for t in fold]) for fold in start]), **hyper)
    # Fold 1 sits out step 2 and fold 0 step 3 (their epoch is over): nothing of theirs may change.
    for active in ([1, 1, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1], [1, 1, 1]):
        grads = [[torch.randn(s, generator=gen) for s in shapes] for _ in range(k)]
        for f in range(k):
            if active[f]:
                for p, g in zip(per_fold[f], grads[f], strict=True):
                    p.grad = g.clone()
                optimizers[f].step()
        stacked.step(torch.stack([torch.cat([g.ravel() for g in fold]) for fold in grads]), np.array(active, bool))
    assert stacked.steps.tolist() == [4, 4, 5]
    for f in range(k):
        state = [optimizers[f].state[p] for p in per_fold[f]]
        # torch's per-tensor Adam (the CPU default) does the same float operations: equal to the bit.
        torch.testing.assert_close(
            stacked.params[f], torch.cat([p.detach().ravel() for p in per_fold[f]]), rtol=0, atol=0
        )
        torch.testing.assert_close(stacked.exp_avg[f], torch.cat([s["exp_avg"].ravel() for s in state]), rtol=0, atol=0)
        torch.testing.assert_close(
            stacked.exp_avg_sq[f], torch.cat([s["exp_avg_sq"].ravel() for s in state]), rtol=0, atol=0
        )


def test_stack_nodules_pads_to_the_deepest_and_stands_in_for_idle_folds() -> None:
    def batch(depth: int, value: float, index: int) -> Batch:
        return Batch(
            torch.full((depth, 2, 2), value),
            torch.zeros(depth, dtype=torch.long),
            torch.full((1, 9), value),
            np.array([index]),
        )

    step = stack_nodules([batch(2, 1.0, 7), None, batch(4, 3.0, 5)], blank=batch(1, 0.0, -1))
    assert step.images.shape == (3, 4, 2, 2) and step.targets.shape == (3, 1, 9)
    assert step.mask.tolist() == [[True, True, False, False], [True, False, False, False], [True] * 4]
    assert step.images.sum(dim=(2, 3)).tolist() == [[4, 4, 0, 0], [0, 0, 0, 0], [12, 12, 12, 12]]
    assert step.active.tolist() == [True, False, True] and step.index.tolist() == [7, -1, 5]
    assert step.targets[:, 0, 0].tolist() == [1, 0, 3]


def three_folds(min_depth: int = 1) -> tuple:
    """A dataset of nodules 1–5 slices deep and three folds of 6, 7 and 5 training nodules."""
    data = make_dataset(n_nodules=30, size=16, max_depth=5, seed=0)
    ids = np.flatnonzero(data.n_slices >= min_depth)
    folds = {
        0: {"train": ids[0:6], "val": ids[6:8]},
        1: {"train": ids[8:15], "val": ids[15:17]},
        2: {"train": ids[[1, 3, 5, 9, 11]], "val": ids[17:19]},
    }
    return data, folds


# SAM's biases have no (fc2: softmax ignores a shift of every logit) or almost no (fc1: it
# shifts the logits of slices that share a ReLU pattern alike) true gradient. Adam turns the
# rounding noise of a zero gradient into steps of about ±lr in `fit` and side by side alike,
# so these two follow different random walks of at most lr per step.
GAUGE = ("sam.fc1.bias", "sam.fc2.bias")


def assert_same_fold(a: dict, b: dict, lr: float, steps: int) -> None:
    for name in b:
        atol = 2 * lr * steps if name in GAUGE else 1e-6
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=atol, msg=name)


@pytest.mark.parametrize(
    "model",
    [
        dict(variant="none"),
        dict(variant="full"),
        dict(variant="3d", depth_3d=6),
        dict(variant="caam_ascmm", malignancy="classify"),
    ],
    ids=["none", "full", "3d", "classify"],
)
def test_side_by_side_equals_separate_fits(tmp_path, model: dict) -> None:
    data, folds = three_folds()
    model_config = ModelConfig(**model, **TINY)
    config = TrainConfig(epochs=2, seed=3)  # augment=True: every fold draws its own flips and orders
    together = fit_folds(
        data,
        folds,
        model_config,
        config,
        {k: tmp_path / f"t{k}.pt" for k in folds},
        progress=False,
        device=CPU,
    )
    for k, parts in folds.items():
        alone = fit(data, parts, model_config, config, k, tmp_path / f"a{k}.pt", progress=False, device=CPU)
        assert together[k].best_epoch == alone.best_epoch
        assert (together[k].mean, together[k].std) == (alone.mean, alone.std)
        torch.testing.assert_close(np.array(together[k].history), np.array(alone.history), rtol=1e-5, atol=0)
        steps = config.epochs * len(parts["train"])
        assert_same_fold(together[k].model_state, alone.model_state, config.lr, steps)
        final = [torch.load(tmp_path / f"{who}{k}.pt", weights_only=True) for who in "ta"]
        assert_same_fold(final[0]["model"], final[1]["model"], config.lr, steps)
        assert final[0]["optimizer"]["state"][0]["step"] == final[1]["optimizer"]["state"][0]["step"] == steps


def run_folds(folds, checkpoints: Path, epochs: int = 3, stop_after: int | None = None, keep_epoch_1: bool = False):
    seen = []
    data, _ = three_folds()

    def on_epoch(fold: int, record) -> None:
        seen.append((fold, record.epoch))
        if keep_epoch_1 and record.epoch == 1:
            shutil.copy(checkpoints / f"fold{fold}.pt", checkpoints / f"fold{fold}.epoch1")
        if stop_after is not None and record.epoch == stop_after:
            raise KeyboardInterrupt  # a Ctrl-C right after the epoch's checkpoints

    paths = {k: checkpoints / f"fold{k}.pt" for k in folds}
    config = TrainConfig(epochs=epochs, seed=1)
    result = fit_folds(
        data,
        folds,
        ModelConfig(variant="full", **TINY),
        config,
        paths,
        on_epoch,
        progress=False,
        device=CPU,
    )
    return result, seen


@pytest.mark.slow
def test_resumed_side_by_side_run_equals_uninterrupted_run(tmp_path) -> None:
    _, folds = three_folds()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight, _ = run_folds(folds, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run_folds(folds, tmp_path / "b", stop_after=2)
    assert all(torch.load(tmp_path / f"b/fold{k}.pt", weights_only=True)["epoch"] == 2 for k in folds)
    resumed, seen = run_folds(folds, tmp_path / "b")
    assert seen == [(k, e) for k in folds for e in (1, 2)] + [(k, 3) for k in folds]  # replayed, then trained
    for k in folds:
        assert resumed[k].history == straight[k].history and resumed[k].best_epoch == straight[k].best_epoch
        for name, value in straight[k].model_state.items():
            torch.testing.assert_close(resumed[k].model_state[name], value, rtol=0, atol=0)


@pytest.mark.slow
def test_folds_checkpointed_at_different_epochs_catch_up(tmp_path) -> None:
    """A kill while the k checkpoints are written leaves folds an epoch apart: the late one trains alone."""
    _, folds = three_folds()
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    straight, _ = run_folds(folds, tmp_path / "a")
    with pytest.raises(KeyboardInterrupt):
        run_folds(folds, tmp_path / "b", stop_after=2, keep_epoch_1=True)
    shutil.copy(tmp_path / "b/fold1.epoch1", tmp_path / "b/fold1.pt")  # fold 1 is back at epoch 1
    resumed, seen = run_folds(folds, tmp_path / "b")
    assert seen[-4:] == [(1, 2), (0, 3), (1, 3), (2, 3)]
    for k in folds:
        assert resumed[k].best_epoch == straight[k].best_epoch
        torch.testing.assert_close(np.array(resumed[k].history), np.array(straight[k].history), rtol=1e-5, atol=0)
        assert_same_fold(resumed[k].model_state, straight[k].model_state, 1e-4, 3 * len(folds[k]["train"]))


def test_fit_resumes_a_side_by_side_checkpoint(tmp_path) -> None:
    """Same format and fingerprint: `train.folds_together` can change between an interrupted run and its resumption."""
    data, folds = three_folds()
    model_config = ModelConfig(variant="caam_ascmm", **TINY)
    fit_folds(
        data,
        {0: folds[0]},
        model_config,
        TrainConfig(epochs=1),
        {0: tmp_path / "f0.pt"},
        progress=False,
        device=CPU,
    )
    resumed = fit(
        data,
        folds[0],
        model_config,
        TrainConfig(epochs=2),
        0,
        tmp_path / "f0.pt",
        progress=False,
        device=CPU,
    )
    straight = fit(data, folds[0], model_config, TrainConfig(epochs=2), 0, progress=False, device=CPU)
    assert [r.epoch for r in resumed.history] == [1, 2]
    torch.testing.assert_close(np.array(resumed.history), np.array(straight.history), rtol=1e-5, atol=0)
    assert_same_fold(resumed.model_state, straight.model_state, 1e-4, 2 * len(folds[0]["train"]))


def test_a_non_finite_loss_names_its_fold_and_nodule(tmp_path) -> None:
    data, folds = three_folds()
    bad = int(folds[1]["train"][2])
    data.ratings[bad, 4] = np.nan  # only fold 1 trains on this nodule
    with pytest.raises(ValueError, match=f"Fold 1, epoch 1: the loss of step .* was nan .*{data.nodule_id[bad]}"):
        fit_folds(
            data,
            folds,
            ModelConfig(variant="none", **TINY),
            TrainConfig(epochs=1),
            {k: tmp_path / f"{k}.pt" for k in folds},
            progress=False,
            device=CPU,
        )
    assert not list(tmp_path.iterdir())  # nothing saved for the epoch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_side_by_side_on_gpu_matches_separate_fits_on_cpu_closely() -> None:
    data, folds = three_folds()
    model_config = ModelConfig(variant="full", **TINY)
    gpu = fit_folds(
        data, folds, model_config, TrainConfig(epochs=1, device="cuda"), progress=False, device=torch.device("cuda")
    )
    for k, parts in folds.items():
        cpu = fit(data, parts, model_config, TrainConfig(epochs=1, device="cpu"), k, progress=False, device=CPU)
        for name in set(cpu.model_state) - set(GAUGE):
            torch.testing.assert_close(gpu[k].model_state[name].cpu(), cpu.model_state[name], rtol=1e-3, atol=1e-4)


def test_folds_together_setting() -> None:
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert folds_together("auto", gpu, 1) and not folds_together("auto", cpu, 1)
    assert not folds_together("auto", gpu, 4)  # packed batches are another semantics: one fold after another
    assert folds_together(True, cpu, 1) and not folds_together(False, gpu, 1)
    with pytest.raises(ValueError, match=r"train\.folds_together = 'yes' is not allowed"):
        TrainConfig(folds_together="yes")  # the config refuses it, so the plan never sees one
    data, folds = three_folds()
    with pytest.raises(ValueError, match="batch_nodules"):
        fit_folds(data, folds, ModelConfig(**TINY), TrainConfig(epochs=1, batch_nodules=2), progress=False, device=CPU)


@pytest.mark.slow
@pytest.mark.parametrize(
    "at_once",
    [{"folds_together": True}, {"folds_together": False, "fold_processes": 2}],
    ids=["side_by_side", "processes"],
)
def test_train_folds_script_writes_what_train_stages_write(tmp_path, monkeypatch, capsys, at_once: dict) -> None:
    """All folds at once, or `--fold k` per `train@k` stage: the first trains every fold, the next only writes."""
    write_stage_inputs(tmp_path, {"epochs": 2, "batch_nodules": 1, "device": "cpu", **at_once})
    monkeypatch.chdir(tmp_path)

    def run(out: str, *fold: str) -> str:
        # In this process (a subprocess would spend most of its time importing torch).
        monkeypatch.setattr(sys, "argv", ["train.py", *train_argv(out, *fold)])
        runpy.run_path(str(REPO / "pipeline/train.py"), run_name="__main__")
        return capsys.readouterr().out

    run("all")
    first = run("staged", "--fold", "0")  # trains both folds at once (the processes' lines go to their own stdout)
    assert "Training folds 0, 1" in first and "train@1 will then only write its outputs" in first
    assert (tmp_path / "staged/ckpt/fold1.pt").exists()
    assert not (tmp_path / "staged/models/fold1").exists()
    second = run("staged", "--fold", "1")
    # Finished checkpoints: nothing to train, and only the written fold is loaded — not a resume.
    assert "fold 1 was trained together with the other folds by an earlier train@ stage (2/2 epochs" in second
    assert "Resuming" not in second and "Training" not in second and "fold 0" not in second
    assert "epoch 1/2" not in second
    for fold in (0, 1):
        saved = [
            torch.load(tmp_path / f"{out}/models/fold{fold}/model.pt", weights_only=True) for out in ("all", "staged")
        ]
        summary = json.loads((tmp_path / f"staged/live/fold{fold}/metrics.json").read_text())
        assert saved[0]["fold"] == fold and saved[0]["best_epoch"] == summary["best_epoch"] in (1, 2)
        assert summary["best_val_mae"] == pytest.approx(saved[0]["best_val_mae"])
        for name, value in saved[0]["model"].items():
            torch.testing.assert_close(saved[1]["model"][name], value, rtol=0, atol=0)
        for out in ("all", "staged"):
            assert (tmp_path / f"{out}/live/fold{fold}/plots/metrics/val_mae.tsv").read_text().count("\n") == 3
            assert torch.load(tmp_path / f"{out}/ckpt/fold{fold}.pt", weights_only=True)["epoch"] == 2


@pytest.mark.parametrize(
    "model", [dict(variant="full"), dict(variant="caam_ascmm", malignancy="classify")], ids=["full", "classify"]
)
def test_bf16_side_by_side_loss_is_finite_close_to_fp32_with_fp32_gradients(model: dict) -> None:
    """train.precision: bf16 in the vmap'd per-fold loss, on three folds' nodules of different depths."""
    from nodule_net.data.batches import iterate_resident, resident_nodules, targets_for
    from nodule_net.training.side_by_side import ParamLayout, batched_loss

    data, _ = three_folds()
    nets = []
    for fold in range(3):
        torch.manual_seed(fold)
        nets.append(NoduleNet(ModelConfig(**model, **TINY)))
    layout = ParamLayout.of(nets[0])
    params = torch.stack([layout.flatten(list(n.parameters())) for n in nets]).requires_grad_()  # (3, P) fp32
    nodules = resident_nodules(data, np.arange(len(data)), targets_for(data, None), -800.0, 100.0, torch.device("cpu"))
    batches = iterate_resident(nodules, 1, np.random.default_rng(0), True)
    step = stack_nodules([next(batches) for _ in range(3)], blank=next(batches))
    assert not step.mask.all()  # padded: the nodules differ in depth
    losses, grads = {}, {}
    for precision in ("fp32", "bf16"):
        losses[precision] = batched_loss(nets[0], layout, 0.1, precision)(params, step.images, step.mask, step.targets)
        (grads[precision],) = torch.autograd.grad(losses[precision].sum(), params)
    assert losses["bf16"].dtype == torch.float32 and torch.isfinite(losses["bf16"]).all()
    assert grads["bf16"].dtype == torch.float32 and torch.isfinite(grads["bf16"]).all()
    torch.testing.assert_close(losses["bf16"], losses["fp32"], rtol=5e-2, atol=0)
    assert (losses["bf16"] != losses["fp32"]).all()  # autocast was on, in every fold


def test_side_by_side_trains_in_bf16_when_asked(tmp_path) -> None:
    data, folds = three_folds()
    model_config = ModelConfig(variant="full", **TINY)
    runs = {
        p: fit_folds(data, folds, model_config, TrainConfig(epochs=1, seed=0, precision=p), progress=False, device=CPU)
        for p in ("fp32", "bf16")
    }
    for k in folds:
        fp32, bf16 = (runs[p][k].history[0].train_loss for p in ("fp32", "bf16"))
        assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=5e-2)
        assert all(v.dtype == torch.float32 for v in runs["bf16"][k].model_state.values())
