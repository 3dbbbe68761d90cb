"""Empty-cluster split on the device, with the semantics of ``TorchBackend.split``.

One program per problem walks the clusters in index order. The donor search is hierarchical so
that each empty cluster costs O(1) vector steps instead of a scan over K: the weights
max(count - 1, 0) are summed per block of BLOCK clusters into a small scratch array; the draw r
first picks the block whose running sum exceeds r, then the cluster inside it. Both sums are
kept current as donors give points away. Clusters that are empty on entry are exactly those
visited (a donor keeps >= 1 point and a split cluster receives >= 1), so the empty set is read
once per block. The draw is splitmix64 in uint64 arithmetic: the donors equal the reference's.
Nothing is read back to the host, so the step can sit inside a captured CUDA graph.
"""

import torch
import triton
import triton.language as tl

from ..contract import SPLIT_EPS, mix64, split_seed
from ._common import check_launchable, device_guard, interpreting, next_pow2


@triton.jit
def _mix64_tl(z):
    """splitmix64 finaliser on uint64 (wrapping arithmetic, logical shifts)."""
    z = z + 0x9E3779B97F4A7C15
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB
    return z ^ (z >> 31)


# The draw's inputs are plain values, never specialised (Triton would turn an iteration of 1
# into a compile-time constant and build a second kernel for it).
@triton.jit(do_not_specialize=["seed_key", "iteration"])
def _split_kernel(c_ptr, counts_ptr, bsum_ptr, nsplit_ptr, iter_ptr,
                  seed_key, iteration, K, D, n_blocks, eps,
                  ITER_ON_DEVICE: tl.constexpr, BLOCK: tl.constexpr, NB: tl.constexpr,
                  BLOCK_D: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    cnt_base = counts_ptr + b * K
    bs_base = bsum_ptr + b * NB
    c_base = c_ptr + b * K * D
    offs = tl.arange(0, BLOCK)
    blocks = tl.arange(0, NB)
    offs_d = tl.arange(0, BLOCK_D)
    # Per-dimension factors (1 + eps*s) and (1 - eps*s), s = +1 on even, -1 on odd coordinates;
    # both are exact in fp32, as in the reference.
    if ITER_ON_DEVICE:
        it = tl.load(iter_ptr).to(tl.uint64)
    else:
        it = tl.cast(iteration, tl.uint64)
    key = _mix64_tl(tl.cast(seed_key, tl.uint64) ^ it)

    total = tl.zeros([1], tl.int64)
    for blk in range(0, n_blocks):
        idx = blk * BLOCK + offs
        c = tl.load(cnt_base + idx, mask=idx < K, other=0)
        s = tl.sum(tl.maximum(c - 1, 0), axis=0)
        tl.store(bs_base + blk, s)
        total += s
    tl.debug_barrier()

    nsplit = tl.zeros([1], tl.int64)
    for blk in range(0, n_blocks):
        idx = blk * BLOCK + offs
        empty = tl.load(cnt_base + idx, mask=idx < K, other=1) == 0
        n_empty = tl.sum(empty.to(tl.int32), axis=0)
        last = blk * BLOCK - 1
        for _ in range(0, n_empty):
            j = tl.min(tl.where(empty & (idx > last), idx, K), axis=0)
            last = j
            go = total > 0
            draw = _mix64_tl(key ^ j.to(tl.uint64))
            r = (draw % tl.maximum(total, 1).to(tl.uint64)).to(tl.int64)
            # Block of the donor: the first whose inclusive running sum exceeds r.
            bsv = tl.load(bs_base + blocks, mask=blocks < n_blocks, other=0)
            incl = tl.cumsum(bsv, axis=0)
            dblk = tl.sum((incl[None, :] <= r[:, None]).to(tl.int32), axis=1)
            before = tl.sum(tl.where(blocks[None, :] < dblk[:, None], bsv[None, :], 0), axis=1)
            # Donor inside the block, same rule on the cluster weights.
            didx = dblk[:, None] * BLOCK + offs[None, :]
            dw = tl.maximum(tl.load(cnt_base + didx, mask=didx < K, other=0) - 1, 0)
            dincl = tl.cumsum(dw, axis=1)
            donor = dblk * BLOCK + tl.sum((dincl <= (r - before)[:, None]).to(tl.int32), axis=1)
            cd = tl.load(cnt_base + donor, mask=go, other=0)
            new = cd // 2
            keep = cd - new
            tl.store(cnt_base + j + tl.zeros([1], tl.int32), new, mask=go)
            tl.store(cnt_base + donor, keep, mask=go)
            w_old = tl.maximum(cd - 1, 0)
            w_keep = tl.maximum(keep - 1, 0)
            w_new = tl.maximum(new - 1, 0)
            bd = tl.load(bs_base + dblk, mask=go, other=0)
            tl.store(bs_base + dblk, bd - w_old + w_keep, mask=go)
            tl.debug_barrier()
            bj = tl.load(bs_base + blk + tl.zeros([1], tl.int32), mask=go, other=0)
            tl.store(bs_base + blk + tl.zeros([1], tl.int32), bj + w_new, mask=go)
            total += tl.where(go, w_keep + w_new - w_old, 0)
            nsplit += go.to(tl.int64)
            src = c_base + donor.to(tl.int64)[:, None] * D
            dst = c_base + j.to(tl.int64) * D
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + offs_d
                m = go[:, None] & (dd[None, :] < D)
                v = tl.load(src + dd[None, :], mask=m, other=0.0)
                sign = tl.where(dd % 2 == 0, 1.0, -1.0)
                grow = 1.0 + eps * sign
                shrink = 1.0 - eps * sign
                tl.store(dst + dd[None, :], v * grow[None, :], mask=m)
                tl.store(src + dd[None, :], v * shrink[None, :], mask=m)
            tl.debug_barrier()
    tl.store(nsplit_ptr + b + tl.zeros([1], tl.int32), nsplit)


def split(centroids: torch.Tensor, counts: torch.Tensor, seed: int,
          iteration: int | torch.Tensor) -> torch.Tensor:
    """Split empty clusters of centroids (B, K, d) float32 / counts (B, K) int64, in place.

    ``iteration`` is an int, or a one-element int64 tensor on the device (so that one captured
    CUDA graph can serve every iteration). Returns nsplit (B,) int64 on the device. Inputs as
    checked by dc_kernels.backends._checks.
    """
    check_launchable(centroids, "split")
    batch, k, d = centroids.shape
    on_device = isinstance(iteration, torch.Tensor)
    # Enough clusters per block that the block sums fit one vector of at most 128: with more
    # (K = 100,000 in blocks of 256 gave 512), Triton 3.6 moves the block search to a 4.5 KB
    # stack per thread; blocks of up to 8,192 clusters (K <= 1M) still build without one.
    block = max(32 if interpreting(centroids) else 256, next_pow2(triton.cdiv(k, 128)))
    n_blocks = triton.cdiv(k, block)
    nb = max(2, next_pow2(n_blocks))
    bsum = torch.empty(batch, nb, dtype=torch.int64, device=centroids.device)
    nsplit = torch.empty(batch, dtype=torch.int64, device=centroids.device)
    with device_guard(centroids):
        _split_kernel[(batch,)](
            centroids, counts, bsum, nsplit, iteration if on_device else counts,
            mix64(split_seed(seed)), 0 if on_device else int(iteration), k, d, n_blocks,
            SPLIT_EPS, ITER_ON_DEVICE=on_device, BLOCK=block, NB=nb,
            BLOCK_D=min(256, next_pow2(d)), num_warps=4)
    return nsplit
