#!/usr/bin/env bash
# Every GPU check of the kit in one call, sized for ~9 minutes on one H100/H200 (BENCHMARKS.md, "One GPU run"):
#   1. pytest -q tests/train/test_gpu.py                        (AMP, compile modes, resume, no host sync in a step)
#   2. benchmarks/run.py --sections gpu                   (fit vs compute only vs timm; eager, default, reduce-overhead)
#   3. benchmarks/run.py --sections predict               (predict_test, 5 folds x 4 TTA views, eager and compiled)
#   4. benchmarks/run.py --sections recipes               (every configs/*.yaml recipe: kit vs timm vs compute only)
# Each step has its own time limit, so one slow compilation cannot take the others' time; a step that runs
# out says so in $OUT/summary.txt and the next one starts. Outputs: $OUT/<step>.txt (the tables, stdout and
# stderr), $OUT/<step>.json (every number), $OUT/summary.txt (exit status and seconds of each step).
#
#   OUT=/tmp/gpu-out bash benchmarks/gpu_all.sh           # PYTHON=... to pick the interpreter (default: .venv's)
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
PY=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
WORK=${WORK:-${TMPDIR:-/tmp}/comp-bench}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
: > "$OUT/summary.txt"
{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1;
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__)"; } >> "$OUT/summary.txt"

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, output to $OUT/NAME.txt
  local name=$1 limit=$2 t0 rc
  shift 2
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.txt" 2>&1
  rc=$?
  echo "$name: exit $rc in $(( $(date +%s) - t0 )) s (limit $limit s$([ $rc -eq 124 ] && echo ', ran out'))" \
    | tee -a "$OUT/summary.txt"
}

bench() {  # bench NAME SECONDS ARGS...: one benchmark section; its JSON line to $OUT/NAME.json
  local name=$1 limit=$2
  shift 2
  step "$name" "$limit" "$PY" benchmarks/run.py --json --work "$WORK" "$@"
  tail -n 1 "$OUT/$name.txt" | grep '^{' > "$OUT/$name.json" || rm -f "$OUT/$name.json"
}

step test_gpu 150 "$PY" -m pytest -q tests/train/test_gpu.py -p no:cacheprovider
# 4,096 images (12 steps of 256 a training epoch: fold 0 of 5), 3 epochs, eager and two train.compile modes; the
# max-autotune modes autotune for minutes and are left to `make bench` on a lent machine of its own.
bench gpu 150 --sections gpu --gpu-images 4096 --compile-modes default reduce-overhead
# 1,000 cached 512 px test images x 5 folds x 4 views = 20,000 forward passes per model and setting.
bench predict 130 --sections predict --predict-images 1000 --compile-modes true
# every shipped config at its own size and batch, 3 optimizer steps an epoch, 2 epochs (the second timed).
bench recipes 110 --sections recipes --recipe-steps 3
echo "done $(date -u)" >> "$OUT/summary.txt"
