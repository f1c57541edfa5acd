"""The package's own import graph, read from the source (never by importing it).

One function serves two guards: ``tests/integration/test_dvc_yaml.py`` holds each stage's ``deps``
in ``dvc.yaml`` against the import closure of its script, and ``nodule_net.training.fingerprint``
fingerprints exactly the modules training runs (checkpoints of other code are not resumed).
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

PACKAGE = "nodule_net"
PACKAGE_DIR = Path(__file__).resolve().parents[1]


def _module_file(name: str, package_dir: Path) -> Path | None:
    """The file of ``nodule_net[.x[.y]]`` in ``package_dir``, or None for a name outside the package."""
    parts = name.split(".")
    if parts[0] != PACKAGE:
        return None
    base = package_dir.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None  # e.g. a class imported with `from nodule_net.x import Name`


def _imports(source: Path, package_dir: Path) -> set[Path]:
    """Package files ``source`` imports directly (function-level imports too), with their packages' ``__init__``."""
    found: set[Path] = set()
    for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # relative import inside the package: `from .x import y`, `from . import x`
                module = ".".join(
                    [PACKAGE, *source.resolve().parent.relative_to(package_dir).parts, *([module] if module else [])]
                )
            names = [module, *(f"{module}.{alias.name}" for alias in node.names)]
        else:
            continue
        for name in names:
            parts = name.split(".")
            # Importing nodule_net.a.b runs nodule_net/__init__.py and nodule_net/a/__init__.py first.
            for i in range(1, len(parts) + 1):
                if (path := _module_file(".".join(parts[:i]), package_dir)) is not None:
                    found.add(path)
    return found


def import_closure(script: str | os.PathLike, package_dir: str | os.PathLike = PACKAGE_DIR) -> set[Path]:
    """Every file of the package that running ``script`` imports, directly or not (``script`` too, if in it)."""
    package_dir = Path(package_dir).resolve()
    script = Path(script).resolve()
    seen: set[Path] = {script} if package_dir in script.parents else set()
    todo = [script]
    while todo:
        for path in _imports(todo.pop(), package_dir) - seen:
            seen.add(path)
            todo.append(path)
    return seen
