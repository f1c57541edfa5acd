"""DVC's run-cache must see every param: changing one re-runs its stage or restores the right output.

DVC leaves any key named ``size`` or ``nfiles`` out of its run-cache key (treeverse/dvc#10296),
so such a param, changed, silently restores the output of its old value.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DVC = Path(sys.executable).with_name("dvc")
# The names DVC strips from the run-cache key (dvc.stage.cache._get_cache_hash).
UNHASHED_NAMES = {"size", "nfiles"}

pytestmark = pytest.mark.integration


def _keys(tree, prefix=""):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield f"{prefix}{key}", str(key)
            yield from _keys(value, f"{prefix}{key}.")


def test_no_param_is_named_like_dvc_metadata():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert [dotted for dotted, name in _keys(params) if name in UNHASHED_NAMES] == []
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())
    assert [dotted for dotted, name in _keys(stages) if name in UNHASHED_NAMES] == []


def test_dvc_run_cache_key_changes_with_image_side():
    """DVC's own key computation, on the lockfile entry of the extract stage's params."""
    from dvc.stage.cache import _get_cache_hash

    def key(extract_params):
        entry = {
            "cmd": "python pipeline/extract.py",
            "params": {"params.yaml": {"extract": extract_params}},
            "outs": [{"path": "data/nodules.h5"}],
        }
        return _get_cache_hash(entry, key=True)

    assert key({"image_side": 64}) != key({"image_side": 32})
    assert key({"size": 64}) == key({"size": 32})  # the trap the old name fell into


def _images_shape(repo: Path) -> tuple[int, ...]:
    with h5py.File(repo / "data" / "nodules.h5", "r") as f:
        return f["images"].shape[1:]


def _repro(repo: Path, env: dict, image_side: int) -> str:
    path = repo / "params.yaml"
    params = yaml.safe_load(path.read_text())
    params["extract"]["image_side"] = image_side
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    out = subprocess.run([str(DVC), "repro", "extract"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.mark.skipif(not DVC.exists(), reason=f"no dvc executable beside {sys.executable}")
def test_changing_image_side_changes_the_extracted_images(tmp_path):
    """``dvc repro`` on a one-patient phantom: 64 → 32 → 64 (the last one from the run-cache)."""
    repo = tmp_path / "repo"
    anywhere = shutil.ignore_patterns(
        ".git", ".venv", "dvc.lock", "__pycache__", "*.egg-info", ".pytest_cache", "cache", "tmp"
    )

    def ignore(folder: str, names: list[str]) -> set[str]:
        # The data folder only at the top: nodule_net/data/ is code.
        return anywhere(folder, names) | ({"data"} & set(names) if Path(folder) == REPO else set())

    shutil.copytree(REPO, repo, ignore=ignore)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["phantom"].update(patients=["LIDC-IDRI-0001"], workers=1)
    params["extract"]["workers"] = 1
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    env = os.environ | {
        # Stage commands call `python`: the venv's, importing this copy's package.
        "PATH": f"{DVC.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(repo),
        "DVC_NO_ANALYTICS": "1",
        "DVC_SITE_CACHE_DIR": str(tmp_path / "dvc-site-cache"),
    }
    _repro(repo, env, 64)
    assert _images_shape(repo) == (64, 64)
    out = _repro(repo, env, 32)
    assert "Running stage 'extract'" in out and "Running stage 'phantom'" not in out
    assert _images_shape(repo) == (32, 32)
    out = _repro(repo, env, 64)
    assert "Stage 'extract' is cached" in out  # restored from the run-cache, and rightly so
    assert _images_shape(repo) == (64, 64)
