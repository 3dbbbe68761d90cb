r"""Step two backends through the same Lloyd iterations and print where they first part.

Both start every step from the same state (the reference's), so a difference is the step's own:
per iteration, the assign labels that differ, the cluster sizes that differ, the empty clusters
each one sees and the largest centroid difference after update and after split.

    python -m bench.compare_backends --backend cuda --precision fp32 --n 20000 --d 64 --k 50
"""

import argparse

import torch

from dc_kernels.backends import get_backend
from dc_kernels.testing import blobs, random_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="cuda")
    parser.add_argument("--reference", default="torch")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    device = torch.device(args.device)
    x = blobs(args.n, args.d, args.k, seed=1, batch=1)  # the GPU tests' data, seed 1
    centroids = random_rows(x, args.k, seed=args.seed).to(device)
    x = x.to(device)
    mine, ref = get_backend(args.backend, device), get_backend(args.reference, device)
    print(f"{args.backend} vs {args.reference}, {args.precision}, N={args.n} d={args.d} "
          f"K={args.k}")
    for it in range(args.iters):
        dist_m, lab_m = mine.assign(x, centroids, args.precision)
        dist_r, lab_r = ref.assign(x, centroids, args.precision)
        differ = (lab_m != lab_r).nonzero()[:, 1]
        bad = lab_m[(lab_m < 0) | (lab_m >= args.k)]
        line = (f"iter {it}: labels differ {differ.numel()} (first rows {differ[:5].tolist()}, "
                f"mine {lab_m[0, differ[:5]].tolist()} ref {lab_r[0, differ[:5]].tolist()}), "
                f"out of range {bad.numel()}, dist sum {dist_m.double().sum():.6g} vs "
                f"{dist_r.double().sum():.6g}")
        c_m, c_r = centroids.clone(), centroids.clone()
        n_m = mine.update(x, lab_r, c_m)
        n_r = ref.update(x, lab_r, c_r)
        size_diff = (n_m != n_r).nonzero()[:, 1]
        line += (f"; sizes differ {size_diff.numel()} (clusters {size_diff[:5].tolist()}: "
                 f"{n_m[0, size_diff[:5]].tolist()} vs {n_r[0, size_diff[:5]].tolist()}), "
                 f"empty {int((n_m == 0).sum())} vs {int((n_r == 0).sum())}, "
                 f"centroid diff {float((c_m - c_r).abs().max()):.3g}")
        split_c, split_n = c_r.clone(), n_r.clone()
        s_m = mine.split(split_c, split_n, args.seed, it)
        s_r = ref.split(c_r, n_r, args.seed, it)
        line += (f"; nsplit {int(s_m.sum())} vs {int(s_r.sum())}, after split centroid diff "
                 f"{float((split_c - c_r).abs().max()):.3g}")
        print(line, flush=True)
        centroids = c_r


if __name__ == "__main__":
    main()
