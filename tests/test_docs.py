"""README.md and docs/*.md: links, anchors, named modules, files and tests exist; no history; a short README."""

from __future__ import annotations

import ast
import contextlib
import fnmatch
import importlib.util
import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
PAGE_IDS = [page.relative_to(REPO).as_posix() for page in PAGES]

FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
PYTHON_M = re.compile(r"python3?\s+-m\s+([A-Za-z_][\w.]*)")
DOTTED = re.compile(r"\bnodule_net(?:\.\w+)+")
REPO_PATH = re.compile(r"\b(?:nodule_net|pipeline|tools|tests|docs)/[\w./-]*\w\.(?:py|md|png)\b")
TEST_FILE = re.compile(r"\b(test_\w+\.py)(?:::([\w*]+))?")
MAKE_TARGET = re.compile(r"`make ([a-z][\w-]*)")
# Development history has no place in user documentation: what the code does, not what it did.
HISTORY = re.compile(
    r"\bused to\b|\bpreviously\b|\bas it always\b|\bas before\b|\bno longer\b|\banymore\b"
    r"|\bissue #?\d+|\bthe issue's\b|\btoday\b|\byesterday\b|\bthe run before\b|\b\d\d:\d\d:\d\d\b",
    re.IGNORECASE,
)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lowercase, markup and punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of ``page``, duplicates numbered as GitHub numbers them (x, x-1, x-2)."""
    seen: dict[str, int] = {}
    result = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        result.add(base if n == 0 else f"{base}-{n}")
    return result


def prose(page: Path) -> str:
    """The page without its fenced code blocks."""
    return FENCE.sub("", page.read_text())


def test_slug_follows_githubs_rule() -> None:
    assert slug("Folds in processes (CPU)") == "folds-in-processes-cpu"
    assert slug("`data/nodules.h5`") == "datanodulesh5"
    assert slug("Analyses (paper §4)") == "analyses-paper-4"
    assert slug("Extraction: what the paper says") == "extraction-what-the-paper-says"
    assert slug("Benign–malignant (Table 5)") == "benignmalignant-table-5"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_relative_link_and_anchor_resolves(page: Path) -> None:
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f"{target}: no file {linked.relative_to(REPO) if linked.is_relative_to(REPO) else linked}")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            broken.append(f"{target}: no heading #{anchor} in {linked.name} (has {sorted(anchors(linked))})")
    assert not broken, f"{page.name}: broken links: {broken}"


def _module_file(dotted: str) -> Path | None:
    """The source file of a module of this repository (``a.b`` → a/b.py or a/b/__init__.py), if any."""
    base = REPO.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _top_level_names(source: Path) -> set[str]:
    names = set()
    for node in ast.parse(source.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
    return names


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_module_named_exists(page: Path) -> None:
    text = page.read_text()
    missing = []
    for name in PYTHON_M.findall(text):
        ours = name.split(".")[0] in ("nodule_net", "pipeline", "tools")
        if (_module_file(name) is None) if ours else (importlib.util.find_spec(name) is None):
            missing.append(f"python -m {name}")
    for dotted in set(DOTTED.findall(text)):
        parts = dotted.split(".")
        # The longest prefix that is a module; what follows must be one name defined in it.
        cut = next((i for i in range(len(parts), 1, -1) if _module_file(".".join(parts[:i]))), None)
        if cut is None or len(parts) - cut > 1:
            missing.append(dotted)
        elif cut < len(parts) and parts[cut] not in _top_level_names(_module_file(".".join(parts[:cut]))):
            missing.append(f"{dotted} ({parts[cut]} is not defined in {'.'.join(parts[:cut])})")
    assert not missing, f"{page.name} names modules that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_repository_path_named_exists(page: Path) -> None:
    missing = sorted({p for p in REPO_PATH.findall(page.read_text()) if not (REPO / p).exists()})
    assert not missing, f"{page.name} names files that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_test_named_exists(page: Path) -> None:
    test_files = {}
    for path in (REPO / "tests").rglob("test_*.py"):
        test_files.setdefault(path.name, []).append(path)
    missing = []
    for name, pattern in set(TEST_FILE.findall(page.read_text())):
        if name not in test_files:
            missing.append(name)
        elif pattern:
            defined = {n for path in test_files[name] for n in _top_level_names(path)}
            if not fnmatch.filter(defined, pattern):
                missing.append(f"{name}::{pattern}")
    assert not missing, f"{page.name} names tests that do not exist: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_make_target_named_exists(page: Path) -> None:
    targets = set(re.findall(r"^([a-z][\w-]*):", (REPO / "Makefile").read_text(), re.MULTILINE))
    missing = sorted(set(MAKE_TARGET.findall(page.read_text())) - targets)
    assert not missing, f"{page.name} names make targets the Makefile lacks: {missing}"


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_no_development_history(page: Path) -> None:
    hits = [
        f"{page.name}:{n}: {line.strip()}"
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if HISTORY.search(line)
    ]
    assert not hits, "history belongs in git, not in the docs:\n" + "\n".join(hits)


def test_readme_is_short_and_links_every_docs_page() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 200, f"README.md has {len(text.splitlines())} lines; move detail to docs/"
    linked = {(REPO / target.partition("#")[0]).resolve() for target in LINK.findall(text)}
    orphans = [p.name for p in DOCS.glob("*.md") if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def test_readme_layout_names_every_subpackage_and_module() -> None:
    text = README.read_text()
    layout = text[text.index("## Layout") :]
    package = REPO / "nodule_net"
    missing = []
    for path in sorted(package.rglob("*.py")):
        relative = path.relative_to(package)
        if path.name == "__init__.py":
            if relative.parent != Path(".") and f"{relative.parent.as_posix()}/" not in layout:
                missing.append(f"{relative.parent}/")
        elif relative.parent == Path("."):
            if path.name not in layout:
                missing.append(path.name)
        elif relative.parent.name != "cli" and not re.search(rf"\b{path.stem}\b", layout):
            missing.append(relative.as_posix())  # cli/ holds one module per subcommand, said once
    assert not missing, f"README's layout does not mention {missing}"


# `nodule-net …` in the docs' code: a command of a fenced block (at a line's start or after `&&`, `;`, `|`,
# `(`; up to a comment), or an inline code span.
FENCED_COMMAND = re.compile(r"(?:^[ \t]*|(?:&&|;|\||\()[ \t]*)nodule-net ([^\n#`]*)", re.MULTILINE)
INLINE_COMMAND = re.compile(r"`nodule-net ([^`]*)`")
OPTION = re.compile(r"^--?[A-Za-z][\w-]*")


def _help(argv: list[str]) -> str:
    """What ``nodule-net ARGV --help`` prints (argparse's usage and options)."""
    from nodule_net.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        main([*argv, "--help"])
    return out.getvalue()


def _options(help_text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--?[A-Za-z][\w-]*)", help_text))


@pytest.mark.parametrize("page", PAGES, ids=PAGE_IDS)
def test_every_nodule_net_command_shown_has_that_subcommand_and_those_options(page: Path) -> None:
    """The commands the docs show run as written: a real subcommand, and only options its --help lists
    (`grid --slurm` passes the others to sbatch). Placeholders (SUB, …) are not checked."""
    text = page.read_text()
    commands = [m for block in FENCE.findall(text) for m in FENCED_COMMAND.findall(block)]
    commands += INLINE_COMMAND.findall(FENCE.sub("", text))
    top = _help([])
    subcommands = set(re.search(r"\{([a-z,-]+)\}", top)[1].split(","))
    wrong = []
    for command in commands:
        tokens = re.split(r"\s+(?:\||&&|>|;).*", command.strip())[0].split()
        if not tokens or tokens[0].isupper() or tokens[0] == "…":
            continue
        sub = tokens[0] if not tokens[0].startswith("-") else None
        if sub is not None and sub not in subcommands:
            wrong.append(f"nodule-net {command.strip()}: no subcommand {sub}")
            continue
        known = _options(_help([sub] if sub else []))
        for token in tokens[1:] if sub else tokens:
            name = token.split("=")[0]
            if OPTION.match(token) and name not in known and not (sub == "grid" and "--slurm" in tokens):
                wrong.append(f"nodule-net {command.strip()}: {sub or 'nodule-net'} has no option {name}")
    assert not wrong, f"{page.name}: {wrong}"
