"""The training curves PNG from dvclive's per-fold TSVs: what it draws, and the same bytes every time."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nodule_net.evaluation.curves import read_fold, training_curves_figure, write_training_curves

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_BYTES = 100_000
# Per fold: (train_loss, val_mae) per epoch; fold 0's val_mae has its lowest value twice.
CURVES = {
    0: ([0.9, 0.6, 0.5, 0.45], [0.70, 0.52, 0.55, 0.52]),
    2: ([0.8, 0.5, 0.4, 0.35], [0.60, 0.58, 0.50, 0.51]),
}


def write_live(folder: Path, recorded: dict[int, int] | None = None) -> Path:
    """A dvclive folder as the train stage writes it: fold<k>/plots/metrics/<name>.tsv and, for the
    folds in ``recorded``, fold<k>/metrics.json with its best epoch."""
    for k, (loss, mae) in CURVES.items():
        plots = folder / f"fold{k}" / "plots" / "metrics"
        plots.mkdir(parents=True)
        for name, values in (("train_loss", loss), ("val_mae", mae)):
            rows = "".join(f"{step}\t{value}\n" for step, value in enumerate(values, 1))
            (plots / f"{name}.tsv").write_text(f"step\t{name}\n{rows}")
        if recorded and k in recorded:
            summary = {"train_loss": loss[-1], "val_mae": mae[-1], "step": len(loss), "best_epoch": recorded[k]}
            (folder / f"fold{k}" / "metrics.json").write_text(json.dumps(summary))
    (folder / "fold_notes").mkdir()  # not a fold<k> folder
    return folder


def test_a_fold_keeps_its_recorded_epoch_or_else_the_first_lowest_validation_mae(tmp_path) -> None:
    live = write_live(tmp_path / "live", recorded={2: 4})
    first = read_fold(live / "fold0")
    assert first.best_epoch == 2  # epochs 2 and 4 tie: the earlier one, as training keeps it
    np.testing.assert_array_equal(first.curves["val_mae"][0], [1, 2, 3, 4])
    np.testing.assert_allclose(first.curves["train_loss"][1], CURVES[0][0])
    assert read_fold(live / "fold2").best_epoch == 4  # what the train stage recorded wins


def test_the_figure_has_a_line_per_fold_and_a_dot_at_its_kept_epoch(tmp_path) -> None:
    live = write_live(tmp_path / "live")
    fig = training_curves_figure({k: read_fold(live / f"fold{k}") for k in CURVES})
    loss, mae = fig.axes
    assert (loss.get_xlabel(), mae.get_xlabel()) == ("epoch", "epoch")
    assert "validation MAE" in mae.get_ylabel() and "training loss" in loss.get_ylabel()
    for ax, column in ((loss, 0), (mae, 1)):
        lines, dots = ax.lines[0::2], ax.lines[1::2]
        assert [line.get_ydata().tolist() for line in lines] == [CURVES[k][column] for k in CURVES]
        kept = {0: 2, 2: 3}
        assert [dot.get_xdata().tolist() for dot in dots] == [[kept[k]] for k in CURVES]
        assert [dot.get_ydata().tolist() for dot in dots] == [[CURVES[k][column][kept[k] - 1]] for k in CURVES]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["fold 0: epoch 2", "fold 2: epoch 3"]


@pytest.mark.slow
def test_write_training_curves_gives_a_small_png_with_the_same_bytes_every_time(tmp_path) -> None:
    live = write_live(tmp_path / "live")
    first = write_training_curves(live, tmp_path / "1" / "curves.png")
    second = write_training_curves(live, tmp_path / "2" / "curves.png")
    assert first == tmp_path / "1" / "curves.png" and second is not None
    data = first.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and 5_000 < len(data) <= MAX_BYTES, len(data)
    assert data == second.read_bytes()


def test_no_fold_folder_draws_nothing(tmp_path) -> None:
    (tmp_path / "live" / "fold_notes").mkdir(parents=True)
    assert write_training_curves(tmp_path / "live", tmp_path / "curves.png") is None
    assert write_training_curves(tmp_path / "absent", tmp_path / "curves.png") is None
    assert not (tmp_path / "curves.png").exists()


def test_a_fold_without_its_curve_is_an_error_naming_the_file(tmp_path) -> None:
    live = write_live(tmp_path / "live")
    (live / "fold2" / "plots" / "metrics" / "val_mae.tsv").unlink()
    with pytest.raises(ValueError, match=r"fold2/plots/metrics/val_mae\.tsv: no such dvclive curve"):
        write_training_curves(live, tmp_path / "curves.png")
    (live / "fold0" / "plots" / "metrics" / "train_loss.tsv").write_text("step\tloss\n1\t0.5\n")
    with pytest.raises(ValueError, match=r"train_loss\.tsv is not a dvclive curve of train_loss"):
        read_fold(live / "fold0")


@pytest.mark.slow
def test_write_training_curves_draws_only_the_folds_asked_for(tmp_path) -> None:
    live = write_live(tmp_path / "live")  # folds 0 and 2, as left by a run of folds [0, 2]
    both = write_training_curves(live, tmp_path / "both.png")
    one = write_training_curves(live, tmp_path / "one.png", folds=[0])
    assert both is not None and one is not None
    assert both.read_bytes() != one.read_bytes()
    assert write_training_curves(live, tmp_path / "none.png", folds=[1]) is None
