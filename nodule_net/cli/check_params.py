"""`nodule-net check-params`: a params file against the schema, before DVC reads it.

DVC parses params.yaml into dvc.yaml's templates before any stage runs, so a file whose
`folds` is no list, or an empty one, gets DVC's message about `stages.train.foreach`, which
never names the key. This command gives the schema's one line instead (`make repro` runs it
before `dvc repro`); the `params` stage of dvc.yaml runs the same check inside DVC.
"""

from __future__ import annotations

import argparse

from nodule_net.config import load_params


def run(args: argparse.Namespace) -> None:
    """Print ``<path>: ok``, or raise the schema's one-line ``ValueError`` naming the key and what is allowed."""
    load_params(args.path)
    print(f"{args.path}: ok")
