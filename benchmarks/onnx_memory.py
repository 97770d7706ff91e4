"""Memory and time to load an exported model in ``OnnxPredictor``: the preprocessing files shipped beside the
``.onnx`` (new) against the encoders rebuilt from the stored config, weights and all (old: what an export without
the preprocessing folder still does). Reports numbers; asserts nothing. Run::

    .venv/bin/python benchmarks/onnx_memory.py [--run runs/NAME] [--head cross_attention] [--repeats 3]

The model: a ``--head`` head (untrained: its weights do not change the memory, their size does) over the offline
pretrained encoders, MiniLM-L6 (text) and EfficientNet-Lite0 (images), saved as a checkpoint in a temporary folder,
or the run given with ``--run``. It is exported once (TorchScript exporter), then copied without its preprocessing
folder and without the metadata entry naming it, as an older mmfuse wrote it.

Each load runs in a fresh Python process (old and new alternated, ``--repeats`` times each) that imports
``mmfuse.export.runtime`` (torch, onnxruntime, transformers' tokenizers), then builds ``OnnxPredictor(path,
threads=1)``, then predicts one item. It reports the RSS after the imports (``psutil``), the peak RSS of the process
once the predictor is built (``VmHWM`` of ``/proc/self/status``, the high-water mark; ``ru_maxrss`` elsewhere), the
RSS then
(``psutil``, after ``gc.collect()``: what the server keeps), the peak after one prediction (onnxruntime's buffers
for a 224 px image), and the wall time of the ``OnnxPredictor(...)`` call alone. Medians over the repeats.

The checkpoint and the export are made in a process of their own, so the measuring processes are started from a
small one: ``ru_maxrss`` (unlike ``VmHWM``) survives ``exec``, and a child forked from a process that had just
exported (~1 GB) would report that process's peak.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import gc, json, resource, sys, time
import psutil
from mmfuse.export.runtime import OnnxPredictor
from PIL import Image

def rss_mb():
    return psutil.Process().memory_info().rss / 2**20

def peak_mb():
    try:  # the high-water mark of this program's memory (reset by exec, unlike ru_maxrss: see the module docstring)
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # KiB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB

gc.collect()
after_imports = rss_mb()
t0 = time.perf_counter()
predictor = OnnxPredictor(sys.argv[1], threads=1)
load_s = time.perf_counter() - t0
peak_load = peak_mb()
gc.collect()
rss_load = rss_mb()
pixels = [predictor.prepare_image(Image.new("RGB", (320, 240), (120, 80, 40)))]
predictor.predict(["a caption to tokenize"], pixels)
print(json.dumps({
    "after_imports_mb": after_imports, "peak_load_mb": peak_load, "rss_load_mb": rss_load,
    "peak_predict_mb": peak_mb(), "load_s": load_s, "preprocessing": predictor.preprocessing,
}))
"""


def old_export(new: Path, folder: Path) -> Path:
    """``new`` as an older mmfuse wrote it: no preprocessing folder beside it, no metadata entry naming one."""
    import onnx

    from mmfuse.export.onnx_export import METADATA_KEY

    model = onnx.load(str(new))
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            meta = json.loads(prop.value)
            meta.pop("preprocessing", None)
            prop.value = json.dumps(meta)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(folder / "model.onnx"))
    return folder / "model.onnx"


def prepare(root: Path, run: Path | None, head: str) -> None:
    """Makes the checkpoint (unless ``run``), the export and its old-style copy under ``root``; writes
    ``root/prepared.json``."""
    from serve_load import make_checkpoint  # the serving benchmark's untrained model (this script's folder)

    from mmfuse.export import export_run, preprocessing_dir

    run = run or make_checkpoint(root / "run", head)
    result = export_run(run, root / "new" / "model.onnx", exporter="torchscript")
    folder = preprocessing_dir(result.path)
    facts = {
        "new": str(result.path),
        "old": str(old_export(result.path, root / "old")),
        "onnx_mb": result.size_bytes / 1e6,
        "folder": folder.name,
        "folder_mb": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6,
    }
    (root / "prepared.json").write_text(json.dumps(facts))


def measure(path: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"the measuring process failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, help="a trained run or checkpoint folder (default: an untrained one)")
    parser.add_argument("--head", default="cross_attention", help="head of the untrained model")
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per path")
    parser.add_argument("--prepare", type=Path, help=argparse.SUPPRESS)  # internal: the setup process
    args = parser.parse_args()
    if args.prepare is not None:
        prepare(args.prepare, args.run, args.head)
        return

    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="mmfuse-onnx-memory-") as tmp:
        root = Path(tmp)
        setup = [sys.executable, __file__, "--prepare", str(root), "--head", args.head]
        subprocess.run(setup + (["--run", str(args.run)] if args.run else []), check=True)
        facts = json.loads((root / "prepared.json").read_text())
        paths = {"old (encoders rebuilt)": Path(facts["old"]), "new (preprocessing files)": Path(facts["new"])}
        print(
            f"model: {args.run or f'untrained {args.head} over minilm + efficientnet-lite0'}; "
            f"model.onnx {facts['onnx_mb']:.0f} MB, {facts['folder']}/ {facts['folder_mb']:.2f} MB"
        )
        runs: dict[str, list[dict]] = {name: [] for name in paths}
        for _ in range(args.repeats):
            for name, path in paths.items():  # alternated, so a busier moment of the machine hits both
                runs[name].append(measure(path))
        print(f"\nmedian of {args.repeats} fresh processes each (MiB; time of the OnnxPredictor(...) call):")
        print(
            f"{'path':<28}{'RSS imports':>12}{'peak load':>11}{'RSS loaded':>12}{'peak +1 prediction':>20}"
            f"{'load time':>11}"
        )
        for name, values in runs.items():
            med = {k: statistics.median(v[k] for v in values) for k in values[0] if k != "preprocessing"}
            print(
                f"{name:<28}{med['after_imports_mb']:>12.0f}{med['peak_load_mb']:>11.0f}{med['rss_load_mb']:>12.0f}"
                f"{med['peak_predict_mb']:>20.0f}{med['load_s']:>10.2f}s"
            )
            print(f"{'':<28}preprocessing from: {values[0]['preprocessing']}")


if __name__ == "__main__":
    main()
