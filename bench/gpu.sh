#!/usr/bin/env bash
# Every CUDA figure of the project in one run on one GPU (under 8 minutes on an H100/H200).
#
#   bench/gpu.sh [--dry-run] [--only SECTION[,SECTION...]]
#
# Sections, each independent (one failing, timing out or missing its inputs does not stop
# the others) with its own time limit inside an overall budget:
#   setup         install the carried wheels (.whl/, see bench/gpu_prepare.sh) into a
#                 scratch folder on PYTHONPATH, when there are any
#   env           the card, driver and library versions; fails without CUDA
#   cuda-tests    pytest -m cuda: nvJPEG decoding, GPU views, a training step under
#                 torch.cuda.set_sync_debug_mode("error"), fit with decode=cuda and cpu-crop-on-cuda
#   losses        bench/losses.py at B=1024, C=1000 and the 21k head (C=21843)
#   teacher       bench/teacher.py: ResNet-50 teacher pass in bf16 against its bare forward
#   student       bench/student.py: student from the cache against the online teacher
#   student-data  bench/student_data.py: input pipeline on CPU, cpu-crop-on-cuda and GPU decoding
#   demo          pld demo --quick device=cuda, end to end (Prefect, teacher, cache, sweep)
# Each writes bench/results/gpu-<section>.json; logs go to bench/results/gpu-logs/. The
# run ends with a summary table and exits non-zero when any section failed. With $OUT set
# the results and logs are also copied there.
#
# Environment: PYTHON (default python3), RESULTS (bench/results), GPU_WORK (scratch,
# /tmp/pld-gpu), GPU_BUDGET_S (overall seconds, 470), GPU_TIMEOUT (caps every section's
# limit, for tests).
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
RESULTS=${RESULTS:-bench/results}
LOGS=$RESULTS/gpu-logs
WORK=${GPU_WORK:-/tmp/pld-gpu}
BUDGET=${GPU_BUDGET_S:-470}
CAP=${GPU_TIMEOUT:-}
DRY=0
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --only) ONLY=$2; shift ;;
    -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (use --dry-run, --only SECTIONS)" >&2; exit 2 ;;
  esac
  shift
done

FMNIST=$PWD/.gpu-data/fashion-mnist
[ -d "$FMNIST" ] || FMNIST=/usr/share/datasets/fashion-mnist
WORKERS=$(( $(nproc) > 13 ? 12 : $(nproc) - 1 ))
export PYTHONPATH="$WORK/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PREFECT_HOME=$WORK/prefect PREFECT_SERVER_ANALYTICS_ENABLED=false DO_NOT_TRACK=1 \
  PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=90 \
  PREFECT_LOGGING_EXTRA_LOGGERS=pld_pipeline,storage PYTHONWARNINGS=ignore::DeprecationWarning

SECTIONS=(setup env cuda-tests losses teacher student student-data demo)
declare -A LIMIT=([setup]=90 [env]=60 [cuda-tests]=150 [losses]=90 [teacher]=120
                  [student]=150 [student-data]=150 [demo]=200)
declare -A CMD
CMD[setup]="if ls .whl/*.whl >/dev/null 2>&1; then rm -rf '$WORK/site' && { $PY -m pip install -q --no-index --no-deps --no-compile --target '$WORK/site' .whl/*.whl || { echo 'pip failed: unpacking the wheels instead'; $PY -c 'import glob, sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in glob.glob(\".whl/*.whl\")]' '$WORK/site'; }; } && echo \"installed \$(ls .whl/*.whl | wc -l) wheels into $WORK/site\"; else echo 'no .whl/ folder: using the packages already installed'; fi"
CMD[env]="$PY bench/gpu_summary.py env --json $RESULTS/gpu-env.json"
CMD[cuda-tests]="$PY -m pytest -q -p no:cacheprovider -m cuda tests/pld_pipeline/test_cuda.py --junitxml=$LOGS/cuda-tests.xml; rc=\$?; $PY bench/gpu_summary.py junit $LOGS/cuda-tests.xml --json $RESULTS/gpu-tests.json >/dev/null; exit \$rc"
CMD[losses]="$PY bench/losses.py --device cuda --sizes 1024x1000 1024x21843 --budget 1.0 --json $RESULTS/gpu-losses.json"
CMD[teacher]="$PY bench/teacher.py --device cuda --model resnet50 --batch 256 --images 2048 --amp bf16 --repeat 3 --workers $WORKERS --json $RESULTS/gpu-teacher.json"
CMD[student]="$PY bench/student.py --device cuda --images 4096 --batch 256 --workers $WORKERS --fit-rounds 1 --json $RESULTS/gpu-student.json"
CMD[student-data]="$PY bench/student_data.py --device cuda --images 512 --repeat 3 --json $RESULTS/gpu-student-data.json"
CMD[demo]="rm -rf '$WORK/demo'; t0=\$(date +%s); $PY -m flows.cli demo --quick --workdir '$WORK/demo' device=cuda source='$FMNIST' && $PY bench/gpu_summary.py demo '$WORK/demo' --seconds \$((\$(date +%s) - t0)) --json $RESULTS/gpu-demo.json"

selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

if [ "$DRY" = 1 ]; then
  echo "bench/gpu.sh --dry-run: would run, from $PWD, within ${BUDGET}s in all:"
  for name in "${SECTIONS[@]}"; do
    selected "$name" || continue
    limit=${LIMIT[$name]}; [ -n "$CAP" ] && (( CAP < limit )) && limit=$CAP
    printf '\n[%s] (limit %ss)\n  %s\n' "$name" "$limit" "${CMD[$name]}"
  done
  echo
  echo "results: $RESULTS/gpu-*.json, logs: $LOGS/, PYTHONPATH=$PYTHONPATH"
  exit 0
fi

mkdir -p "$RESULTS" "$LOGS" "$WORK"
START=$(date +%s)
FAILED=0
STATUS_JSON="["
for name in "${SECTIONS[@]}"; do
  selected "$name" || continue
  limit=${LIMIT[$name]}
  [ -n "$CAP" ] && (( CAP < limit )) && limit=$CAP
  left=$(( BUDGET - ($(date +%s) - START) ))
  started=$(date +%s)
  if (( left < 15 )); then
    status="SKIPPED (budget spent)"; rc=-1; secs=0
  else
    (( limit > left )) && limit=$left
    echo "=== $name (limit ${limit}s)"
    # timeout signals the whole process group (DataLoader workers, a Prefect server too).
    timeout -k 10 "$limit" bash -c "${CMD[$name]}" > "$LOGS/$name.log" 2>&1
    rc=$?
    secs=$(( $(date +%s) - started ))
    case $rc in
      0) status=ok ;;
      124|137) status="TIMEOUT after ${limit}s" ;;
      *) status="FAILED (exit $rc)" ;;
    esac
  fi
  if [ "$status" = ok ]; then
    tail -n 4 "$LOGS/$name.log" | cut -c1-220
  else
    FAILED=$((FAILED + 1))
    echo "--- $name: $status; last lines of $LOGS/$name.log:"
    [ -f "$LOGS/$name.log" ] && tail -n 25 "$LOGS/$name.log" | cut -c1-300
  fi
  STATUS_JSON+="{\"name\": \"$name\", \"status\": \"$status\", \"rc\": $rc, \"seconds\": $secs, \"started\": $started},"
done
echo "${STATUS_JSON%,}]" > "$RESULTS/gpu-sections.json"

echo
echo "=== summary ($(( $(date +%s) - START ))s in all; $FAILED section(s) failed)"
"$PY" bench/gpu_summary.py table "$RESULTS" 2>&1 | cut -c1-600 || echo "(summary table failed)"
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT/gpu-logs"
  cp "$RESULTS"/gpu-*.json "$OUT/" 2>/dev/null
  cp "$LOGS"/* "$OUT/gpu-logs/" 2>/dev/null
  echo "results copied to $OUT"
fi
[ "$FAILED" = 0 ]
