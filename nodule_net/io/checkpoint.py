"""On-disk formats of training: the per-epoch resumable checkpoint and the selected model file.

Both are plain dicts of tensors and numbers saved with ``torch.save`` and read back with
``weights_only=True`` (no pickled code ever runs), written atomically so a kill mid-save
leaves the previous file intact.
"""

from __future__ import annotations

import errno
import json
import math
import numbers
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import TypedDict, cast

import torch
from tqdm import tqdm

from nodule_net.io.files import atomic_path

CHECKPOINT_VERSION = 2


# What a write that failed for want of room says, by errno (the stages print it in one line).
_NO_ROOM = {errno.ENOSPC: "the disk holding {folder} is full", errno.EDQUOT: "the disk quota on {folder} is used up"}


def _no_room(err: BaseException | None) -> OSError | None:
    """The OSError of a full disk or quota in ``err``'s chain of causes and contexts, or None."""
    while err is not None:
        if isinstance(err, OSError) and err.errno in _NO_ROOM:
            return err
        err = err.__cause__ or err.__context__
    return None


def save_atomic(obj: dict, path: str | os.PathLike) -> None:
    """``torch.save(obj)`` to ``path`` through a temporary sibling and a rename.

    A disk that fills up meanwhile raises ``OSError`` (ENOSPC or EDQUOT) whose filename is
    ``path`` and whose text says which disk is full; ``path`` keeps its previous content.
    """
    path = Path(path)
    try:
        # A Python file, not a path: torch's own writer turns a failed write into a RuntimeError
        # ("iostream error", "unexpected pos") that has lost the errno; Python's file keeps it.
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as err:
        if (full := _no_room(err)) is None or full.errno is None:  # _no_room returns only errnos in _NO_ROOM
            raise
        reason = _NO_ROOM[full.errno].format(folder=path.parent)
        raise OSError(full.errno, f"{os.strerror(full.errno)} ({reason})", str(path)) from None


class Checkpoint(TypedDict):
    """One fold's resumable state after an epoch: the checkpoint format (the file adds ``version``).

    Every training engine writes and resumes exactly this (:class:`nodule_net.training.run.FoldRun`).
    """

    fingerprint: str  # the run's identity (nodule_net.training.fingerprint); another run never resumes it
    epoch: int  # epochs done, 1-based
    model: dict[str, torch.Tensor]  # the weights after that epoch
    optimizer: dict  # torch.optim.Adam's state_dict
    best_model: dict[str, torch.Tensor] | None  # the selected weights so far
    best_epoch: int  # 1-based; 0 before any epoch
    best_val_mae: float
    history: list[tuple[int, float, float]]  # (epoch, train loss, validation MAE) of every epoch so far


def save_checkpoint(state: Checkpoint, path: str | os.PathLike) -> None:
    """One epoch's resumable state (model, optimiser, RNG, best model so far, history)."""
    save_atomic({"version": CHECKPOINT_VERSION, **state}, path)


# What a checkpoint written by save_checkpoint holds (besides "version"), in the order it is written.
_CHECKPOINT_KEYS = tuple(Checkpoint.__annotations__)


def _torch_load(path: Path, device: torch.device) -> dict:
    """``torch.load(weights_only=True)`` of a dict; ``ValueError`` with a short reason if it cannot be."""
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # weights_only refuses anything but tensors and plain data
        raise ValueError("it holds pickled objects other than tensors and numbers, which are never loaded") from None
    # Anything else torch.load raises (RuntimeError from a truncated zip, IndexError or EOFError
    # from text or a cut-off legacy file, ...) means the same; its message spans many lines.
    except Exception as err:
        raise ValueError(f"truncated, damaged or not a torch file: {type(err).__name__}") from None
    if not isinstance(state, dict):
        raise ValueError(f"it holds a {type(state).__name__}, not a dict")
    return state


def load_checkpoint(
    path: str | os.PathLike | None, run_id: str, epochs: int, device: torch.device
) -> Checkpoint | None:
    """The checkpoint at ``path`` if it belongs to the run ``run_id`` and is not past ``epochs``.

    An unreadable or foreign file (truncated, not a torch file, a pickle with code, another
    structure) is moved aside to ``<name>.corrupt`` with one line saying so; like a
    checkpoint of other params, it means starting afresh.
    """
    if path is None or not Path(path).exists():
        return None
    path = Path(path)
    try:
        state = _torch_load(path, device)
        if missing := [k for k in _CHECKPOINT_KEYS if k not in state]:
            raise ValueError(f"it has no {', '.join(missing)}")
        if not (
            isinstance(state["fingerprint"], str)
            and isinstance(state["epoch"], int)
            and isinstance(state["best_model"], dict)
        ):
            raise ValueError("its fingerprint, epoch or best model has the wrong type")
    except ValueError as err:
        aside = path.with_name(path.name + ".corrupt")
        try:
            path.replace(aside)
            where = f"moved it to {aside}"
        except OSError as move_err:
            where = f"could not move it aside ({move_err.strerror}); delete it"
        tqdm.write(f"{path}: unreadable or foreign checkpoint ({err}); {where} and starting afresh.")
        return None
    if state.get("version") != CHECKPOINT_VERSION or state["fingerprint"] != run_id:
        tqdm.write(f"{path}: checkpoint of other params, data or training code; starting afresh.")
        return None
    if state["epoch"] > epochs:
        tqdm.write(f"{path}: checkpoint is at epoch {state['epoch']} > train.epochs={epochs}; starting afresh.")
        return None
    return cast(Checkpoint, state)  # every key checked above


def finished_epochs(path: str | os.PathLike | None, run_id: str) -> int:
    """Epochs that the checkpoint at ``path`` holds for the run ``run_id``; 0 when absent, foreign or unreadable.

    A quiet look (nothing moved, nothing printed): :func:`load_checkpoint` deals with such files when training starts.
    """
    try:
        state = _torch_load(Path(path), torch.device("cpu")) if path is not None and Path(path).exists() else {}
    except ValueError:
        return 0
    if state.get("version") != CHECKPOINT_VERSION or state.get("fingerprint") != run_id:
        return 0
    return state["epoch"] if isinstance(state.get("epoch"), int) else 0


def model_path(models_dir: str | os.PathLike, fold: int) -> Path:
    """Where fold ``fold``'s selected model lives; dvc.yaml declares ``<models>/fold<k>`` as its out."""
    return Path(models_dir) / f"fold{fold}" / "model.pt"


def extract_record(dataset_attrs: Mapping) -> dict | None:
    """The extract settings a dataset was cropped with, from its attrs, or None if it records none.

    ``extract`` stores them as ``params`` (``clevel``, ``extent_fraction``, ``image_side``):
    a dict in memory, JSON text once read back from HDF5 (:mod:`nodule_net.io.store`).
    """
    params = dataset_attrs.get("params")
    if isinstance(params, (str, bytes)):
        try:
            params = json.loads(params)
        except ValueError:
            return None
    return dict(params) if isinstance(params, Mapping) else None


def _extract_problem(record: object) -> str | None:
    """Why ``record`` (a model file's ``extract``) is not a crop :mod:`nodule_net.evaluation.predict` can use,
    or None."""
    if not isinstance(record, dict):
        return f"its extract record is a {type(record).__name__}, not a dict"
    side, fraction = record.get("image_side"), record.get("extent_fraction")
    # The cast only tells mypy what numbers.Real's stubs leave out: a Real compares with an int.
    if not (
        isinstance(side, int)
        and not isinstance(side, bool)
        and side >= 1
        and isinstance(fraction, numbers.Real)
        and 0 < cast(float, fraction) <= 1
    ):
        return f"its extract record {record} is not an image_side ≥ 1 and an extent_fraction in (0, 1]"
    return None


def save_model(
    path: str | os.PathLike,
    model_state: dict | None,
    model_config: dict,
    mean: float,
    std: float,
    fold: int,
    best_epoch: int,
    best_val_mae: float,
    extract: dict | None = None,
) -> None:
    """The selected model plus what inference needs (config, normalisation stats).

    ``extract``: the extract settings of the training data (:func:`extract_record`), so that
    `predict` crops a new nodule as the model's nodules were cropped; None records nothing
    (a dataset that holds none), and :func:`read_model_file` reads such a file too.

    Refuses (``ValueError``) a model without a selected epoch: no weights, or no finite
    validation MAE — a file that would look like a trained model but is not one.
    """
    if not model_state or best_epoch < 1 or not math.isfinite(best_val_mae):
        raise ValueError(
            f"{path} not written: fold {fold} has no selected epoch (best epoch {best_epoch}, "
            f"best validation MAE {best_val_mae}); see the training log above."
        )
    saved = {
        "model": model_state,
        "model_config": model_config,
        "mean": mean,
        "std": std,
        "fold": fold,
        "best_epoch": best_epoch,
        "best_val_mae": best_val_mae,
    }
    if extract is not None:
        saved["extract"] = dict(extract)
    save_atomic(saved, path)


def read_model_file(path: str | os.PathLike, device: torch.device) -> dict:
    """The dict written by :func:`save_model`, tensors on ``device`` (``extract`` only where recorded).

    Raises ``FileNotFoundError`` if it is missing and ``ValueError`` (one line naming the
    file) if it is unreadable or not a model file.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no trained model; run `dvc repro train` first.")
    try:
        saved = _torch_load(path, device)
        if missing := [k for k in ("model", "model_config", "mean", "std") if k not in saved]:
            raise ValueError(f"it has no {', '.join(missing)}")
        if "extract" in saved and (problem := _extract_problem(saved["extract"])):
            raise ValueError(problem)
    except ValueError as err:
        raise ValueError(f"{path}: unreadable model file ({err}); delete it and re-run `dvc repro train`.") from None
    return saved
