"""k-means cluster sums: every row added into its cluster's sum, 1 into its count.

Two accumulation strategies, chosen by K:
- small K (<= 128): each program sweeps ROWS_PER_PROGRAM points and aggregates them on chip as
  onehot(labels)^T @ x (an exact fp32 dot: the one-hot factors are 0 or 1), then adds its
  (K x BLOCK_D) partial to the global sums with one atomic per entry. This divides the atomic
  traffic by ROWS_PER_PROGRAM / K and avoids hammering the same few addresses.
- large K: every point adds its row straight into its cluster's sums (atomics spread over K
  rows, so contention is low) and 1 into its count.
Both are accumulated into (rows may come in chunks); the division by the counts is the driver's
``finalize``. Sums are fp32; the order of the atomic additions is not fixed on a GPU, so sums
agree with the reference to rounding, not bit for bit.
"""

import torch
import triton
import triton.language as tl

from ._common import check_launchable, device_guard, next_pow2

ONEHOT_MAX_K = 128


@triton.jit
def _sums_atomic_kernel(x_ptr, label_ptr, sums_ptr, counts_ptr, N, K, D,
                        stride_xb, stride_xn,
                        BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    lab = tl.load(label_ptr + b * N + rows, mask=row_ok, other=0)
    # A label outside [0, K) (only a caller bypassing assign makes one) is skipped, as in the
    # C++ and CUDA kernels, rather than written out of bounds.
    row_ok = row_ok & (lab >= 0) & (lab < K)
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    m = row_ok[:, None] & (dd[None, :] < D)
    xv = tl.load(x_ptr + b * stride_xb + rows.to(tl.int64)[:, None] * stride_xn + dd[None, :],
                 mask=m, other=0.0).to(tl.float32)
    tl.atomic_add(sums_ptr + (b * K + lab)[:, None] * D + dd[None, :], xv, mask=m, sem="relaxed")
    if pid_d == 0:
        ones = tl.full([BLOCK_N], 1, tl.int64)
        tl.atomic_add(counts_ptr + b * K + lab, ones, mask=row_ok, sem="relaxed")


@triton.jit
def _sums_onehot_kernel(x_ptr, label_ptr, sums_ptr, counts_ptr, N, K, D,
                        stride_xb, stride_xn, ROWS_PER_PROGRAM,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_d = tl.program_id(1)
    b = tl.program_id(2).to(tl.int64)
    dd = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_ok = dd < D
    ks = tl.arange(0, BLOCK_K)
    part = tl.zeros([BLOCK_K, BLOCK_D], tl.float32)
    cnt = tl.zeros([BLOCK_K], tl.int32)
    start = pid_n * ROWS_PER_PROGRAM
    stop = tl.minimum(start + ROWS_PER_PROGRAM, N)
    for r0 in range(start, stop, BLOCK_N):
        rows = r0 + tl.arange(0, BLOCK_N)
        row_ok = rows < stop
        lab = tl.load(label_ptr + b * N + rows, mask=row_ok, other=-1)
        hit = (lab[:, None] == ks[None, :]) & row_ok[:, None]
        xv = tl.load(x_ptr + b * stride_xb + rows.to(tl.int64)[:, None] * stride_xn + dd[None, :],
                     mask=row_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
        # IEEE dot: 0/1 weights times fp32 values, summed in fp32, nothing rounded to TF32.
        part = tl.dot(tl.trans(hit.to(tl.float32)), xv, part, input_precision="ieee")
        cnt += tl.sum(hit.to(tl.int32), axis=0)
    k_ok = ks < K
    tl.atomic_add(sums_ptr + (b * K + ks)[:, None] * D + dd[None, :], part,
                  mask=k_ok[:, None] & d_ok[None, :], sem="relaxed")
    if pid_d == 0:
        tl.atomic_add(counts_ptr + b * K + ks, cnt.to(tl.int64), mask=k_ok, sem="relaxed")


def cluster_sums(x: torch.Tensor, labels: torch.Tensor, sums: torch.Tensor,
                 counts: torch.Tensor) -> None:
    """Add the rows of x (B, N, d) into ``sums`` (B, K, d) float32 and 1 per point into
    ``counts`` (B, K) int64 by label (B, N) int64; both are accumulated into (not zeroed), so a
    caller streaming x in chunks calls this once per chunk. Inputs as checked by
    dc_kernels.backends._checks."""
    check_launchable(x, "cluster_sums")
    x, labels = x.contiguous(), labels.contiguous()
    batch, n, d = x.shape
    k = sums.shape[1]
    if k <= ONEHOT_MAX_K:
        cfg = onehot_config(k, d)
        # Enough rows per program to amortise the atomics, few enough to fill the GPU.
        block_n = cfg["BLOCK_N"]
        rows_per_program = max(block_n,
                               min(4096, triton.cdiv(n * batch, 1024) // block_n * block_n))
        grid = (triton.cdiv(n, rows_per_program), triton.cdiv(d, cfg["BLOCK_D"]), batch)
        with device_guard(x):
            _sums_onehot_kernel[grid](x, labels, sums, counts, n, k, d, x.stride(0),
                                      x.stride(1), rows_per_program, **cfg)
    else:
        cfg = atomic_config(d)
        grid = (triton.cdiv(n, cfg["BLOCK_N"]), triton.cdiv(d, cfg["BLOCK_D"]), batch)
        with device_guard(x):
            _sums_atomic_kernel[grid](x, labels, sums, counts, n, k, d, x.stride(0),
                                      x.stride(1), **cfg)


def onehot_config(k: int, d: int) -> dict:
    """Tiles of the one-hot kernel (8 warps: with 4 the K x BLOCK_D partial spills)."""
    return dict(BLOCK_N=64, BLOCK_K=max(16, next_pow2(k)), BLOCK_D=min(64, max(16, next_pow2(d))),
                num_warps=8)


def atomic_config(d: int) -> dict:
    """Tiles of the atomic kernel: 4096 values per program."""
    block_d = min(128, next_pow2(d))
    return dict(BLOCK_N=max(1, 4096 // block_d), BLOCK_D=block_d, num_warps=4)
