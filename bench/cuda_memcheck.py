r"""Run every kernel of the cuda backend once at small, tile-straddling sizes, for
compute-sanitizer (bench/gpu_check.sh):

    compute-sanitizer --error-exitcode 1 --tool memcheck python -m bench.cuda_memcheck
    compute-sanitizer --error-exitcode 1 --tool racecheck python -m bench.cuda_memcheck \
        --steps split

Each step is also checked against the torch reference, so a run that the sanitizer passes has
computed the right thing too. Exits 0 and prints one line per step when everything agrees.
"""

import argparse
import sys
from typing import Any

import torch

from dc_kernels.backends import get_backend

STEPS = ("assign", "update", "split", "pca")


def check_assign(cuda: Any, ref: Any, gen: torch.Generator) -> str:
    # N, K, d straddle the tiles (64 x 64 x 16 fp32, 128 x 64 x 32 tensor cores); B = 2.
    x = torch.randn(2, 131, 37, generator=gen).cuda()
    c = torch.randn(2, 67, 37, generator=gen).cuda()
    for precision in cuda.precisions:
        for xd in (x, x.half(), x.bfloat16()):
            dist, labels = cuda.assign(xd, c, precision)
            ref_dist, ref_labels = ref.assign(xd, c, precision)
            agree = (labels == ref_labels).float().mean().item()
            if agree < 0.97 or not torch.allclose(dist.sum(), ref_dist.sum(), rtol=5e-3):
                raise SystemExit(f"assign {precision} {xd.dtype}: {agree:.3f} labels agree")
    return "assign: 4 precisions x 3 point dtypes agree with the reference"


def check_update(cuda: Any, ref: Any, gen: torch.Generator) -> str:
    # K * d small enough for shared-memory aggregation, then too large for it.
    for k, d in ((5, 7), (300, 70)):
        x = torch.randn(2, 517, d, generator=gen).cuda()
        labels = torch.randint(0, k, (2, 517), generator=gen).cuda()
        labels[labels == 1] = 0
        c = torch.randn(2, k, d, generator=gen).cuda()
        mine, theirs = c.clone(), c.clone()
        counts = cuda.update(x, labels, mine)
        if not torch.equal(counts, ref.update(x, labels, theirs)):
            raise SystemExit(f"update K={k} d={d}: counts differ")
        if not torch.allclose(mine, theirs, rtol=1e-5, atol=1e-5):
            raise SystemExit(f"update K={k} d={d}: centroids differ")
    return "update: shared and global aggregation agree with the reference"


def check_split(cuda: Any, ref: Any, gen: torch.Generator) -> str:
    # K = 2100 > 1024 threads: several clusters per thread chunk.
    for k, d in ((9, 3), (2100, 5)):
        choices = torch.tensor([0, 0, 1, 2, 5, 40])
        counts = choices[torch.randint(0, len(choices), (2, k), generator=gen)].cuda()
        c = torch.randn(2, k, d, generator=gen).cuda()
        mine_c, mine_n, ref_c, ref_n = c.clone(), counts.clone(), c.clone(), counts.clone()
        nsplit = cuda.split(mine_c, mine_n, 1234, 3)
        ref_nsplit = ref.split(ref_c, ref_n, 1234, 3)
        if not (torch.equal(nsplit.cpu(), ref_nsplit.cpu()) and torch.equal(mine_n, ref_n)
                and torch.equal(mine_c, ref_c)):
            raise SystemExit(f"split K={k}: differs from the reference")
    return "split: bit-identical to the reference"


def check_pca(cuda: Any, ref: Any, gen: torch.Generator) -> str:
    x = (torch.randn(301, 70, generator=gen) + 3.0).cuda()
    mean, cov = cuda.covariance(x)
    ref_mean, ref_cov = ref.covariance(x)
    if not (torch.allclose(mean, ref_mean) and torch.allclose(cov, ref_cov, atol=1e-4)):
        raise SystemExit("covariance differs from the reference")
    proj = torch.randn(70, 33, generator=gen).cuda()
    for normalize in (True, False):
        out = cuda.pca_apply(x, mean.float(), proj, normalize)
        if not torch.allclose(out, ref.pca_apply(x, mean.float(), proj, normalize), rtol=1e-4,
                              atol=1e-4):
            raise SystemExit(f"pca_apply normalize={normalize} differs from the reference")
    return "pca: covariance and apply agree with the reference"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    args = parser.parse_args()
    try:
        cuda = get_backend("cuda", torch.device("cuda"))
    except ValueError as exc:  # no GPU, or the extension was not built
        print(f"cuda_memcheck: cannot run: {exc}", file=sys.stderr)
        return 2
    ref = get_backend("torch", torch.device("cuda"))
    checks = {"assign": check_assign, "update": check_update, "split": check_split,
              "pca": check_pca}
    for step in args.steps:
        print(checks[step](cuda, ref, torch.Generator().manual_seed(0)), flush=True)
    torch.cuda.synchronize()
    print("cuda_memcheck: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
