"""The torch backend: the readable reference every other backend is tested against.

It is also the base class of the other backends, which override the steps they accelerate.
The contract of each step (shapes, dtypes, in-place effects) is written here once; the Lloyd
loop that runs the steps is dc_kernels._lloyd, the same for every backend.

All point arrays are batched: ``x`` is (B, N, d) and ``centroids`` is (B, K, d) float32,
both contiguous and on the same device; B independent problems never mix.
"""

import contextlib
from collections.abc import Callable, Iterator

import torch

from ..contract import SPLIT_EPS, split_draw
from . import ENTRIES

# Rows per matmul tile are chosen so that a tile of distances holds at most this many entries.
TILE_ENTRIES = 1 << 24


@contextlib.contextmanager
def matmul_precision(precision: str, device: torch.device) -> Iterator[None]:
    """Make fp32 matmuls on CUDA exact ('fp32') or TF32 ('tf32') for the duration."""
    if device.type != "cuda":
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = saved


MATMUL_DTYPE = {"fp32": torch.float32, "tf32": torch.float32,
                "bf16": torch.bfloat16, "fp16": torch.float16}


def _pow2_scale(t: torch.Tensor) -> torch.Tensor:
    """The power of two that brings max|t| into [1, 2): fp16 dot products of rows so scaled stay
    far below fp16's largest value (65504), which torch's fp16 matmul output would overflow
    where the kernels, accumulating and returning fp32, do not. Dividing by a power of two
    changes no fp16 rounding (outside the subnormal range)."""
    peak = t.abs().amax().float()
    return torch.where(peak > 0, torch.exp2(torch.floor(torch.log2(peak))), 1.0)


class TorchBackend:
    """Chunked torch implementation of every step; runs on any device torch supports."""

    name = "torch"
    precisions: tuple[str, ...] = ENTRIES["torch"].precisions
    # No step reads a value back to the host and ``split`` takes the iteration as a one-element
    # int64 device tensor too: the driver may capture an iteration in a CUDA graph.
    capturable = False
    # Given rows in host memory, the steps run on the GPU: the driver streams the rows to it.
    streams_host_data = False

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str:
        """'' when this backend can run on ``device``, else why not."""
        return ""

    # ------------------------------------------------------------------ k-means steps
    def assign(self, x: torch.Tensor, centroids: torch.Tensor,
               precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest centroid of every point.

        Returns (dist, labels): indices (B, N) int64 of the centroid minimising
        ||c||^2 - 2 x.c, with the dot products computed in ``precision`` and accumulated in fp32
        (ties go to the lowest index), and the squared L2 distances (B, N) float32 to that
        centroid, computed directly as sum((x - c)^2) in fp32 so that they carry no
        cancellation error whatever the precision of the search. Points and centroids are cast
        to the precision as they are: in fp16 their magnitudes must stay below 65504.
        """
        batch, n, _ = x.shape
        k = centroids.shape[1]
        dist = torch.empty(batch, n, dtype=torch.float32, device=x.device)
        labels = torch.empty(batch, n, dtype=torch.int64, device=x.device)
        mm_dtype = MATMUL_DTYPE[precision]
        fp16 = mm_dtype == torch.float16
        c_sqnorm = (centroids * centroids).sum(-1)
        rows = max(1, TILE_ENTRIES // k)
        with matmul_precision(precision, x.device):
            for b in range(batch):
                c_scale = _pow2_scale(centroids[b]) if fp16 else 1.0
                c_mm = (centroids[b] / c_scale).to(mm_dtype)
                for start in range(0, n, rows):
                    xs = x[b, start:start + rows]
                    if fp16:
                        x_scale = _pow2_scale(xs)
                        dots = ((xs / x_scale).half() @ c_mm.T).float() * (x_scale * c_scale)
                    else:
                        dots = (xs.to(mm_dtype) @ c_mm.T).float()
                    # ||c||^2 - 2 x.c decides the argmin; ||x||^2 is added afterwards.
                    idx = torch.add(c_sqnorm[b], dots, alpha=-2.0).argmin(dim=1)
                    diff = xs.float() - centroids[b, idx]
                    dist[b, start:start + rows] = (diff * diff).sum(1)
                    labels[b, start:start + rows] = idx
        return dist, labels

    def cluster_sums(self, x: torch.Tensor, labels: torch.Tensor, sums: torch.Tensor,
                     counts: torch.Tensor) -> None:
        """Add every row of x (B, N, d) into ``sums`` (B, K, d) float32 at its label (B, N)
        int64, and 1 into ``counts`` (B, K) int64; both contiguous, accumulated into (not
        zeroed), so that rows may come in chunks and from several ranks."""
        batch, n, d = x.shape
        k = sums.shape[1]
        flat = (labels + torch.arange(batch, device=x.device).unsqueeze(1) * k).reshape(-1)
        flat_sums = sums.view(batch * k, d)
        rows = max(1, TILE_ENTRIES // d)
        x_flat = x.reshape(-1, d)
        for start in range(0, batch * n, rows):
            flat_sums.index_add_(0, flat[start:start + rows], x_flat[start:start + rows].float())
        counts.view(-1).add_(torch.bincount(flat, minlength=batch * k))

    @staticmethod
    def finalize(sums: torch.Tensor, counts: torch.Tensor, centroids: torch.Tensor) -> None:
        """centroids = sums / counts (a true fp32 division) where counts > 0, in place; empty
        clusters keep their centroid. The same torch code for every backend."""
        means = sums / counts.clamp_min(1).unsqueeze(-1).to(torch.float32)
        centroids.copy_(torch.where((counts > 0).unsqueeze(-1), means, centroids))

    def update(self, x: torch.Tensor, labels: torch.Tensor,
               centroids: torch.Tensor) -> torch.Tensor:
        """Overwrite ``centroids`` with the mean of their points; empty clusters keep theirs.

        Returns the cluster sizes (B, K) int64. ``cluster_sums`` then ``finalize``.
        """
        batch, k, d = centroids.shape
        sums = torch.zeros(batch, k, d, dtype=torch.float32, device=centroids.device)
        counts = torch.zeros(batch, k, dtype=torch.int64, device=centroids.device)
        self.cluster_sums(x, labels, sums, counts)
        self.finalize(sums, counts, centroids)
        return counts

    def pruner(self, x: torch.Tensor, k: int) -> Callable | None:
        """An exact, bound-based replacement of ``assign`` for the iterations of one Lloyd run
        on x (same signature and results, stateful across calls), or None: none here."""
        return None

    def split(self, centroids: torch.Tensor, counts: torch.Tensor, seed: int,
              iteration: int | torch.Tensor) -> torch.Tensor:
        """Split empty clusters, in place on ``centroids`` and ``counts``; returns nsplit (B,).

        The shared semantics: empty clusters are visited in index order. For each, with the
        current counts, weight_m = max(count_m - 1, 0) and W = sum(weight); if W == 0 nothing
        more can be split. Otherwise r = split_draw(seed, iteration, j) % W and the donor is
        the first m whose running sum of weights exceeds r (probability proportional to
        size - 1, so singletons never donate). The empty cluster takes the donor's centroid;
        coordinate t of the copy is scaled by (1 + eps) and the donor's by (1 - eps) for even
        t, the other way round for odd t (eps = 1/1024); counts: new = donor // 2 and the
        donor keeps the rest, so both stay non-empty.

        ``iteration`` may be a one-element int64 tensor (capturable backends read it on the
        device). This reference reads the counts on the host; device backends do not.
        """
        iteration = int(iteration)
        batch, k, d = centroids.shape
        host_counts = counts.cpu()
        nsplit = torch.zeros(batch, dtype=torch.int64)
        sign = torch.ones(d, dtype=torch.float32, device=centroids.device)
        sign[1::2] = -1.0
        grow = 1.0 + SPLIT_EPS * sign
        shrink = 1.0 - SPLIT_EPS * sign
        for b in range(batch):
            cnt = host_counts[b].tolist()
            weights = [max(c - 1, 0) for c in cnt]
            total = sum(weights)
            for j in range(k):
                if cnt[j] != 0:
                    continue
                if total == 0:
                    break
                r = split_draw(seed, iteration, j) % total
                donor, running = 0, weights[0]
                while running <= r:
                    donor += 1
                    running += weights[donor]
                donor_centroid = centroids[b, donor].clone()
                centroids[b, j] = donor_centroid * grow
                centroids[b, donor] = donor_centroid * shrink
                cnt[j] = cnt[donor] // 2
                cnt[donor] -= cnt[j]
                total -= weights[donor]
                weights[donor] = max(cnt[donor] - 1, 0)
                weights[j] = max(cnt[j] - 1, 0)
                total += weights[donor] + weights[j]
                nsplit[b] += 1
            host_counts[b] = torch.tensor(cnt)
        counts.copy_(host_counts)
        return nsplit.to(centroids.device)

    # ------------------------------------------------------------------ PCA steps
    def covariance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean (d,) and covariance (d, d) of the rows of x (N, d), both float64.

        Divides by N (population covariance); faiss.PCAMatrix keeps the scatter (N times it).
        """
        n, d = x.shape
        total = torch.zeros(d, dtype=torch.float64, device=x.device)
        gram = torch.zeros(d, d, dtype=torch.float64, device=x.device)
        rows = max(1, TILE_ENTRIES // max(d, 1))
        for start in range(0, n, rows):
            xs = x[start:start + rows].double()
            total += xs.sum(0)
            gram.addmm_(xs.T, xs)
        mean = total / n
        cov = gram / n - torch.outer(mean, mean)
        return mean, cov

    def top_eigh(self, cov: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``count`` largest eigenpairs of a symmetric float64 matrix, largest first.

        Returns (values (count,), vectors (d, count)), float64.
        """
        values, vectors = torch.linalg.eigh(cov)
        order = torch.argsort(values, descending=True)[:count]
        return values[order], vectors[:, order]

    def pca_apply(self, x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor,
                  normalize: bool) -> torch.Tensor:
        """y = (x - mean) @ proj, then each row L2-normalised when ``normalize``.

        x (N, d_in) any float dtype; mean (d_in,) and proj (d_in, d_out) float32; the whitening
        scale is already folded into proj. Returns (N, d_out) float32.
        """
        n = x.shape[0]
        d_out = proj.shape[1]
        out = torch.empty(n, d_out, dtype=torch.float32, device=x.device)
        rows = max(1, TILE_ENTRIES // max(x.shape[1], d_out))
        with matmul_precision("fp32", x.device):
            for start in range(0, n, rows):
                y = (x[start:start + rows].float() - mean) @ proj
                if normalize:
                    y = y / y.norm(dim=1, keepdim=True).clamp_min(1e-12)
                out[start:start + rows] = y
        return out
