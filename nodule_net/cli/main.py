"""The `nodule-net` command: tools outside the DVC pipeline. This module holds the argument tree and
dispatches; each subcommand is a module of :mod:`nodule_net.cli` (``lidc-stats`` → ``lidc_stats.py``).

    nodule-net lidc-stats [--json] [--scans first|all] [--workers N] [--patients ID ...]
    nodule-net mae-table [metrics/mae.json] [--exp NAME ...]
    nodule-net bench [--device auto|cpu|cuda|cuda:N] [--json] [--quick] [--threads N] [--precision fp32|bf16]
    nodule-net grid [--dry-run] [--exp NAME ...] [-S key=value ...]
    nodule-net grid --slurm [--dry-run | --status] [--exp NAME ...] [-S key=value ...] [--slurm-dir D] [SBATCH OPT ...]
    nodule-net report [--out report] [--exp NAME ...] [--all]
    nodule-net predict SERIES_DIR (--centre-mm X Y Z | --centre-voxel I J K) --diameter-mm D [--models DIR] [--json]
    nodule-net predict SERIES_DIR --box I0 I1 J0 J1 K0 K1 [--slices K ...] [--models DIR] [--json]
    nodule-net predict --dataset data/nodules.h5 --nodule-id ID [--splits data/splits.json] [--models DIR] [--json]
    nodule-net check-params [params.yaml]
    nodule-net --help | SUB --help | --version

Help and ``--version`` print in any folder; every command runs under
:func:`~nodule_net.cli.errors.user_errors_exit`, whose checkout guard refuses a command run inside
another clone than the one the installed package comes from.
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module, metadata
from pathlib import Path
from typing import Any, NoReturn

import nodule_net
from nodule_net.cli.errors import foreign_checkout, user_errors_exit

# pyproject.toml's project name: the console script's, and the distribution importlib.metadata knows.
DISTRIBUTION = "nodule-net"


def installed_version() -> str:
    """``<version> from <package folder>`` of the imported ``nodule_net`` (which clone, when several share a venv)."""
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "(not installed: no package metadata; run `pip install -e .`)"
    return f"{version} from {Path(nodule_net.__file__).resolve().parent}"


class _Version(argparse.Action):
    """``--version``: :func:`installed_version`, looked up only when asked (argparse's own takes a fixed string)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="print the version and exit")

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: Any = None
    ) -> NoReturn:
        print(f"{parser.prog} {installed_version()}")
        parser.exit()


class _Unparsed(Exception):
    """A command line the first pass of :func:`main` cannot parse: the guarded pass reports it."""


class _FirstPass(argparse.ArgumentParser):
    """The parser of :func:`main`'s unguarded first pass: only help and ``--version`` end it (exit 0).

    A usage error raises :class:`_Unparsed` instead of printing, so that in another clone the
    checkout guard speaks before argparse (whose subcommands may be another version's).
    """

    def error(self, message: str) -> NoReturn:
        raise _Unparsed(message)


def build_parser(parser_class: type[argparse.ArgumentParser] = argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The argument tree of every subcommand (its subparsers of ``parser_class`` too)."""
    parser = parser_class(prog=DISTRIBUTION, description="nodule-net tools")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "lidc-stats", help="dataset statistics of the whole LIDC annotation database, next to the paper's"
    )
    p.add_argument("--json", action="store_true", help="print JSON (ours and the paper's) instead of a table")
    p.add_argument(
        "--scans",
        choices=("first", "all"),
        default="first",
        help="scans per patient: 'first' (as extract's default) or 'all'",
    )
    p.add_argument("--workers", type=int, default=2, help="processes (default 2)")
    p.add_argument("--patients", nargs="+", metavar="ID", help="only these patients (default: all 875)")
    t = sub.add_parser("mae-table", help="the evaluate stage's MAE as a table, or DVC experiments side by side")
    t.add_argument("path", nargs="?", default="metrics/mae.json", help="default: metrics/mae.json")
    t.add_argument(
        "--exp",
        nargs="+",
        metavar="NAME",
        help="DVC experiments of HEAD side by side, one row each (a branch name, e.g. main, gives the baseline)",
    )
    t.add_argument("--repo", default=".", help="with --exp: the DVC repository (default: .)")
    b = sub.add_parser("bench", help="training/inference speed, operators per step, projected protocol time")
    b.add_argument("--device", default="auto", help="auto (a GPU if there is one) | cpu | cuda | cuda:N")
    b.add_argument("--json", action="store_true", help="print the result as JSON instead of a report")
    b.add_argument("--quick", action="store_true", help="fewer nodules, one timed round (under a minute on a CPU)")
    b.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    b.add_argument(
        "--precision",
        choices=("fp32", "bf16"),
        default="fp32",
        help="training precision of the batched path, as train.precision (default fp32; the reference path stays fp32)",
    )
    g = sub.add_parser("grid", help="queue the paper's experiments (Tables 1, 2, 5, S1, S2) as named DVC experiments")
    g.add_argument("--dry-run", action="store_true", help="print the `dvc exp run --queue` commands only")
    g.add_argument(
        "-S",
        "--set-param",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override passed to every experiment, e.g. -S train.epochs=2 (repeatable)",
    )
    g.add_argument("--exp", nargs="+", metavar="NAME", help="queue only these experiments of the grid (default: all)")
    g.add_argument(
        "--slurm",
        action="store_true",
        help="submit them as one Slurm array job instead (docs/cluster.md); any other option goes to sbatch, "
        "e.g. --partition=gpu --gres=gpu:1 --time=2-00:00:00",
    )
    g.add_argument("--status", action="store_true", help="with --slurm: where each experiment of HEAD's grid stands")
    g.add_argument("--slurm-dir", help="with --slurm: the work trees' and logs' folder (default: slurm/ in the repo)")
    r = sub.add_parser("report", help="the paper's tables from the finished DVC experiments, as report.md + figures")
    r.add_argument("--out", default="report", help="output folder (default: report)")
    r.add_argument("--exp", nargs="+", metavar="NAME", help="use only these experiments (default: all found)")
    r.add_argument("--all", action="store_true", help="experiments of every commit, not only HEAD's")
    q = sub.add_parser("predict", help="score a nodule of a CT series (or of the dataset) with the fold models")
    q.add_argument("series", nargs="?", help="folder with the .dcm files of one CT series")
    q.add_argument(
        "--centre-mm",
        nargs=3,
        type=float,
        metavar=("X", "Y", "Z"),
        help="nodule centre in patient coordinates (mm, as ImagePositionPatient)",
    )
    q.add_argument(
        "--centre-voxel",
        nargs=3,
        type=float,
        metavar=("I", "J", "K"),
        help="nodule centre as row, column, slice index (a LIDC series: pylidc's; else the folder's, by z from 0)",
    )
    q.add_argument("--diameter-mm", type=float, help="nodule diameter in mm, with a centre")
    q.add_argument(
        "--box",
        nargs=6,
        type=int,
        metavar=("I0", "I1", "J0", "J1", "K0", "K1"),
        help="half-open voxel box (rows, columns, slices), as nodules.h5's bbox. Slices count from the first "
        "slice of the whole series: on a LIDC series pylidc's index, also where the folder holds only some "
        "slices (else the folder's, by z from 0). A box counted from a partial folder's own first file names "
        "slices below the ones meant: refused where the folder lacks one of them, else those are scored "
        "(docs/predict.md)",
    )
    q.add_argument(
        "--slices",
        nargs="+",
        type=int,
        metavar="K",
        help="with --box: only these slices, counted as --box counts them (a LIDC series: pylidc's index)",
    )
    q.add_argument(
        "--dataset",
        default="data/nodules.h5",
        help="the models' training data: with --nodule-id, the nodule to score; with a series, where its nodule "
        "is looked up (default: data/nodules.h5)",
    )
    q.add_argument("--nodule-id", help="score this nodule of --dataset (e.g. LIDC-IDRI-0001/s12/n0)")
    q.add_argument(
        "--splits",
        default="data/splits.json",
        help="the models' folds: which one held a training nodule out (default: data/splits.json)",
    )
    q.add_argument("--models", default="data/models", help="folder of fold<k>/model.pt (default: data/models)")
    q.add_argument(
        "--params",
        default="params.yaml",
        help="checked against the crop the models were trained with (which predict uses)",
    )
    q.add_argument("--device", default="cpu", help="cpu (default) | auto | cuda | cuda:N")
    q.add_argument("--json", action="store_true", help="print JSON for machines")
    c = sub.add_parser(
        "check-params",
        help="check a params file against the schema: one line naming a wrong key and what to do, or `ok`",
    )
    c.add_argument("path", nargs="?", default="params.yaml", help="default: params.yaml")
    return parser


def main(argv: list[str] | None = None) -> None:
    """The console script: help and ``--version`` in any folder, every command under the checkout guard.

    A first parse, outside :func:`~nodule_net.cli.errors.user_errors_exit`, lets argparse print
    help or the version and exit 0 (adding a note where this folder is another clone than the
    package's, whose commands may differ); anything else it leaves to :func:`run_command`.
    """
    argv = sys.argv[1:] if argv is None else argv
    try:
        build_parser(_FirstPass).parse_known_args(argv)
    except _Unparsed:
        pass  # run_command says what is wrong, after the checkout guard
    except SystemExit as done:  # help or the version was printed
        if done.code in (0, None) and (problem := foreign_checkout()):
            print(f"note: {problem}", file=sys.stderr)
        raise
    run_command(argv)


@user_errors_exit(interrupted="interrupted")
def run_command(argv: list[str]) -> None:
    """Parse ``argv`` and run its subcommand (one-line errors, the checkout guard: ``user_errors_exit``)."""
    parser = build_parser()
    # `grid --slurm` passes the options it does not know to sbatch; every other command knows all of its own.
    args, sbatch = parser.parse_known_args(argv)
    if sbatch and not (args.command == "grid" and args.slurm):
        parser.error(f"unrecognized arguments: {' '.join(sbatch)}")
    args.sbatch = sbatch
    # Each subcommand's module is imported only when it runs: torch, pydicom, pandas or pylidc load for it alone.
    import_module(f"nodule_net.cli.{args.command.replace('-', '_')}").run(args)


if __name__ == "__main__":
    main()
