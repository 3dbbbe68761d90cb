#!/usr/bin/env bash
# bench/gpu_check.sh: the one prepared GPU check (H100/H200, torch 2.11, no network).
# Builds the package, runs the GPU tests, the trainer end to end (bench/train_e2e.sh), times
# every dc_kernels backend against flash-kmeans, fast-pytorch-kmeans, fastkmeans and the chunked
# torch loop at the ANCHORS.md shapes and PCA-whitening 1,281,167 x 4096 -> 256 (fit + apply)
# against the torch pipeline; prints the acceptance table last.
# Budget: GPU_CHECK_SECONDS (default 470); each step has its own timeout within it (the
# benchmarks mark the providers they could not reach as "not run: time limit"), and a failing
# step is reported without stopping the rest.
# Seen on an H200 (2026-11-29): about 30 s of machine start-up per call; build 49 s; the GPU
# tests 49 + 33 s with 4 xdist workers; the trainer 141 s; with GPU_CHECK_SECONDS=550 the
# first call ended after the memcheck (543 s), and K = 100k, 50k : 100 and the interpreter
# tests were left to a second call. A 15-minute lease holds about 800 s of script.
#
# Run it from the repository root on the device machine, carrying the peers' wheels:
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
# The wheels are prepared once where pip can reach PyPI (.whl/ is git-ignored: never commit it):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform any -d .whl flash-kmeans==0.3.1 fastkmeans==0.5.0 fast-pytorch-kmeans==0.2.2
# Checked 2026-11-26: flash_kmeans-0.3.1-py3-none-any.whl (41,757 B) and
# fastkmeans-0.5.0-py3-none-any.whl (14,548 B), both pure Python; what they require (torch,
# triton, numpy, tqdm) is already on the GPU image. Checked 2026-11-29:
# fast_pytorch_kmeans-0.2.2-py3-none-any.whl (9,750 B), which imports psutil without declaring
# it; the GPU image has psutil (seen working there 2026-11-29).
#
# Logs: written to $LOG (/tmp/gpu_check.state/logs), packed at exit into
# $OUT/gpu_check_logs.tgz next to $OUT/summary.txt (the device tool brings back at most 8
# files): build.log, tests_*.log, compare_*.log, memcheck.log, kmeans_<shape>.{log,json},
# steps.{log,json}, pca.{log,json}, train.log and train/ (the logs, summary and JSON of
# bench/train_e2e.sh).
# OUT defaults to bench/results/gpu_check (git-ignored). SKIP_STEPS leaves steps out, any of:
# tests compare memcheck kmeans kmeans:SHAPE steps pca train interp; the machine, wheels, build
# and summary always run.
# GPU_CHECK_RESUME=1 goes on where the last call on the same (still warm) machine stopped: the
# logs and the list of finished steps live in /tmp/gpu_check.state, a finished step (passed or
# failed) is not run again, nor the build when it succeeded, and the summary covers both calls.
# The device tool keeps a machine warm for 30 s, so the second call goes out at once:
#   run(command="GPU_CHECK_RESUME=1 GPU_CHECK_SECONDS=170 bash bench/gpu_check.sh", ...)
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/gpu_check}
STATE=/tmp/gpu_check.state
[ "${GPU_CHECK_RESUME:-0}" = 1 ] || rm -rf "$STATE"
LOG=$STATE/logs
mkdir -p "$OUT" "$LOG"
touch "$STATE/done"
trap 'tar -czf "$OUT/gpu_check_logs.tgz" -C "$LOG" . && cp "$LOG/summary.txt" "$OUT/" 2>/dev/null' EXIT
SKIP_STEPS=" ${SKIP_STEPS:-} "
skipped() { [[ "$SKIP_STEPS" == *" $1 "* ]]; }
finished() { grep -qxF "$1" "$STATE/done"; }  # finished NAME: run by an earlier call
PY=${PYTHON:-python3}
START=$(date +%s)
# Everything ends by this many seconds after the start (the device tool stops a command at
# 600 s): each step gets min(its own limit, what is left); the summary always runs.
BUDGET=${GPU_CHECK_SECONDS:-470}
STEPS=()

step() { echo; echo "=== $1  (t=$(( $(date +%s) - START )) s)"; }
limit() {  # limit MAX: seconds this step may take, 0 when the budget is spent
  local left=$(( START + BUDGET - $(date +%s) ))
  [ "$left" -lt 15 ] && { echo 0; return; }
  [ "$left" -lt "$1" ] && echo "$left" || echo "$1"
}
inner() {  # inner T: the --time-limit for a benchmark given T s, leaving room for its start-up
  # (imports, data) and the provider that is running when the limit passes
  echo $(( $1 > 30 ? $1 - 20 : $1 / 2 ))
}
record() {  # record NAME RC [WHY] (RC "skip": not run, for WHY, by default the time budget)
  if [ "$2" = skip ]; then STEPS+=("$(printf '%-58s %s' "$1" "SKIPPED (${3:-time budget})")")
  elif [ "$2" -eq 124 ]; then STEPS+=("$(printf '%-58s %s' "$1" "TIMEOUT")")  # runs on resume
  else  # ended, passed or failed: not run again on resume
    local verdict="ok"; [ "$2" -ne 0 ] && verdict="FAILED (rc=$2)"
    echo "$1" >>"$STATE/done"; printf '%-58s %s\n' "$1" "$verdict" >>"$STATE/verdicts"
  fi
}
begin() {  # begin NAME TOKEN MAX: announce a step and set T, its time limit; false (recorded)
  # when SKIP_STEPS names TOKEN, an earlier call finished the step, or the budget is spent
  skipped "$2" && { record "$1" skip SKIP_STEPS; return 1; }
  finished "$1" && return 1
  T=$(limit "$3")
  [ "$T" -eq 0 ] && { record "$1" skip; return 1; }
  step "$1"
}

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"

step "peer wheels"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  echo "installed: $(cd .whl && ls ./*.whl | tr '\n' ' ')"
else
  echo "no .whl/: the flash-kmeans, fastkmeans and fast-pytorch-kmeans rows will read 'nan'"
fi

if finished build && $PY -c "import dc_kernels._cuda" 2>/dev/null; then
  echo "build: done by the last call"
else
  step "build (pip install --no-build-isolation -e .)"
  # Hopper only (sm_90): half the nvcc time of the default 80;90.
  DC_CUDA_ARCHS=${DC_CUDA_ARCHS:-90} MAX_JOBS=16 timeout "$(limit 150)" \
    $PY -m pip install --no-build-isolation --no-deps -e . >"$LOG/build.log" 2>&1
  rc=$?; record "build" $rc; tail -n 5 "$LOG/build.log"
fi
$PY -c "import dc_kernels; print(dc_kernels.available_backends())"

run_tests() {  # run_tests SKIP-TOKEN TAG NAME MAX PYTEST-ARGS...
  local tag=$2 name="tests: $3"
  begin "$name" "$1" "$4" || return 0
  shift 4
  local opts=(-q -p no:cacheprovider --tb=short -rfEs)
  # no per-test timeout where pytest-timeout is missing; xdist's workers share the Triton
  # compiles, most of this step's time
  $PY -c "import pytest_timeout" 2>/dev/null && opts+=(--timeout 120)
  $PY -c "import xdist" 2>/dev/null && opts+=(-n "${GPU_TEST_WORKERS:-4}")
  timeout "$T" $PY -m pytest "${opts[@]}" "$@" 2>&1 | tee "$LOG/tests_$tag.log" | tail -n 30
  local rc=${PIPESTATUS[0]}; [ "$rc" -eq 5 ] && rc=0  # 5: nothing collected
  record "$name" "$rc"
}

# One process per shape: a peer that trips a device-side assert (fastkmeans did at 1.28M x 256)
# poisons its CUDA context, and must not take the later shapes with it.
# The dc_kernels.torch reference is left out everywhere (it measured 5x slower than the torch
# loop at 32 x 131072 x 128, K=1024), fastkmeans out of all but one shape (its device-side
# assert at the others ends the process's CUDA context) and fast-pytorch-kmeans out of the
# large ones (a dense K x N one-hot matrix per iteration). Skip tokens: PROVIDER or
# PROVIDER:PRECISION.
kmeans_shape() {  # kmeans_shape SHAPE ITERS MAX [PROVIDERS TO SKIP...]
  local shape=$1 iters=$2 tag=${1//:/_} token=kmeans
  local name="k-means $shape ($iters iterations per call)"
  skipped "kmeans:$shape" && token="kmeans:$shape"
  begin "$name" "$token" "$3" || return 0
  shift 3
  timeout "$T" $PY -m bench.kmeans_bench --device cuda --shapes "$shape" --iters "$iters" \
    --json "$LOG/kmeans_$tag.json" --time-limit "$(inner "$T")" --skip dc_kernels.torch "$@" \
    2>&1 | grep -v "Assertion .* failed" | tee "$LOG/kmeans_$tag.log"
  record "$name" "${PIPESTATUS[0]}"
}

compare() {  # compare BACKEND PRECISION: the first step where it parts from the torch backend
  local name="compare $1 $2 with the torch backend, step by step (20000 x 64, K=50)"
  begin "$name" compare 40 || return 0
  timeout "$T" $PY -m bench.compare_backends --backend "$1" --precision "$2" 2>&1 \
    | tee "$LOG/compare_$1_$2.log"
  record "$name" "${PIPESTATUS[0]}"
}

# Most important first: the GPU-only correctness tests, the trainer end to end and the
# 1.28M x 256 : 10k and PCA timings, then the rest.
# The contract suite holds the GPU cases of every GPU backend (triton, cuda, torch; about 340).
run_tests tests contract "GPU contract tests of every GPU backend" 180 -m gpu \
  tests/test_backend_contract.py
run_tests tests gpu_other "every other GPU-marked test" 60 -m gpu tests \
  --ignore=tests/test_backend_contract.py
# The step-by-step comparisons only say where a failing backend parts from torch.
if grep -qE "^(FAILED|ERROR) " "$LOG/tests_contract.log" 2>/dev/null; then
  compare cuda fp32
  compare cuda fp16
  compare triton fp32
fi

# The trainer's end-to-end step at ImageNet scale, bench/train_e2e.sh (its owner's script). It
# writes an image folder, run directories and checkpoints under a scratch folder; only its
# logs, summary and JSON join the archive (under train/), so that $OUT stays a few files.
if begin "train: end-to-end step (bench/train_e2e.sh)" train 240; then
  TRAIN_OUT=$(mktemp -d /tmp/train_e2e.XXXX)
  timeout "$T" bash bench/train_e2e.sh "$TRAIN_OUT" 2>&1 | tee "$LOG/train.log" | tail -n 30
  record "train: end-to-end step (bench/train_e2e.sh)" "${PIPESTATUS[0]}"
  mkdir -p "$LOG/train"
  cp "$TRAIN_OUT"/*.log "$TRAIN_OUT"/*.txt "$TRAIN_OUT"/*.json "$LOG/train/" 2>/dev/null
fi

kmeans_shape 1281167x256:10000 3 90 fastkmeans fast-pytorch-kmeans

if begin "PCA-whitening 1281167 x 4096 -> 256" pca 120; then
  timeout "$T" $PY -m bench.pca_bench --device cuda --n 1281167 --d-in 4096 --d-out 256 \
    --skip dc_kernels.torch --time-limit "$(inner "$T")" --json "$LOG/pca.json" 2>&1 \
    | tee "$LOG/pca.log"
  record "PCA-whitening 1281167 x 4096 -> 256" "${PIPESTATUS[0]}"
fi

kmeans_shape 32x131072x128:1024 5 60 fastkmeans fast-pytorch-kmeans
kmeans_shape 8x131072x128:100 10 45 fastkmeans fast-pytorch-kmeans
kmeans_shape 50000x256:1000 10 45

if begin "per-step times (assign / update / split) of every backend" steps 60; then
  timeout "$T" $PY -m bench.step_bench --device cuda --iters 2 --json "$LOG/steps.json" \
    --time-limit "$(inner "$T")" --skip dc_kernels.torch \
    --shapes 8x131072x128:100,32x131072x128:1024,50000x256:1000 2>&1 | tee "$LOG/steps.log"
  record "per-step times (assign / update / split) of every backend" "${PIPESTATUS[0]}"
fi

if begin "compute-sanitizer memcheck: cuda assign / update / split" memcheck 90; then
  timeout "$T" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" --error-exitcode 1 \
    --tool memcheck $PY -m bench.cuda_memcheck --steps assign update split 2>&1 \
    | tee "$LOG/memcheck.log" | tail -n 20
  record "compute-sanitizer memcheck: cuda assign / update / split" "${PIPESTATUS[0]}"
fi

# K = 100k: only what the targets compare (fp16 / bf16 / tf32 against flash-kmeans fp16) and
# the torch loop in TF32; the CUDA backend alone took more than the step's time in fp32.
kmeans_shape 1281167x256:100000 2 100 fastkmeans fast-pytorch-kmeans dc_kernels.cuda \
  dc_kernels.triton:fp32 torch-loop:fp32 flash-kmeans:fp32
kmeans_shape 50000x256:100 10 40 fastkmeans fast-pytorch-kmeans
run_tests interp interp "interpreter tests of the triton backend, on the GPU" 90 -m "not gpu" \
  tests/test_triton.py

step "summary"
$PY -m bench.gpu_summary "$LOG" | tee "$LOG/summary.txt"
echo
echo "=== steps (finished, in this call or an earlier one; then what did not finish)"
{ cat "$STATE/verdicts" 2>/dev/null; printf '%s\n' "${STEPS[@]}"; } | tee -a "$LOG/summary.txt"
echo "total $(( $(date +%s) - START )) s; logs in $OUT/gpu_check_logs.tgz"
