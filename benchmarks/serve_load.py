"""Load on ``mmfuse serve`` over loopback: requests/s and latency, request batching on and off, malformed traffic,
and ONNX Runtime vs PyTorch latency. Reports numbers; asserts nothing.

The model: a ``cross_attention`` head (untrained; its weights do not change the cost) over the offline pretrained
encoders, MiniLM-L6 (text) and EfficientNet-Lite0 (224 px images), saved as a checkpoint in a temporary folder, or
the run given with ``--run``. The server is the real command (``mmfuse serve CKPT``) in a subprocess on 127.0.0.1;
the load generator is this process (httpx, asyncio), so both share the machine's cores, as they would on one host.
The model runs on ``--threads`` threads (default 1, ``mmfuse serve --threads 1``): on 2 cores this leaves one to the
load generator and the event loop, and PyTorch's 2 intra-op threads thrash when the cores are busy (~10x slower
per batch on a loaded machine), so 1 thread gives steadier numbers; the load average is printed first.

1. Single ``/predict`` requests (multipart: a 320×240 JPEG of ~25 KB and a caption) from C closed-loop clients
   (each sends its next request when the previous one is answered), C = ``--concurrency`` (default 1, 4, 16),
   against the real server started once per backend, one table side by side: ``mmfuse serve CHECKPOINT`` (PyTorch)
   and ``mmfuse serve model.onnx`` (ONNX Runtime, the file ``mmfuse export`` writes, with its preprocessing folder:
   no encoder weights loaded), both with request batching (``--max-batch 16 --max-wait-ms 10``, the defaults),
   and PyTorch without batching (``--max-batch 1``; ``--skip-unbatched`` leaves it out). Each level: a warm-up of
   C requests, then ``--requests`` requests or ``--seconds`` seconds, whichever ends first. Under the table: each
   server process's resident memory (RSS, from /proc) after its last level, and its peak.
2. ``--mixed`` requests (default 1000), a third valid and the rest malformed (not an image, bad base64, missing
   fields, broken JSON and multipart, a decompression bomb, oversized bodies, empty batches), from 16 clients:
   the statuses by kind, the count of 5xx, and whether ``/health`` and a valid request still work after.
3. The model alone, in this process: PyTorch vs ONNX Runtime (the same exported file) on batches of 1 and 16
   preprocessed items, median of repeated runs.

The ONNX file is exported once (``--exporter``, default dynamo) into the temporary folder before part 1;
``--skip-onnx`` leaves out the export, the ONNX column and part 3, ``--mixed 0`` part 2.

Run::

    .venv/bin/python benchmarks/serve_load.py [--run runs/NAME] [--concurrency 1,4,16] [--requests 200]
        [--seconds 30] [--mixed 1000] [--exporter dynamo|torchscript] [--skip-onnx] [--skip-unbatched]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import os
import platform
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

CAPTIONS = [
    "when the code finally compiles",
    "",
    "look at this",
    "a long caption that goes on about the picture, the people in it and what they might be thinking right now",
    "nobody: me at 3am",
    "the view from the office window this morning",
]


# ----------------------------------------------------------------------------------------------- the model


def make_checkpoint(folder: Path, head: str) -> Path:
    """An untrained ``head`` over MiniLM + EfficientNet-Lite0, saved as a checkpoint folder."""
    from mmfuse.data.labels import LabelMap
    from mmfuse.engine.classifier import MultimodalClassifier
    from mmfuse.model.build import build_model

    clf = MultimodalClassifier(head=head, text_encoder="minilm", image_encoder="efficientnet-lite0")
    torch.manual_seed(0)
    clf.model = build_model(clf.config.model, 2)
    clf.label_map = LabelMap(["benign", "hateful"])
    clf.threshold = 0.5
    return clf.save(folder / "checkpoint")


def jpeg(seed: int, size: tuple[int, int] = (320, 240)) -> bytes:
    """A photo-like JPEG: smooth colour gradients plus a little noise (random noise alone compresses badly)."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    base = np.stack([np.sin(6 * x + rng.uniform(0, 6)), np.cos(5 * y + rng.uniform(0, 6)), np.sin(4 * (x + y))], -1)
    pixels = np.clip(127 + 100 * base + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=85)
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Server:
    url: str
    pid: int


def memory_mb(pid: int) -> tuple[float, float]:
    """(resident, peak resident) memory of process ``pid`` in MB, from /proc (Linux); NaN elsewhere."""
    try:
        fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    except OSError:
        return float("nan"), float("nan")
    kb = [float(fields[k].split()[0]) if k in fields else float("nan") for k in ("VmRSS", "VmHWM")]
    return kb[0] / 1000, kb[1] / 1000


@contextmanager
def server(checkpoint: Path, *extra: str, threads: int = 1):
    """``mmfuse serve CHECKPOINT`` (a checkpoint folder or an ``.onnx`` file) in a subprocess on 127.0.0.1;
    yields a :class:`Server` (base URL, process id) once /health answers."""
    port = free_port()
    cmd = [sys.executable, "-c", "from mmfuse.cli import main; main()", "serve", str(checkpoint)]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--threads", str(threads), *extra]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield Server(_wait_healthy(f"http://127.0.0.1:{port}", proc, log), proc.pid)
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_healthy(url: str, proc: subprocess.Popen, log) -> str:
    deadline = time.monotonic() + 300
    while True:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"the server exited ({proc.returncode}):\n{log.read().decode()[-3000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return url
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not answer /health within 300 s")
        time.sleep(0.5)


# ----------------------------------------------------------------------------------------------- load


async def closed_loop(url: str, requests: list[dict], concurrency: int, limit: int, seconds: float):
    """``concurrency`` clients each send their next request when the last is answered, until ``limit`` requests
    were sent or ``seconds`` passed. Returns (latencies in s, statuses, wall seconds)."""
    latencies: list[float] = []
    statuses: list[int] = []
    sent = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        start = time.perf_counter()
        deadline = start + seconds

        async def worker() -> None:
            nonlocal sent
            while sent < limit and time.perf_counter() < deadline:
                request = requests[sent % len(requests)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    r = await client.request("POST", **request)
                    statuses.append(r.status_code)
                except httpx.TransportError:
                    statuses.append(-1)
                latencies.append(time.perf_counter() - t0)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return latencies, statuses, wall


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def single_requests(
    setups: list[tuple[str, Path, list[str]]], levels: list[int], limit: int, seconds: float, threads: int
) -> list[dict]:
    """Each setup (name, what to serve, extra ``mmfuse serve`` flags) in its own server, at each level; one table."""
    images = [jpeg(seed) for seed in range(8)]
    requests = [
        {"url": "/predict", "data": {"text": CAPTIONS[i % len(CAPTIONS)]}, "files": {"image": ("p.jpg", im)}}
        for i, im in enumerate(images)
    ]
    print(f"payload: 320x240 JPEG, {statistics.mean(len(i) for i in images) / 1000:.0f} KB on average, multipart")
    rows = []
    memory: dict[str, tuple[float, float]] = {}
    for name, target, flags in setups:
        print(f"  serving {name}: mmfuse serve {target.name} {' '.join(flags)}".rstrip(), flush=True)
        with server(target, *flags, threads=threads) as srv:
            for c in levels:
                asyncio.run(closed_loop(srv.url, requests, c, c, 60))  # warm-up: every connection, first batches
                before = httpx.get(f"{srv.url}/health").json()
                lat, statuses, wall = asyncio.run(closed_loop(srv.url, requests, c, limit, seconds))
                after = httpx.get(f"{srv.url}/health").json()
                batches = after["batches"] - before["batches"]
                items = after["mean_batch"] * after["batches"] - before["mean_batch"] * before["batches"]
                rows.append({
                    "setup": name, "concurrency": c, "requests": len(lat), "seconds": wall,
                    "rps": len(lat) / wall, "p50_ms": 1000 * percentile(lat, 50), "p99_ms": 1000 * percentile(lat, 99),
                    "mean_batch": items / batches if batches else float("nan"),
                    "non_200": sum(s != 200 for s in statuses),
                })  # fmt: skip
            memory[name] = memory_mb(srv.pid)
    names = [name for name, _, _ in setups]
    head = f"| {'req/s':>6} {'p50 ms':>7} {'p99 ms':>7} {'batch':>5} {'n':>4} "
    width = len(head)
    print("\n  " + " " * 8 + "".join(f"| {n}".ljust(width) for n in names))
    print("  clients " + head * len(names))
    for c in levels:
        cells = []
        for name in names:
            r = next(r for r in rows if r["setup"] == name and r["concurrency"] == c)
            cells.append(
                f"| {r['rps']:6.2f} {r['p50_ms']:7.0f} {r['p99_ms']:7.0f} {r['mean_batch']:5.2f} {r['requests']:4d} "
            )
        print(f"  {c:>7} " + "".join(cells))
    print("  RSS MB  " + "".join(f"| {memory[n][0]:.0f} after, {memory[n][1]:.0f} peak".ljust(width) for n in names))
    bad = {n: sum(r["non_200"] for r in rows if r["setup"] == n) for n in names}
    print("  (batch: mean items per model call, from /health; n: requests timed; non-200 answers: "
          + ", ".join(f"{n} {k}" for n, k in bad.items()) + ")")  # fmt: skip
    return rows


# ----------------------------------------------------------------------------------------------- malformed


def _bomb() -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 8, 2, 0, 0, 0)  # 2.5 Gpx claimed
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 99)) + chunk(b"IEND", b"")


def mixed_kinds() -> dict[str, tuple[dict, int]]:
    """Kind -> (request, how many of each 30)."""
    image = jpeg(99)
    b64 = base64.b64encode(image).decode()
    return {
        "valid-form": ({"url": "/predict", "data": {"text": "hi"}, "files": {"image": ("a.jpg", image)}}, 6),
        "valid-json": ({"url": "/predict", "json": {"text": "", "image": b64}}, 3),
        "valid-batch": ({"url": "/predict/batch", "json": {"items": [{"text": "a", "image": b64}] * 4}}, 1),
        "not-image": ({"url": "/predict", "data": {"text": "x"}, "files": {"image": ("a.png", b"<html>")}}, 3),
        "truncated": ({"url": "/predict", "data": {"text": "x"}, "files": {"image": ("t.jpg", image[:300])}}, 2),
        "bad-base64": ({"url": "/predict", "json": {"text": "x", "image": "%%%"}}, 2),
        "missing-image": ({"url": "/predict", "json": {"text": "x"}}, 2),
        "missing-text": ({"url": "/predict", "files": {"image": ("a.jpg", image)}}, 1),
        "bad-json": ({"url": "/predict", "content": b"{", "headers": {"content-type": "application/json"}}, 2),
        "bomb": ({"url": "/predict", "data": {"text": "x"}, "files": {"image": ("b.png", _bomb())}}, 2),
        "oversized": ({"url": "/predict", "data": {"text": "x"}, "files": {"image": ("h.png", b"\0" * 12_000_000)}}, 1),
        "no-content-type": ({"url": "/predict", "content": b"\x00\x01"}, 1),
        "bad-multipart": (
            {"url": "/predict", "content": b"--x\r\nbroken", "headers": {"content-type": "multipart/form-data"}},
            2,
        ),
        "empty-batch": ({"url": "/predict/batch", "json": {"items": []}}, 1),
        "text-too-long": ({"url": "/predict", "json": {"text": "x" * 20_000, "image": b64}}, 1),
    }


def mixed_requests(checkpoint: Path, total: int, seconds: float, threads: int) -> dict:
    kinds = mixed_kinds()
    pool = [name for name, (_, weight) in kinds.items() for _ in range(weight)]
    order = [pool[i % len(pool)] for i in range(total)]
    random.Random(0).shuffle(order)
    by_kind: dict[str, dict[int, int]] = {name: {} for name in kinds}

    async def load(url: str) -> float:
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=httpx.Limits(max_connections=16)) as client:
            gate = asyncio.Semaphore(16)
            start = time.perf_counter()

            async def one(name: str) -> None:
                async with gate:
                    if time.perf_counter() - start > seconds:
                        return
                    try:
                        status = (await client.request("POST", **kinds[name][0])).status_code
                    except httpx.TransportError:
                        status = -1
                    by_kind[name][status] = by_kind[name].get(status, 0) + 1

            await asyncio.gather(*(one(name) for name in order))
            return time.perf_counter() - start

    with server(checkpoint, threads=threads) as srv:
        url = srv.url
        wall = asyncio.run(load(url))
        health = httpx.get(f"{url}/health", timeout=30)
        form = kinds["valid-form"][0]
        after = httpx.post(f"{url}/predict", data=form["data"], files=form["files"], timeout=60)
    sent = sum(sum(v.values()) for v in by_kind.values())
    server_errors = sum(n for v in by_kind.values() for s, n in v.items() if s >= 500 or s < 0)
    print(f"  {sent} requests in {wall:.1f} s from 16 clients; 5xx or dropped: {server_errors}")
    for name, statuses in by_kind.items():
        print(f"    {name:<16} {dict(sorted(statuses.items()))}")
    print(f"  after: /health {health.status_code} {health.json()['status']}, a valid /predict {after.status_code}")
    return {"sent": sent, "server_errors": server_errors, "health": health.status_code, "after": after.status_code}


# ----------------------------------------------------------------------------------------------- onnx vs torch


def export(checkpoint: Path, folder: Path, exporter: str):
    """``checkpoint`` exported to ``folder/model.onnx`` (with its preprocessing folder), as ``mmfuse export`` does."""
    from mmfuse.export import export_run

    result = export_run(checkpoint, folder / "model.onnx", exporter=exporter)  # type: ignore[arg-type]
    print(
        f"  exported with {result.exporter} in {result.seconds:.0f} s, {result.size_bytes / 1e6:.0f} MB, "
        f"max |ONNX - PyTorch| {max(result.max_abs_diff.values()):.1e}"
    )
    return result


def model_latency(checkpoint: Path, onnx_file: Path, reps: int, threads: int) -> None:
    from mmfuse.export import OnnxPredictor
    from mmfuse.serve import TorchPredictor, decode_image

    torch_predictor = TorchPredictor.from_run(checkpoint)
    onnx_predictor = OnnxPredictor(onnx_file, threads=threads)
    pixels = [torch_predictor.prepare_image(decode_image(jpeg(seed))) for seed in range(16)]
    texts = [CAPTIONS[i % len(CAPTIONS)] for i in range(16)]
    for batch in (1, 16):
        times = {}
        for name, predictor in (("pytorch", torch_predictor), ("onnxruntime", onnx_predictor)):
            predictor.predict(texts[:batch], pixels[:batch])  # warm-up
            runs = []
            for _ in range(reps if batch == 1 else max(3, reps // 4)):
                t0 = time.perf_counter()
                predictor.predict(texts[:batch], pixels[:batch])
                runs.append(time.perf_counter() - t0)
            times[name] = statistics.median(runs)
        print(
            f"  batch {batch:>2}: PyTorch {1000 * times['pytorch']:6.1f} ms, ONNX Runtime "
            f"{1000 * times['onnxruntime']:6.1f} ms (median; {times['pytorch'] / times['onnxruntime']:.2f}x)"
        )


# ----------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run or checkpoint folder (default: an untrained one)")
    parser.add_argument("--head", default="cross_attention", help="head of the untrained model")
    parser.add_argument("--concurrency", default="1,4,16", help="client counts, comma-separated (default 1,4,16)")
    parser.add_argument("--requests", type=int, default=200, help="requests per level at most")
    parser.add_argument("--seconds", type=float, default=30.0, help="seconds per level at most")
    parser.add_argument("--mixed", type=int, default=1000, help="mixed valid/malformed requests (0: skip part 2)")
    parser.add_argument("--exporter", default="dynamo", choices=["dynamo", "torchscript"])
    parser.add_argument("--reps", type=int, default=20, help="model-latency repetitions at batch 1")
    parser.add_argument("--threads", type=int, default=1, help="model threads, server and in-process (default 1)")
    parser.add_argument("--skip-onnx", action="store_true", help="no export, no ONNX column, no part 3")
    parser.add_argument("--skip-unbatched", action="store_true", help="no PyTorch --max-batch 1 column")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"Python {platform.python_version()}")  # fmt: skip
    print(f"command: {' '.join(sys.argv)}")
    with tempfile.TemporaryDirectory(prefix="mmfuse-serve-bench-") as tmp:
        checkpoint = args.run or make_checkpoint(Path(tmp), args.head)
        print(f"model: {checkpoint}" if args.run else f"model: untrained {args.head} over MiniLM + EfficientNet-Lite0")
        levels = [int(c) for c in args.concurrency.split(",")]
        onnx_file = None
        if not args.skip_onnx:
            print("\n0. export")
            onnx_file = export(checkpoint, Path(tmp) / "onnx", args.exporter).path
        batching = ["--max-batch", "16", "--max-wait-ms", "10"]
        setups = [("pytorch (checkpoint)", checkpoint, batching)]
        if onnx_file is not None:
            setups.append(("onnx (model.onnx)", onnx_file, batching))
        if not args.skip_unbatched:
            setups.append(("pytorch, max-batch 1", checkpoint, ["--max-batch", "1"]))
        print(f"\n1. single requests, closed loop, at most {args.requests} requests or {args.seconds:.0f} s per level")
        single_requests(setups, levels, args.requests, args.seconds, args.threads)
        print(f"load average now {os.getloadavg()[0]:.2f}")
        if args.mixed > 0:
            print(f"\n2. {args.mixed} mixed requests, about a third valid")
            mixed_requests(checkpoint, args.mixed, seconds=600, threads=args.threads)
        if onnx_file is not None:
            print("\n3. the model alone, preprocessed inputs, one process")
            model_latency(checkpoint, onnx_file, args.reps, args.threads)


if __name__ == "__main__":
    main()
