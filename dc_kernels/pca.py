"""PCA: ``PCAWhitening`` (DeepCluster's PCA-whitening + L2, fit in float64, fused apply) and
``PCAMatrix`` (faiss.PCAMatrix's attributes and meanings), on one fit.

Directions whose variance is zero to the covariance's rounding (a constant feature, constant
data) cannot be whitened: their scale would be 0^-0.5. Both classes give them a zero output
coordinate and warn, instead of the infinities and NaNs of a plain power.
"""

import math
import warnings
from typing import Any

import torch

from . import _arrays, _distributed, _rows
from .backends import get_backend


def _fit(x: Any, d_in: int, count: int, backend: str, process_group: Any = None,
         max_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Mean (d_in,), the ``count`` leading eigenvalues (descending) and eigenvectors
    (d_in, count) of the population covariance of x (N, d_in), all float64 on x's device, and
    N (over the process group). Data beyond fp32's comfortable range are rescaled by a power of
    two first (exact); eigenvector signs are fixed (largest component positive)."""
    xt, _ = _arrays.to_tensor(x)
    peak = _arrays.check_points(xt, "x", d=d_in, batched_ok=False)
    if xt.shape[0] < 2 and process_group is None:
        raise ValueError(f"PCA needs at least 2 rows, got x of shape {tuple(xt.shape)}")
    if max_rows is not None and xt.shape[0] > max_rows:  # faiss's max_points_per_d
        index = torch.randperm(xt.shape[0], generator=torch.Generator().manual_seed(1234))
        xt = xt[index[:max_rows].to(xt.device)]
    exponent = _arrays.pow2_exponent(peak, "fp32")
    copied = exponent != 0 or not xt.is_contiguous()
    _arrays.check_memory(xt.device, {
        "working copy of x": xt.numel() * (4 if exponent else xt.element_size()) * copied,
        "covariance and eigendecomposition": 4 * d_in * d_in * 8})
    impl = get_backend(backend, xt.device)
    xs = _arrays.scaled_float32(xt, exponent) if exponent else xt.contiguous()
    mean, cov = _rows.covariance(impl, xs)
    n = xt.shape[0]
    if process_group is not None:
        mean, cov = _distributed.reduce_moments(mean, cov, n, process_group)
        n = int(_distributed.reduce_sum(torch.tensor(n, device=mean.device), process_group))
    # On the device the backend computes on (the GPU when host data was streamed).
    compute = _rows.compute_device(impl, xs)
    values, vectors = (t.to(xt.device) for t in impl.top_eigh(cov.to(compute), count))
    pivot = vectors.abs().argmax(dim=0)
    signs = torch.sign(vectors[pivot, torch.arange(count, device=vectors.device)])
    vectors = vectors * torch.where(signs == 0, 1.0, signs)
    return (torch.ldexp(mean, torch.tensor(exponent, dtype=torch.float64)),
            torch.ldexp(values, torch.tensor(2 * exponent, dtype=torch.float64)), vectors, n)


def _scale_factors(values: torch.Tensor, power: float, noise: float) -> torch.Tensor:
    """values ** power (float64), with 0 where a value is zero to rounding (<= ``noise``) and
    the power negative (with a warning): those directions cannot be whitened."""
    if power == 0.0:
        return torch.ones_like(values)
    zero = values <= noise
    if power < 0 and bool(zero.any()):
        warnings.warn(f"{int(zero.sum())} of {values.numel()} PCA directions have zero "
                      f"variance (eigenvalue <= {noise:.3g}): they cannot be whitened and "
                      f"their output coordinates are 0", stacklevel=3)
    factors = torch.where(zero, 0.0, values.clamp_min(noise if noise > 0 else 1e-300).pow(power))
    if not bool((factors.abs() <= _arrays.FP32_MAX).all()):
        raise ValueError(f"scaling by eigenvalue^{power} leaves float32's range (eigenvalues "
                         f"{float(values.min()):.3g} to {float(values.max()):.3g}): rescale x")
    return factors


def _rounding_noise(mean: torch.Tensor, largest: float, d_in: int) -> float:
    """Below this, an eigenvalue of the float64 covariance (E[x x^T] - mean mean^T) of such data
    is indistinguishable from zero."""
    return math.ldexp(d_in * (float(mean.square().max()) + max(largest, 0.0)), -50)


def _project(model: Any, x: Any, mean: torch.Tensor, proj: torch.Tensor,
             normalize: bool) -> Any:
    """(x - mean) @ proj (then L2 when ``normalize``) with ``model``'s backend, for a trained
    PCAWhitening or PCAMatrix; in x's array kind."""
    if not model.is_trained:
        raise ValueError(f"{type(model).__name__}.apply called before train")
    xt, kind = _arrays.to_tensor(x)
    _arrays.check_points(xt, "x", d=model.d_in, batched_ok=False)
    impl = get_backend(model.backend, xt.device)
    out = _rows.pca_apply(impl, xt.contiguous(), mean.float().to(xt.device),
                          proj.to(xt.device), normalize)
    return kind.wrap(out)


class PCAWhitening:
    """``faiss.PCAMatrix(d_in, d_out, eigen_power)`` followed by L2 normalisation, with
    DeepCluster's defaults (eigen_power -0.5, normalize True) and an eigenvalue floor.

    ``train(x)`` computes the mean and the population covariance (divided by N; faiss's
    PCAMatrix keeps the scatter, N times larger: after the L2 normalisation the outputs agree)
    of x (N, d_in) in float64, keeps the d_out leading eigenpairs and builds
    proj = V * lambda**eigen_power (eigenvalues below ``eigenvalue_floor`` times the largest are
    raised to that floor, so near-zero variance cannot blow up; zero variance warns and gives 0).
    ``apply(x)`` returns ((x - mean) @ proj), each row L2-normalised when ``normalize``, float32
    in the caller's array kind. Eigenvector signs are fixed (largest component positive) so fits
    agree across backends. ``mean``, ``eigenvalues``, ``components`` are float64 torch tensors
    (``PCAMatrix`` has NumPy ones, as faiss).
    """

    def __init__(self, d_in: int, d_out: int, eigen_power: float = -0.5, normalize: bool = True,
                 backend: str = "auto", eigenvalue_floor: float = 1e-8,
                 process_group: Any = None):
        d_in, d_out = _arrays.check_int("d_in", d_in, 1), _arrays.check_int("d_out", d_out, 1)
        if d_out > d_in:
            raise ValueError(f"d_out={d_out} must not exceed d_in={d_in}")
        eigenvalue_floor = _arrays.check_float("eigenvalue_floor", eigenvalue_floor)
        if not 0.0 <= eigenvalue_floor < 1.0:
            raise ValueError(f"eigenvalue_floor must be in [0, 1), got {eigenvalue_floor}")
        self.d_in, self.d_out = d_in, d_out
        self.eigen_power = _arrays.check_float("eigen_power", eigen_power)
        self.normalize = bool(normalize)
        self.backend = backend
        self.eigenvalue_floor = eigenvalue_floor
        self.process_group = process_group  # torch.distributed group: x is this rank's shard
        self.mean: torch.Tensor | None = None         # (d_in,) float64
        self.eigenvalues: torch.Tensor | None = None  # (d_out,) float64, descending
        self.components: torch.Tensor | None = None   # (d_out, d_in) float64, orthonormal rows
        self._proj: torch.Tensor | None = None        # (d_in, d_out) float32, whitening folded

    @property
    def is_trained(self) -> bool:
        return self._proj is not None

    def train(self, x: Any) -> "PCAWhitening":
        mean, values, vectors, _ = _fit(x, self.d_in, self.d_out, self.backend,
                                        self.process_group)
        floor = max(float(values[0]), 0.0) * self.eigenvalue_floor
        values = values.clamp_min(floor)
        factors = _scale_factors(values, self.eigen_power,
                                 _rounding_noise(mean, float(values[0]), self.d_in))
        self.mean, self.eigenvalues, self.components = mean, values, vectors.T.contiguous()
        self._proj = (vectors * factors).float().contiguous()
        return self

    def apply(self, x: Any) -> Any:
        return _project(self, x, self.mean, self._proj, self.normalize)

    apply_py = apply  # faiss.PCAMatrix spelling, so ported code keeps working


class PCAMatrix:
    """Drop-in for ``faiss.PCAMatrix(d_in, d_out, eigen_power=0, random_rotation=False)``.

    ``train(x)`` fits on x (N, d_in) (at most ``max_points_per_d`` * d_in rows, a random
    sample beyond, as faiss); then ``mean`` (d_in,), ``eigenvalues`` (d_in,) of the scatter
    matrix sum (x - mean)(x - mean)^T (faiss's scale: N times the covariance's), descending,
    ``PCAMat`` (d_in, d_in) with the eigenvectors as rows, and the linear map ``A`` (d_out,
    d_in) = rows of PCAMat scaled by (eigenvalue + ``epsilon``) ** eigen_power, ``b`` = -A mean:
    all float32 NumPy arrays. ``apply(x)`` (``apply_py``) = x A^T + b in x's array kind;
    ``reverse_transform(y)`` when A is orthonormal (eigen_power 0). Directions with zero
    variance (to rounding) get a 0 scale and a warning where faiss's power gives Inf/NaN.
    Fitted in float64 on ``backend``'s kernels; eigenvector signs are fixed (largest component
    positive), faiss's are LAPACK's.
    """

    def __init__(self, d_in: int, d_out: int, eigen_power: float = 0.0,
                 random_rotation: bool = False, backend: str = "auto"):
        self.d_in, self.d_out = _arrays.check_int("d_in", d_in, 1), _arrays.check_int(
            "d_out", d_out, 1)
        if self.d_out > self.d_in:
            raise ValueError(f"d_out={d_out} must not exceed d_in={d_in}")
        if random_rotation:
            raise ValueError("random_rotation=True is not implemented in dc_kernels' PCAMatrix")
        self.eigen_power = _arrays.check_float("eigen_power", eigen_power)
        self.random_rotation = False
        self.epsilon = 0.0
        self.max_points_per_d = 1000
        self.balanced_bins = 0
        self.have_bias = True
        self.verbose = False
        self.backend = backend
        self.is_trained = False
        self.is_orthonormal = False
        self.mean = self.eigenvalues = self.PCAMat = self.A = self.b = None

    def _check_options(self) -> None:
        self.eigen_power = _arrays.check_float("eigen_power", self.eigen_power)
        self.epsilon = _arrays.check_float("epsilon", self.epsilon)
        if self.epsilon < 0:
            raise ValueError(f"epsilon must be non-negative, got {self.epsilon}")
        _arrays.check_int("max_points_per_d", self.max_points_per_d, 1)
        if self.balanced_bins != 0:
            raise ValueError("balanced_bins is not implemented in dc_kernels' PCAMatrix")
        if self.random_rotation:
            raise ValueError("random_rotation=True is not implemented in dc_kernels' PCAMatrix")
        if not self.have_bias:
            raise ValueError("have_bias=False (no centring) is not implemented in dc_kernels' "
                             "PCAMatrix")

    def train(self, x: Any) -> "PCAMatrix":
        self._check_options()
        mean, values, vectors, n = _fit(x, self.d_in, self.d_in, self.backend,
                                        max_rows=self.max_points_per_d * self.d_in)
        scatter = values * n
        noise = _rounding_noise(mean, float(values[0]), self.d_in) * n
        shifted = scatter[:self.d_out] + self.epsilon
        factors = _scale_factors(shifted, self.eigen_power, noise if self.epsilon == 0 else 0.0)
        a = vectors[:, :self.d_out].T * factors[:, None]
        self.mean = mean.float().cpu().numpy()
        self.eigenvalues = scatter.float().cpu().numpy()
        self.PCAMat = vectors.T.float().cpu().numpy()
        self.A = a.float().cpu().numpy()
        self.b = (-(a @ mean)).float().cpu().numpy()
        self.is_orthonormal = self.eigen_power == 0.0
        self._mean_t, self._proj_t = mean.float(), a.T.float().contiguous()
        self.is_trained = True
        return self

    def apply(self, x: Any) -> Any:
        """x (N, d_in) -> x A^T + b (N, d_out) float32, in x's array kind."""
        return _project(self, x, self._mean_t, self._proj_t, False)

    apply_py = apply

    def reverse_transform(self, y: Any) -> Any:
        """y (N, d_out) -> (y - b) A: back to the input space (A orthonormal, eigen_power 0)."""
        if not self.is_trained:
            raise ValueError("PCAMatrix.reverse_transform called before train")
        if not self.is_orthonormal:
            raise ValueError("reverse_transform needs an orthonormal A (eigen_power=0)")
        yt, kind = _arrays.to_tensor(y, "y")
        _arrays.check_points(yt, "y", d=self.d_out, batched_ok=False)
        proj = self._proj_t.to(yt.device)
        return kind.wrap(yt.float() @ proj.T + self._mean_t.to(yt.device))
