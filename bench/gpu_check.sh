#!/usr/bin/env bash
# bench/gpu_check.sh: the one prepared GPU check (H100/H200, torch 2.11, no network).
# Builds the package, runs the GPU tests, times every dc_kernels backend against flash-kmeans,
# fast-pytorch-kmeans, fastkmeans and the chunked torch loop at the ANCHORS.md shapes, and
# PCA-whitening 1,281,167 x 4096 -> 256 (fit + apply) against the torch pipeline, then the
# end-to-end training step (bench/train_e2e.sh, when present); prints the acceptance table last.
# Budget: about 8 minutes, start-up included (GPU_CHECK_SECONDS, default 470); each step has its
# own timeout within it (the benchmarks mark the providers they could not reach as "not run:
# time limit"), and a failing step is reported without stopping the rest.
# Seen on an H200 (2026-11-26, the scripts before the bench harness: one timed run per
# provider): the whole script in 367 s, 346 s without memcheck and PCA, each call about 30 s of
# start-up on top. The harness times with triton.testing.do_bench (at least 8 calls per
# provider), hence fewer iterations per call than then, and fewer providers at K = 100k.
#
# Run it from the repository root on the device machine, carrying the peers' wheels:
#   run(command="bash bench/gpu_check.sh", carry=[".whl"], timeout_s=600)
# The wheels are prepared once where pip can reach PyPI (.whl/ is git-ignored: never commit it):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform any -d .whl flash-kmeans==0.3.1 fastkmeans==0.5.0 fast-pytorch-kmeans==0.2.2 psutil
# Checked 2026-11-26: flash_kmeans-0.3.1-py3-none-any.whl (41,757 B) and
# fastkmeans-0.5.0-py3-none-any.whl (14,548 B), both pure Python; what they require (torch,
# triton, numpy, tqdm) is already on the GPU image. Checked 2026-11-29:
# fast_pytorch_kmeans-0.2.2-py3-none-any.whl (9,750 B), which imports psutil without declaring
# it (psutil-7.2.2-cp36-abi3-manylinux...x86_64.whl, a binary wheel for any CPython 3).
#
# Logs: written to $LOG (a scratch folder), packed at exit into $OUT/gpu_check_logs.tgz next to
# $OUT/summary.txt (the device tool brings back at most 8 files): build.log, tests_*.log,
# compare_*.log, memcheck.log, kmeans_<shape>.{log,json}, steps.{log,json}, pca.{log,json},
# train.log and train/ (the logs, summary and JSON of bench/train_e2e.sh).
# OUT defaults to bench/results/gpu_check (git-ignored). SKIP_STEPS leaves steps out (a rerun on
# what is left of a lease), any of: tests compare memcheck kmeans steps pca train interp; the
# machine, wheels, build and summary always run.
set -uo pipefail
export PYTHONUNBUFFERED=1
OUT=${OUT:-bench/results/gpu_check}
LOG=$(mktemp -d /tmp/gpu_check.XXXX)
mkdir -p "$OUT"
trap 'tar -czf "$OUT/gpu_check_logs.tgz" -C "$LOG" . && cp "$LOG/summary.txt" "$OUT/" 2>/dev/null' EXIT
SKIP_STEPS=" ${SKIP_STEPS:-} "
skipped() { [[ "$SKIP_STEPS" == *" $1 "* ]]; }
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
  [ "$2" = skip ] && { STEPS+=("$(printf '%-58s %s' "$1" "SKIPPED (${3:-time budget})")"); return; }
  local verdict="ok"
  [ "$2" -eq 124 ] && verdict="TIMEOUT"
  [ "$2" -ne 0 ] && [ "$2" -ne 124 ] && verdict="FAILED (rc=$2)"
  STEPS+=("$(printf '%-58s %s' "$1" "$verdict")")
}

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__,
torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')"

step "peer wheels"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  record "peer wheels" $?
else
  echo "no .whl/: flash-kmeans and fastkmeans rows will read 'nan' (see the header)"
  record "peer wheels (none carried)" 1
fi

step "build (pip install --no-build-isolation -e .)"
# Hopper only (sm_90): half the nvcc time of the default 80;90.
DC_CUDA_ARCHS=${DC_CUDA_ARCHS:-90} MAX_JOBS=16 timeout "$(limit 150)" \
  $PY -m pip install --no-build-isolation --no-deps -e . >"$LOG/build.log" 2>&1
rc=$?; record "build" $rc; tail -n 5 "$LOG/build.log"
$PY -c "import dc_kernels; print(dc_kernels.available_backends())"

run_tests() {  # run_tests SKIP-NAME TAG NAME MAX PYTEST-ARGS...
  local tag=$2 name=$3 max=$4
  skipped "$1" && { record "tests: $name" skip SKIP_STEPS; return; }
  shift 4
  local t; t=$(limit "$max")
  step "tests: $name"
  [ "$t" -eq 0 ] && { record "tests: $name" skip; return; }
  # shellcheck disable=SC2046  # no per-test timeout where pytest-timeout is not installed
  timeout "$t" $PY -m pytest -q -p no:cacheprovider $($PY -c "import pytest_timeout" 2>/dev/null \
    && echo --timeout 120) --tb=short -rfEs "$@" 2>&1 \
    | tee "$LOG/tests_$tag.log" | tail -n 30
  local rc=${PIPESTATUS[0]}; [ "$rc" -eq 5 ] && rc=0  # 5: nothing collected
  record "tests: $name" "$rc"
}

# One process per shape: a peer that trips a device-side assert (fastkmeans did at 1.28M x 256)
# poisons its CUDA context, and must not take the later shapes with it.
# The dc_kernels.torch reference is left out everywhere (it measured 5x slower than the torch
# loop at 32 x 131072 x 128, K=1024), fastkmeans out of all but one shape (its device-side
# assert at the others ends the process's CUDA context) and fast-pytorch-kmeans out of the
# large ones (a dense K x N one-hot matrix per iteration). Skip tokens: PROVIDER or
# PROVIDER:PRECISION.
kmeans_shape() {  # kmeans_shape SHAPE ITERS MAX [PROVIDERS TO SKIP...]
  local shape=$1 iters=$2 tag=${1//:/_} t; t=$(limit "$3"); shift 3
  skipped kmeans && { record "k-means $shape" skip SKIP_STEPS; return; }
  step "k-means $shape ($iters iterations per call)"
  [ "$t" -eq 0 ] && { record "k-means $shape" skip; return; }
  timeout "$t" $PY -m bench.kmeans_bench --device cuda --shapes "$shape" --iters "$iters" \
    --json "$LOG/kmeans_$tag.json" --time-limit "$(inner "$t")" --skip dc_kernels.torch "$@" \
    2>&1 | grep -v "Assertion .* failed" | tee "$LOG/kmeans_$tag.log"
  record "k-means $shape" "${PIPESTATUS[0]}"
}

compare() {  # compare BACKEND PRECISION: the first step where it parts from the torch backend
  skipped compare && { record "compare $1 $2" skip SKIP_STEPS; return; }
  local t; t=$(limit 40)
  step "compare $1 $2 with the torch backend, step by step (20000 x 64, K=50)"
  [ "$t" -eq 0 ] && { record "compare $1 $2" skip; return; }
  timeout "$t" $PY -m bench.compare_backends --backend "$1" --precision "$2" 2>&1 \
    | tee "$LOG/compare_$1_$2.log"
  record "compare $1 $2" "${PIPESTATUS[0]}"
}

# Most important first: the GPU-only correctness tests, the timings, then the rest.
# The contract suite holds the GPU cases of every GPU backend (triton, cuda, torch; about 330).
run_tests tests contract "GPU contract tests of every GPU backend" 180 -m gpu \
  tests/test_backend_contract.py
run_tests tests gpu_other "every other GPU-marked test" 60 -m gpu tests \
  --ignore=tests/test_backend_contract.py
compare cuda fp32
compare cuda fp16
compare triton fp32

if skipped memcheck; then record "memcheck: cuda kernels" skip SKIP_STEPS; else
  step "compute-sanitizer memcheck: cuda assign / update / split at a small size"
  t=$(limit 90)
  if [ "$t" -eq 0 ]; then record "memcheck: cuda kernels" skip; else
    timeout "$t" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" --error-exitcode 1 \
      --tool memcheck $PY -m bench.cuda_memcheck --steps assign update split 2>&1 \
      | tee "$LOG/memcheck.log" | tail -n 20
    record "memcheck: cuda kernels" "${PIPESTATUS[0]}"
  fi
fi

kmeans_shape 50000x256:1000 10 45
kmeans_shape 1281167x256:10000 3 90 fastkmeans fast-pytorch-kmeans
kmeans_shape 32x131072x128:1024 5 60 fastkmeans fast-pytorch-kmeans
kmeans_shape 8x131072x128:100 10 45 fastkmeans fast-pytorch-kmeans
t=$(limit 60)
if skipped steps; then record "step times" skip SKIP_STEPS
elif [ "$t" -eq 0 ]; then record "step times" skip; else
  step "per-step times (assign / update / split) of every backend"
  timeout "$t" $PY -m bench.step_bench --device cuda --iters 2 --json "$LOG/steps.json" \
    --time-limit "$(inner "$t")" --skip dc_kernels.torch \
    --shapes 8x131072x128:100,32x131072x128:1024,50000x256:1000 2>&1 | tee "$LOG/steps.log"
  record "step times" "${PIPESTATUS[0]}"
fi

# K = 100k: only what the targets compare (fp16 / bf16 / tf32 against flash-kmeans fp16) and
# the torch loop in TF32; the CUDA backend alone took more than the step's time in fp32.
kmeans_shape 1281167x256:100000 2 100 fastkmeans fast-pytorch-kmeans dc_kernels.cuda \
  dc_kernels.triton:fp32 torch-loop:fp32 flash-kmeans:fp32

if skipped pca; then record "PCA bench" skip SKIP_STEPS; else
  step "PCA-whitening 1281167 x 4096 -> 256"
  t=$(limit 120)
  if [ "$t" -eq 0 ]; then record "PCA bench" skip; else
    timeout "$t" $PY -m bench.pca_bench --device cuda --n 1281167 --d-in 4096 --d-out 256 \
      --skip dc_kernels.torch --time-limit "$(inner "$t")" --json "$LOG/pca.json" 2>&1 \
      | tee "$LOG/pca.log"
    record "PCA bench" "${PIPESTATUS[0]}"
  fi
fi

# ---- train: the trainer's end-to-end step at ImageNet scale, bench/train_e2e.sh (its owner's
# script). It writes an image folder, run directories and checkpoints under the folder it is
# given: that is a scratch folder here, and only its logs, summary and JSON join the archive
# (under train/), so that $OUT stays a few files.
if skipped train; then record "train: end-to-end step" skip SKIP_STEPS
elif [ ! -f bench/train_e2e.sh ]; then record "train: end-to-end step" skip "no bench/train_e2e.sh"
else
  step "train: end-to-end step (bench/train_e2e.sh)"
  t=$(limit 240)
  if [ "$t" -eq 0 ]; then record "train: end-to-end step" skip; else
    TRAIN_OUT=$(mktemp -d /tmp/train_e2e.XXXX)
    timeout "$t" bash bench/train_e2e.sh "$TRAIN_OUT" 2>&1 | tee "$LOG/train.log" | tail -n 30
    record "train: end-to-end step" "${PIPESTATUS[0]}"
    mkdir -p "$LOG/train"
    cp "$TRAIN_OUT"/*.log "$TRAIN_OUT"/*.txt "$TRAIN_OUT"/*.json "$LOG/train/" 2>/dev/null
  fi
fi

kmeans_shape 50000x256:100 10 40 fastkmeans fast-pytorch-kmeans
run_tests interp interp "interpreter tests of the triton backend, on the GPU" 90 -m "not gpu" \
  tests/test_triton.py

step "summary"
$PY -m bench.gpu_summary "$LOG" | tee "$LOG/summary.txt"
echo
echo "=== steps"
printf '%s\n' "${STEPS[@]}" | tee -a "$LOG/summary.txt"
echo "total $(( $(date +%s) - START )) s; logs in $OUT/gpu_check_logs.tgz"
