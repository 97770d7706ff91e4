"""Several processes fill one feature cache folder together (``FeatureCache.across``): each input encoded by exactly
one of them, every process reading the same complete table, and a dead or stuck process stopping the others."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_cache_source import assert_tables_close

from _tiny import tiny_bert_dir, tiny_resnet_dir
from mmfuse.cache import FeatureCache, PeerError, Peers
from mmfuse.cache.keys import ContentHasher, text_key
from mmfuse.cache.peers import TIMEOUT_ENV, peer_timeout
from mmfuse.cache.shards import SUFFIX, read_header
from mmfuse.data import Example

WORKER = Path(__file__).with_name("_peers_fill.py")


def _env(**extra: str) -> dict[str, str]:
    """The test's environment (its mmfuse, by PYTHONPATH or installed), one thread per process, unbuffered output."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _args(tmp_path: Path, synth_root: Path, mode: str = "fill") -> list[str]:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return [str(WORKER), str(out), str(tmp_path / "cache"), str(synth_root), str(tiny_bert_dir()),
            str(tiny_resnet_dir()), mode]  # fmt: skip


def _shards(root: Path) -> list[Path]:
    return sorted(p for p in (root / "features").rglob(f"*{SUFFIX}") if not p.name.startswith("."))


@pytest.mark.slow
@pytest.mark.numerics
def test_two_processes_fill_one_cache_each_input_once(
    tmp_path: Path, synth_root: Path, examples: list[Example]
) -> None:
    # a cache that holds some inputs already: only the others are split between the processes
    FeatureCache(tmp_path / "cache", encode_workers=0).get(
        build_text(), examples[:10], need_sequence=True, batch_size=8
    )
    before = set(_shards(tmp_path / "cache"))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, *_args(tmp_path, synth_root)], env=_env(), capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = tmp_path / "out"
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    hasher = ContentHasher()
    for modality, cached in (("text", 10), ("image", 0)):
        unique = len(set(hasher.keys(examples, modality=modality)))
        ran = [r["ran"][modality] for r in records]
        # each input not cached before ran through the encoder of exactly one process (the forward hook counts rows)
        assert sum(ran) == unique - cached and min(ran) > 0, ran
        # the two tables are the same bytes: read from the same shards (or this process's own copy of them)
        tables = [load_file(str(out / f"rank{r}-{modality}.safetensors")) for r in (0, 1)]
        assert tables[0].keys() == tables[1].keys()
        for name in tables[0]:
            assert torch.equal(tables[0][name], tables[1][name]), name
    text_ran = sum(r["ran"]["text"] for r in records)
    image_ran = sum(r["ran"]["image"] for r in records)
    assert sum(r["stats"]["computed"] for r in records) == text_ran + image_ran
    assert all(r["stats"]["peer_gaps"] == 0 and r["stats"]["unstored"] == 0 for r in records)

    # on disk: every input in exactly one shard; the new shards written by both processes (the pid in their names)
    new = [read_header(p) for p in _shards(tmp_path / "cache") if p not in before]
    keys = [k for h in new for k in h.keys]
    assert len(keys) == len(set(keys)) == text_ran + image_ran
    assert {h.path.name.split("-")[1] for h in new} == {str(r["pid"]) for r in records}

    # the features of one process encoding everything alone, in its own batches
    one = FeatureCache(tmp_path / "one", encode_workers=0)
    for modality, encoder in (("text", build_text()), ("image", build_image())):
        want = one.get(encoder, examples, need_sequence=True, batch_size=8)
        got = load_file(str(out / f"rank0-{modality}.safetensors"))
        from mmfuse.features import FeatureTable

        table = FeatureTable(pooled=got["pooled"], values=got["values"], valid=got["valid"], offsets=got["offsets"],
                             present=got.get("present"), grid=want.grid)  # fmt: skip
        assert_tables_close(table, want)  # other batches than one process's: see its tolerance


def build_text():
    from mmfuse.encoders import build_text_encoder

    encoder = build_text_encoder(str(tiny_bert_dir()))
    encoder.freeze()
    return encoder


def build_image():
    from mmfuse.encoders import build_image_encoder

    encoder = build_image_encoder(str(tiny_resnet_dir()))
    encoder.freeze()
    return encoder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_two(tmp_path: Path, synth_root: Path, mode: str, timeout: str) -> list[subprocess.CompletedProcess]:
    """Two plain processes (no launcher, which would stop the survivor itself): what does each do alone?"""
    port = str(_free_port())
    procs = []
    for rank in (0, 1):
        env = _env(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, **{TIMEOUT_ENV: timeout})
        command = [sys.executable, *_args(tmp_path, synth_root, mode)]
        procs.append(subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = []
    for p in procs:
        try:
            stdout, stderr = p.communicate(timeout=180)  # a hang fails the test instead of blocking it
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
    return results


@pytest.mark.slow
def test_a_process_that_dies_stops_the_others_with_a_message(tmp_path: Path, synth_root: Path) -> None:
    # the timeout is long: a dead process is noticed at once (its connections close), not by waiting
    survivor, dead = _start_two(tmp_path, synth_root, "die", timeout="600")
    assert dead.returncode == 3
    assert survivor.returncode == 5, survivor.stderr[-3000:]
    message = survivor.stderr.split("PeerError: ", 1)[1]
    assert "process 0 of 2: another process died or did not reach" in message
    assert "a rerun encodes only the rest" in message and TIMEOUT_ENV in message
    assert _shards(tmp_path / "cache")  # what was finished is kept


@pytest.mark.slow
def test_a_stuck_process_stops_the_others_after_the_timeout(tmp_path: Path, synth_root: Path) -> None:
    survivor, stuck = _start_two(tmp_path, synth_root, "hang", timeout="3")
    assert survivor.returncode == 5, survivor.stderr[-3000:]
    assert "within 3 s" in survivor.stderr.split("PeerError: ", 1)[1]
    assert stuck.returncode != 0  # its own next meeting fails too, once it wakes: nobody waits for ever


@pytest.mark.slow
def test_a_process_whose_meeting_timed_out_exits_with_its_own_status() -> None:
    # gloo aborted such a process at exit ("terminate called without an active exception", SIGABRT) in about half
    # the runs, after the PeerError was said, while its peer still slept; four tries miss that 1 time in 16
    script = Path(__file__).with_name("_peers_timeout.py")
    for _ in range(4):
        env = _env(WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), **{TIMEOUT_ENV: "2"})
        command, pipe = [sys.executable, str(script)], subprocess.PIPE
        procs = [subprocess.Popen(command, env={**env, "RANK": str(r)}, stderr=pipe, text=True) for r in (0, 1)]
        try:
            errors = [p.communicate(timeout=120)[1] for p in procs]
        finally:
            for p in procs:
                p.kill()
        assert procs[0].returncode == 5, errors[0][-3000:]
        assert "the second meeting within 2 s" in errors[0] and "terminate called" not in errors[0]
        assert procs[1].returncode not in (0, -6), errors[1][-3000:]  # it found process 0 gone: no wait, no abort


@pytest.mark.slow
@pytest.mark.numerics
def test_a_folder_not_shared_by_the_processes_is_said_and_each_encodes_what_it_lacks(
    tmp_path: Path, synth_root: Path, examples: list[Example]
) -> None:
    results = _start_two(tmp_path, synth_root, "apart", timeout="600")
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-3000:] + results[1].stderr[-3000:]
    out = tmp_path / "out"
    records = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    hasher = ContentHasher()
    unique = sum(len(set(hasher.keys(examples, modality=m))) for m in ("text", "image"))
    # each process encoded its own share, then found the other's missing from its folder and encoded it too: every
    # input ran through each process's encoders, and the gaps of the two add up to all inputs (each one's share)
    for rank, record in enumerate(records):
        assert record["stats"]["computed"] == record["ran"]["text"] + record["ran"]["image"] == unique
        assert 0 < record["stats"]["peer_gaps"] < unique
        assert "are not in the feature cache folder" in results[rank].stderr
        assert "Point cache.dir (or MMFUSE_CACHE_DIR) at a folder every process can write" in results[rank].stderr
    assert records[0]["stats"]["peer_gaps"] + records[1]["stats"]["peer_gaps"] == unique
    for modality in ("text", "image"):
        tables = [load_file(str(out / f"rank{r}-{modality}.safetensors")) for r in (0, 1)]
        for name in tables[0]:
            # the same inputs, encoded in other batches by each process: see assert_tables_close's tolerance
            torch.testing.assert_close(tables[0][name], tables[1][name], atol=1e-5, rtol=0)


def test_every_key_belongs_to_exactly_one_process() -> None:
    keys = [text_key(f"text {i}") for i in range(300)]
    keys.append("absent-image")  # the key of every missing image is not a hex digest
    for world in (1, 2, 3):
        owners = [[r for r in range(world) if Peers(r, world).owns(k)] for k in keys]
        assert all(len(o) == 1 for o in owners)
        shares = [sum(o == [r] for o in owners) for r in range(world)]
        assert min(shares) > len(keys) / world / 2  # about even


def test_across_one_process_or_none_is_the_cache_itself(tmp_path: Path) -> None:
    cache = FeatureCache(tmp_path / "c")
    assert cache.across(None) is cache and cache.across(Peers(0, 1)) is cache
    with pytest.raises(ValueError, match="rank 2 of 2"):
        Peers(2, 2)


def test_the_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TIMEOUT_ENV, "42.5")
    assert peer_timeout() == 42.5
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=f"{TIMEOUT_ENV}='soon' is not a positive number"):
        peer_timeout()


def test_peers_over_torch_distributed_need_it_initialised() -> None:
    import torch.distributed as dist

    from mmfuse.cache import TorchPeers

    assert not dist.is_initialized()
    with pytest.raises(ValueError, match=r"torch\.distributed is not initialised; start them with accelerate launch"):
        TorchPeers(0, 2)


@pytest.mark.slow
@pytest.mark.numerics
def test_a_cold_fill_over_two_processes_exports_once_and_both_run_onnxruntime(
    tmp_path: Path, synth_root: Path, examples: list[Example], monkeypatch: pytest.MonkeyPatch
) -> None:
    # the job's 40-odd distinct inputs per encoder reach the (lowered) AUTO_MIN_INPUTS, one process's share does not:
    # the choice is the job's, so process 0 exports each encoder once and both processes run onnxruntime
    results = _start_two(tmp_path, synth_root, "onnx", timeout="120")
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-3000:] + results[1].stderr[-3000:]
    everything = sorted((tmp_path / "cache" / "onnx").iterdir())
    files = [f for f in everything if f.suffix == ".onnx"]
    # one export per encoder and the record of its check against torch beside it, no temporaries
    assert len(files) == 2 and len(everything) == 4, everything
    assert all(f.with_name(f.name + ".checked.json") in everything for f in files), everything
    exported = [line for r in results for line in r.stderr.splitlines() if "exported to " in line]
    assert len(exported) == 2 and all(line in results[0].stderr for line in exported), exported
    for result in results:
        for encoder in (build_text(), build_image()):
            assert f"encoder {encoder.name!r} runs on onnxruntime" in result.stderr, result.stderr[-3000:]
        assert "runs torch" not in result.stderr and "running it on torch" not in result.stderr
    # process 1 loaded process 0's files, which process 0 had checked against torch on this machine just before
    assert "loaded " in results[1].stderr and "checked against torch on" in results[1].stderr

    # one process alone, on onnxruntime from the same files: the same features, in other batches
    from mmfuse.encoders.runtime import OnnxEncoder
    from mmfuse.features import FeatureTable, compute

    monkeypatch.setattr(compute, "AUTO_MIN_INPUTS", 30)
    monkeypatch.setattr(compute, "_seconds", lambda run, inputs: 0.0 if isinstance(run, OnnxEncoder) else 1.0)
    (tmp_path / "one" / "onnx").mkdir(parents=True)
    for f in files:
        (tmp_path / "one" / "onnx" / f.name).write_bytes(f.read_bytes())
    one = FeatureCache(tmp_path / "one", encode_workers=0)
    out = tmp_path / "out"
    for modality, encoder in (("text", build_text()), ("image", build_image())):
        tables = [load_file(str(out / f"rank{r}-{modality}.safetensors")) for r in (0, 1)]
        for name in tables[0]:  # read back from the same shards by both
            assert torch.equal(tables[0][name], tables[1][name]), name
        want = one.get(encoder, examples, need_sequence=True, batch_size=8)
        got = tables[0]
        table = FeatureTable(pooled=got["pooled"], values=got["values"], valid=got["valid"], offsets=got["offsets"],
                             present=got.get("present"), grid=want.grid)  # fmt: skip
        assert_tables_close(table, want)  # other batches than one process's: see its tolerance


@pytest.mark.slow
def test_processes_that_ask_for_different_features_stop_at_once_saying_which(
    tmp_path: Path, synth_root: Path, synth_splits: dict
) -> None:
    # process 1 asks for the validation split: both stop at their first meeting, not after the (long) timeout
    results = _start_two(tmp_path, synth_root, "mismatch", timeout="120")
    train, val = len(synth_splits["train"].examples), len(synth_splits["val"].examples)
    assert train != val
    name = build_text().name
    for rank, result in enumerate(results):
        assert result.returncode == 5, result.stderr[-3000:]
        message = result.stderr.split("PeerError: ", 1)[1]
        assert f"process {rank} of 2: the processes asked the feature cache for different features" in message
        assert f"process 0: the text encoder {name!r} on {train} inputs" in message
        assert f"process 1: the text encoder {name!r} on {val} inputs" in message
        assert "start them all with the same command, config and overrides" in message
        assert "did not reach" not in message  # not the timeout's message
    assert not (tmp_path / "out" / "rank0-text.safetensors").exists()  # nothing was encoded for the mixed request


@pytest.mark.slow
def test_a_failed_export_on_process_0_is_said_to_the_others_which_run_torch(tmp_path: Path, synth_root: Path) -> None:
    results = _start_two(tmp_path, synth_root, "onnx-fail", timeout="120")
    assert [r.returncode for r in results] == [0, 0], results[0].stderr[-3000:] + results[1].stderr[-3000:]
    assert not list((tmp_path / "cache" / "onnx").glob("*.onnx"))  # process 1 did not export it after all
    for encoder in (build_text(), build_image()):
        # process 1 was told process 0's reason, and runs torch saying it as process 0 does
        line = f"encoder {encoder.name!r}: backend auto runs torch (the export of {encoder.name} was refused (a test))"
        assert all(line in r.stderr for r in results), results[1].stderr[-3000:]
    assert "exported to" not in results[0].stderr + results[1].stderr


@pytest.mark.slow
def test_an_export_that_crashes_process_0_stops_the_others_saying_so(tmp_path: Path, synth_root: Path) -> None:
    crashed, other = _start_two(tmp_path, synth_root, "onnx-crash", timeout="120")
    assert crashed.returncode not in (0, 5) and "RuntimeError: a bug in the export (a test)" in crashed.stderr
    assert other.returncode == 5, other.stderr[-3000:]
    message = other.stderr.split("PeerError: ", 1)[1]
    name = build_text().name
    assert f"process 1 of 2: process 0 failed exporting the text encoder {name!r} to ONNX" in message
    assert "a bug in the export (a test)" in message and "see its output for why" in message
    assert "did not reach" not in message  # told at the meeting, not found dead or late


class _Said(Peers):
    """Process 0 of 2 whose partner said ``other`` at every meeting."""

    def __init__(self, other: tuple) -> None:
        super().__init__(0, 2)
        self.other = other

    def gather(self, item: object, what: str) -> list[object]:
        return [item, self.other]


def test_a_meeting_of_processes_at_different_requests_names_each() -> None:
    same = _Said(("abc", "the text encoder 'm' on 10 inputs", 7))
    assert same.meet("abc", "the text encoder 'm' on 10 inputs", "the start", 3) == [3, 7]
    other = _Said(("def", "the image encoder 'n' on 4 inputs", 7))
    with pytest.raises(PeerError) as e:
        other.meet("abc", "the text encoder 'm' on 10 inputs", "the start of encoding", 3)
    message = str(e.value)
    assert "process 0 of 2: the processes asked the feature cache for different features at the start of encoding" in (
        message
    )
    assert "process 0: the text encoder 'm' on 10 inputs; process 1: the image encoder 'n' on 4 inputs" in message
    assert "start them all with the same command, config and overrides" in message
