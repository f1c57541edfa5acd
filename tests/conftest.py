"""Shared fixtures: a tiny phantom (2 LIDC patients, 5 nodules) built once per session; one torch thread."""

from __future__ import annotations

import pytest
import torch

from nodule_net.config import ExtractConfig
from nodule_net.data.extract import extract
from nodule_net.data.lidc import scans_for_patients
from nodule_net.data.phantom import build_phantom

# Small real LIDC cases: 0001 has one nodule over 8 slices, 0003 has four small ones.
TINY_PATIENTS = ["LIDC-IDRI-0001", "LIDC-IDRI-0003"]


@pytest.fixture(scope="session")
def tiny_phantom(tmp_path_factory):
    """Root of a phantom DICOM tree for TINY_PATIENTS (nodule slices ± 1 only)."""
    root = tmp_path_factory.mktemp("phantom") / "LIDC-IDRI"
    build_phantom(root, TINY_PATIENTS, seed=0, margin=1, workers=1, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_scans():
    return scans_for_patients(TINY_PATIENTS, "first")


@pytest.fixture(scope="session")
def tiny_extracted(tiny_phantom, tiny_scans):
    """(dataset, stats) extracted from the tiny phantom."""
    return extract(tiny_phantom, tiny_scans, ExtractConfig(), source="phantom", workers=1, progress=False)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (and stalls on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
