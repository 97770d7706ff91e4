"""The quality benchmark's rows with ``cache.dtype: float32`` against ``float16``, side by side. Reports numbers;
asserts nothing. Run the two sweeps first, in separate work folders (``benchmarks/quality.py``)::

    .venv/bin/python benchmarks/quality.py --datasets mvsa_single --heads cross_attention,early_fusion --seeds 3 \\
        --threads 1 --cache-dtype float32 --work /tmp/fp16q/f32 --cache-dir /tmp/fp16q/f32/cache \\
        --docs /tmp/fp16q/f32/docs
    # the same with float16 and /tmp/fp16q/f16
    .venv/bin/python benchmarks/cache_dtype_quality.py /tmp/fp16q/f32 /tmp/fp16q/f16

It reads each head's finished seeds straight from the sweep folders (``<work>/sweeps/<dataset>-*/heads/<head>/final/
selected/seed-*.json`` and their ``.npz`` predictions), so it also reports a run still going: the seeds finished so
far are named. Per head: test accuracy, macro-F1 and weighted-F1 as mean ± sample standard deviation over seeds for
each dtype, the difference of the means over the seeds both finished, whether it lies within the seed spread (the
smaller of the two standard deviations), and per seed the validation macro-F1, the largest change of a test
probability and how many predicted labels changed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np

METRICS = ("accuracy", "macro_f1", "weighted_f1")


def seeds(work: Path, dataset: str, head: str) -> dict[int, tuple[dict[str, Any], Any]]:
    """Seed -> (its record, its predictions) of every finished seed of ``head``."""
    out = {}
    for path in sorted(work.glob(f"sweeps/{dataset}-*/heads/{head}/final/selected/seed-*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        out[int(record["seed"])] = (record, np.load(path.with_suffix(".npz")))
    return out


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return 100 * statistics.mean(values), (100 * statistics.stdev(values) if len(values) > 1 else float("nan"))


def compare(a: dict, b: dict, head: str) -> None:
    print(f"## {head}: float32 seeds {sorted(a) or 'none'}, float16 seeds {sorted(b) or 'none'}")
    both = sorted(set(a) & set(b))
    for metric in METRICS:
        cells = []
        for name, res in (("float32", a), ("float16", b)):
            values = [res[s][0]["test"][metric] for s in sorted(res)]
            if values:
                m, sd = _mean_sd(values)
                cells.append(f"{name} {m:.2f} ± {sd:.2f}")
        if not cells:
            continue
        line = f"  test {metric}: " + ", ".join(cells)
        if len(both) > 1:
            diff = 100 * statistics.mean(b[s][0]["test"][metric] - a[s][0]["test"][metric] for s in both)
            spread = min(_mean_sd([r[s][0]["test"][metric] for s in both])[1] for r in (a, b))
            verdict = "within" if abs(diff) <= spread else "OUTSIDE"
            line += f"; float16 - float32 over seeds {both}: {diff:+.2f} ({verdict} the seed spread, sd {spread:.2f})"
        print(line)
    for s in both:
        (ra, pa), (rb, pb) = a[s], b[s]
        proba_a, proba_b = pa["test_proba"], pb["test_proba"]
        changed = int((proba_a.argmax(1) != proba_b.argmax(1)).sum())
        print(
            f"  seed {s}: val macro_f1 {100 * ra['val']['macro_f1']:.2f} / {100 * rb['val']['macro_f1']:.2f}, best "
            f"epoch {ra['best_epoch']} / {rb['best_epoch']}, largest change of a test probability "
            f"{np.abs(proba_a - proba_b).max():.2e}, {changed} of {len(proba_a)} predicted labels changed"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("float32", type=Path, help="--work folder of the float32 run")
    parser.add_argument("float16", type=Path, help="--work folder of the float16 run")
    parser.add_argument("--dataset", default="mvsa_single")
    parser.add_argument("--heads", default="cross_attention,early_fusion", help="comma-separated")
    args = parser.parse_args()
    for head in args.heads.split(","):
        compare(seeds(args.float32, args.dataset, head), seeds(args.float16, args.dataset, head), head)


if __name__ == "__main__":
    main()
