"""One-line exits for user mistakes, shared by the CLI and every stage script.

:func:`user_errors_exit` wraps a ``main``: a ``ValueError`` or ``FileNotFoundError`` (a
mistake a user can fix) prints ``error: ...`` and exits 1, Ctrl-C exits 130 with one line
and SIGTERM (``kill PID``, a batch system's end of job) 143, each after the same clean-up,
and a full or read-only disk is one line too; anything else is a bug and keeps its traceback.
It also refuses to run one checkout's stage with another checkout's installed package.
"""

from __future__ import annotations

import errno
import functools
import logging
import re
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import nodule_net

_DISK_FULL_OR_READ_ONLY = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)

# Exit status of a process ended by Ctrl-C (128 + SIGINT), or by SIGTERM (128 + 15), as shells report it.
INTERRUPTED_EXIT = 130
TERMINATED_EXIT = 143
INTERRUPTED = "interrupted; no output was left half-written, and `dvc repro` runs this stage again"


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Ctrl-C's KeyboardInterrupt would be, so that it takes the same way out.

    Without a handler SIGTERM ends a process on the spot: its pool workers would be left
    to notice alone, and a half-built output folder would stay (``phantom.partial``).
    """


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated()


def terminated_line(interrupted: str) -> str:
    """The one line of a SIGTERM: ``interrupted``'s (Ctrl-C's line) with its first word saying so."""
    head, sep, rest = interrupted.partition(";")
    return f"terminated (SIGTERM){sep}{rest}" if head == "interrupted" else f"terminated (SIGTERM): {interrupted}"


def foreign_package(script: str | Path) -> str | None:
    """Why ``script`` (a stage script or module) must not run with the imported ``nodule_net``, or None.

    A second clone sharing a venv would otherwise run the first clone's code through the
    editable install; ``python -m pipeline.<stage>`` from the repo root puts the
    checkout's own package first on ``sys.path``.
    """
    # The folder that holds the script's own package: the script is pipeline/<stage>.py or inside nodule_net/.
    checkout = next((folder for folder in Path(script).resolve().parents if (folder / "nodule_net").is_dir()), None)
    package = Path(nodule_net.__file__).resolve().parent
    if checkout is None or package.parent == checkout:
        return None
    return (
        f"{script} belongs to the checkout {checkout} but imported nodule_net from {package}; "
        "run stages from the repo root as dvc.yaml does (`python -m pipeline.<stage>`)."
    )


# pyproject.toml's `name = "nodule-net"` in any spelling pip treats as the same (PEP 503); a regex,
# not tomllib, which Python 3.10 lacks.
_OUR_NAME = re.compile(r'^name\s*=\s*["\']nodule[-_.]net["\']\s*$', re.MULTILINE | re.IGNORECASE)


def _is_checkout(folder: Path) -> bool:
    """Whether ``folder`` is the root of a nodule-net checkout: the package, and dvc.yaml or our pyproject.toml."""
    if not (folder / "nodule_net").is_dir():
        return False
    pyproject = folder / "pyproject.toml"
    return (folder / "dvc.yaml").is_file() or (pyproject.is_file() and bool(_OUR_NAME.search(pyproject.read_text())))


def foreign_checkout(cwd: str | Path | None = None) -> str | None:
    """Why a command run in ``cwd`` (default: the current folder) must not use the imported ``nodule_net``, or None.

    The console script ``nodule-net`` of a venv shared by two clones imports the package
    of the clone that was installed (``pip install -e .``), whatever folder it runs in; its
    ``main`` lives in that package, so :func:`foreign_package` cannot see it. The
    checkout ``cwd`` lies in (it or its nearest parent that is one) must be the package's.
    """
    here = Path(Path.cwd() if cwd is None else cwd).resolve()
    checkout = next((folder for folder in (here, *here.parents) if _is_checkout(folder)), None)
    package = Path(nodule_net.__file__).resolve().parent
    if checkout is None or package.parent == checkout:
        return None
    return (
        f"{checkout} is a nodule-net checkout, but this command imported nodule_net from {package}; "
        f"run `pip install -e .` in {checkout} (or use that clone's own venv), then re-run."
    )


def user_errors_exit(main: Callable[..., None] | None = None, *, interrupted: str = INTERRUPTED) -> Callable:
    """Run a stage's (or the CLI's) ``main``; a user mistake prints one line naming the problem and exits 1.

    Ctrl-C prints the one line ``interrupted`` and exits 130; SIGTERM is raised as
    :class:`Terminated` and ends the same way, with :func:`terminated_line` and exit 143. Before anything runs, the
    ``nodule_net`` package must be the one of ``main``'s own checkout (:func:`foreign_package`)
    and of the checkout the current folder is in (:func:`foreign_checkout`). Anything else (a
    bug) keeps its traceback. Use as ``@user_errors_exit`` or ``@user_errors_exit(interrupted=...)``.
    """
    if main is None:
        return functools.partial(user_errors_exit, interrupted=interrupted)

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        script = getattr(sys.modules.get(main.__module__), "__file__", None)
        # Only the main thread may set a handler; the previous one is restored for in-process callers (tests).
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if in_main else None
        try:
            if (script is not None and (problem := foreign_package(script))) or (problem := foreign_checkout()):
                raise ValueError(problem)
            return main(*args, **kwargs)
        except (ValueError, FileNotFoundError) as err:  # DicomError is a ValueError
            print(f"error: {err}", file=sys.stderr)
            sys.exit(1)
        except OSError as err:
            if err.errno not in _DISK_FULL_OR_READ_ONLY:
                raise
            # The up-front check (files.check_writable) passed, but the disk filled up meanwhile.
            print(
                f"error: cannot write {err.filename or 'an output'}: {err.strerror}; "
                "free some space or make it writable, then re-run.",
                file=sys.stderr,
            )
            sys.exit(1)
        except Terminated:
            print(terminated_line(interrupted), file=sys.stderr)
            sys.exit(TERMINATED_EXIT)
        except KeyboardInterrupt:
            print(interrupted, file=sys.stderr)
            sys.exit(INTERRUPTED_EXIT)
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)

    return wrapper
