"""PCA-whitening kernels: symmetric covariance, top eigenpairs, fused apply.

- ``covariance``: only the upper-triangle tiles of (X - s)^T (X - s) are computed (half the
  flops of X^T X), with the shift s = the fp32 mean subtracted on load so the fp32 products
  carry no cancellation; rows are split into chunks whose fp32 tile partials are added into a
  float64 Gram matrix with atomics, which bounds the length of every fp32 running sum. The
  exact float64 correction for s != mean is applied at the end.
- ``top_eigh``: block subspace iteration in float64 with Rayleigh-Ritz and a residual test when
  d_out << d; a full ``torch.linalg.eigh`` otherwise, or when the iteration does not converge.
- ``pca_apply``: one pass over X: centre on load, project, and in the epilogue (the whole output
  row is in registers) L2-normalise before the single store.
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

# Rows whose fp32 partial Gram tile is summed before it is added in float64.
ROWS_PER_CHUNK = 1 << 16
# Widest output row the fused apply keeps in registers (d_out padded to a power of two).
APPLY_MAX_OUT = 512
# Residual bound (relative to the largest eigenvalue) at which a Ritz pair counts as converged:
# of the order of a float64 dense solver's backward error on these sizes.
EIGH_TOL = 1e-11


@triton.jit
def _gram_kernel(x_ptr, shift_ptr, gram_ptr, pairs_ptr, N, D, stride_xn, rows_per_chunk,
                 BLOCK_M: tl.constexpr, BLOCK_R: tl.constexpr):
    t = tl.program_id(0)
    chunk = tl.program_id(1)
    ti = tl.load(pairs_ptr + 2 * t)
    tj = tl.load(pairs_ptr + 2 * t + 1)
    ci = ti * BLOCK_M + tl.arange(0, BLOCK_M)
    cj = tj * BLOCK_M + tl.arange(0, BLOCK_M)
    ci_ok = ci < D
    cj_ok = cj < D
    si = tl.load(shift_ptr + ci, mask=ci_ok, other=0.0)
    sj = tl.load(shift_ptr + cj, mask=cj_ok, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_M], tl.float32)
    start = chunk * rows_per_chunk
    stop = tl.minimum(start + rows_per_chunk, N)
    for r0 in range(start, stop, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        base = x_ptr + rows.to(tl.int64)[:, None] * stride_xn
        row_ok = rows < stop
        mi = row_ok[:, None] & ci_ok[None, :]
        mj = row_ok[:, None] & cj_ok[None, :]
        a = tl.where(mi, tl.load(base + ci[None, :], mask=mi, other=0.0).to(tl.float32)
                     - si[None, :], 0.0)
        bmat = tl.where(mj, tl.load(base + cj[None, :], mask=mj, other=0.0).to(tl.float32)
                        - sj[None, :], 0.0)
        # 3xTF32: fp32-accurate products on tensor cores.
        acc = tl.dot(tl.trans(a), bmat, acc, input_precision="tf32x3")
    tl.atomic_add(gram_ptr + ci.to(tl.int64)[:, None] * D + cj[None, :], acc.to(tl.float64),
                  mask=ci_ok[:, None] & cj_ok[None, :], sem="relaxed")


_PAIRS: dict[tuple[int, str], torch.Tensor] = {}


def _upper_pairs(n_tiles: int, device: torch.device) -> torch.Tensor:
    """(i, j) tile indices with i <= j, flattened, cached per device."""
    key = (n_tiles, str(device))
    if key not in _PAIRS:
        ii, jj = torch.triu_indices(n_tiles, n_tiles)
        _PAIRS[key] = torch.stack([ii, jj], 1).reshape(-1).to(torch.int32).to(device)
    return _PAIRS[key]


def gram_configs(d: int, interp: bool) -> list[dict]:
    """Gram tiles, best first: two stages of 64 x 128 fp32 tiles fit Hopper's shared memory
    (three do not); one stage as the fallback."""
    block_m = min(32 if interp else 128, max(16, next_pow2(d)))
    return [dict(BLOCK_M=block_m, BLOCK_R=32 if interp else 64, num_warps=8, num_stages=s)
            for s in (2, 1)]


def covariance(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (d,) and population covariance (d, d) of the rows of x (N, d), both float64 (x as
    checked by dc_kernels.backends._checks). Products are fp32-accurate (3xTF32) by design: the
    fit is float64-grade, so there is no precision to choose."""
    check_launchable(x, "covariance")
    n, d = x.shape
    x = x.contiguous()
    mean = x.sum(0, dtype=torch.float64) / n
    shift = mean.float()
    gram = torch.zeros(d, d, dtype=torch.float64, device=x.device)
    configs = gram_configs(d, interpreting(x))
    block_m = configs[0]["BLOCK_M"]
    pairs = _upper_pairs(triton.cdiv(d, block_m), x.device)
    rows_per_chunk = min(ROWS_PER_CHUNK, max(64, next_pow2(n)))
    grid = (pairs.numel() // 2, triton.cdiv(n, rows_per_chunk))
    args = (x, shift, gram, pairs, n, d, x.stride(0), rows_per_chunk)
    with device_guard(x):
        launch(_gram_kernel, lambda meta: grid, args, configs, key=(block_m, x.dtype))
    full = torch.triu(gram) + torch.triu(gram, 1).T
    delta = mean - shift.double()
    return mean, full / n - torch.outer(delta, delta)


def _cholqr(y: torch.Tensor) -> torch.Tensor:
    """Orthonormal basis of y's columns by Cholesky QR, twice for stability. No host sync:
    if the Gram matrix is too ill-conditioned the result holds NaNs, which the convergence
    test of ``_subspace_eigh`` sees (and the dense eigh takes over)."""
    for _ in range(2):
        chol = torch.linalg.cholesky_ex(y.T @ y)[0]
        y = torch.linalg.solve_triangular(chol, y.T, upper=False).T
    return y


def top_eigh(cov: torch.Tensor, count: int, max_iter: int = 64,
             tol: float = EIGH_TOL) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``count`` largest eigenpairs of a symmetric float64 matrix, largest first.

    Returns (values (count,), vectors (d, count)) float64. When p = 2 * count + 16 <= d / 4:
    subspace iteration on p vectors (the error of pair i shrinks like (lambda_{p+1} /
    lambda_i)^t), each step one d x d x p GEMM and a Cholesky QR, with Rayleigh-Ritz every
    few steps; it stops when every wanted residual ||C u - theta u|| is below ``tol`` times the
    largest eigenvalue. ``max_iter`` bounds its cost near a dense eigh's on a GPU; if it has not
    converged by then (a flat spectrum), or when p > d / 4, a dense ``torch.linalg.eigh``.
    """
    if cov.dim() != 2 or cov.shape[0] != cov.shape[1] or cov.dtype != torch.float64:
        raise ValueError(f"top_eigh expects a square float64 matrix, got {cov.dtype} "
                         f"{tuple(cov.shape)}")
    d = cov.shape[0]
    if not 1 <= count <= d:
        raise ValueError(f"count must be in [1, {d}], got {count}")
    p = 2 * count + 16
    if 4 * p <= d:
        found = _subspace_eigh(cov, count, p, max_iter, tol)
        if found is not None:
            return found
    values, vectors = torch.linalg.eigh(cov)
    order = torch.argsort(values, descending=True)[:count]
    return values[order], vectors[:, order]


def _subspace_eigh(cov: torch.Tensor, count: int, p: int, max_iter: int,
                   tol: float) -> tuple[torch.Tensor, torch.Tensor] | None:
    d = cov.shape[0]
    generator = torch.Generator(device=cov.device).manual_seed(0)
    basis = _cholqr(torch.randn(d, p, dtype=torch.float64, device=cov.device,
                                generator=generator))
    check_every = 8
    for step in range(1, max_iter + 1):
        image = cov @ basis
        if step % check_every == 0 or step == max_iter:
            # Rayleigh-Ritz on the current basis; the residual of C u = theta u decides.
            theta, w = torch.linalg.eigh(basis.T @ image)
            theta, w = theta.flip(0), w.flip(1)  # descending
            ritz = basis @ w
            resid = image @ w[:, :count] - ritz[:, :count] * theta[:count]
            bound = tol * theta[0].abs()
            worst = resid.norm(dim=0).max()
            if not bool(torch.isfinite(worst)):
                return None
            if bool(worst <= bound):
                return theta[:count], ritz[:, :count]
            # Continue from the Ritz vectors: they are the best available approximations.
            image = image @ w
        basis = _cholqr(image)
    return None


@triton.jit
def _apply_kernel(x_ptr, mean_ptr, proj_ptr, out_ptr, N, DIN, DOUT, stride_xn,
                  NORMALIZE: tl.constexpr, PRECISION: tl.constexpr, EMULATE: tl.constexpr,
                  BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_OUT: tl.constexpr):
    rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_OUT)
    col_ok = cols < DOUT
    acc = tl.zeros([BLOCK_N, BLOCK_OUT], tl.float32)
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_xn
    for k0 in range(0, DIN, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_ok = kk < DIN
        m = row_ok[:, None] & k_ok[None, :]
        mu = tl.load(mean_ptr + kk, mask=k_ok, other=0.0)
        xc = tl.where(m, tl.load(x_rows + kk[None, :], mask=m, other=0.0).to(tl.float32)
                      - mu[None, :], 0.0)
        p = tl.load(proj_ptr + kk.to(tl.int64)[:, None] * DOUT + cols[None, :],
                    mask=k_ok[:, None] & col_ok[None, :], other=0.0)
        acc = dot_operands(to_operand(xc, PRECISION, EMULATE), to_operand(p, PRECISION, EMULATE),
                           acc, PRECISION, EMULATE)
    if NORMALIZE:
        norm = tl.sqrt(tl.sum(acc * acc, axis=1))
        acc = acc / tl.maximum(norm, 1e-12)[:, None]
    tl.store(out_ptr + rows.to(tl.int64)[:, None] * DOUT + cols[None, :], acc,
             mask=row_ok[:, None] & col_ok[None, :])


def pca_apply(x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor, normalize: bool,
              precision: str = "fp32") -> torch.Tensor:
    """y = (x - mean) @ proj, each row L2-normalised when ``normalize``, in one pass over x.

    x (N, d_in) any float dtype, mean (d_in,) and proj (d_in, d_out) float32 with
    next_pow2(d_out) <= APPLY_MAX_OUT; the centred rows and proj are multiplied in
    ``precision`` ('fp32': 3xTF32, fp32-accurate, the reference's contract) and accumulated in
    fp32; returns (N, d_out) float32. Inputs as checked by dc_kernels.backends._checks.
    """
    code = precision_code(precision)
    n, d_in = x.shape
    d_out = proj.shape[1]
    block_out = max(16, next_pow2(d_out))
    if block_out > APPLY_MAX_OUT:
        raise ValueError(f"pca_apply keeps a whole output row on chip: d_out={d_out} exceeds "
                         f"{APPLY_MAX_OUT}")
    check_launchable(x, "pca_apply")
    x, mean, proj = x.contiguous(), mean.contiguous(), proj.contiguous()
    out = torch.empty(n, d_out, dtype=torch.float32, device=x.device)
    if n == 0:
        return out
    interp = interpreting(x)
    configs = apply_configs(d_out, interp)
    grid = (triton.cdiv(n, configs[0]["BLOCK_N"]),)
    args = (x, mean, proj, out, n, d_in, d_out, x.stride(0), bool(normalize), code, interp)
    with device_guard(x):
        launch(_apply_kernel, lambda meta: grid, args, configs,
               key=(block_out, bool(normalize), code, x.dtype))
    return out


def apply_configs(d_out: int, interp: bool) -> list[dict]:
    """Apply tiles, best first (only the pipeline depth varies, so the grid does not): the fp32
    accumulator BLOCK_N x BLOCK_OUT is kept within the register file."""
    block_out = max(16, next_pow2(d_out))
    block_n = 32 if interp else max(16, min(128, 16384 // block_out))
    block_k = 32 if interp else (32 if block_out >= 256 else 64)
    return [dict(BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_OUT=block_out, num_warps=8,
                 num_stages=s) for s in (3, 2, 1)]


def apply_fits(d_out: int) -> bool:
    """Whether ``pca_apply`` can keep a row of ``d_out`` outputs on chip."""
    return max(16, next_pow2(d_out)) <= APPLY_MAX_OUT

