"""The ``cpu`` backend: the C++/OpenMP extension ``dc_kernels._cpu`` behind the reference contract.

Each step checks what keeps the native call in bounds (backends/_checks.py), makes its inputs
contiguous float32, allocates the outputs with torch and hands raw addresses to the extension,
by keyword; it releases the GIL and runs on up to ``torch.get_num_threads()`` threads (jobs
under about a millisecond, and the split, run on the calling thread: on a loaded machine a
fork/join can cost more than that).

``assign`` goes beyond the reference in one respect: when the two best values of
||c||^2 - 2 x.c are within fp32 rounding of each other, the exact distances of those two
candidates decide, so labels agree with float64 even where cancellation would misorder them.
Covariance and eigendecomposition stay on the reference (float64 LAPACK/BLAS through torch).

``pruner`` gives the Lloyd driver a pruned assignment (csrc/cpu/prune.cpp): per point bounds,
loosened by the centroids' moves, skip the rows whose nearest centroid cannot have changed;
labels and distances are those of ``assign``, bit for bit.
"""

import torch

from .. import _loader
from ..contract import split_seed
from . import ENTRIES
from ._checks import (
    check_assign,
    check_cluster_sums,
    check_pca_apply,
    check_split,
    float32,
)
from .reference import TorchBackend


def _ext():
    return _loader.load("_cpu")


class _PrunedAssign:
    """``assign`` for the iterations of one Lloyd run on x, with bounds kept between calls: the
    labels, a lower bound on the distance to every other centroid and the row norms; the
    centroids of the last call tell how far each centroid moved since."""

    def __init__(self, x: torch.Tensor, skipped: list[torch.Tensor]):
        self.x = float32(x)
        batch, n, _ = x.shape
        self.dist = torch.empty(batch, n, dtype=torch.float32)
        self.labels = torch.empty(batch, n, dtype=torch.int64)
        self.lower = torch.empty(batch, n, dtype=torch.float64)
        self.xnorm = torch.empty(batch, n, dtype=torch.float64)
        self.previous: torch.Tensor | None = None
        self.skipped = skipped

    def __call__(self, x: torch.Tensor, centroids: torch.Tensor,
                 precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``assign(x, centroids, precision)`` for the x this was made for."""
        check_assign(self.x, centroids, precision, "cpu", CpuBackend.precisions)
        if centroids.dtype != torch.float32 or not centroids.is_contiguous():
            raise ValueError(f"a pruned assignment needs contiguous float32 centroids, got "
                             f"{centroids.dtype} of shape {tuple(centroids.shape)}")
        first = self.previous is None
        if first:
            self.previous = centroids.clone()
        batch, n, d = self.x.shape
        skipped = torch.zeros(batch, dtype=torch.int64)
        _ext().assign_pruned(
            x=self.x.data_ptr(), centroids=centroids.data_ptr(),
            previous=self.previous.data_ptr(), dist=self.dist.data_ptr(),
            labels=self.labels.data_ptr(), lower=self.lower.data_ptr(),
            xnorm=self.xnorm.data_ptr(), skipped=skipped.data_ptr(), batch=batch, n=n,
            k=centroids.shape[1], d=d, first=first, nthreads=torch.get_num_threads())
        self.previous.copy_(centroids)
        self.skipped.append(skipped)
        self.reassigned = n - skipped  # the driver's per-iteration statistic
        return self.dist, self.labels


class CpuBackend(TorchBackend):
    """Fused tile kernels in C++ (AVX-512 / AVX2 / scalar, the best the CPU supports)."""

    name = "cpu"
    precisions: tuple[str, ...] = ENTRIES["cpu"].precisions
    # Pruning pays where one problem's sweep (N K d multiply-adds) is at least this much, about
    # 10 ms on one core: below, its extra row passes and bookkeeping outweigh what it saves.
    prune_min_work = 1 << 29
    # ... and from this many centroids: the row passes cost ~2/K of a sweep each iteration.
    prune_min_k = 32

    def __init__(self) -> None:
        # Rows whose full assignment was skipped, (B,) int64 per pruned assignment of the latest
        # run (a statistic for tests and benchmarks).
        self.last_skipped: list[torch.Tensor] = []

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str:
        if device.type != "cpu":
            return "runs on CPU tensors only"
        return _loader.why("_cpu")

    # ------------------------------------------------------------------ k-means steps
    def assign(self, x: torch.Tensor, centroids: torch.Tensor,
               precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        check_assign(x, centroids, precision, "cpu", self.precisions)
        x, centroids = float32(x), float32(centroids)
        batch, n, d = x.shape
        dist = torch.empty(batch, n, dtype=torch.float32)
        labels = torch.empty(batch, n, dtype=torch.int64)
        _ext().assign(x=x.data_ptr(), centroids=centroids.data_ptr(), dist=dist.data_ptr(),
                      labels=labels.data_ptr(), batch=batch, n=n, k=centroids.shape[1], d=d,
                      nthreads=torch.get_num_threads())
        return dist, labels

    def cluster_sums(self, x: torch.Tensor, labels: torch.Tensor, sums: torch.Tensor,
                     counts: torch.Tensor) -> None:
        check_cluster_sums(x, labels, sums, counts, "cpu")
        x, labels = float32(x), labels.contiguous()
        batch, n, d = x.shape
        _ext().cluster_sums(x=x.data_ptr(), labels=labels.data_ptr(), sums=sums.data_ptr(),
                            counts=counts.data_ptr(), batch=batch, n=n, k=sums.shape[1], d=d,
                            nthreads=torch.get_num_threads())

    def split(self, centroids: torch.Tensor, counts: torch.Tensor, seed: int,
              iteration: int | torch.Tensor) -> torch.Tensor:
        check_split(centroids, counts, iteration, "cpu")
        batch, k, d = centroids.shape
        nsplit = torch.empty(batch, dtype=torch.int64)
        _ext().split(centroids=centroids.data_ptr(), counts=counts.data_ptr(),
                     nsplit=nsplit.data_ptr(), batch=batch, k=k, d=d, seed=split_seed(seed),
                     iteration=int(iteration))
        return nsplit

    def pruner(self, x: torch.Tensor, k: int) -> _PrunedAssign | None:
        batch, n, d = x.shape
        if x.device.type != "cpu" or k < self.prune_min_k or n * k * d < self.prune_min_work:
            return None
        self.last_skipped = []
        return _PrunedAssign(x, self.last_skipped)

    # ------------------------------------------------------------------ PCA steps
    def pca_apply(self, x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor,
                  normalize: bool) -> torch.Tensor:
        check_pca_apply(x, mean, proj, "cpu")
        x, mean, proj = float32(x), float32(mean), float32(proj)
        (n, d_in), d_out = x.shape, proj.shape[1]
        out = torch.empty(n, d_out, dtype=torch.float32)
        _ext().pca_apply(x=x.data_ptr(), mean=mean.data_ptr(), proj=proj.data_ptr(),
                         out=out.data_ptr(), n=n, d_in=d_in, d_out=d_out,
                         normalize=bool(normalize), nthreads=torch.get_num_threads())
        return out
