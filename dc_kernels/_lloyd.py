"""The Lloyd driver: the one k-means loop, whatever the backend.

A backend supplies steps (``assign``, ``cluster_sums``, ``finalize``, ``split``, a ``pruner``
where it has one); this loop owns the rest, once: the per-iteration statistics (objective,
imbalance, splits), spherical normalisation, the clock and verbose lines, the sum of cluster
sums and counts over a process group, and how an iteration runs:
- over pieces of rows (dc_kernels._rows): all of x, or chunks each assigned and accumulated in
  turn, streamed from host memory to the GPU for a backend that ``streams_host_data``;
- captured: a ``capturable`` backend runs small (launch-bound) problems on a GPU as a CUDA
  graph of one iteration replayed every iteration, the iteration number living on the device;
- pruned: the backend's ``pruner`` replaces ``assign`` (the same results, rows skipped).
On device backends nothing inside the loop reads a value back to the host unless ``verbose``.
"""

import contextlib
import time
from collections.abc import Callable
from typing import Any

import torch

from . import _distributed, _rows
from .backends.reference import TorchBackend
from .contract import imbalance_factor

# Below this many multiply-adds per iteration (B*N*K*d) launches dominate: capture a graph.
GRAPH_MAX_WORK = 1 << 36

Iteration = int | torch.Tensor  # a host int, or a one-element int64 device tensor when captured


class IterationClock:
    """Marks the start on creation and each ``mark()`` after; CUDA events on GPUs (read once, at
    the end), ``perf_counter`` on CPUs."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.marks: list = []
        self.mark()

    def mark(self) -> None:
        self.marks.append(torch.cuda.Event(enable_timing=True) if self.cuda
                          else time.perf_counter())
        if self.cuda:
            self.marks[-1].record()

    def seconds(self) -> list[float]:
        """Seconds from the start to each mark (the first is 0)."""
        if self.cuda:
            self.marks[-1].synchronize()
            return [self.marks[0].elapsed_time(m) / 1000.0 for m in self.marks]
        return [m - self.marks[0] for m in self.marks]


class _Stats:
    """Objective, imbalance factor and splits per iteration and problem, on the device."""

    def __init__(self, niter: int, batch: int, device: torch.device):
        self.obj = torch.zeros(niter, batch, dtype=torch.float64, device=device)
        self.imbalance = torch.zeros(niter, batch, dtype=torch.float64, device=device)
        self.nsplit = torch.zeros(niter, batch, dtype=torch.int64, device=device)

    def record(self, it: Iteration, obj: torch.Tensor, imbalance: torch.Tensor,
               nsplit: torch.Tensor) -> None:
        for table, value in ((self.obj, obj), (self.imbalance, imbalance), (self.nsplit, nsplit)):
            if isinstance(it, torch.Tensor):
                table.index_copy_(0, it, value.unsqueeze(0).to(table.device))
            else:
                table[it] = value

    def history(self, times: list[float]) -> list[dict]:
        obj, imbalance, nsplit = (t.cpu().numpy() for t in (self.obj, self.imbalance, self.nsplit))
        return [{"obj": obj[i], "time": times[i + 1], "imbalance_factor": imbalance[i],
                 "nsplit": nsplit[i]} for i in range(len(times) - 1)]


def _captured(step: Callable, centroids: torch.Tensor, stats: _Stats) -> Callable[[int], None]:
    """One iteration captured as a CUDA graph; the returned callable replays it (the iteration
    number is a device counter that the graph itself advances)."""
    device = centroids.device
    counter = torch.zeros(1, dtype=torch.int64, device=device)
    # Warm-up on copies, on a side stream: compiles and loads every kernel before capture.
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        step(centroids.clone(), counter.clone(), _Stats(1, centroids.shape[0], device))
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(centroids, counter, stats)
        counter.add_(1)
    return lambda iteration: graph.replay()


def lloyd(x: torch.Tensor, centroids: torch.Tensor, niter: int, backend: TorchBackend,
          precision: str, seed: int, spherical: bool = False, verbose: bool = False,
          process_group: Any = None, chunk_rows: int | None = None,
          ) -> tuple[torch.Tensor, list[dict]]:
    """Run ``niter`` Lloyd iterations on validated (B, N, d) data from (B, K, d) float32
    centroids, which are updated in place and returned with the per-iteration statistics.

    With a ``process_group``, x is this rank's shard: sums, counts and objectives are summed
    over the group, so every rank holds the centroids of the concatenated data. ``chunk_rows``
    makes every iteration pass over x in chunks of that many rows (the path host streaming
    takes, on any device).
    """
    batch, n, d = x.shape
    k = centroids.shape[1]
    if process_group is not None:
        n = sum(_distributed.shard_sizes(n, x.device, process_group))
    rows = _rows.Rows(x, _rows.compute_device(backend, x), chunk_rows)
    device = rows.device
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        work = centroids.to(device)  # centroids itself unless x streams from host memory
        assign = (None if rows.chunked else backend.pruner(x, k)) or backend.assign
        sums = torch.zeros(batch, k, d, dtype=torch.float32, device=device)
        counts = torch.zeros(batch, k, dtype=torch.int64, device=device)
        obj = torch.zeros(batch, dtype=torch.float64, device=device)

        def step(c: torch.Tensor, it: Iteration, stats: _Stats) -> None:
            """One iteration: assign and accumulate every piece of rows -> (reduce across
            ranks) -> finalize -> statistics -> split -> (normalise)."""
            for t in (sums, counts, obj):
                t.zero_()
            for problems, _, data in rows:
                dist, labels = assign(data, c[problems], precision)
                obj[problems] += dist.sum(-1, dtype=torch.float64)
                backend.cluster_sums(data, labels, sums[problems], counts[problems])
            if process_group is not None:
                _distributed.all_reduce_(process_group, sums, counts, obj)
            backend.finalize(sums, counts, c)
            imbalance = imbalance_factor(counts, n)
            stats.record(it, obj, imbalance, backend.split(c, counts, seed, it))
            if spherical:
                c.div_(c.norm(dim=-1, keepdim=True).clamp_min(1e-12))

        stats = _Stats(niter, batch, device)
        graph = (backend.capturable and device.type == "cuda" and not rows.streamed and niter > 0
                 and not verbose and process_group is None and batch * n * k * d <= GRAPH_MAX_WORK)
        run = (_captured(step, work, stats) if graph
               else lambda iteration: step(work, iteration, stats))
        clock = IterationClock(device)
        for iteration in range(niter):
            run(iteration)
            clock.mark()
            if verbose:
                print(f"  iteration {iteration}: objective={stats.obj[iteration].tolist()} "
                      f"nsplit={stats.nsplit[iteration].tolist()}", flush=True)
        if work is not centroids:
            centroids.copy_(work)
        return centroids, stats.history(clock.seconds())
