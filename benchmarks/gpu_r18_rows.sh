#!/usr/bin/env bash
# table3's ResNet18 rows at full width on the whole of tiny100-32, on one GPU, after gpu_check.sh.
#
#   bash benchmarks/gpu_r18_rows.sh PART_DIR...      # the parts of benchmarks/pack_tiny100.py
#
# Run from the repository root on the lent GPU machine, as the last of the calls that carried
# the parts (issue #23). In order, inside BUDGET seconds (default 540):
#   1. rebuild data/tiny100-32 from the parts (checked image for image against this machine's copy);
#   2. benchmarks/gpu_check.sh with GPU_CHECK_BUDGET (default 120);
#   3. tfkd reproduce table3 --scale tiny100-gpu on the ResNet18 rows (baseline, the ResNet50 and
#      ResNeXt29 pt-teachers, their students, the two controls), JOBS runs at once on DEVICES,
#      stopped (timeout) with 40 s left; then --report-only writes the table of what finished.
# Set TFKD_COMMIT to the commit sent (the copy there may lack .git). Everything comes back in three files under $OUT: log.txt, gpu_check.tgz and table.tgz (the
# results folder with its run records, and the runs' logs); the device tool returns 8 at most.
# For a plumbing check on the CPU: SKIP_CHECK=1 DEVICES=cpu DATA=/tmp/d TABLE_OUT=/tmp/t
#   SETS="--set data.root=/tmp/d --set width=0.0625 --set data.per_class=2 --runs-dir /tmp/r".
set -u
START=$SECONDS
BUDGET="${BUDGET:-540}"
OUT="${OUT:-/tmp/gpu_r18_rows}"
DEVICES="${DEVICES:-cuda:0}"
JOBS="${JOBS:-4}"
TABLE_OUT="${TABLE_OUT:-results/table3/tiny100-gpu}"
DATA="${DATA:-data/tiny100-32}"  # where the parts are rebuilt (the scale reads data/tiny100-32)
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
ONLY=(--only resnet18 --only r18_from_r50pt --only r18_from_rx29pt
      --only 'r18_from_r50pt~uniform' --only 'r18_from_r50pt~ce'
      --only 'r18_from_rx29pt~uniform' --only 'r18_from_rx29pt~ce')

main() {
  echo "=== unpack tiny100-32 ($(( SECONDS - START ))s)"
  python3 benchmarks/pack_tiny100.py unpack "$DATA" "$@" || { echo "!!! unpack failed"; return 3; }
  if [ -z "${SKIP_CHECK:-}" ]; then
    OUT=/tmp/gpu_check GPU_CHECK_BUDGET="${GPU_CHECK_BUDGET:-120}" bash benchmarks/gpu_check.sh "$DATA"
  fi
  local left=$(( BUDGET - (SECONDS - START) - 40 ))
  echo "=== reproduce table3 --scale tiny100-gpu, ResNet18 rows, ${left}s ($(( SECONDS - START ))s elapsed)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
  # shellcheck disable=SC2086
  timeout -k 10 "$left" python3 -m tfkd_cli reproduce table3 --scale tiny100-gpu "${ONLY[@]}" \
    --devices "$DEVICES" --jobs "$JOBS" --out "$TABLE_OUT" ${SETS:-}
  echo "=== reproduce rc=$? ($(( SECONDS - START ))s elapsed)"
  # shellcheck disable=SC2086
  python3 -m tfkd_cli reproduce table3 --scale tiny100-gpu "${ONLY[@]}" --out "$TABLE_OUT" --report-only ${SETS:-}
  echo "=== done in $(( SECONDS - START ))s"
}

main "$@" 2>&1 | tee "$OUT/log.txt"
[ -d /tmp/gpu_check ] && tar czf "$OUT/gpu_check.tgz" -C /tmp gpu_check
tar czf "$OUT/table.tgz" "$TABLE_OUT" runs/reproduce/.logs 2>/dev/null
ls -la "$OUT"
