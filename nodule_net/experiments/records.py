"""DVC experiments as the report reads them: through DVC itself, never through its working files.

Params and the curated metrics come from ``dvc exp show --json`` (run as a subprocess and
parsed here). Everything else an experiment wrote is read at its git revision through one
``dvc.api.DVCFileSystem`` per experiment (:class:`RevisionFiles`): the git-tracked JSON
outputs (``metrics/mae.json`` with the per-fold values, ``metrics/analysis.json``,
``metrics/dataset.json``) from the experiment's commit, its per-nodule predictions from the
DVC cache. Only experiments that finished are used: DVC lists queued, running and failed
ones too, with their baseline's metrics in place of their own.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

PARAMS_FILE = "params.yaml"
# States in which a name is taken at its commit: `dvc exp run --queue --name` would repeat it.
# A failed experiment leaves no ref, and queuing its name again is how it is retried.
TAKEN_STATES = ("success", "running", "queued")


@dataclass(frozen=True)
class ExperimentRecord:
    """One DVC experiment: its name, revision and what ``dvc exp show`` holds for it."""

    name: str
    rev: str  # the experiment's git commit
    baseline: str  # the commit it was run from
    timestamp: str
    state: str  # success | queued | running | failed (DVC's executor states)
    params: dict = field(default_factory=dict)  # params.yaml as a dict
    metrics: dict = field(default_factory=dict)  # DVC metrics file path → its JSON (the curated summary)

    @property
    def short_rev(self) -> str:
        return self.rev[:7]

    @property
    def done(self) -> bool:
        return self.state == "success"

    def param(self, key: str, default=None):
        """A params.yaml value by dotted key (``model.variant``); ``default`` if absent."""
        node = self.params
        for part in key.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node


def _data(entry: dict | None) -> dict:
    return (entry or {}).get("data") or {}


def parse_exp_show(entries: list[dict]) -> list[ExperimentRecord]:
    """The named experiments in ``dvc exp show --json`` output (workspace and baselines left out)."""
    records = []
    for baseline in entries:
        if baseline.get("rev") == "workspace":
            continue
        for experiment in baseline.get("experiments") or []:
            executor = experiment.get("executor") or {}
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                records.append(
                    ExperimentRecord(
                        name=rev.get("name") or experiment.get("name") or rev["rev"][:7],
                        rev=rev["rev"],
                        baseline=baseline["rev"],
                        timestamp=data.get("timestamp") or "",
                        # Experiments run in the workspace or already collected have no executor.
                        state=executor.get("state") or ("failed" if rev.get("error") else "success"),
                        params=_data((data.get("params") or {}).get(PARAMS_FILE)),
                        metrics={path: _data(m) for path, m in (data.get("metrics") or {}).items()},
                    )
                )
    return records


def dvc_message(failure: subprocess.CompletedProcess | BaseException) -> str:
    """DVC's whole error message on one line: a failed DVC command's output, or an exception and its causes.

    DVC's own CLI prints the chain of causes joined by ``: ``; its last line alone (e.g.
    ``object_type=dict``) rarely says what was wrong.
    """
    if isinstance(failure, BaseException):
        parts: list[str] = []
        error: BaseException | None = failure
        while error is not None:
            if str(error) and str(error) not in parts:
                parts.append(str(error))
            error = error.__cause__
        text = ": ".join(parts)
    else:
        text = failure.stderr.strip() or failure.stdout.strip()
    lines = [line.strip().removeprefix("ERROR: ") for line in text.splitlines()]
    return " ".join(" ".join(lines).split()) or "(no output)"


def exp_show(repo: str | Path, all_commits: bool = False) -> list[dict]:
    """``dvc exp show --json`` of ``repo`` (HEAD's experiments, or every commit's with ``all_commits``)."""
    command = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["--all-commits"] if all_commits else [])]
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"`dvc exp show --json` failed in {repo}: {dvc_message(done)}")
    return json.loads(done.stdout)


def taken_names(repo: str | Path) -> dict[str, str]:
    """HEAD's experiment names that a new experiment may not repeat → their state (finished first).

    ``dvc exp show`` lists both the experiments (git refs per baseline commit) and the
    queue's entries of HEAD; DVC itself checks only the former when queuing.
    """
    taken: dict[str, str] = {}
    for record in parse_exp_show(exp_show(repo)):
        if record.state not in TAKEN_STATES:
            continue
        known = taken.get(record.name)
        if known is None or TAKEN_STATES.index(record.state) < TAKEN_STATES.index(known):
            taken[record.name] = record.state
    return taken


def latest_by_name(records: list[ExperimentRecord]) -> dict[str, ExperimentRecord]:
    """One record per name: the finished one if any, else the newest (its state says why it is not usable)."""
    chosen: dict[str, ExperimentRecord] = {}
    for record in sorted(records, key=lambda r: (r.done, r.timestamp)):
        chosen[record.name] = record  # later (finished, newer) ones win
    return chosen


def pipeline_var(repo: str | Path, key: str) -> str:
    """A path declared once in dvc.yaml's ``vars`` (e.g. ``predictions``)."""
    with open(Path(repo) / "dvc.yaml") as f:
        for block in yaml.safe_load(f).get("vars") or []:
            if isinstance(block, dict) and key in block:
                return str(block[key])
    raise ValueError(f"{Path(repo) / 'dvc.yaml'} declares no `{key}` under vars; is this the nodule-net pipeline?")


class RevisionFiles:
    """The files of one experiment's git revision as DVC sees them, each read once.

    Git-tracked files (the JSON outputs declared ``cache: false``) come from the commit,
    DVC outputs (``data/predictions.csv``) from the local DVC cache. One
    ``DVCFileSystem`` serves every file of the revision: opening DVC per file would cost a
    repository load each time.
    """

    def __init__(self, repo: str | Path, record: ExperimentRecord) -> None:
        self.repo = Path(repo)
        self.record = record
        self._fs: Any = None  # dvc.api.DVCFileSystem, opened on the first read
        self._json: dict[str, dict] = {}

    def _what(self, path: str) -> str:
        return f"{path} of experiment {self.record.name} ({self.record.short_rev})"

    def _read(self, path: str) -> str:
        if self._fs is None:
            from dvc.api import DVCFileSystem  # imported here: loading DVC takes a second other commands need not pay

            self._fs = DVCFileSystem(str(self.repo), rev=self.record.rev)
        try:
            return self._fs.read_text(path)
        except FileNotFoundError as err:
            raise ValueError(
                f"{self._what(path)} is not in its commit; was it run by this pipeline "
                "(its dvc.yaml declares the file under vars)? `dvc exp show` lists its revision."
            ) from err
        except Exception as err:  # DVC raises many types (missing cache, unknown path, ...)
            raise ValueError(
                f"{self._what(path)} cannot be read through DVC ({type(err).__name__}: {err}); "
                "is its output in the local cache (`dvc exp pull`)?"
            ) from err

    def json(self, path: str) -> dict:
        """The JSON file ``path`` at the revision, parsed (and kept for the next call)."""
        if path not in self._json:
            try:
                self._json[path] = json.loads(self._read(path))
            except json.JSONDecodeError as err:
                raise ValueError(f"{self._what(path)} is not valid JSON ({err}); rerun the experiment.") from err
        return self._json[path]

    def csv(self, path: str) -> pd.DataFrame:
        """The CSV file ``path`` at the revision (not kept: the caller holds what it needs)."""
        return pd.read_csv(io.StringIO(self._read(path)))

    def close(self) -> None:
        if self._fs is not None:
            self._fs.close()
            self._fs = None


def commit_date_and_subject(repo: str | Path, rev: str) -> tuple[str, str]:
    """The committer date (ISO 8601) and the subject line of commit ``rev`` of ``repo``."""
    done = subprocess.run(["git", "show", "-s", "--format=%cI%x00%s", rev], cwd=repo, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"`git show {rev}` failed in {repo}: {dvc_message(done)}")
    date, _, subject = done.stdout.strip().partition("\0")
    return date, subject
