#!/usr/bin/env bash
# deepcluster-train end to end at (small) ImageNet shape on the GPU machine; logs under $1.
#
#   bash bench/train_e2e.sh OUT
#
# 1. builds an ImageNet-like folder of E2E_IMAGES (20,000) photo-like JPEGs (bench/data_bench.py:
#    crops of scikit-learn's sample photos at ImageNet sizes, quality 90; no network needed);
# 2. runs deepcluster-train --arch alexnet --width 1 --head fc --k 1000 --epochs 2 --reassign 1
#    (the paper's network, 4096-d features; both epochs cluster) once per backend in
#    E2E_BACKENDS ("triton-host auto"; NAME-host adds --features-on host: float16 features in
#    pinned host memory, streamed through the GPU by dc_kernels, the path that ImageNet-size
#    features take; auto picks triton on CUDA and keeps these features on the device), and
#    prints from each run's metrics.jsonl: images/s of the feature and training passes, PCA
#    and k-means seconds, peak GPU memory;
# 3. runs bench/data_bench.py on the same folder: the same passes fed by the plain torchvision
#    ImageFolder pipeline (--model-passes), CPU ms per image, start-up on 100k files.
# E2E_TRAIN_ARGS replaces the trainer's model/device settings (a CPU dry run:
# E2E_IMAGES=200 E2E_BACKENDS=cpu E2E_TRAIN_ARGS="--device cpu --width 0.125 --k 10"
# E2E_BENCH_ARGS="--listing-files 0 --rounds 1" bash bench/train_e2e.sh /tmp/e2e).
set -u -o pipefail
OUT=${1:?usage: bash bench/train_e2e.sh OUT}
IMAGES=${E2E_IMAGES:-20000}
# The most telling first: a time limit from outside (gpu_check.sh) keeps what finished.
BACKENDS=${E2E_BACKENDS:-"triton-host auto"}
TRAIN_ARGS=${E2E_TRAIN_ARGS:-"--arch alexnet --width 1 --head fc --k 1000 --batch-size 256"}
BENCH_ARGS=${E2E_BENCH_ARGS:-"--model-passes --images 1000 --rounds 1 --listing-files 100000"}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
PYTHON=${PYTHON:-python}
mkdir -p "$OUT"
DATA=${E2E_DATA:-$OUT/imagenet-like}
status=0

if [ ! -d "$DATA" ]; then
    "$PYTHON" "$HERE/data_bench.py" --make-folder "$DATA" --images "$IMAGES" \
        2>&1 | tee "$OUT/make-folder.log" || status=1
fi

for spec in $BACKENDS; do
    backend=${spec%-host}
    where=auto
    [ "$backend" != "$spec" ] && where=host
    run="$OUT/train-$spec"
    rm -rf "$run"
    echo "== deepcluster-train --kmeans-backend $backend --features-on $where ($IMAGES images)"
    # shellcheck disable=SC2086  # TRAIN_ARGS is a list of options
    start=$SECONDS
    (cd "$ROOT" && "$PYTHON" -m deepcluster.train --data "$DATA" $TRAIN_ARGS \
        --epochs 2 --reassign 1 --kmeans-backend "$backend" --features-on "$where" --out "$run" \
        --log-every 10) > "$OUT/train-$spec.log" 2>&1 || status=1
    echo "wall time $((SECONDS - start)) s (start-up and both epochs)" | tee -a "$OUT/summary.txt"
    tail -n 40 "$OUT/train-$spec.log"
    "$PYTHON" - "$run/metrics.jsonl" "$spec" <<'EOF' | tee -a "$OUT/summary.txt" || status=1
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
print(f"backend {sys.argv[2]}:")
nan = float("nan")  # an epoch that does not cluster has no feature, PCA or k-means times
for r in rows:
    print(f"  epoch {r['epoch']}: features {r.get('time_features', nan):.1f} s, "
          f"training {r['time_train']:.1f} s, pca {r.get('time_pca', nan):.2f} s, "
          f"k-means {r.get('time_kmeans', nan):.2f} s ({r.get('kmeans_backend')}), "
          f"GPU peak {r.get('gpu_peak_gib', nan):.2f} GiB, unreadable {r.get('unreadable_images')}")
EOF
    grep -E "^epoch [0-9]+ \|" "$OUT/train-$spec.log" | tee -a "$OUT/summary.txt"
done

echo "== bench/data_bench.py on the same folder"
# shellcheck disable=SC2086  # BENCH_ARGS is a list of options
"$PYTHON" "$HERE/data_bench.py" --folder "$DATA" $BENCH_ARGS --json "$OUT/data_bench.json" \
    2>&1 | tee "$OUT/data_bench.log" || status=1
exit $status
