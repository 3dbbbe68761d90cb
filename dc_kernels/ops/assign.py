"""Fused k-means assignment: distance + argmin in tiles, the N x K matrix never materialised.

One program owns BLOCK_N points of one problem (grid axis 1 is the batch). Centroid tiles of
BLOCK_K stream past; for each, the scores ||c||^2 - 2 x.c are formed in registers and folded into
a running (min, argmin). When d fits one tile (d <= 256) the point tile is loaded once, already
rounded to the operand type, and stays on chip for the whole sweep; otherwise d is streamed in
BLOCK_D slices. The epilogue gathers each point's winning centroid and computes the distance
directly as sum((x - c)^2) in fp32, so the reported distance carries no cancellation error
whatever the precision of the search (the reference's contract).
"""

import math

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


# Kernel modes: every row swept; the listed rows swept, with their second-best score; every
# row's distance to a given label only (no sweep: the pruned path's rows that keep theirs).
SWEEP, GATHER, LABELLED = 0, 1, 2


@triton.jit
def _assign_kernel(x_ptr, xop_ptr, c_ptr, cop_ptr, csq_ptr, dist_ptr, label_ptr,
                   list_ptr, count_ptr, second_ptr,
                   N, K, D,
                   stride_xb, stride_xn, stride_cb, stride_ck,
                   PRECISION: tl.constexpr, EMULATE: tl.constexpr, MODE: tl.constexpr,
                   SINGLE_D: tl.constexpr,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    k_stop = K
    if MODE == 1:
        # The rows are the first count[b] entries of list[b]; programs past them sweep nothing
        # (the grid is sized for N, so the count never has to reach the host).
        position = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        count = tl.load(count_ptr + b)
        row_ok = position < count
        rows = tl.load(list_ptr + b * N + position, mask=row_ok, other=0)
        k_stop = tl.where(pid_n * BLOCK_N < count, K, 0)
    else:
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
    x_base = x_ptr + b * stride_xb + rows.to(tl.int64)[:, None] * stride_xn
    xop_base = xop_ptr + b * stride_xb + rows.to(tl.int64)[:, None] * stride_xn
    c_base = c_ptr + b * stride_cb
    cop_base = cop_ptr + b * stride_cb
    offs_d = tl.arange(0, BLOCK_D)

    if SINGLE_D and MODE != 2:
        # The point tile stays on chip, already in operand form, for the whole centroid sweep.
        x_tile = tl.load(xop_base + offs_d[None, :],
                         mask=row_ok[:, None] & (offs_d[None, :] < D), other=0.0)
        x_op = to_operand(x_tile, PRECISION, EMULATE)

    best = tl.full([BLOCK_N], float("inf"), tl.float32)
    second = tl.full([BLOCK_N], float("inf"), tl.float32)
    if MODE == 2:
        best_idx = tl.load(label_ptr + b * N + rows, mask=row_ok, other=0).to(tl.int32)
    else:
        best_idx = tl.zeros([BLOCK_N], tl.int32)
        for k0 in range(0, k_stop, BLOCK_K):
            cols = k0 + tl.arange(0, BLOCK_K)
            col_ok = cols < K
            c_rows = cop_base + cols.to(tl.int64)[:, None] * stride_ck
            acc = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
            if SINGLE_D:
                c_tile = tl.load(c_rows + offs_d[None, :],
                                 mask=col_ok[:, None] & (offs_d[None, :] < D), other=0.0)
                acc = dot_operands(x_op, tl.trans(to_operand(c_tile, PRECISION, EMULATE)), acc,
                                   PRECISION, EMULATE)
            else:
                for d0 in range(0, D, BLOCK_D):
                    dd = d0 + offs_d
                    d_ok = dd < D
                    x_tile = tl.load(xop_base + dd[None, :],
                                     mask=row_ok[:, None] & d_ok[None, :], other=0.0)
                    c_tile = tl.load(c_rows + dd[None, :], mask=col_ok[:, None] & d_ok[None, :],
                                     other=0.0)
                    acc = dot_operands(to_operand(x_tile, PRECISION, EMULATE),
                                       tl.trans(to_operand(c_tile, PRECISION, EMULATE)), acc,
                                       PRECISION, EMULATE)
            csq = tl.load(csq_ptr + b * K + cols, mask=col_ok, other=float("inf"))
            # 2 * acc is exact: this rounds exactly like the reference's csq + (-2) * dots.
            score = tl.where(col_ok[None, :], csq[None, :] - 2.0 * acc, float("inf"))
            tile_best = tl.min(score, axis=1)
            # Lowest column reaching the minimum (ties to the lowest index), as a second fused
            # reduction: cheaper in registers than an argmin carrying an index tile.
            tile_arg = tl.min(tl.where(score == tile_best[:, None], cols[None, :], K), axis=1)
            # Strictly smaller only: an equal score in a later tile keeps the lower index.
            better = tile_best < best
            if MODE == 1:
                # The second-best score: the lowest over every column but the winner's.
                tile_second = tl.min(tl.where(cols[None, :] == tile_arg[:, None], float("inf"),
                                              score), axis=1)
                second = tl.where(better, tl.minimum(best, tile_second),
                                  tl.minimum(second, tile_best))
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
    if MODE != 2:
        tl.store(label_ptr + b * N + rows, best_idx.to(tl.int64), mask=row_ok)
    if MODE == 1:
        tl.store(second_ptr + b * N + rows, second, mask=row_ok)


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


def operand_copy(x: torch.Tensor, precision: str) -> torch.Tensor:
    """x as the kernel's dot reads it: 16-bit modes read points already rounded (half the
    bytes, and the tiles go straight from memory to the tensor cores, with no conversion in
    registers, which would spill); other modes read x itself."""
    if precision in ("bf16", "fp16"):
        return x.to(torch.bfloat16 if precision == "bf16" else torch.float16)
    return x


def _launch(x: torch.Tensor, x_op: torch.Tensor, centroids: torch.Tensor, precision: str,
            dist: torch.Tensor, labels: torch.Tensor, mode: int = SWEEP,
            gather: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> None:
    """One launch of the assign kernel in ``mode``; GATHER takes ``gather`` = (list, count,
    second). Every mode runs the same tile config (``launch`` remembers it per key) and the
    same code for what they share, so a row gets the same scores, label and distance in all.

    One exception, on GPUs in 16-bit modes: there LABELLED, with no sweep whose 16-bit tiles
    shape the epilogue's register layout, gets a layout that spills with the on-chip point
    tile, so it runs the sliced config instead; its distances may then differ from the
    sweep's in the last bits (the summation order), which is within those modes' contract.
    In fp32 and tf32 all three modes compile to the same epilogue layout for sm_90
    (tests/test_triton_pruning.py checks it), hence the same order of additions.
    """
    batch, n, d = x.shape
    k = centroids.shape[1]
    centroid_sqnorms = (centroids * centroids).sum(-1)
    c_op = operand_copy(centroids, precision)
    row_list, count, second = gather or (labels, labels, dist)
    args = (x, x_op, centroids, c_op, centroid_sqnorms, dist, labels, row_list, count, second,
            n, k, d, x.stride(0), x.stride(1), centroids.stride(0), centroids.stride(1),
            precision_code(precision), interpreting(x), mode)
    configs, key = assign_configs(d, precision, interpreting(x)), _key(x, precision)
    if mode == LABELLED and precision in ("bf16", "fp16") and not interpreting(x):
        configs, key = [c for c in configs if not c["SINGLE_D"]], key + ("labelled",)
    with device_guard(x):
        launch(_assign_kernel, lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), batch), args,
               configs, key=key)


def _key(x: torch.Tensor, precision: str) -> tuple:
    return (precision, min(next_pow2(x.shape[-1]), 512), x.dtype)


def assign(x: torch.Tensor, centroids: torch.Tensor,
           precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest centroid of every point of x (B, N, d) among centroids (B, K, d) float32.

    Returns (dist (B, N) float32, labels (B, N) int64): the dot products in ``precision``
    ('fp32' is 3xTF32 on tensor cores), accumulated in fp32, ties to the lowest index; dist is
    sum((x - c)^2) in fp32 for the chosen c. Inputs as checked by dc_kernels.backends._checks.
    """
    precision_code(precision)
    check_launchable(x, "assign")
    batch, n, _ = x.shape
    x = x.contiguous()
    centroids = centroids.contiguous()
    dist = torch.empty(batch, n, dtype=torch.float32, device=x.device)
    labels = torch.empty(batch, n, dtype=torch.int64, device=x.device)
    if n == 0:
        return dist, labels
    # The rounded copy of x (16-bit modes) costs one pass over x; the fp32 originals serve the
    # epilogue's exact distance.
    _launch(x, operand_copy(x, precision), centroids, precision, dist, labels)
    return dist, labels


def assign_rows(x: torch.Tensor, x_op: torch.Tensor, centroids: torch.Tensor, precision: str,
                row_list: torch.Tensor, count: torch.Tensor, dist: torch.Tensor,
                labels: torch.Tensor, second: torch.Tensor) -> None:
    """``assign`` for the rows row_list[b, :count[b]] of each problem only, written in place
    into dist and labels (B, N), with each row's second-best score ||c||^2 - 2 x.c (the lowest
    over every centroid but its own; +inf when K = 1) into second (B, N) float32.

    x (B, N, d) contiguous, x_op = operand_copy(x, precision), centroids (B, K, d) contiguous
    float32, row_list (B, N) int64 row indices (entries past the count are not read), count
    (B,) int64 on the device: nothing is read back to the host. Labels and distances are bit
    for bit those ``assign`` gives the same rows.
    """
    check_launchable(x, "assign_rows")
    if x.shape[1] > 0:
        _launch(x, x_op, centroids, precision, dist, labels, GATHER, (row_list, count, second))


def labelled_distances(x: torch.Tensor, x_op: torch.Tensor, centroids: torch.Tensor,
                       labels: torch.Tensor, precision: str) -> torch.Tensor:
    """sum((x - c_label)^2) (B, N) float32 for given labels (B, N) int64, bit for bit the
    distance ``assign`` reports for a row it gives that label (the same kernel and config,
    without the sweep). Arguments as for ``assign_rows``."""
    check_launchable(x, "labelled_distances")
    dist = torch.empty(labels.shape, dtype=torch.float32, device=x.device)
    if x.shape[1] > 0:
        _launch(x, x_op, centroids, precision, dist, labels, LABELLED)
    return dist


# Relative error of one product of two operands as the kernel's dot forms it: the operands'
# rounding (a unit of 2^-10 covers TF32 truncation as well as rounding; 2^-8 is bf16's and
# 2^-11 fp16's rounding unit), twice, plus their product. fp32 runs 3xTF32: x = hi + lo with
# |lo| <= 2^-10 |x|, the lo parts rounded again (2^-10 of 2^-10) and lo * lo dropped, so three
# terms of 2^-20 each.
_PRODUCT_ERROR = {"fp32": 3 * 2.0**-20, "tf32": 2 * 2.0**-10 + 2.0**-20,
                  "bf16": 2 * 2.0**-8 + 2.0**-16, "fp16": 2 * 2.0**-11 + 2.0**-22}
_U = 2.0**-24  # fp32's unit roundoff


def score_error_bound(precision: str, d: int) -> tuple[float, float, float]:
    """(rel, lin, tiny): the kernel's score ||c||^2 - 2 x.c for a row x and a centroid c
    differs from the exact value by at most rel M^2 + lin M + tiny, M = ||x|| + max_j ||c_j||.

    Derivation, with p = _PRODUCT_ERROR[precision] and u = 2^-24: the dot product of the
    rounded operands errs by at most p sum |x_t c_t| <= p ||x|| ||c|| (Cauchy-Schwarz), its
    fp32 accumulation over d terms by 2 (d + 2) u ||x|| ||c|| (doubled: tensor cores may
    truncate inside an MMA); the score takes it twice, and 2 ||x|| ||c|| <= M^2 / 2. The
    squared norm ||c||^2 (fp32, any order) errs by d u ||c||^2 <= d u M^2, and csq - 2 acc by
    one rounding, u M^2. Sum: (p / 2 + (2 d + 4) u) M^2, doubled as a safety factor (it also
    absorbs the second-order terms): rel = p + (4 d + 8) u. fp16 alone has subnormals below
    2^-14, rounded with an absolute error up to a = 2^-25 per operand: each product gains
    a (|x_t| + |c_t|) + a^2, at most a sqrt(d) M + d a^2 summed, twice in the score, doubled:
    lin = 4 a sqrt(d), and 4 d a^2 into tiny. tiny also covers fp32 underflow (products below
    2^-126 lose relative accuracy; 2^-120 per term is far above their absolute error, 2^-149).
    """
    rel = _PRODUCT_ERROR[precision] + (4 * d + 8) * _U
    tiny = (d + 4) * 2.0**-120
    if precision == "fp16":
        return rel, 4 * 2.0**-25 * math.sqrt(d), tiny + 4 * d * 2.0**-50
    return rel, 0.0, tiny


def distance_error_bound(d: int) -> tuple[float, float]:
    """(rel, tiny): the exact squared distance is at most dist (1 + rel) + tiny for a distance
    ``dist`` the kernel computed as sum((x - c)^2) in fp32 (one rounding per difference, per
    square and per addition: (d + 3) u, doubled; tiny for underflow as above)."""
    return 2.0 * (d + 3) * _U, (d + 4) * 2.0**-120
