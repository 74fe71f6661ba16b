#!/usr/bin/env bash
# One-command GPU check for the RALA kernels, run from the repo root on the GPU machine:
#
#   bash scripts/gpu_check.sh [--budget SECONDS] [--results DIR] [--dry-run]
#
# Stages, each under `timeout` within one overall budget (default 480 s, fits an 8-minute slot):
#   0. timer check          python3 -m pytest -q -ra tests/test_timing_gpu.py   (<= 90 s): the CUDA timer's
#                           median against triton.testing.do_bench (5% on a ~1 ms matmul, 10% on a ~20 us
#                           kernel), do_bench_cudagraph and torch.utils.benchmark
#   1. GPU tests            python3 -m pytest -m gpu --maxfail=10 --continue-on-collection-errors -q -ra tests
#                           --ignore=tests/test_timing_gpu.py       (~40% of the budget)
#   2. bandwidth probe      python3 -m attnbench env --probe            (<= 45 s), then the static roofline
#                           ESTIMATE of the forward (scripts/rala_roofline.py, B=64 h=1 56x56 d=64 bf16)
#                           to check the benchmark's frac_bandwidth against; the forward and backward
#                           timed at split counts S = 1..16 beside the planner's (scripts/rala_splits.py,
#                           B=2 h=16 32x32 d=64 bf16; <= 40 s) -> DIR/rala-splits-<gpu>-<date>.csv
#   3. kernel benchmarks    python3 -m attnbench run suites/rala_kernels.yaml     --out DIR/rala_kernels-<gpu>-<date>.csv
#                           python3 -m attnbench run suites/rala_kernels_h4.yaml  --out DIR/rala_kernels_h4-<gpu>-<date>.csv
#                           (the first suite gets half of what is left, the second the rest; rows are
#                           flushed per case, so a suite cut short keeps what it measured, and a rerun on
#                           the same day resumes it with --resume)
#   4. report               python3 -m attnbench report <both CSVs>    (>= 20 s kept for it)
# A stage that fails or runs out of time does not stop the later ones; the exit status is that of
# the first failing stage (0 when all passed). --dry-run prints the plan and runs nothing.
set -u

BUDGET=480
RESULTS=results
DRY_RUN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) BUDGET="$2"; shift 2 ;;
    --budget=*) BUDGET="${1#*=}"; shift ;;
    --results) RESULTS="$2"; shift 2 ;;
    --results=*) RESULTS="${1#*=}"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
case "$BUDGET" in ''|*[!0-9]*) echo "gpu_check.sh: --budget needs whole seconds, got '$BUDGET'" >&2; exit 2 ;; esac
if [ ! -f pyproject.toml ] || [ ! -d attnbench ]; then
  echo "gpu_check.sh: run from the repository root (bash scripts/gpu_check.sh)" >&2; exit 2
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET  # compiled kernels on the GPU, never the interpreter
PY=python3
GRACE=10     # seconds between SIGINT and SIGKILL when a stage runs out of time
REPORT_RESERVE=20
GPU_NAME=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)
GPU=$(printf '%s' "$GPU_NAME" | grep -oiE '\b[a-z]{1,2}[0-9]{2,4}[a-z]?\b' | head -n 1 | tr '[:upper:]' '[:lower:]')
GPU=${GPU:-$(printf '%s' "${GPU_NAME:-gpu}" | tr '[:upper:] ' '[:lower:]-' | tr -cd 'a-z0-9-')}
DATE=$(date -u +%Y%m%d)
SUITES=(suites/rala_kernels.yaml suites/rala_kernels_h4.yaml)
CSVS=()
for s in "${SUITES[@]}"; do CSVS+=("$RESULTS/$(basename "$s" .yaml)-$GPU-$DATE.csv"); done

TIMER_S=90
TIMER_TESTS=tests/test_timing_gpu.py
TESTS_S=$(( BUDGET * 40 / 100 ))
PROBE_S=$(( BUDGET * 10 / 100 < 45 ? BUDGET * 10 / 100 : 45 ))

if [ "$DRY_RUN" = 1 ]; then
  echo "gpu_check.sh --dry-run: budget ${BUDGET}s, GPU '${GPU_NAME:-unknown}' -> tag '$GPU', date $DATE"
  echo "0. timeout ${TIMER_S}s  $PY -m pytest -q -ra $TIMER_TESTS"
  echo "1. timeout ${TESTS_S}s  $PY -m pytest -m gpu --maxfail=10 --continue-on-collection-errors -q -ra tests --ignore=$TIMER_TESTS"
  echo "2. timeout ${PROBE_S}s  $PY -m attnbench env --probe"
  echo "   timeout 20s  $PY scripts/rala_roofline.py"
  echo "   timeout 40s  $PY scripts/rala_splits.py --out $RESULTS/rala-splits-$GPU-$DATE.csv"
  echo "3. timeout (left - ${REPORT_RESERVE}s)/2  $PY -m attnbench run ${SUITES[0]} --out ${CSVS[0]} [--resume if it exists]"
  echo "   timeout left - ${REPORT_RESERVE}s      $PY -m attnbench run ${SUITES[1]} --out ${CSVS[1]} [--resume if it exists]"
  echo "4. timeout left     $PY -m attnbench report ${CSVS[*]}"
  echo "(PYTHONPATH=$PWD; stages are cut with SIGINT, SIGKILL ${GRACE}s later)"
  exit 0
fi

mkdir -p "$RESULTS"
STATUS=0
left() { echo $(( BUDGET - SECONDS )); }

# stage NAME SECONDS CMD... : run CMD under `timeout`, never longer than the budget allows
stage() {
  local name="$1" secs="$2"; shift 2
  local cap=$(( $(left) - GRACE ))
  [ "$secs" -gt "$cap" ] && secs=$cap
  if [ "$secs" -lt 5 ]; then
    echo "== $name: skipped, out of budget"; [ "$STATUS" = 0 ] && STATUS=124; return
  fi
  echo "== $name (up to ${secs}s, $(left)s of ${BUDGET}s left): $*"
  timeout --signal=INT --kill-after="$GRACE" "$secs" "$@"
  local rc=$?
  case $rc in
    0) echo "== $name: ok" ;;
    124|137) echo "== $name: stopped at its time limit (${secs}s)" ;;
    *) echo "== $name: failed (exit $rc)" ;;
  esac
  [ "$rc" != 0 ] && [ "$STATUS" = 0 ] && STATUS=$rc
  return 0
}

echo "gpu_check.sh: GPU '${GPU_NAME:-unknown}', budget ${BUDGET}s"
stage "timer check" "$TIMER_S" "$PY" -m pytest -q -ra "$TIMER_TESTS"
stage "gpu tests" "$TESTS_S" "$PY" -m pytest -m gpu --maxfail=10 --continue-on-collection-errors -q -ra tests \
  --ignore="$TIMER_TESTS"
stage "bandwidth probe" "$PROBE_S" "$PY" -m attnbench env --probe
stage "roofline estimate" 20 "$PY" scripts/rala_roofline.py
stage "split counts" 40 "$PY" scripts/rala_splits.py --out "$RESULTS/rala-splits-$GPU-$DATE.csv"
for i in 0 1; do
  avail=$(( $(left) - REPORT_RESERVE - GRACE ))
  [ "$i" = 0 ] && avail=$(( avail / 2 ))
  resume=()
  [ -s "${CSVS[$i]}" ] && resume=(--resume)
  stage "benchmark ${SUITES[$i]}" "$avail" "$PY" -m attnbench run "${SUITES[$i]}" --out "${CSVS[$i]}" ${resume[@]+"${resume[@]}"}
done
present=()
for f in "${CSVS[@]}"; do [ -s "$f" ] && present+=("$f"); done
if [ "${#present[@]}" -gt 0 ]; then
  stage "report" "$(( $(left) - GRACE ))" "$PY" -m attnbench report "${present[@]}"
else
  echo "== report: skipped, no results were written"
fi
echo "gpu_check.sh: done in ${SECONDS}s, results: ${present[*]:-none}, exit $STATUS"
exit "$STATUS"
