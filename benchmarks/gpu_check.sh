#!/usr/bin/env bash
# The demo's training under `accelerate launch` on the GPUs of this machine, with mixed precision: prints the
# training throughput per device (and how the frozen encoders' feature extraction was split over the processes),
# first on one GPU, then on all of them.
#
# Usage: benchmarks/gpu_check.sh [--dry-run] [OUT_DIR]      (default: a new temporary folder)
#
#   --dry-run        check the settings and print the commands the check would run, one per step and shell-quoted,
#                    then exit 0: no GPU is needed and nothing is run or written (GPUS stands in for the GPU count)
#
# Environment:
#   PYTHON           interpreter with mmfuse (and a CUDA build of torch) installed; default: python3
#   MIXED_PRECISION  bf16 (default) or fp16
#   HEAD             demo head to train (default: early_fusion, which runs MiniLM's layers every batch and
#                    fine-tunes its top two; the image grid comes from the feature cache)
#   N                synthetic examples (default 2000; 70 % train)
#   EPOCHS           epochs per run (default 3; throughput is the mean over the epochs after the first)
#   BATCH_SIZE       train.batch_size (default 64; divisible by the GPU count)
#   GPUS             with --dry-run only: the GPU count to print the commands for (default 2: one GPU, then two)
#
# The tests do not need it (there is no GPU where they run); tests/test_gpu_check.py checks its syntax, that it
# refuses cleanly on a machine without a GPU, and that the commands --dry-run prints parse with the installed
# accelerate and mmfuse. Exit status: 0 done, 2 no GPU or a bad setting, else a failed run.
set -euo pipefail

DRY_RUN=0
if [[ "${1-}" == "--dry-run" ]]; then
    DRY_RUN=1
    shift
fi

PY=${PYTHON:-python3}
PRECISION=${MIXED_PRECISION:-bf16}
HEAD=${HEAD:-early_fusion}
N=${N:-2000}
EPOCHS=${EPOCHS:-3}
BATCH_SIZE=${BATCH_SIZE:-64}

fail() {
    echo "gpu_check: error: $*" >&2
    exit 2
}

# show WORDS...: the command on one line, each word shell-quoted (what --dry-run prints instead of running it)
show() {
    printf '%q' "$1"
    shift
    printf ' %q' "$@"
    printf '\n'
}

case "$PRECISION" in
    bf16 | fp16) ;;
    *) fail "MIXED_PRECISION=$PRECISION; use bf16 or fp16" ;;
esac
for name in N EPOCHS BATCH_SIZE; do
    [[ ${!name} =~ ^[1-9][0-9]*$ ]] || fail "$name=${!name} is not a positive whole number"
done

if ((DRY_RUN)); then
    gpus=${GPUS:-2}
    [[ $gpus =~ ^[1-9][0-9]*$ ]] || fail "GPUS=$gpus is not a positive whole number"
else
    gpus=$("$PY" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)' 2>/dev/null) ||
        fail "$PY cannot import torch; set PYTHON to the interpreter that has mmfuse installed"
    if [[ "$gpus" -lt 1 ]]; then
        fail "no CUDA GPU is visible to torch on this machine (torch.cuda.is_available() is False${CUDA_VISIBLE_DEVICES+; CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES}): run this check on a machine with GPUs and a CUDA build of torch (the tests do not need one), or pass --dry-run to print its commands"
    fi
fi
heads=$("$PY" -c 'import accelerate; from mmfuse.engine.demo import DEMO_HEADS; print(" ".join(DEMO_HEADS))' 2>/dev/null) ||
    fail "$PY cannot import accelerate and mmfuse; pip install mmfuse there"
[[ " $heads " == *" $HEAD "* ]] || fail "HEAD=$HEAD is not a demo head; use one of ${heads// /, }"
((BATCH_SIZE % gpus == 0)) || fail "BATCH_SIZE=$BATCH_SIZE is not divisible by the $gpus GPUs; pick a multiple"

if ((DRY_RUN)); then
    OUT=${1:-/tmp/mmfuse-gpu-check-XXXXXX}
    echo "gpu_check: dry run for $gpus GPU(s), head $HEAD, $PRECISION, $N examples, $EPOCHS epochs, batch" \
        "$BATCH_SIZE; the commands, in order (nothing is run or written):"
    echo "# the demo's data and config (the first Python script in this file, on stdin):"
    show "$PY" - "$OUT" "$HEAD" "$N" "$EPOCHS"
else
    OUT=${1:-$(mktemp -d -t mmfuse-gpu-check-XXXXXX)}
    mkdir -p "$OUT"
    echo "gpu_check: $gpus GPU(s), head $HEAD, $PRECISION, $N examples, $EPOCHS epochs, batch $BATCH_SIZE; output in $OUT"

    # The demo's data and the head's config, written once by one process (every launched process reads them).
    "$PY" - "$OUT" "$HEAD" "$N" "$EPOCHS" <<'EOF'
import sys
from pathlib import Path

from mmfuse.data.synthetic import make_synthetic
from mmfuse.engine.demo import demo_config

out, head, n, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
root = make_synthetic(out / "data", n=n, seed=0)
cfg = demo_config(head, root, out / "runs", epochs=epochs, seed=0, quiet=True)
(out / "config.yaml").write_text(cfg.to_yaml(), encoding="utf-8")
EOF
fi

counts=(1)
if [[ "$gpus" -gt 1 ]]; then
    counts+=("$gpus")
fi
for n in "${counts[@]}"; do
    launch=(-m accelerate.commands.launch --num_processes "$n" --num_machines 1 --mixed_precision "$PRECISION"
        --dynamo_backend no)
    if [[ "$n" -gt 1 ]]; then
        launch+=(--multi_gpu)
    fi
    # its own cache folder per run: each run extracts the features itself (split over its processes)
    train=("$PY" "${launch[@]}" -m mmfuse train "$OUT/config.yaml" --quiet
        "run.name=gpus$n" "run.out_dir=$OUT/runs" "cache.dir=$OUT/cache-$n" "train.mixed_precision=$PRECISION"
        "train.device=auto" "train.batch_size=$BATCH_SIZE" "train.eval_batch_size=$BATCH_SIZE")
    if ((DRY_RUN)); then
        echo "# training on $n GPU(s), its output to $OUT/gpus$n.out:"
        show "${train[@]}"
        continue
    fi
    echo "gpu_check: training on $n GPU(s) ..."
    "${train[@]}" >"$OUT/gpus$n.out" 2>&1 || {
        tail -n 40 "$OUT/gpus$n.out" >&2
        echo "gpu_check: error: the run on $n GPU(s) failed (its output: $OUT/gpus$n.out)" >&2
        exit 1
    }
done

if ((DRY_RUN)); then
    echo "# the table of throughputs (the second Python script in this file, on stdin):"
    show "$PY" - "$OUT" "$PRECISION" "${counts[@]}"
    exit 0
fi

"$PY" - "$OUT" "$PRECISION" "${counts[@]}" <<'EOF'
import json
import re
import sys
from pathlib import Path

out, precision, counts = Path(sys.argv[1]), sys.argv[2], [int(c) for c in sys.argv[3:]]
print(f"\n{'GPUs':>4}  {'precision':>9}  {'train ex/s':>10}  {'ex/s per GPU':>12}  {'device':<24}  features")
for n in counts:
    run = out / "runs" / f"gpus{n}"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    rates = [r["examples_per_s"] for r in records[1:] or records]  # the first epoch pays warm-up
    rate = sum(rates) / len(rates)
    log = (run / "train.log").read_text()
    device = re.search(r"device (\S+ x\d+)", log)
    shares = re.search(r"features: (\d+ processes encoded .*? inputs) into .* \(in (.*?) s\)", log)
    if shares:
        features = f"{shares[1]} in {shares[2]} s"
    else:
        features = "one process encoded every input" if n == 1 else "not split (see train.log)"
    print(f"{n:>4}  {precision:>9}  {rate:>10.1f}  {rate / n:>12.1f}  {device[1] if device else '?':<24}  {features}")
EOF
