"""One sweep worker process for the multi-worker tests: ``python _worker.py SWEEP.yaml OUT STORAGE BARRIER RESULT``
runs :func:`mmfuse.sweep.run_sweep` and writes the trials it ran to RESULT; ``python _worker.py SWEEP.yaml OUT STORAGE
BARRIER --cli`` runs ``mmfuse sweep SWEEP.yaml --out OUT --storage STORAGE`` through the console script's entry point
(its exit status is this process's; the study records which worker ran each trial).

With ``MMFUSE_TEST_GRACE_S`` set, the worker takes a running trial whose heartbeat is that many seconds old for one
of a dead worker (the sweep's grace period is 3 minutes).

Before its first trial trains past epoch 1, each worker waits (up to a minute) until the other one has started a
trial too, so the test sees two workers sharing one study however fast the first one starts.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from mmfuse.sweep import load_sweep, run_sweep, runner

WORKERS = 2


def main() -> None:
    sweep_file, out, storage, barrier, result_file = sys.argv[1:6]
    if "MMFUSE_TEST_GRACE_S" in os.environ:  # a running trial's heartbeat counts as stale sooner than in 3 minutes
        from mmfuse.sweep import study

        study.GRACE_S = int(os.environ["MMFUSE_TEST_GRACE_S"])
    torch.set_num_threads(1)
    barrier_dir = Path(barrier)
    original = runner.PruneOnEpoch.__call__
    waited = False

    def wait_for_the_other(self, record):
        nonlocal waited
        if not waited:
            waited = True
            (barrier_dir / str(os.getpid())).touch()
            deadline = time.monotonic() + 60
            while len(list(barrier_dir.iterdir())) < WORKERS and time.monotonic() < deadline:
                time.sleep(0.1)
        original(self, record)

    runner.PruneOnEpoch.__call__ = wait_for_the_other
    if result_file == "--cli":
        from mmfuse.cli import main as mmfuse

        sys.argv = ["mmfuse", "sweep", sweep_file, "--out", out, "--storage", storage]
        mmfuse()  # exits with the command's status
        return
    result = run_sweep(load_sweep(sweep_file), out=out, storage=storage, log=lambda m: print(m, flush=True))
    Path(result_file).write_text(json.dumps({"pid": os.getpid(), "ran": result.ran, "finished": result.finished}))


if __name__ == "__main__":
    main()
