"""Reading ``params.yaml`` and turning user mistakes into one-line errors for stage scripts."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path
from typing import Callable

import yaml


def load_params(path: str | Path = "params.yaml") -> dict:
    """The whole params file as a dict."""
    with open(path) as f:
        return yaml.safe_load(f)


def user_errors_exit(main: Callable[..., None]) -> Callable[..., None]:
    """Run a stage's ``main``; a user mistake prints one line naming the problem and exits 1.

    Anything else (a bug) keeps its traceback.
    """

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        try:
            return main(*args, **kwargs)
        except (ValueError, FileNotFoundError) as err:  # DicomError is a ValueError
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)

    return wrapper
