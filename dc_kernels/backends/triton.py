"""The Triton backend: fused assign, atomic cluster sums, on-device split, fused PCA-whitening
(dc_kernels/ops, one kernel family per module).

No step reads a value back to the host and the split reads the iteration from device memory,
so the Lloyd driver captures small problems' iterations as a CUDA graph; given host data with a
GPU present, the driver streams the rows to it. On the CPU under ``TRITON_INTERPRET=1`` every
kernel runs in the Triton interpreter (tests).
"""

import os

import torch

from . import ENTRIES
from ._checks import (
    check_assign,
    check_cluster_sums,
    check_covariance,
    check_pca_apply,
    check_split,
    float32,
)
from .reference import TorchBackend


def _triton_missing() -> str:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not importable ({exc}); install it with `pip install triton`"
    return ""


class TritonBackend(TorchBackend):
    """Triton kernels for every step but the dense eigendecomposition's fallback."""

    name = "triton"
    precisions: tuple[str, ...] = ENTRIES["triton"].precisions
    capturable = True
    streams_host_data = True

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str:
        missing = _triton_missing()
        if missing:
            return missing
        if device.type == "cuda":
            return "" if torch.cuda.is_available() else "CUDA is not available to torch"
        if device.type == "cpu":
            if os.environ.get("TRITON_INTERPRET") == "1" or torch.cuda.is_available():
                return ""
            return ("Triton kernels need a CUDA GPU; on the CPU they run only in the Triton "
                    "interpreter (set TRITON_INTERPRET=1 before importing triton; slow, for tests)")
        return f"the triton backend does not run on {device.type} devices"

    # ------------------------------------------------------------------ k-means steps
    def assign(self, x: torch.Tensor, centroids: torch.Tensor,
               precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        from ..ops.assign import assign

        check_assign(x, centroids, precision, x.device.type, self.precisions)
        return assign(x, float32(centroids), precision)

    def cluster_sums(self, x: torch.Tensor, labels: torch.Tensor, sums: torch.Tensor,
                     counts: torch.Tensor) -> None:
        from ..ops.update import cluster_sums

        check_cluster_sums(x, labels, sums, counts, x.device.type)
        cluster_sums(x, labels, sums, counts)

    def split(self, centroids: torch.Tensor, counts: torch.Tensor, seed: int,
              iteration: int | torch.Tensor) -> torch.Tensor:
        from ..ops.split import split

        check_split(centroids, counts, iteration, centroids.device.type)
        return split(centroids, counts, seed, iteration)

    # ------------------------------------------------------------------ PCA steps
    def covariance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ..ops import pca

        check_covariance(x, x.device.type)
        return pca.covariance(x)

    def top_eigh(self, cov: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..ops import pca

        return pca.top_eigh(cov, count)

    def pca_apply(self, x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor,
                  normalize: bool) -> torch.Tensor:
        from ..ops import pca

        if not pca.apply_fits(proj.shape[1]):
            # Rows wider than the registers hold: the chunked torch path.
            return super().pca_apply(x, mean, proj, normalize)
        check_pca_apply(x, mean, proj, x.device.type)
        return pca.pca_apply(x, float32(mean), float32(proj), normalize, "fp32")
