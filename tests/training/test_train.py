"""Training: loss, augmentation, batching, learning, checkpoint resumption, evaluation, stage scripts."""

from __future__ import annotations

import dataclasses
import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from nodule_net.attributes import ATTRIBUTES
from nodule_net.config import ModelConfig, TrainConfig, validate_params
from nodule_net.data.batches import augment, iterate_batches, normalisation_stats, targets_for
from nodule_net.data.split import fold_indices, kfold_split
from nodule_net.evaluation.evaluate import evaluate_folds
from nodule_net.evaluation.inference import predict
from nodule_net.io.checkpoint import Checkpoint, model_path
from nodule_net.io.store import write_dataset
from nodule_net.model.loss import loss_fn
from nodule_net.model.net import ModelOutput, NoduleNet
from nodule_net.training.fingerprint import TRAINING_CODE, fingerprint, run_settings, training_code_digest
from nodule_net.training.fit import fit, save_model, train_step
from nodule_net.training.run import make_optimizer
from synthetic_nodules import TINY, make_dataset, train_argv

CPU = torch.device("cpu")  # the engines train where the plan says; these tests on the CPU

REPO = Path(__file__).resolve().parents[2]
ATTRIBUTE_KEYS = (*ATTRIBUTES, "mean")
# A narrow network keeps these tests to seconds; the architecture is the paper's, only thinner.

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_parts(n_nodules: int = 10) -> tuple:
    data = make_dataset(n_nodules=n_nodules, size=16, max_depth=4, seed=0)
    parts = {"train": np.arange(0, n_nodules - 3), "val": np.arange(n_nodules - 3, n_nodules)}
    return data, parts


def test_loss_is_summed_squared_error_with_lambda_on_the_auxiliary_part() -> None:
    targets = torch.tensor([[0.5, 1.0], [0.0, 0.25]])
    out = ModelOutput(torch.tensor([[0.5, 0.5], [0.5, 0.25]]), torch.tensor([[1.0, 1.0], [0.0, 0.0]]), None, None)
    # final: 0 + 0.25 + 0.25 + 0 = 0.5; aux: 0.25 + 0 + 0 + 0.0625 = 0.3125
    assert loss_fn(out, targets, 0.1).item() == pytest.approx(0.5 + 0.1 * 0.3125)
    assert loss_fn(out._replace(aux_scores=None), targets, 0.1).item() == pytest.approx(0.5)


def test_augment_applies_one_transform_to_every_slice_and_reaches_all_16() -> None:
    base = np.arange(16, dtype=np.float32).reshape(4, 4)
    volume = np.stack([base * (k + 1) for k in range(3)])  # slice k = (k+1)·base
    outcomes = set()
    rng = np.random.default_rng(0)
    for _ in range(400):
        out = augment(volume, rng)
        scales = [out[k].max() / base.max() for k in range(3)]
        assert scales in ([1, 2, 3], [3, 2, 1])  # z kept or reversed, nothing else
        plane = out[int(np.argmin(scales))]
        assert all(np.array_equal(out[k], plane * scales[k]) for k in range(3))  # same in-plane transform
        outcomes.add((tuple(scales), plane.tobytes()))
    assert len(outcomes) == 16  # 8 flips/rotations × z kept/reversed


def test_batches_cover_each_nodule_once_normalised_and_packed() -> None:
    data, _ = tiny_parts()
    targets = targets_for(data, None)
    mean, std = normalisation_stats(data, range(len(data)))
    batches = list(iterate_batches(data, range(len(data)), targets, mean, std, 3, np.random.default_rng(0)))
    assert sorted(np.concatenate([b.index for b in batches]).tolist()) == list(range(len(data)))
    assert [len(b.index) for b in batches] == [3, 3, 3, 1]
    images = torch.cat([b.images for b in batches])
    assert images.mean().item() == pytest.approx(0.0, abs=1e-4) and images.std().item() == pytest.approx(1.0, rel=1e-3)
    first = batches[0]
    assert first.segment_ids.tolist() == np.repeat(np.arange(3), data.n_slices[first.index]).tolist()
    np.testing.assert_allclose(first.targets.numpy(), targets[first.index])


def test_single_attribute_targets() -> None:
    data, _ = tiny_parts()
    np.testing.assert_allclose(targets_for(data, "calcification")[:, 0], (data.ratings[:, 2] - 1) / 5, rtol=1e-6)


def test_packed_prediction_equals_one_by_one() -> None:
    data, _ = tiny_parts()
    torch.manual_seed(0)
    model = NoduleNet(ModelConfig(variant="full", **TINY))
    index = np.arange(len(data))
    one = predict(model, data, index, 0.0, 100.0, 1, torch.device("cpu"))
    packed = predict(model, data, index, 0.0, 100.0, 4, torch.device("cpu"))
    torch.testing.assert_close(torch.from_numpy(packed.scores), torch.from_numpy(one.scores))
    torch.testing.assert_close(torch.from_numpy(packed.caam_weights), torch.from_numpy(one.caam_weights))
    for a, b in zip(packed.slice_weights, one.slice_weights, strict=True):
        torch.testing.assert_close(torch.from_numpy(a), torch.from_numpy(b))


def test_a_few_steps_lower_the_loss() -> None:
    data, parts = tiny_parts()
    torch.manual_seed(0)
    model = NoduleNet(ModelConfig(variant="full", **TINY))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    mean, std = normalisation_stats(data, parts["train"])
    batch = next(iterate_batches(data, parts["train"], targets_for(data, None), mean, std, len(parts["train"])))
    losses = []
    for _ in range(30):
        loss = loss_fn(model(batch.images, batch.segment_ids), batch.targets, 0.1)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def run_fit(data, parts, checkpoint, lambda_aux: float = 0.1, epochs: int = 3, stop_after: int | None = None):
    seen = []

    def on_epoch(record) -> None:
        seen.append(record.epoch)
        if stop_after is not None and record.epoch == stop_after:
            raise KeyboardInterrupt  # a user's Ctrl-C right after the epoch's checkpoint

    config = TrainConfig(epochs=epochs, lambda_aux=lambda_aux, batch_nodules=2, seed=0)
    result = fit(
        data,
        parts,
        ModelConfig(variant="full", **TINY),
        config,
        0,
        checkpoint,
        on_epoch,
        progress=False,
        device=CPU,
    )
    return result, seen


def assert_same_result(a, b) -> None:
    assert a.history == b.history and a.best_epoch == b.best_epoch
    for k in a.model_state:
        torch.testing.assert_close(a.model_state[k], b.model_state[k], rtol=0, atol=0)


def test_resumed_run_equals_uninterrupted_run(tmp_path) -> None:
    data, parts = tiny_parts()
    straight, _ = run_fit(data, parts, tmp_path / "a.pt")
    with pytest.raises(KeyboardInterrupt):
        run_fit(data, parts, tmp_path / "b.pt", stop_after=2)
    saved = torch.load(tmp_path / "b.pt", weights_only=True)
    assert saved["epoch"] == 2 and set(saved) >= {"model", "optimizer", "best_model", "best_val_mae"}
    resumed, seen = run_fit(data, parts, tmp_path / "b.pt")
    assert seen == [1, 2, 3]  # epochs 1–2 replayed to the logger from the checkpoint, 3 trained
    assert_same_result(resumed, straight)
    assert len(straight.history) == 3
    assert straight.best_val_mae == min(r.val_mae for r in straight.history)


def test_checkpoint_of_other_params_is_not_resumed(tmp_path) -> None:
    data, parts = tiny_parts()
    run_fit(data, parts, tmp_path / "c.pt", lambda_aux=0.1, epochs=2)
    changed, _ = run_fit(data, parts, tmp_path / "c.pt", lambda_aux=0.5, epochs=2)
    fresh, _ = run_fit(data, parts, None, lambda_aux=0.5, epochs=2)
    assert_same_result(changed, fresh)


def test_cross_validation_end_to_end(tmp_path) -> None:
    data = make_dataset(n_nodules=12, size=16, max_depth=3, seed=1)
    splits = kfold_split(data.nodule_id, data.patient_id, n_folds=2, seed=0, val_fraction=0.2)
    config = TrainConfig(epochs=1, batch_nodules=4)
    for fold in range(2):
        parts = fold_indices(splits, fold, data.nodule_id)
        model_config = ModelConfig(variant="full", **TINY)
        save_model(
            model_path(tmp_path, fold),
            fit(data, parts, model_config, config, fold, progress=False, device=CPU),
            model_config,
            fold,
        )
    metrics, predictions = evaluate_folds(
        data, splits, {k: model_path(tmp_path, k) for k in range(2)}, torch.device("cpu")
    )
    assert set(metrics) == {"mae", "aux_mae", "baseline_mae", "folds"}
    assert set(metrics["mae"]) == set(ATTRIBUTE_KEYS)
    n = [metrics["folds"][k]["n_test"] for k in ("0", "1")]
    pooled = (n[0] * metrics["folds"]["0"]["mae"]["mean"] + n[1] * metrics["folds"]["1"]["mae"]["mean"]) / sum(n)
    assert metrics["mae"]["mean"] == pytest.approx(pooled)
    assert sorted(predictions["nodule_id"]) == sorted(data.nodule_id)
    errors = (
        predictions[[f"pred_{a}" for a in ATTRIBUTE_KEYS[:-1]]].to_numpy()
        - predictions[[f"true_{a}" for a in ATTRIBUTE_KEYS[:-1]]].to_numpy()
    )
    assert np.abs(errors).mean() == pytest.approx(metrics["mae"]["mean"])
    for weights, depth in zip(predictions["sam_weights"], predictions["n_slices"], strict=True):
        values = [float(w) for w in weights.split(";")]
        assert len(values) == depth and sum(values) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.integration
def test_stage_scripts_run_split_train_evaluate(tmp_path, monkeypatch, one_thread) -> None:
    """The three pipeline scripts on a tiny dataset, as dvc.yaml calls them, in this process
    (each stage's exit codes and one-line errors as a subprocess: test_config.py, test_extract.py)."""
    write_dataset(tmp_path / "nodules.h5", make_dataset(n_nodules=10, size=16, max_depth=2, seed=2))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["folds"] = [0, 1]
    params["split"]["val_fraction"] = 0.2
    params["train"] |= {"epochs": 2, "batch_nodules": 4, "device": "cpu"}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)

    def run(script: str, *args: str) -> None:
        monkeypatch.setattr(sys, "argv", [script, *args, "--params", str(tmp_path / "params.yaml")])
        try:
            runpy.run_path(str(REPO / "pipeline" / script), run_name="__main__")
        except SystemExit as exit_info:
            pytest.fail(f"{script} exited with {exit_info.code}")

    run("split.py", "--dataset", "nodules.h5", "--out", "splits.json")
    for fold in ("0", "1"):
        run("train.py", *train_argv(".", "--fold", fold))
    run(
        "evaluate.py",
        "--dataset",
        "nodules.h5",
        "--splits",
        "splits.json",
        "--models",
        "models",
        "--metrics",
        "mae.json",
        "--predictions",
        "predictions.csv",
    )
    metrics = json.loads((tmp_path / "mae.json").read_text())
    assert set(metrics["folds"]) == {"0", "1"} and 0 < metrics["mae"]["mean"] < 5
    assert len(pd.read_csv(tmp_path / "predictions.csv")) == 10
    curve = pd.read_csv(tmp_path / "live/fold0/plots/metrics/val_mae.tsv", sep="\t")
    assert curve["step"].tolist() == [1, 2]
    summary = json.loads((tmp_path / "live/fold0/metrics.json").read_text())
    assert summary["best_epoch"] in (1, 2)
    assert summary["device"] == "cpu"  # what train.device resolved to, for the report's provenance


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "train.epochs"),
        ({"batch_nodules": 0}, "batch_nodules"),
        ({"lambda_aux": -1.0}, "lambda"),
        ({"precision": "fp16"}, "train.precision"),
    ],
)
def test_train_config_rejects_bad_values(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_gpu_matches_cpu_closely() -> None:
    data, parts = tiny_parts()
    model_config = ModelConfig(variant="full", **TINY)
    cpu, gpu = (
        fit(data, parts, model_config, TrainConfig(epochs=1, device=name), progress=False, device=torch.device(name))
        for name in ("cpu", "cuda")
    )
    for k in cpu.model_state:
        torch.testing.assert_close(gpu.model_state[k].cpu(), cpu.model_state[k], rtol=1e-3, atol=1e-4)


def test_changed_training_code_is_not_resumed(tmp_path):
    """A checkpoint is tied to the code that wrote it (DVC re-runs train when that code changes)."""
    package = Path(__file__).resolve().parents[2] / "nodule_net"
    for name in TRAINING_CODE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(package / name, tmp_path / name)
    assert training_code_digest(tmp_path) == training_code_digest()
    with open(tmp_path / "model" / "net.py", "a") as f:
        f.write("\n# an edit\n")
    assert training_code_digest(tmp_path) != training_code_digest()


def test_a_loss_that_turns_nan_stops_training_naming_fold_epoch_and_nodule(tmp_path) -> None:
    """In memory (the file reader would refuse it): one NaN rating makes that nodule's step NaN."""
    data, parts = tiny_parts()
    bad = int(parts["train"][4])
    data.ratings[bad, 2] = np.nan
    checkpoint = tmp_path / "fold1.pt"
    config = TrainConfig(epochs=2, batch_nodules=1, seed=0)
    with pytest.raises(ValueError) as err:
        fit(data, parts, ModelConfig(variant="full", **TINY), config, 1, checkpoint, progress=False, device=CPU)
    message = str(err.value)
    assert message.startswith("Fold 1, epoch 1: the loss of step ") and " was nan (nodule " in message
    assert message.split("(nodule ")[1].split(")")[0] == data.nodule_id[bad]
    assert not checkpoint.exists()  # nothing saved for the failed epoch


def test_a_non_finite_validation_mae_names_the_nodule_and_saves_nothing(tmp_path) -> None:
    data, parts = tiny_parts()
    bad = int(parts["val"][1])
    data.images[data.offsets[bad]] = np.inf  # a validation nodule: training itself stays finite
    checkpoint = tmp_path / "fold0.pt"
    with pytest.raises(ValueError) as err:
        fit(
            data,
            parts,
            ModelConfig(variant="full", **TINY),
            TrainConfig(epochs=1, batch_nodules=2),
            0,
            checkpoint,
            progress=False,
            device=CPU,
        )
    assert str(err.value).startswith(
        f"Fold 0, epoch 1: the validation MAE is nan (first non-finite prediction: nodule {data.nodule_id[bad]});"
    )
    assert not checkpoint.exists()


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")],
        ),
    ],
)
def test_fused_adam_equals_the_per_tensor_adam(device: str) -> None:
    """make_optimizer's Adam (fused where torch has it) against torch's per-tensor loop, fed the
    same gradients: training itself would amplify rounding (Adam's step is ≈ lr whatever the
    gradient's size, so a near-zero gradient's sign decides it)."""
    config = TrainConfig(lr=1e-3)
    states = []
    for fused in (True, False):
        torch.manual_seed(0)
        model = NoduleNet(ModelConfig(variant="full", **TINY)).to(device)
        optimizer = (
            make_optimizer(model.parameters(), config, torch.device(device))
            if fused
            else torch.optim.Adam(
                model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, foreach=False
            )
        )
        assert bool(optimizer.defaults["fused"]) is fused  # fused on the CPU and on CUDA
        gen = torch.Generator().manual_seed(1)
        for _ in range(5):
            for p in model.parameters():
                p.grad = torch.randn(p.shape, generator=gen).to(device) * 1e-2
            optimizer.step()
        states.append({k: v.cpu() for k, v in model.state_dict().items()})
    torch.manual_seed(0)
    initial = NoduleNet(ModelConfig(variant="full", **TINY)).state_dict()
    for name in initial:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=1e-5, atol=1e-7)
        assert (states[0][name] - initial[name]).abs().mean() > 1e-4  # the weights moved (Adam steps of ≈ lr = 1e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("batch_nodules", [1, 3])
def test_training_steps_on_gpu_never_wait_for_the_host(batch_nodules: int) -> None:
    from nodule_net.data.batches import iterate_resident, resident_nodules

    data, parts = tiny_parts()
    device = torch.device("cuda")
    nodules = resident_nodules(data, parts["train"], targets_for(data, None), -800.0, 100.0, device)
    torch.manual_seed(0)
    model = NoduleNet(ModelConfig(variant="full", **TINY)).to(device)
    optimizer = make_optimizer(model.parameters(), TrainConfig(), device)
    losses = [train_step(model, optimizer, next(iterate_resident(nodules, batch_nodules)), 0.1)]  # Adam's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a device→host wait (.item(), .cpu(), nonzero) now raises
    try:
        for batch in iterate_resident(nodules, batch_nodules, np.random.default_rng(0), True):
            losses.append(train_step(model, optimizer, batch, 0.1))
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(torch.stack(losses)).all()


# --- train.precision ----------------------------------------------------------------------


def steps_on_one_batch(config: dict, precision: str | None, steps: int = 3, plain_step: bool = False) -> tuple:
    """(model, optimizer, losses (steps,)) after ``steps`` training steps of a TINY model on one
    batch of 3 nodules. ``precision`` None leaves train_step's argument out; ``plain_step`` runs
    a step without forward_at (forward, loss, zero_grad, backward, Adam) instead of train_step."""
    from nodule_net.data.batches import iterate_resident, resident_nodules

    data, parts = tiny_parts()
    nodules = resident_nodules(data, parts["train"], targets_for(data, None), -800.0, 100.0, torch.device("cpu"))
    batch = next(iterate_resident(nodules, 3))
    torch.manual_seed(0)
    model = NoduleNet(ModelConfig(**config, **TINY))
    optimizer = make_optimizer(model.parameters(), TrainConfig(lr=1e-3), torch.device("cpu"))
    losses = []
    for _ in range(steps):
        if plain_step:
            loss = loss_fn(
                model(batch.images, batch.segment_ids, len(batch.index)),
                batch.targets,
                0.1,
                model.config.classify_column,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        else:
            losses.append(train_step(model, optimizer, batch, 0.1, *(() if precision is None else (precision,))))
    return model, optimizer, torch.stack(losses)


def test_fp32_training_is_bit_identical_to_a_plain_step_without_autocast() -> None:
    plain, _, plain_losses = steps_on_one_batch(dict(variant="full"), None, plain_step=True)
    for precision in (None, "fp32"):
        model, _, losses = steps_on_one_batch(dict(variant="full"), precision)
        torch.testing.assert_close(losses, plain_losses, rtol=0, atol=0)
        for name, value in plain.state_dict().items():
            torch.testing.assert_close(model.state_dict()[name], value, rtol=0, atol=0, msg=name)


BF16_CONFIGS = [dict(variant="full"), dict(variant="3d"), dict(variant="caam_ascmm", malignancy="classify")]


@pytest.mark.parametrize("config", BF16_CONFIGS, ids=["full", "3d", "classify"])
def test_bf16_autocasts_the_forward_and_keeps_fp32_weights_and_adam(config: dict) -> None:
    """bf16 on the CPU's autocast (emulated on AVX2, slow, but it computes): the first step's
    loss (same weights, same batch) is close to fp32's but not equal, so autocast is on; what
    Adam and the checkpoint see stays float32."""
    _, _, fp32_losses = steps_on_one_batch(config, "fp32")
    model, optimizer, losses = steps_on_one_batch(config, "bf16")
    assert losses.dtype == torch.float32 and torch.isfinite(losses).all()
    torch.testing.assert_close(losses[0], fp32_losses[0], rtol=5e-2, atol=0)
    assert losses[0] != fp32_losses[0]
    for name, p in model.named_parameters():
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32, name
        state = optimizer.state[p]
        assert state["exp_avg"].dtype == torch.float32 and state["exp_avg_sq"].dtype == torch.float32, name
        assert torch.isfinite(p).all(), name


def test_a_bf16_checkpoint_is_not_resumed_by_an_fp32_run(tmp_path) -> None:
    data, parts = tiny_parts()
    model_config = ModelConfig(variant="full", **TINY)
    bf16, fp32 = (TrainConfig(epochs=1, batch_nodules=2, precision=p) for p in ("bf16", "fp32"))
    assert fingerprint(data, parts, model_config, bf16, 0) != fingerprint(data, parts, model_config, fp32, 0)
    trained_bf16 = fit(data, parts, model_config, bf16, 0, tmp_path / "c.pt", progress=False, device=CPU)
    fp32 = dataclasses.replace(fp32, epochs=2)  # had it resumed the bf16 checkpoint, it would train epoch 2 only
    after_bf16 = fit(data, parts, model_config, fp32, 0, tmp_path / "c.pt", progress=False, device=CPU)
    fresh = fit(data, parts, model_config, fp32, 0, None, progress=False, device=CPU)
    assert_same_result(after_bf16, fresh)
    # fit passes the precision down: bf16's first epoch is close to fp32's, not equal.
    assert trained_bf16.history[0].train_loss == pytest.approx(fresh.history[0].train_loss, rel=5e-2)
    assert trained_bf16.history[0].train_loss != fresh.history[0].train_loss


def test_train_precision_comes_from_params_and_defaults_to_fp32() -> None:
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    assert validate_params(raw).train.precision == "fp32"
    raw["train"]["precision"] = "bf16"
    assert validate_params(raw).train.precision == "bf16"
    del raw["train"]["precision"]  # a params.yaml without the key
    assert validate_params(raw).train.precision == "fp32"


# --- the run's identity and the checkpoint format -------------------------------------------

# run_settings of ModelConfig(), a TrainConfig and fold 1, as every checkpoint so far was fingerprinted.
SETTINGS_JSON = {
    "defaults": '[{"attribute": null, "caam_hidden": 128, "convs_per_stage": [2, 2, 3, 3], "depth_3d": 64, '
    '"head_hidden": 256, "malignancy": "regress", "sam_hidden": 128, "variant": "full", "widths": '
    '[32, 64, 128, 256]}, {"augment": true, "batch_nodules": 1, "betas": [0.9, 0.999], "lambda_aux": '
    '0.1, "lr": 0.0001, "precision": "fp32", "seed": 0, "weight_decay": 0.0001}, 1]',
    "changed": '[{"attribute": null, "caam_hidden": 128, "convs_per_stage": [2, 2, 3, 3], "depth_3d": 64, '
    '"head_hidden": 256, "malignancy": "regress", "sam_hidden": 128, "variant": "full", "widths": '
    '[32, 64, 128, 256]}, {"augment": false, "batch_nodules": 2, "betas": [0.8, 0.99], "lambda_aux": '
    '0.5, "lr": 0.0002, "precision": "bf16", "seed": 7, "weight_decay": 0.0001}, 1]',
}
CHANGED = dict(lr=2e-4, betas=(0.8, 0.99), lambda_aux=0.5, batch_nodules=2, augment=False, precision="bf16", seed=7)


def test_the_run_settings_are_the_json_every_checkpoint_was_fingerprinted_with() -> None:
    assert run_settings(ModelConfig(), TrainConfig(), 1) == SETTINGS_JSON["defaults"]
    assert run_settings(ModelConfig(), TrainConfig(epochs=3, device="cpu", **CHANGED), 1) == SETTINGS_JSON["changed"]


def test_epochs_device_and_the_engine_settings_leave_the_fingerprint_alone() -> None:
    """Any engine resumes any engine's checkpoint, on any device, and more epochs extend a run."""
    data, parts = tiny_parts()
    model_config = ModelConfig(variant="full", **TINY)
    base = TrainConfig(epochs=1)
    same = [
        dataclasses.replace(base, epochs=5),
        dataclasses.replace(base, device="cpu"),
        dataclasses.replace(base, folds_together=True),
        dataclasses.replace(base, fold_processes=3),
    ]
    assert {fingerprint(data, parts, model_config, c, 0) for c in same} == {
        fingerprint(data, parts, model_config, base, 0)
    }
    for key, value in CHANGED.items():
        other = dataclasses.replace(base, **{key: value})
        assert fingerprint(data, parts, model_config, other, 0) != fingerprint(data, parts, model_config, base, 0), key
    assert fingerprint(data, parts, model_config, base, 1) != fingerprint(data, parts, model_config, base, 0)


def test_a_checkpoint_holds_the_checkpoint_format_in_order(tmp_path) -> None:
    data, parts = tiny_parts()
    config = TrainConfig(epochs=2, batch_nodules=2)
    result = fit(
        data,
        parts,
        ModelConfig(variant="full", **TINY),
        config,
        0,
        tmp_path / "c.pt",
        progress=False,
        device=CPU,
    )
    saved = torch.load(tmp_path / "c.pt", weights_only=True)
    assert list(saved) == ["version", *Checkpoint.__annotations__]
    assert saved["epoch"] == 2 and saved["history"] == [tuple(r) for r in result.history]
    assert (saved["best_epoch"], saved["best_val_mae"]) == (result.best_epoch, result.best_val_mae)
    for name, value in result.model_state.items():
        torch.testing.assert_close(saved["best_model"][name], value, rtol=0, atol=0)
    # Training draws nothing from torch's generator, so the checkpoint need not hold its state: after
    # the run it is still the one the fold's seed left.
    from nodule_net.training.run import init_model

    after_training = torch.get_rng_state()
    init_model(ModelConfig(variant="full", **TINY), config.seed, 0)
    assert torch.equal(after_training, torch.get_rng_state())
