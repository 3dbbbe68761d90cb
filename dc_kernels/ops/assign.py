"""Fused k-means assignment: distance + argmin in tiles, the N x K matrix never materialised.

One program owns BLOCK_N points of one problem (grid axis 1 is the batch). Centroid tiles of
BLOCK_K stream past; for each, the scores ||c||^2 - 2 x.c are formed in registers and folded into
a running (min, argmin). When d fits one tile (d <= 256) the point tile is loaded once, already
rounded to the operand type, and stays on chip for the whole sweep; otherwise d is streamed in
BLOCK_D slices. The epilogue gathers each point's winning centroid and computes the distance
directly as sum((x - c)^2) in fp32, so the reported distance carries no cancellation error
whatever the precision of the search (the reference's contract).
"""

import torch
import triton
import triton.language as tl

from ._common import (
    check_launchable,
    device_guard,
    dot_operands,
    interpreting,
    launch,
    next_pow2,
    precision_code,
    to_operand,
)

# Largest padded d kept on chip as one tile with 16-bit operands (128 rows x 256 = 64 KiB).
SINGLE_TILE_D = 256


@triton.jit
def _assign_kernel(x_ptr, xop_ptr, c_ptr, cop_ptr, csq_ptr, dist_ptr, label_ptr,
                   N, K, D,
                   stride_xb, stride_xn, stride_cb, stride_ck,
                   PRECISION: tl.constexpr, EMULATE: tl.constexpr, SINGLE_D: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    x_base = x_ptr + b * stride_xb + rows.to(tl.int64)[:, None] * stride_xn
    xop_base = xop_ptr + b * stride_xb + rows.to(tl.int64)[:, None] * stride_xn
    c_base = c_ptr + b * stride_cb
    cop_base = cop_ptr + b * stride_cb
    offs_d = tl.arange(0, BLOCK_D)

    if SINGLE_D:
        # The point tile stays on chip, already in operand form, for the whole centroid sweep.
        x_tile = tl.load(xop_base + offs_d[None, :],
                         mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
        x_op = to_operand(x_tile, PRECISION, EMULATE)

    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    best_idx = tl.zeros([BLOCK_N], tl.int32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        col_ok = cols < K
        c_rows = cop_base + cols.to(tl.int64)[:, None] * stride_ck
        acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        if SINGLE_D:
            c_tile = tl.load(c_rows + offs_d[None, :], mask=col_ok[:, None] & (offs_d[None, :] < D),
                             other=0.0)
            acc = dot_operands(x_op, tl.trans(to_operand(c_tile, PRECISION, EMULATE)), acc,
                               PRECISION, EMULATE)
        else:
            for d0 in range(0, D, BLOCK_D):
                dd = d0 + offs_d
                d_ok = dd < D
                x_tile = tl.load(xop_base + dd[None, :], mask=row_ok[:, None] & d_ok[None, :],
                                 other=0.0)
                c_tile = tl.load(c_rows + dd[None, :], mask=col_ok[:, None] & d_ok[None, :],
                                 other=0.0)
                acc = dot_operands(to_operand(x_tile, PRECISION, EMULATE),
                                   tl.trans(to_operand(c_tile, PRECISION, EMULATE)), acc,
                                   PRECISION, EMULATE)
        csq = tl.load(csq_ptr + b * K + cols, mask=col_ok, other=float("inf"))
        # 2 * acc is exact, so this rounds exactly like the reference's csq + (-2) * dots.
        score = tl.where(col_ok[None, :], csq[None, :] - 2.0 * acc, float("inf"))
        tile_best = tl.min(score, axis=1)
        # Lowest column reaching the minimum (ties to the lowest index), as a second fused
        # reduction: cheaper in registers than an argmin carrying an index tile.
        tile_arg = tl.min(tl.where(score == tile_best[:, None], cols[None, :], K), axis=1)
        # Strictly smaller only: an equal score in a later tile keeps the lower index.
        better = tile_best < best
        best = tl.where(better, tile_best, best)
        best_idx = tl.where(better, tile_arg, best_idx)

    # Epilogue: exact fp32 distance to the winner, gathered row by row.
    win = c_base + best_idx.to(tl.int64)[:, None] * stride_ck
    dist = tl.zeros([BLOCK_N], tl.float32)
    for d0 in range(0, D, BLOCK_D):
        dd = d0 + offs_d
        m = row_ok[:, None] & (dd[None, :] < D)
        xv = tl.load(x_base + dd[None, :], mask=m, other=0.0).to(tl.float32)
        cv = tl.load(win + dd[None, :], mask=m, other=0.0).to(tl.float32)
        diff = xv - cv
        dist += tl.sum(diff * diff, axis=1)
    tl.store(dist_ptr + b * N + rows, dist, mask=row_ok)
    tl.store(label_ptr + b * N + rows, best_idx.to(tl.int64), mask=row_ok)


def assign_configs(d: int, precision: str, interp: bool) -> list[dict]:
    """Tile configs, best first. GPU: tensor-core tiles, the point tile kept on chip when d
    fits (16-bit operands up to d = 256, fp32 ones up to 128: 3xTF32 needs twice the space);
    then smaller fallbacks. Interpreter: small tiles (each op costs numpy time)."""
    d_pad = next_pow2(d)
    if interp:
        single = d_pad <= 64
        return [dict(BLOCK_N=64, BLOCK_K=64, BLOCK_D=d_pad if single else 64, SINGLE_D=single,
                     num_warps=4, num_stages=1)]
    sixteen_bit = precision in ("bf16", "fp16")
    block_k = 128 if sixteen_bit else 64
    slice_d = 64 if sixteen_bit else 32
    configs = []
    if d_pad <= (SINGLE_TILE_D if sixteen_bit else SINGLE_TILE_D // 2):
        configs.append(dict(BLOCK_N=128, BLOCK_K=block_k, BLOCK_D=max(d_pad, 16),
                            SINGLE_D=True, num_warps=8, num_stages=2))
    configs.append(dict(BLOCK_N=128, BLOCK_K=block_k, BLOCK_D=slice_d, SINGLE_D=False,
                        num_warps=8, num_stages=3))
    configs.append(dict(BLOCK_N=64, BLOCK_K=64, BLOCK_D=32, SINGLE_D=False, num_warps=4,
                        num_stages=2))
    return configs


def assign(x: torch.Tensor, centroids: torch.Tensor,
           precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every point of x (B, N, d) among centroids (B, K, d) float32.

    Returns (dist (B, N) float32, labels (B, N) int64): the dot products in ``precision``
    ('fp32' is 3xTF32 on tensor cores), accumulated in fp32, ties to the lowest index; dist is
    sum((x - c)^2) in fp32 for the chosen c. Inputs as checked by dc_kernels.backends._checks.
    """
    code = precision_code(precision)
    check_launchable(x, "assign")
    batch, n, d = x.shape
    k = centroids.shape[1]
    x = x.contiguous()
    centroids = centroids.contiguous()
    centroid_sqnorms = (centroids * centroids).sum(-1)
    # 16-bit modes read points and centroids already rounded: half the bytes, and the tiles go
    # straight from memory to the tensor cores (no conversion in registers, which would spill).
    # The rounded copy of x costs one pass over x; the fp32 originals serve the epilogue's
    # exact distance.
    if precision in ("bf16", "fp16"):
        op_dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        x_op, c_op = x.to(op_dtype), centroids.to(op_dtype)
    else:
        x_op, c_op = x, centroids
    dist = torch.empty(batch, n, dtype=torch.float32, device=x.device)
    labels = torch.empty(batch, n, dtype=torch.int64, device=x.device)
    if n == 0:
        return dist, labels
    args = (x, x_op, centroids, c_op, centroid_sqnorms, dist, labels, n, k, d, x.stride(0),
            x.stride(1), centroids.stride(0), centroids.stride(1), code, interpreting(x))
    with device_guard(x):
        launch(_assign_kernel, lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), batch), args,
               assign_configs(d, precision, interpreting(x)),
               key=(precision, min(next_pow2(d), 512), x.dtype))
    return dist, labels
