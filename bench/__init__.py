"""Benchmarks of dc_kernels against the peers, side by side in one run.

Run from the repository root as modules: ``python -m bench.kmeans_bench``,
``python -m bench.step_bench``, ``python -m bench.pca_bench``; ``bench/gpu_check.sh`` runs them
all on a GPU machine. Every script declares its shapes and providers; ``bench.harness`` owns the
timer, the row printed per shape and provider, and the JSON.
"""
