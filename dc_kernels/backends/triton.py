"""The Triton backend: fused assign, atomic cluster sums, on-device split, fused PCA-whitening
(dc_kernels/ops, one kernel family per module).

No step reads a value back to the host and the split reads the iteration from device memory,
so the Lloyd driver captures small problems' iterations as a CUDA graph; given host data with a
GPU present, the driver streams the rows to it. On the CPU under ``TRITON_INTERPRET=1`` every
kernel runs in the Triton interpreter (tests).

``pruner`` gives the driver an exact pruned assignment for large K (Hamerly bounds kept on the
device; only rows whose label may change are swept): the labels of ``assign``, and in fp32 and
tf32 its distances bit for bit; the driver then runs the iterations uncaptured.
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

# Relative slack for quantities computed in float64 from fp32 values (norms, drifts, bounds):
# their rounding is below d 2^-53, far under this for any d up to 10^5.
_ROUND = 1e-10


class _PrunedAssign:
    """``assign`` for the iterations of one Lloyd run on x, with Hamerly bounds kept on the
    device between calls.

    Per row: the label, and ``lower``, a lower bound on the Euclidean distance to every other
    centroid (float64), set from the kernel's second-best score when the row is assigned. When
    the centroids move, ``lower`` drops by the largest drift among the other centroids; the
    upper bound is the row's distance to its own moved centroid, recomputed every call (O(d),
    1/K of a sweep; its fp32 value is also the objective's term, bit for bit the unpruned
    one). A row keeps its label provably when U + 2E < lower^2, with U an upper bound on the
    exact squared distance and E the bound on the kernel's score error in this precision
    (ops/assign.py: score_error_bound, distance_error_bound): then the kernel's own score is
    below every other centroid's and the unpruned assign would give the same label. Only the
    other rows are compacted into a list (on the device, with the count staying there too)
    and swept, so no call reads a value back to the host.
    """

    def __init__(self, x: torch.Tensor):
        self.x = float32(x).contiguous()
        self.previous: torch.Tensor | None = None
        self.precision = ""
        self.reassigned = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)

    def _start(self, precision: str) -> None:
        from ..ops.assign import operand_copy

        batch, n, _ = self.x.shape
        device = self.x.device
        self.precision = precision
        self.x_op = operand_copy(self.x, precision)
        xx = self.x.double().square().sum(-1)
        self.x_norm = xx.sqrt() * (1 + _ROUND)
        self.xx_low = xx * (1 - _ROUND)
        self.dist = torch.empty(batch, n, dtype=torch.float32, device=device)
        self.labels = torch.zeros(batch, n, dtype=torch.int64, device=device)
        self.second = torch.empty(batch, n, dtype=torch.float32, device=device)
        self.lower = torch.zeros(batch, n, dtype=torch.float64, device=device)
        # Each problem's list of rows to sweep, flat, plus one spare slot at the end.
        self.slots = torch.zeros(batch * n + 1, dtype=torch.int64, device=device)
        self.row_index = torch.arange(n, device=device).repeat(batch)
        self.list_start = torch.arange(batch, device=device).unsqueeze(1) * n

    def _score_error(self, centroids: torch.Tensor) -> torch.Tensor:
        """E per row (B, N): the bound on the error of the kernel's scores against these
        centroids."""
        from ..ops.assign import score_error_bound

        rel, lin, tiny = score_error_bound(self.precision, self.x.shape[2])
        c_max = centroids.double().norm(dim=-1).amax(-1, keepdim=True) * (1 + _ROUND)
        m = self.x_norm + c_max
        return (rel * m * m + lin * m + tiny) * (1 + _ROUND)

    def __call__(self, x: torch.Tensor, centroids: torch.Tensor,
                 precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``assign(x, centroids, precision)`` for the x this was made for."""
        from ..ops.assign import assign_rows, distance_error_bound, labelled_distances

        check_assign(self.x, centroids, precision, self.x.device.type, TritonBackend.precisions)
        centroids = float32(centroids).contiguous()
        batch, n, d = self.x.shape
        first = self.previous is None or precision != self.precision
        if first:
            self._start(precision)
        error = self._score_error(centroids)
        if first:
            need = torch.ones(batch, n, dtype=torch.bool, device=self.x.device)
        else:
            # Hamerly: the other centroids moved by at most the largest drift but the own one's.
            drift = (centroids.double() - self.previous.double()).norm(dim=-1) * (1 + _ROUND)
            top = drift.topk(min(2, drift.shape[1]), dim=1)
            largest = top.values[:, :1].expand(batch, n)
            runner_up = top.values[:, -1:].expand(batch, n) if drift.shape[1] > 1 else 0.0
            other_drift = torch.where(self.labels == top.indices[:, :1], runner_up, largest)
            self.lower = (self.lower - other_drift).clamp_min(0.0) * (1 - _ROUND)
            self.dist = labelled_distances(self.x, self.x_op, centroids, self.labels,
                                           precision)
            rel, tiny = distance_error_bound(d)
            upper = self.dist.double() * (1 + rel) + tiny
            keeps = (upper + 2.0 * error) * (1 + _ROUND) < self.lower.square() * (1 - _ROUND)
            need = ~keeps  # NaN anywhere: swept
        # The rows to sweep, in order, first in each problem's list: slot = rank among them;
        # the others all write the spare slot.
        count = need.sum(1)
        slot = torch.where(need, need.cumsum(1) - 1 + self.list_start, batch * n)
        self.slots.scatter_(0, slot.view(-1), self.row_index)
        assign_rows(self.x, self.x_op, centroids, precision, self.slots[:-1].view(batch, n),
                    count, self.dist, self.labels, self.second)
        fresh = ((self.second.double() + self.xx_low - error).clamp_min(0.0).sqrt()
                 * (1 - _ROUND))
        self.lower = torch.where(need, fresh, self.lower)
        self.previous = centroids.clone()
        self.reassigned = count
        return self.dist, self.labels


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
    # Pruning pays where the sweep it saves outweighs its own passes: per iteration one read
    # of x for the distances plus ~60 bytes of bounds per row, against 2 K d flops per row. At
    # an H200's ~4.8 TB/s and ~400 Tflop/s (tf32; fp16 twice that) they cost about
    # 42 (4 d + 60) / (K d) of a sweep (twice that in fp16): 2% at K = 10k, d = 256; 9% at
    # K = 2048, d = 128; 70% at K = 256. The dozen launches (~0.1 ms) want a sweep of ~2^34
    # multiply-adds (~0.1 ms) at least. Estimates, not measurements: until bench/kmeans_bench.py's
    # triton-pruned and triton-unpruned rows have measured both sides on a GPU, pruning is off
    # unless asked for (set prune_min_k = 2048 and prune_min_work = 1 << 34, the estimate's
    # thresholds, on TritonBackend), so no default run takes an unmeasured path.
    prune_min_work = 1 << 62
    prune_min_k = 1 << 62

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

    def pruner(self, x: torch.Tensor, k: int) -> _PrunedAssign | None:
        batch, n, d = x.shape
        if k < self.prune_min_k or n * k * d < self.prune_min_work:
            return None
        return _PrunedAssign(x)

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
