"""PCA-whitening: fit in float64, apply fused (centre, project, whiten, L2-normalise)."""

from typing import Any

import torch

from . import _arrays, _distributed, _rows
from .backends import get_backend


class PCAWhitening:
    """Drop-in for ``faiss.PCAMatrix(d_in, d_out, eigen_power)`` followed by L2 normalisation.

    ``train(x)`` computes the mean and covariance of x (N, d_in) in float64, keeps the d_out
    leading eigenpairs and builds proj = V * lambda**eigen_power (eigenvalues below
    ``eigenvalue_floor`` times the largest are raised to that floor, so near-zero variance
    cannot blow up). ``apply(x)`` returns ((x - mean) @ proj), each row L2-normalised when
    ``normalize``, float32 in the caller's array kind. Eigenvector signs are fixed (largest
    component positive) so fits agree across backends.
    """

    def __init__(self, d_in: int, d_out: int, eigen_power: float = -0.5, normalize: bool = True,
                 backend: str = "auto", eigenvalue_floor: float = 1e-8,
                 process_group: Any = None):
        d_in, d_out = _arrays.check_int("d_in", d_in, 1), _arrays.check_int("d_out", d_out, 1)
        if d_out > d_in:
            raise ValueError(f"d_out={d_out} must not exceed d_in={d_in}")
        if not 0.0 <= eigenvalue_floor < 1.0:
            raise ValueError(f"eigenvalue_floor must be in [0, 1), got {eigenvalue_floor}")
        self.d_in, self.d_out = d_in, d_out
        self.eigen_power = float(eigen_power)
        self.normalize = bool(normalize)
        self.backend = backend
        self.eigenvalue_floor = float(eigenvalue_floor)
        self.process_group = process_group  # torch.distributed group: x is this rank's shard
        self.mean: torch.Tensor | None = None         # (d_in,) float64
        self.eigenvalues: torch.Tensor | None = None  # (d_out,) float64, descending
        self.components: torch.Tensor | None = None   # (d_out, d_in) float64, orthonormal rows
        self._proj: torch.Tensor | None = None        # (d_in, d_out) float32, whitening folded

    @property
    def is_trained(self) -> bool:
        return self._proj is not None

    def train(self, x: Any) -> "PCAWhitening":
        xt, _ = _arrays.to_tensor(x)
        _arrays.check_points(xt, "x", d=self.d_in, batched_ok=False)
        if xt.shape[0] < 2 and self.process_group is None:
            raise ValueError(f"PCA needs at least 2 rows, got x of shape {tuple(xt.shape)}")
        impl = get_backend(self.backend, xt.device)
        mean, cov = _rows.covariance(impl, xt.contiguous())
        if self.process_group is not None:
            mean, cov = _distributed.reduce_moments(mean, cov, xt.shape[0], self.process_group)
        # On the device the backend computes on (the GPU when host data was streamed).
        compute = _rows.compute_device(impl, xt)
        values, vectors = (t.to(xt.device) for t in impl.top_eigh(cov.to(compute), self.d_out))
        floor = max(float(values[0]), 0.0) * self.eigenvalue_floor
        values = values.clamp_min(floor if floor > 0 else torch.finfo(torch.float64).tiny)
        # Deterministic signs: the largest-magnitude component of each eigenvector is positive.
        pivot = vectors.abs().argmax(dim=0)
        signs = torch.sign(vectors[pivot, torch.arange(self.d_out, device=vectors.device)])
        vectors = vectors * torch.where(signs == 0, 1.0, signs)
        self.mean, self.eigenvalues, self.components = mean, values, vectors.T.contiguous()
        self._proj = (vectors * values.pow(self.eigen_power)).float().contiguous()
        return self

    def apply(self, x: Any) -> Any:
        if not self.is_trained:
            raise ValueError("PCAWhitening.apply called before train")
        xt, kind = _arrays.to_tensor(x)
        _arrays.check_points(xt, "x", d=self.d_in, batched_ok=False)
        impl = get_backend(self.backend, xt.device)
        out = _rows.pca_apply(impl, xt.contiguous(), self.mean.float(), self._proj, self.normalize)
        return kind.wrap(out)

    apply_py = apply  # faiss.PCAMatrix spelling, so ported code keeps working
