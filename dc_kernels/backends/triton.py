"""The Triton backend: fused assign, atomic update, on-device split, fused PCA-whitening.

Three ways the Lloyd loop runs (``run_lloyd``, the hook ``dc_kernels.kmeans.lloyd`` calls):
- data on the GPU, small problem (launch-bound): one iteration is captured as a CUDA graph and
  replayed ``niter`` times. Everything the iteration needs lives on the device, the iteration
  number included (the split draw reads it), so one graph serves every iteration and the loop
  makes no host round-trip;
- data on the GPU, large problem: the generic loop (kernel launches are negligible there);
- data in host memory (larger than the GPU, ideally pinned: ``x.pin_memory()``) with CUDA
  present: x streams to the GPU in chunks on a copy stream, double-buffered so the copy of chunk
  i + 1 overlaps the assign + accumulate of chunk i; centroids, sums and counts stay on the GPU
  and the results equal the in-memory path's up to the order of fp32 additions.
On the CPU under ``TRITON_INTERPRET=1`` every kernel runs in the Triton interpreter (tests).
"""

import os
from collections.abc import Iterator

import torch

from .._clock import IterationClock
from .reference import TorchBackend

# Below this many multiply-adds per iteration (B*N*K*d) launches dominate: capture a graph.
GRAPH_MAX_WORK = 1 << 36
# Host-memory streaming: bytes of x per chunk (two chunks live on the GPU at once).
STREAM_CHUNK_BYTES = 256 << 20


def _triton_missing() -> str:
    try:
        import triton  # noqa: F401
    except ImportError as exc:
        return f"triton is not importable ({exc}); install it with `pip install triton`"
    return ""


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _streams(t: torch.Tensor) -> bool:
    """Host data with a GPU to run on, outside the interpreter: stream it in chunks."""
    return t.device.type == "cpu" and not _interpreting() and torch.cuda.is_available()


class _HostChunks:
    """Rows of a host tensor x (B, N, d) delivered to the GPU chunk by chunk.

    Two device buffers alternate; copies run on their own stream and wait only for the compute
    that last used their buffer, so the copy of chunk i + 1 overlaps the compute on chunk i.
    Pageable x goes through two pinned staging buffers (a host memcpy then an async copy).
    """

    def __init__(self, x: torch.Tensor, device: torch.device):
        self.x = x
        self.device = device
        batch, n, d = x.shape
        row_bytes = max(1, d * x.element_size())
        self.rows = max(1, min(n, STREAM_CHUNK_BYTES // row_bytes))
        self.pinned = x.is_pinned()
        self.copy_stream = torch.cuda.Stream(device)
        self.bufs = [torch.empty(self.rows, d, dtype=x.dtype, device=device) for _ in range(2)]
        self.staging = [] if self.pinned else [
            torch.empty(self.rows, d, dtype=x.dtype).pin_memory() for _ in range(2)]
        self.spans = [(b, s, min(s + self.rows, n)) for b in range(batch)
                      for s in range(0, n, self.rows)]
        # Per buffer: the compute that last read it, the copy that last wrote it. Kept across
        # passes, so the first copies of a pass wait for the last compute of the previous one.
        self.used: list[torch.cuda.Event | None] = [None, None]
        self.copied: list[torch.cuda.Event | None] = [None, None]

    def __iter__(self) -> Iterator[tuple[int, int, int, torch.Tensor]]:
        """Yields (b, start, stop, rows (1, stop - start, d) on the GPU) in order."""
        compute = torch.cuda.current_stream(self.device)
        used, copied = self.used, self.copied
        for i, (b, start, stop) in enumerate(self.spans):
            slot = i % 2
            with torch.cuda.stream(self.copy_stream):
                if used[slot] is not None:
                    self.copy_stream.wait_event(used[slot])
                src = self.x[b, start:stop]
                if not self.pinned:
                    if copied[slot] is not None:
                        copied[slot].synchronize()  # the staging buffer is free again
                    self.staging[slot][:stop - start].copy_(src)
                    src = self.staging[slot][:stop - start]
                self.bufs[slot][:stop - start].copy_(src, non_blocking=True)
                copied[slot] = torch.cuda.Event()
                copied[slot].record(self.copy_stream)
            compute.wait_event(copied[slot])
            yield b, start, stop, self.bufs[slot][:stop - start].unsqueeze(0)
            used[slot] = torch.cuda.Event()
            used[slot].record(compute)


class TritonBackend(TorchBackend):
    """Triton kernels for every step; see the module docstring for how the loop runs."""

    name = "triton"
    precisions = ("fp32", "tf32", "bf16", "fp16")

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str:
        missing = _triton_missing()
        if missing:
            return missing
        if device.type == "cuda":
            return "" if torch.cuda.is_available() else "CUDA is not available to torch"
        if device.type == "cpu":
            if _interpreting() or torch.cuda.is_available():
                return ""
            return ("Triton kernels need a CUDA GPU; on the CPU they run only in the Triton "
                    "interpreter (set TRITON_INTERPRET=1 before importing triton; slow, for tests)")
        return f"the triton backend does not run on {device.type} devices"

    # ------------------------------------------------------------------ k-means steps
    def assign(self, x: torch.Tensor, centroids: torch.Tensor,
               precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        from ..ops.assign import assign

        if not _streams(x):
            return assign(x, centroids, precision)
        gpu = torch.device("cuda", torch.cuda.current_device())
        c_dev = centroids.to(gpu)
        dist = torch.empty(x.shape[:2], dtype=torch.float32).pin_memory()
        labels = torch.empty(x.shape[:2], dtype=torch.int64).pin_memory()
        for b, start, stop, chunk in _HostChunks(x, gpu):
            dd, ll = assign(chunk, c_dev[b:b + 1], precision)
            dist[b, start:stop].copy_(dd[0], non_blocking=True)
            labels[b, start:stop].copy_(ll[0], non_blocking=True)
        torch.cuda.current_stream(gpu).synchronize()  # the host copies above are asynchronous
        return dist, labels

    def update(self, x: torch.Tensor, labels: torch.Tensor,
               centroids: torch.Tensor) -> torch.Tensor:
        from ..ops.update import cluster_sums, finalize_centroids, update

        if not _streams(x):
            return update(x, labels, centroids)
        gpu = torch.device("cuda", torch.cuda.current_device())
        batch, k, d = centroids.shape
        c_dev = centroids.to(gpu)
        sums = torch.zeros(batch, k, d, dtype=torch.float32, device=gpu)
        counts32 = torch.zeros(batch, k, dtype=torch.int32, device=gpu)
        for b, start, stop, chunk in _HostChunks(x, gpu):
            cluster_sums(chunk, labels[b:b + 1, start:stop].to(gpu), k, sums[b:b + 1],
                         counts32[b:b + 1])
        counts = finalize_centroids(sums, counts32, c_dev)
        centroids.copy_(c_dev)
        return counts.cpu()

    def split(self, centroids: torch.Tensor, counts: torch.Tensor, seed: int,
              iteration: int) -> torch.Tensor:
        from ..ops.split import split

        if not _streams(centroids):
            return split(centroids, counts, seed, iteration)
        gpu = torch.device("cuda", torch.cuda.current_device())
        c_dev, n_dev = centroids.to(gpu), counts.to(gpu)
        nsplit = split(c_dev, n_dev, seed, iteration)
        centroids.copy_(c_dev)
        counts.copy_(n_dev)
        return nsplit.cpu()

    def run_lloyd(self, x: torch.Tensor, centroids: torch.Tensor, niter: int, precision: str,
                  seed: int, spherical: bool,
                  verbose: bool) -> tuple[torch.Tensor, list[dict]] | None:
        """The whole Lloyd loop, or None to let ``dc_kernels.kmeans.lloyd`` run its own."""
        if niter == 0 or verbose:
            return None  # verbose prints every iteration: that needs the generic loop's syncs
        if _streams(x):
            return self._lloyd_streamed(x, centroids, niter, precision, seed, spherical)
        batch, n, d = x.shape
        if x.device.type == "cuda" and batch * n * centroids.shape[1] * d <= GRAPH_MAX_WORK:
            return self._lloyd_graph(x, centroids, niter, precision, seed, spherical)
        return None

    @staticmethod
    def _iteration(x: torch.Tensor, centroids: torch.Tensor, precision: str, seed: int,
                   spherical: bool, it: torch.Tensor,
                   stats: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        """One Lloyd iteration with no host round-trip; stats rows ``it`` are written."""
        from ..ops.assign import assign
        from ..ops.split import split
        from ..ops.update import update

        objs, imbalances, nsplits = stats
        n, k = x.shape[1], centroids.shape[1]
        dist, labels = assign(x, centroids, precision)
        objs.index_copy_(0, it, dist.sum(-1, dtype=torch.float64).unsqueeze(0))
        counts = update(x, labels, centroids)
        # faiss's imbalance factor: K * sum(size^2) / N^2 (1.0 when perfectly balanced).
        imbalances.index_copy_(0, it, (k * counts.double().square().sum(-1) / float(n) ** 2)
                               .unsqueeze(0))
        nsplits.index_copy_(0, it, split(centroids, counts, seed, it).unsqueeze(0))
        if spherical:
            centroids.div_(centroids.norm(dim=-1, keepdim=True).clamp_min(1e-12))
        it.add_(1)

    @staticmethod
    def _history(stats: tuple[torch.Tensor, ...], times: list[float]) -> list[dict]:
        obj_rows, imb_rows, split_rows = (s.cpu().numpy() for s in stats)
        return [{"obj": obj_rows[i], "time": times[i + 1], "imbalance_factor": imb_rows[i],
                 "nsplit": split_rows[i]} for i in range(len(times) - 1)]

    @staticmethod
    def _stats(batch: int, niter: int, device: torch.device) -> tuple[torch.Tensor, ...]:
        return (torch.zeros(niter, batch, dtype=torch.float64, device=device),
                torch.zeros(niter, batch, dtype=torch.float64, device=device),
                torch.zeros(niter, batch, dtype=torch.int64, device=device))

    def _lloyd_graph(self, x: torch.Tensor, centroids: torch.Tensor, niter: int, precision: str,
                     seed: int, spherical: bool) -> tuple[torch.Tensor, list[dict]]:
        with torch.cuda.device(x.device):  # graphs and their streams live on x's device
            return self._lloyd_graph_here(x, centroids, niter, precision, seed, spherical)

    def _lloyd_graph_here(self, x: torch.Tensor, centroids: torch.Tensor, niter: int,
                          precision: str, seed: int,
                          spherical: bool) -> tuple[torch.Tensor, list[dict]]:
        batch = x.shape[0]
        stats = self._stats(batch, niter, x.device)
        it = torch.zeros(1, dtype=torch.int64, device=x.device)
        # Warm-up on copies, on a side stream: compiles and loads every kernel before capture.
        side = torch.cuda.Stream(x.device)
        side.wait_stream(torch.cuda.current_stream(x.device))
        with torch.cuda.stream(side):
            scratch_stats = self._stats(batch, 1, x.device)
            self._iteration(x, centroids.clone(), precision, seed, spherical,
                            torch.zeros(1, dtype=torch.int64, device=x.device), scratch_stats)
        torch.cuda.current_stream(x.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._iteration(x, centroids, precision, seed, spherical, it, stats)
        clock = IterationClock(x.device)
        for _ in range(niter):
            graph.replay()
            clock.mark()
        return centroids, self._history(stats, clock.seconds())

    def _lloyd_streamed(self, x: torch.Tensor, centroids: torch.Tensor, niter: int,
                        precision: str, seed: int,
                        spherical: bool) -> tuple[torch.Tensor, list[dict]]:
        from ..ops.assign import assign
        from ..ops.split import split
        from ..ops.update import cluster_sums, finalize_centroids

        gpu = torch.device("cuda", torch.cuda.current_device())
        batch, n, d = x.shape
        k = centroids.shape[1]
        c_dev = centroids.to(gpu)
        stats = self._stats(batch, niter, gpu)
        objs, imbalances, nsplits = stats
        chunks = _HostChunks(x, gpu)
        clock = IterationClock(gpu)
        for iteration in range(niter):
            sums = torch.zeros(batch, k, d, dtype=torch.float32, device=gpu)
            counts32 = torch.zeros(batch, k, dtype=torch.int32, device=gpu)
            sqnorms = (c_dev * c_dev).sum(-1)
            for b, _, _, chunk in chunks:
                # One pass per iteration: each chunk is assigned and accumulated while on chip.
                dist, labels = assign(chunk, c_dev[b:b + 1], precision, sqnorms[b:b + 1])
                objs[iteration, b] += dist.sum(dtype=torch.float64)
                cluster_sums(chunk, labels, k, sums[b:b + 1], counts32[b:b + 1])
            counts = finalize_centroids(sums, counts32, c_dev)
            imbalances[iteration] = k * counts.double().square().sum(-1) / float(n) ** 2
            nsplits[iteration] = split(c_dev, counts, seed, iteration)
            if spherical:
                c_dev.div_(c_dev.norm(dim=-1, keepdim=True).clamp_min(1e-12))
            clock.mark()
        centroids.copy_(c_dev)
        return centroids, self._history(stats, clock.seconds())

    # ------------------------------------------------------------------ PCA steps
    def covariance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from ..ops import pca

        if not _streams(x):
            return pca.covariance(x)
        gpu = torch.device("cuda", torch.cuda.current_device())
        n, d = x.shape
        total = torch.zeros(d, dtype=torch.float64, device=gpu)
        chunks = _HostChunks(x.unsqueeze(0), gpu)
        for _, _, _, chunk in chunks:
            total += chunk[0].sum(0, dtype=torch.float64)
        mean = total / n
        shift = mean.float()
        gram = torch.zeros(d, d, dtype=torch.float64, device=gpu)
        for _, _, _, chunk in chunks:
            pca.accumulate_gram(chunk[0], shift, gram)
        cov = pca.covariance_from_gram(gram, n, mean, shift)
        return mean.cpu(), cov.cpu()

    def top_eigh(self, cov: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        from ..ops import pca

        if _streams(cov):
            values, vectors = pca.top_eigh(cov.cuda(), count)
            return values.cpu(), vectors.cpu()
        return pca.top_eigh(cov, count)

    def pca_apply(self, x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor,
                  normalize: bool) -> torch.Tensor:
        from ..ops import pca

        if not pca.apply_fits(proj.shape[1]):
            # Rows wider than the registers hold: the chunked torch path.
            return super().pca_apply(x, mean, proj, normalize)
        if not _streams(x):
            return pca.pca_apply(x, mean, proj, normalize, "fp32")
        gpu = torch.device("cuda", torch.cuda.current_device())
        mean_dev, proj_dev = mean.to(gpu), proj.to(gpu)
        out = torch.empty(x.shape[0], proj.shape[1], dtype=torch.float32).pin_memory()
        for _, start, stop, chunk in _HostChunks(x.unsqueeze(0), gpu):
            out[start:stop].copy_(pca.pca_apply(chunk[0], mean_dev, proj_dev, normalize, "fp32"),
                                  non_blocking=True)
        torch.cuda.current_stream(gpu).synchronize()  # the host copies above are asynchronous
        return out
