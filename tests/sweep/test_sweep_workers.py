"""Several worker processes on one study (slow: each process loads torch and the tiny encoders).

Two processes share one grid through an explicit ``--storage`` URL and run every point exactly once; a worker killed
mid-trial leaves a trial that the next run finds, fails and runs again from its checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from optuna.trial import TrialState

from mmfuse.sweep import load_study, run_sweep, sweep_from_dict

pytestmark = pytest.mark.slow

WORKER = Path(__file__).with_name("_worker.py")
LRS = [3e-3, 2e-3, 1e-3, 5e-4]


def _spec(base_config: dict[str, Any], name: str, baselines: bool) -> dict[str, Any]:
    return {"name": name, "base": copy.deepcopy(base_config), "grid": {"lr": LRS}, "baselines": baselines}


def _sweep_file(tmp_path: Path, base_config: dict[str, Any], name: str, baselines: bool) -> Path:
    file = tmp_path / f"{name}.yaml"
    spec = _spec(base_config, name, baselines)
    file.write_text(yaml.safe_dump(spec))
    return file


def _start(file: Path, out: Path, storage: str, barrier: Path, result: Path) -> subprocess.Popen[str]:
    """A worker process (see ``_worker.py``), its output captured."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    args = [sys.executable, str(WORKER), str(file), str(out), storage, str(barrier), str(result)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def test_two_workers_share_one_study_and_run_each_point_once(base_config, tmp_path):
    file = _sweep_file(tmp_path, base_config, "shared", baselines=True)
    out, barrier = tmp_path / "sweep", tmp_path / "barrier"
    barrier.mkdir()
    storage = f"sqlite:///{tmp_path / 'elsewhere' / 'shared.db'}"  # an explicit storage URL, as for PostgreSQL
    procs = [_start(file, out, storage, barrier, tmp_path / f"w{i}.json") for i in range(2)]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    results = [json.loads((tmp_path / f"w{i}.json").read_text()) for i in range(2)]
    ran = [set(r["ran"]) for r in results]
    assert ran[0] and ran[1], f"one worker ran nothing: {results}"  # both took trials ...
    assert not ran[0] & ran[1]  # ... never the same one

    study = load_study(out, storage)
    assert not (out / "study.db").exists()  # the study lives where --storage says
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    taken = Counter(t.user_attrs.get("mmfuse.point", t.user_attrs.get("mmfuse.baseline")) for t in complete)
    assert taken == {0: 1, 1: 1, 2: 1, 3: 1, "text_only": 1, "image_only": 1}
    assert ran[0] | ran[1] == {t.number for t in complete}
    assert {t.user_attrs["mmfuse.worker"]["pid"] for t in complete} == {r["pid"] for r in results}
    for t in complete:  # each point and baseline trained once: one history of two epochs in its own folder
        history = (out / t.user_attrs["mmfuse.run_dir"] / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in history] == [1, 2]
    table = pd.read_csv(out / "trials.csv")
    assert table["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert sorted(table.loc[table["baseline"].isna(), "lr"].astype(float)) == sorted(LRS)
    assert table["test_auroc"].notna().sum() == 1
    assert any(r["finished"] for r in results)


def test_a_killed_worker_trial_is_run_again_and_finished_ones_are_not(base_config, tmp_path):
    file = _sweep_file(tmp_path, base_config, "killed", baselines=False)
    out, barrier = tmp_path / "sweep", tmp_path / "barrier"
    barrier.mkdir()
    (barrier / "other").touch()  # alone: no one to wait for
    storage = f"sqlite:///{out / 'study.db'}"
    proc = _start(file, out, storage, barrier, tmp_path / "w.json")
    # kill it once trial 1 has written its first epoch's checkpoint (trial 0 is finished by then)
    meta = out / "trials" / "trial-0001" / "checkpoints" / "last" / "meta.json"
    deadline = time.monotonic() + 300
    while not meta.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    lines: list[str] = []
    result = run_sweep(sweep_from_dict(_spec(base_config, "killed", baselines=False)), out=out, log=lines.append)
    assert "trial 1: its worker process died; queued again" in lines
    assert 0 not in result.ran and result.finished
    study = load_study(out)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert Counter(t.user_attrs["mmfuse.point"] for t in complete) == {0: 1, 1: 1, 2: 1, 3: 1}
    retry = next(t for t in complete if t.user_attrs.get("mmfuse.retry_of") == 1)
    assert retry.user_attrs["mmfuse.run_dir"] == "trials/trial-0001"
    table = pd.read_csv(out / "trials.csv")
    assert dict(Counter(table["state"])) == {"complete": 4, "interrupted": 1}
