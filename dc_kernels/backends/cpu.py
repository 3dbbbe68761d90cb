"""The ``cpu`` backend: the C++/OpenMP extension ``dc_kernels._cpu`` behind the reference contract.

Each step validates its inputs (shapes, dtypes, device), makes them contiguous float32, allocates
the outputs with torch and hands raw addresses to the extension, which releases the GIL and runs
on up to ``torch.get_num_threads()`` threads (jobs under about a millisecond, and the split, run
on the calling thread: on a loaded machine a fork/join can cost more than that).

``assign`` goes beyond the reference in one respect: when the two best values of
||c||^2 - 2 x.c are within fp32 rounding of each other, the exact distances of those two
candidates decide, so labels agree with float64 even where cancellation would misorder them.
Covariance and eigendecomposition stay on the reference (float64 LAPACK/BLAS through torch).

``run_lloyd`` runs the whole Lloyd loop with a pruned assignment (csrc/cpu/prune.cpp): per point
bounds, loosened by the centroids' moves, skip the rows whose nearest centroid cannot have
changed; the results are those of the generic loop with ``assign``, bit for bit.
"""

import time

import torch

from .. import _loader
from .reference import TorchBackend

_MASK64 = (1 << 64) - 1


def _check(t: torch.Tensor, name: str, rank: int, dtypes: tuple[torch.dtype, ...]) -> None:
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor, got {type(t).__name__}")
    if t.device.type != "cpu":
        raise ValueError(f"{name} must be on the CPU for backend 'cpu', got device {t.device}")
    if t.dim() != rank:
        raise ValueError(f"{name} must have {rank} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in dtypes:
        raise ValueError(f"{name} must have dtype in {dtypes}, got {t.dtype}")


_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _float32(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).contiguous()


class CpuBackend(TorchBackend):
    """Fused tile kernels in C++ (AVX-512 / AVX2 / scalar, the best the CPU supports)."""

    name = "cpu"
    precisions: tuple[str, ...] = ("fp32",)
    # The pruned loop runs where one problem's sweep (N K d multiply-adds) is at least this
    # much, about 10 ms on one core: below, its extra row passes and bookkeeping outweigh what
    # it can save.
    prune_min_work = 1 << 29
    # ... and from this many centroids: the row passes cost ~2/K of a sweep each iteration.
    prune_min_k = 32

    def __init__(self) -> None:
        # Rows whose full assignment the last pruned run skipped, (niter, B) int64 (a debug
        # statistic for tests and benchmarks; None until a pruned run happens).
        self.last_skipped: torch.Tensor | None = None

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str:
        if device.type != "cpu":
            return "runs on CPU tensors only"
        return _loader.why("_cpu")

    @staticmethod
    def _ext():
        return _loader.load("_cpu")

    @staticmethod
    def _check_pair(x: torch.Tensor, centroids: torch.Tensor,
                    centroid_dtypes: tuple[torch.dtype, ...]) -> None:
        _check(x, "x", 3, _FLOATS)
        _check(centroids, "centroids", 3, centroid_dtypes)
        if centroids.shape[0] != x.shape[0] or centroids.shape[2] != x.shape[2]:
            raise ValueError(f"centroids of shape {tuple(centroids.shape)} do not match x of "
                             f"shape {tuple(x.shape)} (need (B, K, d) with B and d of x)")
        if min(x.shape) == 0 or centroids.shape[1] == 0:
            raise ValueError(f"empty input: x {tuple(x.shape)}, centroids "
                             f"{tuple(centroids.shape)}")

    # ------------------------------------------------------------------ k-means steps
    def assign(self, x: torch.Tensor, centroids: torch.Tensor,
               precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        if precision not in self.precisions:
            raise ValueError(f"backend 'cpu' supports precisions {self.precisions}, "
                             f"not {precision!r}")
        self._check_pair(x, centroids, _FLOATS)
        x, centroids = _float32(x), _float32(centroids)
        batch, n, d = x.shape
        k = centroids.shape[1]
        dist = torch.empty(batch, n, dtype=torch.float32)
        labels = torch.empty(batch, n, dtype=torch.int64)
        self._ext().assign(x.data_ptr(), centroids.data_ptr(), batch, n, k, d, dist.data_ptr(),
                           labels.data_ptr(), torch.get_num_threads())
        return dist, labels

    def run_lloyd(self, x: torch.Tensor, centroids: torch.Tensor, niter: int, precision: str,
                  seed: int, spherical: bool,
                  verbose: bool) -> tuple[torch.Tensor, list[dict]] | None:
        """The whole Lloyd loop with pruned assignments, or None to leave it to
        ``dc_kernels.kmeans.lloyd`` (problems too small to gain, or non-CPU tensors).

        Same steps and statistics as the generic loop: assign (pruned) -> objective -> update
        -> split (-> normalise when spherical); the bounds only need the centroids before and
        after, so spherical and batched runs are pruned too.
        """
        if x.device.type != "cpu" or centroids.device.type != "cpu" or niter == 0:
            return None
        batch, n, d = x.shape
        k = centroids.shape[1]
        if k < self.prune_min_k or n * k * d < self.prune_min_work:
            return None
        if precision not in self.precisions:
            raise ValueError(f"backend 'cpu' supports precisions {self.precisions}, "
                             f"not {precision!r}")
        self._check_pair(x, centroids, (torch.float32,))
        if not centroids.is_contiguous():
            raise ValueError("centroids must be contiguous (they are updated in place)")
        x = _float32(x)
        dist = torch.empty(batch, n, dtype=torch.float32)
        labels = torch.empty(batch, n, dtype=torch.int64)
        lower = torch.empty(batch, n, dtype=torch.float64)
        xnorm = torch.empty(batch, n, dtype=torch.float64)
        previous = centroids.clone()
        skipped = torch.zeros(niter, batch, dtype=torch.int64)
        history = []
        start = time.perf_counter()
        for iteration in range(niter):
            self._ext().assign_pruned(
                x.data_ptr(), centroids.data_ptr(), previous.data_ptr(), iteration == 0, batch,
                n, k, d, dist.data_ptr(), labels.data_ptr(), lower.data_ptr(), xnorm.data_ptr(),
                skipped[iteration].data_ptr(), torch.get_num_threads())
            obj = dist.sum(-1, dtype=torch.float64)
            previous.copy_(centroids)
            counts = self.update(x, labels, centroids)
            # faiss's imbalance factor: K * sum(size^2) / N^2 (1.0 when perfectly balanced).
            imbalance = k * counts.double().square().sum(-1) / float(n) ** 2
            nsplit = self.split(centroids, counts, seed, iteration)
            if spherical:
                centroids.div_(centroids.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            history.append({"obj": obj.numpy(), "time": time.perf_counter() - start,
                            "imbalance_factor": imbalance.numpy(), "nsplit": nsplit.numpy()})
            if verbose:
                print(f"  iteration {iteration}: objective={obj.tolist()} "
                      f"nsplit={nsplit.tolist()} skipped={skipped[iteration].tolist()}",
                      flush=True)
        self.last_skipped = skipped
        return centroids, history

    def update(self, x: torch.Tensor, labels: torch.Tensor,
               centroids: torch.Tensor) -> torch.Tensor:
        self._check_pair(x, centroids, (torch.float32,))
        if not centroids.is_contiguous():
            raise ValueError("centroids must be contiguous (they are updated in place)")
        _check(labels, "labels", 2, (torch.int64,))
        batch, n, d = x.shape
        k = centroids.shape[1]
        if tuple(labels.shape) != (batch, n):
            raise ValueError(f"labels must have shape {(batch, n)}, got {tuple(labels.shape)}")
        # An out-of-range label would write outside the sums: one cheap pass rules it out.
        low, high = torch.aminmax(labels)
        if int(low) < 0 or int(high) >= k:
            raise ValueError(f"labels must lie in [0, {k}), got values in [{int(low)}, "
                             f"{int(high)}]")
        x = _float32(x)
        labels = labels.contiguous()
        counts = torch.empty(batch, k, dtype=torch.int64)
        self._ext().update(x.data_ptr(), labels.data_ptr(), centroids.data_ptr(),
                           counts.data_ptr(), batch, n, k, d, torch.get_num_threads())
        return counts

    def split(self, centroids: torch.Tensor, counts: torch.Tensor, seed: int,
              iteration: int) -> torch.Tensor:
        _check(centroids, "centroids", 3, (torch.float32,))
        _check(counts, "counts", 2, (torch.int64,))
        batch, k, d = centroids.shape
        if tuple(counts.shape) != (batch, k):
            raise ValueError(f"counts must have shape {(batch, k)}, got {tuple(counts.shape)}")
        if not (centroids.is_contiguous() and counts.is_contiguous()):
            raise ValueError("centroids and counts must be contiguous (they are updated in "
                             "place)")
        if iteration < 0:
            raise ValueError(f"iteration must be non-negative, got {iteration}")
        nsplit = torch.empty(batch, dtype=torch.int64)
        self._ext().split(centroids.data_ptr(), counts.data_ptr(), batch, k, d, seed & _MASK64,
                          iteration, nsplit.data_ptr())
        return nsplit

    # ------------------------------------------------------------------ PCA steps
    def pca_apply(self, x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor,
                  normalize: bool) -> torch.Tensor:
        _check(x, "x", 2, _FLOATS)
        _check(mean, "mean", 1, _FLOATS)
        _check(proj, "proj", 2, _FLOATS)
        n, d_in = x.shape
        if proj.shape[0] != d_in or mean.shape[0] != d_in:
            raise ValueError(f"x {tuple(x.shape)}, mean {tuple(mean.shape)} and proj "
                             f"{tuple(proj.shape)} disagree on d_in")
        if n == 0 or d_in == 0 or proj.shape[1] == 0:
            raise ValueError(f"empty input: x {tuple(x.shape)}, proj {tuple(proj.shape)}")
        x, mean, proj = _float32(x), _float32(mean), _float32(proj)
        d_out = proj.shape[1]
        out = torch.empty(n, d_out, dtype=torch.float32)
        self._ext().pca_apply(x.data_ptr(), n, d_in, mean.data_ptr(), proj.data_ptr(), d_out,
                              bool(normalize), out.data_ptr(), torch.get_num_threads())
        return out
