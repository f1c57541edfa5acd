"""Shared fixtures: a tiny phantom (2 LIDC patients, 5 nodules) built once per session; one torch thread."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
import torch

from nodule_net.config import ExtractConfig
from nodule_net.data.extract import extract
from nodule_net.data.lidc import scans_for_patients
from nodule_net.data.phantom import build_phantom

# Small real LIDC cases: 0001 has one nodule over 8 slices, 0003 has four small ones.
TINY_PATIENTS = ["LIDC-IDRI-0001", "LIDC-IDRI-0003"]

# The files that take longest (`pytest --durations`), longest first. `make test` hands whole groups of
# tests to its workers in collection order (pytest-xdist's loadgroup; a group is a file, see below), so
# these start first and the many short files fill the other workers meanwhile, instead of one long
# file starting last and running alone.
LONGEST_FIRST = (
    "integration/test_slurm_cluster.py",  # the Slurm group's short file, then its long one
    "integration/test_slurm_grid.py",
    "experiments/test_report.py",
    "integration/test_exp_remote.py",
    "runtime/test_parent_kills.py",
    "training/test_train.py",
    "training/test_fold_processes.py",
    "test_config.py",
    "tools/test_gpu_check.py",
    "integration/test_dvc_runcache.py",
    "experiments/test_grid.py",
)


def pytest_configure(config) -> None:
    """Under pytest-xdist, each worker's share of the cores for torch, here and in the processes its
    tests start: two workers of two threads each on two cores would spin on each other's cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's, which reads the groups into the test ids
def pytest_collection_modifyitems(config, items) -> None:
    """Tests of the LONGEST_FIRST files first, in that order (every other test keeps its place after
    them), and each test in the pytest-xdist group of its file unless its module names another.

    A group runs whole on one worker, so a module's fixtures are built once; the files that start a
    private Slurm share one group (``slurm``), so two clusters never run at once.
    """
    tests = Path(__file__).resolve().parent

    def name(item) -> str:
        return Path(str(item.path)).resolve().relative_to(tests).as_posix() if item.path else item.nodeid

    for item in items:
        if item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(name(item)))
    items.sort(key=lambda item: LONGEST_FIRST.index(n) if (n := name(item)) in LONGEST_FIRST else len(LONGEST_FIRST))


def popen_interruptible(args: list[str], **kwargs) -> subprocess.Popen:
    """``subprocess.Popen(args)`` with text stdout and stderr piped and SIGINT handled as by default in
    the child, for the tests that send it a Ctrl-C: a suite started in the background (`pytest &`)
    passes SIGINT down ignored."""
    return subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        **kwargs,
    )


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


@pytest.fixture(scope="session")
def experiment_repo(tmp_path_factory) -> Path:
    """One git + DVC repository with three finished experiments (tests/repo_copies.py), for every test
    that reads experiments: built once for the whole session, so its modules only read it, and those
    that run DVC in it (test_report.py, test_exp_remote.py) share an xdist group (``experiments``);
    a test that changes a repository makes its own."""
    from repo_copies import shared_experiment_repo

    return shared_experiment_repo(tmp_path_factory)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: a second intra-op thread only adds synchronisation (and stalls on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
