#!/usr/bin/env bash
# GPU check for tfkd: throughput vs the official-style loop, and one real epoch through the CLI.
#
#   bash benchmarks/gpu_check.sh [DATA_DIR]
#
# Run from the repository root. DATA_DIR holds the extracted tiny100-32 files train/test/meta
# (default data/tiny100-32; DATA_DIR/tiny100-32 is accepted too). Made for <= 5 minutes on one
# H100: every step runs under `timeout`, sized from what is left of GPU_CHECK_BUDGET seconds
# (default 285); a failed or timed-out step is reported and the script goes on.
#
# Steps, in priority order:
#   1. environment: torch version and GPU name; tfkd importable (PYTHONPATH, `pip install -e .
#      --no-deps --no-build-isolation`, skipped with GPU_CHECK_NO_INSTALL=1), missing
#      pure-python deps from local wheels ($WHEELS, default shared/wheels), else from the index.
#   2. benchmarks/train_throughput.py on CUDA, fp32 eager: both loops (tfkd and the official-style
#      reference), resnet18 + mobilenetv2, ce / kd / tfkd_reg -> bench_eager.json
#   3. one epoch of resnet18 (width 1, batch 128) on tiny100-32 through the CLI, fp32
#   4. the same with --amp --channels-last
#   5. train_throughput.py with --amp --compile, tfkd loop only (the reference numbers of step 2
#      are reused via --reference-from), resnet18 then mobilenetv2 -> bench_amp_compile_*.json
# Everything printed is also written to $OUT/gpu_check.log (or /tmp/gpu_check/) with the JSON files.
set -u

DATA_ARG="${1:-data/tiny100-32}"
BUDGET="${GPU_CHECK_BUDGET:-285}"
PY="${PYTHON:-python}"
RESULTS="${OUT:-/tmp/gpu_check}"
START=$SECONDS
mkdir -p "$RESULTS"

left() { echo $(( BUDGET - (SECONDS - START) )); }

# step NAME TIMEOUT CMD...: run CMD under timeout (capped by the time left); never exits the script
step() {
  local name=$1 t=$2
  shift 2
  local l
  l=$(left)
  if (( t > l )); then t=$l; fi
  if (( t < 15 )); then
    echo "=== SKIP $name: only ${l}s left of ${BUDGET}s"
    return 124
  fi
  echo "=== $name (timeout ${t}s, $(( SECONDS - START ))s elapsed)"
  local s=$SECONDS rc
  timeout -k 10 "$t" "$@"
  rc=$?
  if (( rc == 124 || rc == 137 )); then
    echo "=== $name: TIMED OUT after $(( SECONDS - s ))s"
  else
    echo "=== $name: rc=$rc in $(( SECONDS - s ))s"
  fi
  return $rc
}

epoch_report() {  # print seconds per epoch from a run directory
  "$PY" - "$1" "$2" <<'EOF'
import csv, json, sys
from pathlib import Path
run, label = Path(sys.argv[1]), sys.argv[2]
try:
    s = json.loads((run / "summary.json").read_text())
    rows = list(csv.DictReader(open(run / "timings.csv")))
    t = rows[-1]
    print(f">>> CLI epoch {label}: {float(t['train_s']):.2f} s/epoch train ({float(t['images_per_s']):.0f} img/s), "
          f"status {s['status']}, test top-1 {s['last']['top1']:.2f}% (tiny100-32, 1 epoch), "
          f"amp={s['amp']} on {s.get('hardware')}")
except Exception as e:  # noqa: BLE001
    print(f">>> CLI epoch {label}: no timings ({type(e).__name__}: {e})")
EOF
}

main() {
# ---------------------------------------------------------------- 1. environment
rm -f "$RESULTS"/bench_*.json "$RESULTS"/cli_*  # never reuse numbers of an earlier run
echo "=== environment"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
"$PY" -c 'import torch;print(torch.__version__, torch.cuda.get_device_name())' \
  || echo "!!! torch/CUDA not usable; the CUDA steps below will fail"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores"

missing=$("$PY" - <<'EOF'
import importlib
for mod, pkg in (("click", "click"), ("yaml", "PyYAML"), ("numpy", "numpy"), ("PIL", "pillow"),
                 ("torchvision", "torchvision")):
    try:
        importlib.import_module(mod)
    except Exception:
        print(pkg)
EOF
)
if [ -n "$missing" ]; then
  echo "missing python packages: $missing"
  WHEELS="${WHEELS:-shared/wheels}"
  # shellcheck disable=SC2086
  timeout 60 "$PY" -m pip install -q --no-index --find-links "$WHEELS" $missing \
    || timeout 60 "$PY" -m pip install -q $missing \
    || echo "!!! could not install: $missing (offline? put wheels in \$WHEELS=$WHEELS)"
fi
if [ -z "${GPU_CHECK_NO_INSTALL:-}" ]; then
  timeout 60 "$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || echo "(editable install failed; using PYTHONPATH=$PWD)"
fi
"$PY" -c 'import tfkd_cli, torchvision; print("tfkd", tfkd_cli.__version__, "torchvision", torchvision.__version__)' \
  || echo "!!! tfkd_cli not importable"

DATA=""
for cand in "$DATA_ARG" "$DATA_ARG/tiny100-32"; do
  if [ -f "$cand/train" ] && [ -f "$cand/test" ] && [ -f "$cand/meta" ]; then DATA="$cand"; break; fi
done
if [ -z "$DATA" ]; then
  echo "!!! tiny100-32 not found in '$DATA_ARG' (need train, test, meta)."
  echo "    extract it: mkdir -p data && tar xzf tiny100-32.tar.gz -C data   then: bash $0 data/tiny100-32"
  exit 2
fi
echo "data: $DATA"

# ---------------------------------------------------------------- 2. throughput, fp32 eager, both loops
step "throughput fp32 eager, tfkd vs reference" 110 \
  "$PY" benchmarks/train_throughput.py --data-root "$DATA" --device cuda --json "$RESULTS/bench_eager.json"

# ---------------------------------------------------------------- 3./4. one real epoch through the CLI
for variant in fp32 amp_cl; do
  out="/tmp/gpu_r18"
  flags=()
  if [ "$variant" = amp_cl ]; then out="/tmp/gpu_r18_amp_cl"; flags=(--amp --channels-last); fi
  s=$SECONDS
  step "CLI resnet18 1 epoch $variant" 75 \
    "$PY" -m tfkd_cli train-teacher --model resnet18 --dataset cifar-layout --data-root "$DATA" --epochs 1 \
      --device cuda --quiet --overwrite --out "$out" ${flags[@]+"${flags[@]}"}
  echo ">>> CLI $variant process wall time: $(( SECONDS - s ))s (includes startup, data load, eval, checkpoint)"
  epoch_report "$out" "$variant"
  cp "$out/summary.json" "$RESULTS/cli_${variant}_summary.json" 2>/dev/null || true
  cp "$out/timings.csv" "$RESULTS/cli_${variant}_timings.csv" 2>/dev/null || true
done

# ---------------------------------------------------------------- 5. throughput with --amp --compile (tfkd loop)
ref_args=()
if [ -f "$RESULTS/bench_eager.json" ]; then ref_args=(--reference-from "$RESULTS/bench_eager.json"); fi
for model in resnet18 mobilenetv2; do
  step "throughput --amp --compile, tfkd loop, $model" 120 \
    "$PY" benchmarks/train_throughput.py --data-root "$DATA" --device cuda --amp --compile --loops tfkd \
      --models "$model" --loss-reps 0 ${ref_args[@]+"${ref_args[@]}"} --json "$RESULTS/bench_amp_compile_$model.json"
done

echo "=== gpu_check done in $(( SECONDS - START ))s; logs and JSON in $RESULTS"
}

# a pipeline (not exec > >(tee)) so that the log is complete when the script returns
main 2>&1 | tee "$RESULTS/gpu_check.log"
exit "${PIPESTATUS[0]}"
