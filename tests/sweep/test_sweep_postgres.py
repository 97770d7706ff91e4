"""Distributed sweeps on a real PostgreSQL server (tests/_postgres.py starts one; skipped, saying why, without it).

``mmfuse sweep --storage postgresql://...`` worker processes share one study: every grid point runs exactly once, the
combined table is complete, and a SIGKILLed worker's trial is reclaimed and finished by the next worker. Slow: each
worker process loads torch and the tiny encoders.
"""

from __future__ import annotations

import copy
import importlib.util
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
from sqlalchemy.engine import make_url

from mmfuse.sweep import load_study

pytest.importorskip("psycopg", reason='the postgres extra is not installed (pip install "mmfuse[postgres]")')

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

WORKER = Path(__file__).with_name("_worker.py")
LRS = [3e-3, 2e-3, 1e-3, 5e-4]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _sweep_file(tmp_path: Path, base_config: dict[str, Any], name: str, baselines: bool) -> Path:
    file = tmp_path / f"{name}.yaml"
    spec = {"name": name, "base": copy.deepcopy(base_config), "grid": {"lr": LRS}, "baselines": baselines}
    file.write_text(yaml.safe_dump(spec))
    return file


def _mmfuse() -> list[str]:
    """The ``mmfuse`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("mmfuse")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from mmfuse.cli import main; main()"]


def _spawn(args: list[str]) -> subprocess.Popen[str]:
    """A process, its output captured."""
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def _completed(study) -> list:
    return [t for t in study.get_trials() if t.state == TrialState.COMPLETE]


def _point(trial) -> int | str:
    return trial.user_attrs.get("mmfuse.point", trial.user_attrs.get("mmfuse.baseline"))


# Each process imports the storage code, says it is ready, and opens the storage once all are ready.
OPEN_AT_ONCE = """
import pathlib, sys, time
from mmfuse.sweep.study import make_storage
url, barrier, n = sys.argv[1], pathlib.Path(sys.argv[2]), int(sys.argv[3])
(barrier / sys.argv[4]).touch()
while len(list(barrier.iterdir())) < n:
    time.sleep(0.001)
print("studies:", len(make_storage(url).get_all_studies()))
"""


def test_workers_starting_at_once_on_a_new_database_all_open_it(postgres_server, tmp_path):
    """Before the fix all but one of them failed on Optuna's CREATE TABLE / CREATE TYPE (a duplicate)."""
    for attempt in range(3):  # a few new databases: the clash needs the processes' statements to overlap
        url = postgres_server.create_database(f"opened_at_once_{attempt}")
        barrier = tmp_path / f"barrier{attempt}"
        barrier.mkdir()
        procs = [_spawn([sys.executable, "-c", OPEN_AT_ONCE, url, str(barrier), "4", str(i)]) for i in range(4)]
        outputs = [p.communicate(timeout=300)[0] for p in procs]
        for p, output in zip(procs, outputs, strict=True):
            assert p.returncode == 0, output[-3000:]
            assert "studies: 0" in output


def test_two_cli_workers_share_one_study_and_run_each_point_once(base_config, tmp_path, postgres_url):
    file = _sweep_file(tmp_path, base_config, "shared", baselines=True)
    out, barrier = tmp_path / "sweep", tmp_path / "barrier"
    barrier.mkdir()
    # `mmfuse sweep FILE --out OUT --storage URL`, each worker's first trial waiting for the other's (see _worker.py)
    procs = [
        _spawn([sys.executable, str(WORKER), str(file), str(out), postgres_url, str(barrier), "--cli"])
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=900)[0] for p in procs]
    for p, log in zip(procs, logs, strict=True):
        assert p.returncode == 0, log[-3000:]
    joined = [("created the study in postgresql" in log, "joined the study in postgresql" in log) for log in logs]
    assert sorted(joined) == [(False, True), (True, False)], logs  # one created the study, the other joined it
    default = make_url(postgres_url).get_driver_name()  # SQLAlchemy's driver for postgresql://
    if importlib.util.find_spec(default) is None:  # postgresql:// went to the other driver, and each worker said so
        assert all(f"{default} (SQLAlchemy's default driver for postgresql://) is not installed" in g for g in logs)
    assert any("sweep finished;" in log for log in logs)

    study = load_study(out, postgres_url)
    assert not (out / "study.db").exists()  # the study lives in PostgreSQL
    complete = _completed(study)
    assert Counter(_point(t) for t in complete) == {0: 1, 1: 1, 2: 1, 3: 1, "text_only": 1, "image_only": 1}
    assert len(study.get_trials()) == len(complete)  # nothing failed, nothing ran twice
    assert {t.user_attrs["mmfuse.worker"]["pid"] for t in complete} == {p.pid for p in procs}  # both took trials
    for t in complete:  # each point and baseline trained once: one history of two epochs in its own folder
        history = (out / t.user_attrs["mmfuse.run_dir"] / "metrics.jsonl").read_text().splitlines()
        assert [json.loads(line)["epoch"] for line in history] == [1, 2]
    table = pd.read_csv(out / "trials.csv")  # the table the last worker wrote holds every worker's trials
    assert table["rank"].tolist() == [1, 2, 3, 4, 5, 6]
    assert set(table["state"]) == {"complete"}
    assert sorted(table.loc[table["baseline"].isna(), "lr"].astype(float)) == sorted(LRS)
    assert table["test_auroc"].notna().sum() == 1


def test_a_sigkilled_worker_trial_is_reclaimed_by_the_next_worker(base_config, tmp_path, postgres_url):
    file = _sweep_file(tmp_path, base_config, "killed", baselines=False)
    out = tmp_path / "sweep"
    command = [*_mmfuse(), "sweep", str(file), "--out", str(out), "--storage", postgres_url]
    first = _spawn(command)
    # kill it once trial 1 has written its first epoch's checkpoint (trial 0 is finished by then)
    meta = out / "trials" / "trial-0001" / "checkpoints" / "last" / "meta.json"
    deadline = time.monotonic() + 600
    while not meta.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval
    assert first.poll() is None, first.communicate()[0][-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)

    second = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV, timeout=900)
    log = second.stdout  # the trial events (stderr) and the table (stdout)
    assert second.returncode == 0, log[-3000:]
    assert "trial 1: its worker process died; queued again" in log
    assert "sweep finished;" in log

    study = load_study(out, postgres_url)
    trials = study.get_trials()
    assert trials[1].state == TrialState.FAIL
    assert trials[1].user_attrs["mmfuse.error"].startswith(f"worker process {first.pid} on ")
    complete = _completed(study)
    assert Counter(t.user_attrs["mmfuse.point"] for t in complete) == {0: 1, 1: 1, 2: 1, 3: 1}
    assert trials[0].user_attrs["mmfuse.worker"]["pid"] == first.pid  # the finished trial was not run again
    retry = next(t for t in complete if t.user_attrs.get("mmfuse.retry_of") == 1)
    assert f"trial {retry.number} started: lr=0.002 (again, was trial 1)" in log
    assert retry.user_attrs["mmfuse.run_dir"] == "trials/trial-0001"  # resumed in the killed trial's folder
    table = pd.read_csv(out / "trials.csv")
    assert dict(Counter(table["state"])) == {"complete": 4, "interrupted": 1}


def test_a_dead_worker_on_another_host_is_reclaimed_once_its_heartbeat_is_stale(base_config, tmp_path, postgres_url):
    """The worker runs in its own UTS namespace (another host name), so only its stale heartbeat tells that it died.
    Before the fix, the next worker found no waiting trial and stopped, leaving the trial running forever."""
    probe = subprocess.run(["unshare", "--uts", "--", "hostname", "mmfuse-elsewhere"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"giving a worker another host name needs `unshare --uts` (root): {probe.stderr.strip()}")
    file = tmp_path / "stale.yaml"
    spec = {"name": "stale", "base": copy.deepcopy(base_config), "grid": {"lr": [1e-3]}, "baselines": False}
    file.write_text(yaml.safe_dump(spec))
    out = tmp_path / "sweep"
    sweep = ["sweep", str(file), "--out", str(out), "--storage", postgres_url]
    elsewhere = ["unshare", "--uts", "--", "sh", "-c", 'hostname mmfuse-elsewhere && exec "$@"', "sh"]
    first = _spawn([*elsewhere, *_mmfuse(), *sweep])  # unshare and sh exec: the pid is the worker's
    meta = out / "trials" / "trial-0000" / "checkpoints" / "last" / "meta.json"
    deadline = time.monotonic() + 600
    while not meta.is_file() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # poll interval
    assert first.poll() is None, first.communicate()[0][-3000:]
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    running = load_study(out, postgres_url).get_trials()[0]
    assert running.state == TrialState.RUNNING
    assert running.user_attrs["mmfuse.worker"]["host"] == "mmfuse-elsewhere"

    barrier = tmp_path / "barrier"
    barrier.mkdir()
    (barrier / "other").touch()  # alone: no one to wait for
    env = {**ENV, "MMFUSE_TEST_GRACE_S": "1"}  # 1 s instead of 3 minutes without a heartbeat
    second = subprocess.run(
        [sys.executable, str(WORKER), str(file), str(out), postgres_url, str(barrier), "--cli"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, timeout=900,
    )  # fmt: skip
    log = second.stdout
    assert second.returncode == 0, log[-3000:]
    assert "trial 0: no heartbeat from its worker on mmfuse-elsewhere for 1s; queued again" in log
    assert "sweep finished;" in log

    trials = load_study(out, postgres_url).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert trials[1].user_attrs["mmfuse.retry_of"] == 0
    assert trials[1].user_attrs["mmfuse.run_dir"] == "trials/trial-0000"  # resumed in the dead trial's folder
    assert dict(Counter(pd.read_csv(out / "trials.csv")["state"])) == {"complete": 1, "interrupted": 1}
