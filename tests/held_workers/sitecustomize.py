"""A test hook, on PYTHONPATH only in the tests that kill processes: hold spawned pool workers where
``NODULE_NET_HOLD`` says, so that a test knows what each one is doing when it kills a process.

Python imports ``sitecustomize`` at start-up, before anything else runs. Only a spawned
multiprocessing child (``--multiprocessing-fork`` on its command line) is held; each notes
``held-<pid>`` in ``NODULE_NET_HOLD_DIR`` and then sleeps:

- ``start``: before it has read its start-up arguments from the parent's pipe;
- ``extract``: while it extracts its first scan (it never returns it);
- ``phantom``: after writing its first scan under ``<root>.partial``;
- ``train``: in a fold process, after its fold's first epoch (whose checkpoint is written).

A worker's function is sent by name, so replacing it in its module here replaces it for the pool.
"""

import os
import sys
import time
from pathlib import Path

HOLD_S = 600  # longer than any test: the test ends the process

hold, marks = os.environ.get("NODULE_NET_HOLD"), os.environ.get("NODULE_NET_HOLD_DIR")
if hold and marks and "--multiprocessing-fork" in sys.argv:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # this checkout's nodule_net

    def held() -> None:
        (Path(marks) / f"held-{os.getpid()}").touch()
        time.sleep(HOLD_S)

    if hold == "start":
        held()
    elif hold == "extract":
        from nodule_net.data import extract

        def _extract_job(job):
            held()

        extract._extract_job = _extract_job
    elif hold == "phantom":
        from nodule_net.data import phantom

        real_write_scan = phantom.write_scan

        def write_scan(job):
            real_write_scan(job)
            held()

        phantom.write_scan = write_scan
    elif hold == "train":
        from nodule_net.training import processes

        real_fit = processes.fit

        def fit(data, parts, model_config, train_config, fold, path, report, **kwargs):
            def report_then_hold(record):
                report(record)
                if record.epoch == 1:
                    held()

            return real_fit(data, parts, model_config, train_config, fold, path, report_then_hold, **kwargs)

        processes.fit = fit
