"""Where training and inference run, and moving packed batches there."""

from __future__ import annotations

import torch

from nodule_net.data import Batch


def resolve_device(name: str) -> torch.device:
    """``auto`` → the first CUDA GPU if there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA GPU is visible; use `auto` or `cpu`.")
    return device


def batch_to(batch: Batch, device: torch.device) -> Batch:
    """``batch`` with its tensors on ``device`` (the nodule index stays a numpy array)."""
    return batch._replace(
        images=batch.images.to(device), segment_ids=batch.segment_ids.to(device), targets=batch.targets.to(device)
    )
