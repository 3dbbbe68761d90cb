"""The Lloyd driver: the one k-means loop, whatever the backend.

A backend supplies steps (``assign``, ``cluster_sums``, ``finalize``, ``split``, a ``pruner``
where it has one); this loop owns the rest, once: the per-iteration statistics (objective,
imbalance, splits), spherical normalisation, the clock and verbose lines, the sum of cluster
sums and counts over a process group, and how an iteration runs:
- over pieces of rows (dc_kernels._rows): all of x, or chunks each assigned and accumulated in
  turn, streamed from host memory to the GPU for a backend that ``streams_host_data``;
- captured: a ``capturable`` backend runs small (launch-bound) problems on a GPU as a CUDA
  graph of one iteration replayed every iteration, the iteration number living on the device;
- pruned: the backend's ``pruner`` replaces ``assign`` (the same results, rows skipped; the
  fraction of rows it re-assigned is the history's ``reassigned``, per problem); never captured.
On device backends nothing inside the loop reads a value back to the host unless ``verbose``.
"""

import contextlib
import itertools
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch

from . import _distributed, _rows
from .backends.reference import TILE_ENTRIES, TorchBackend
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


class _SearchClock:
    """Seconds spent in the nearest-centroid search, per iteration, cumulative (faiss's
    ``time_search``): CUDA events around each search on GPUs, ``perf_counter`` on CPUs; not
    measurable inside a captured CUDA graph (NaN there)."""

    def __init__(self, device: torch.device, niter: int):
        self.cuda = device.type == "cuda"
        self.spans: list[list] = [[] for _ in range(niter)]
        self.iteration = 0
        self.enabled = True  # off while an iteration is captured as a CUDA graph

    @contextlib.contextmanager
    def search(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        start = torch.cuda.Event(enable_timing=True) if self.cuda else time.perf_counter()
        if self.cuda:
            start.record()
        yield
        if self.cuda:
            stop = torch.cuda.Event(enable_timing=True)
            stop.record()
            self.spans[self.iteration].append((start, stop))
        else:
            self.spans[self.iteration].append(time.perf_counter() - start)

    def seconds(self, iterations: int, captured: bool) -> list[float]:
        if captured:
            return [math.nan] * iterations
        if self.cuda and any(self.spans):
            next(s for s in reversed(self.spans) if s)[-1][1].synchronize()
        per = [sum(a.elapsed_time(b) / 1000.0 for a, b in spans) if self.cuda else sum(spans)
               for spans in self.spans[:iterations]]
        return list(itertools.accumulate(per))


class _Stats:
    """Objective, imbalance factor and splits per iteration and problem, on the device; with
    ``pruned``, also the fraction of rows the pruned assignment re-assigned."""

    def __init__(self, niter: int, batch: int, device: torch.device, pruned: bool = False):
        self.obj = torch.zeros(niter, batch, dtype=torch.float64, device=device)
        self.imbalance = torch.zeros(niter, batch, dtype=torch.float64, device=device)
        self.nsplit = torch.zeros(niter, batch, dtype=torch.int64, device=device)
        self.reassigned = (torch.zeros(niter, batch, dtype=torch.float64, device=device)
                           if pruned else None)

    def record(self, it: Iteration, obj: torch.Tensor, imbalance: torch.Tensor,
               nsplit: torch.Tensor) -> None:
        for table, value in ((self.obj, obj), (self.imbalance, imbalance), (self.nsplit, nsplit)):
            if isinstance(it, torch.Tensor):
                table.index_copy_(0, it, value.unsqueeze(0).to(table.device))
            else:
                table[it] = value

    def converged(self, iteration: int, threshold: float) -> bool:
        """faiss's early stop: every problem's objective changed by at most ``threshold``
        (relative) since the previous iteration (never when that objective was 0)."""
        if iteration == 0:
            return False
        previous, current = self.obj[iteration - 1], self.obj[iteration]
        change = (previous - current).abs() / previous.abs()
        return bool(((previous != 0) & (change <= threshold)).all())

    def history(self, times: list[float], search_times: list[float]) -> list[dict]:
        obj, imbalance, nsplit = (t.cpu().numpy() for t in (self.obj, self.imbalance, self.nsplit))
        reassigned = None if self.reassigned is None else self.reassigned.cpu().numpy()
        return [{"obj": obj[i], "time": times[i + 1], "time_search": search_times[i],
                 "imbalance_factor": imbalance[i], "nsplit": nsplit[i],
                 **({} if reassigned is None else {"reassigned": reassigned[i]})}
                for i in range(len(times) - 1)]


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


def inner_products(x: torch.Tensor, centroids: torch.Tensor,
                   labels: torch.Tensor) -> torch.Tensor:
    """x_i . c_{label_i} for x (B, n, d), centroids (B, K, d), labels (B, n): (B, n) float32,
    in tiles of rows (no (n, d) temporary)."""
    batch, n, d = x.shape
    out = torch.empty(batch, n, dtype=torch.float32, device=x.device)
    rows = max(1, TILE_ENTRIES // max(1, d))
    for start in range(0, n, rows):
        index = labels[:, start:start + rows]
        picked = torch.gather(centroids, 1, index.unsqueeze(-1).expand(-1, -1, d))
        out[:, start:start + rows] = (x[:, start:start + rows].float() * picked).sum(-1)
    return out


def _weighted_sums(backend: TorchBackend, x: torch.Tensor, labels: torch.Tensor,
                   weights: torch.Tensor, sums: torch.Tensor, counts: torch.Tensor,
                   weight_sums: torch.Tensor) -> None:
    """Weighted k-means for any backend: the backend's cluster sums of the rows times their
    weights (in tiles), its counts of points (for splits and imbalance), and the sum of the
    weights per cluster (float64, the divisor of the weighted mean)."""
    batch, n, d = x.shape
    rows = max(1, TILE_ENTRIES // max(1, d))
    for start in range(0, n, rows):
        part_labels = labels[:, start:start + rows].contiguous()
        part_weights = weights[:, start:start + rows]
        weighted = (x[:, start:start + rows].float() * part_weights.unsqueeze(-1)).contiguous()
        backend.cluster_sums(weighted, part_labels, sums, counts)
        weight_sums.scatter_add_(1, part_labels, part_weights.double())


def _post_process(c: torch.Tensor, spherical: bool, round_to: float | None) -> None:
    """faiss's post-processing of centroids: unit norm (spherical), then rounding to multiples
    of ``round_to`` (a power of two: exact)."""
    if spherical:
        c.div_(c.norm(dim=-1, keepdim=True).clamp_min(1e-12))
    if round_to is not None:
        c.div_(round_to).round_().mul_(round_to)


def lloyd(x: torch.Tensor, centroids: torch.Tensor, niter: int, backend: TorchBackend,
          precision: str, seed: int, spherical: bool = False, verbose: bool = False,
          process_group: Any = None, chunk_rows: int | None = None, *,
          weights: torch.Tensor | None = None, inner_product: bool = False, frozen: int = 0,
          round_to: float | None = None, early_stop: float | None = None,
          ) -> tuple[torch.Tensor, list[dict]]:
    """Run up to ``niter`` Lloyd iterations on validated (B, N, d) data from (B, K, d) float32
    centroids, which are updated in place and returned with the per-iteration statistics.

    With a ``process_group``, x is this rank's shard: sums, counts and objectives are summed
    over the group, so every rank holds the centroids of the concatenated data. ``chunk_rows``
    makes every iteration pass over x in chunks of that many rows (the path host streaming
    takes, on any device).

    faiss's options: ``weights`` (B, N) non-negative, on x's device: weighted means (the
    objective stays the plain sum of distances, as faiss's); ``inner_product``: the objective
    is the sum of x . c over the assignments (spherical k-means as faiss reports it); the first
    ``frozen`` centroids never move (nor take part in splits); ``round_to`` (faiss's
    int_centroids: 1, or 2^-e on data rescaled by 2^-e) rounds the centroids to its multiples
    after each update; ``early_stop``: stop once the objective changes by at most that much,
    relative (reads it back each iteration). ``spherical`` and ``round_to`` also apply to the
    initial centroids.
    """
    batch, n, d = x.shape
    k = centroids.shape[1]
    if process_group is not None:
        n = sum(_distributed.shard_sizes(n, x.device, process_group))
    rows = _rows.Rows(x, _rows.compute_device(backend, x), chunk_rows)
    device = rows.device
    with torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext():
        work = centroids.to(device)  # centroids itself unless x streams from host memory
        _post_process(work, spherical, round_to)
        fixed = work[:, :frozen].clone()
        # A pruner keeps bounds between calls and exposes ``reassigned`` (B,) int64, the rows
        # its latest call re-assigned.
        pruner = None if rows.chunked else backend.pruner(x, k)
        assign = pruner or backend.assign
        sums = torch.zeros(batch, k, d, dtype=torch.float32, device=device)
        counts = torch.zeros(batch, k, dtype=torch.int64, device=device)
        weight_sums = torch.zeros(batch, k, dtype=torch.float64, device=device)
        obj = torch.zeros(batch, dtype=torch.float64, device=device)
        search = _SearchClock(device, niter)

        def step(c: torch.Tensor, it: Iteration, stats: _Stats) -> None:
            """One iteration: assign and accumulate every piece of rows -> (reduce across
            ranks) -> finalize -> statistics -> split -> post-process."""
            for t in (sums, counts, obj) if weights is None else (sums, counts, obj, weight_sums):
                t.zero_()
            for problems, span, data in rows:
                with search.search():
                    dist, labels = assign(data, c[problems], precision)
                if inner_product:
                    dist = inner_products(data, c[problems], labels)
                obj[problems] += dist.sum(-1, dtype=torch.float64)
                if weights is None:
                    backend.cluster_sums(data, labels, sums[problems], counts[problems])
                else:
                    _weighted_sums(backend, data, labels,
                                   weights[problems, span].to(device, non_blocking=True),
                                   sums[problems], counts[problems], weight_sums[problems])
            if process_group is not None:
                _distributed.all_reduce_(process_group, sums, counts, obj,
                                         *(() if weights is None else (weight_sums,)))
            if weights is None:
                backend.finalize(sums, counts, c)
            else:
                means = (sums.double() / weight_sums.unsqueeze(-1)).float()
                c.copy_(torch.where((weight_sums > 0).unsqueeze(-1), means, c))
            imbalance = imbalance_factor(counts, n)
            if frozen:
                c[:, :frozen] = fixed
                free, free_counts = c[:, frozen:].contiguous(), counts[:, frozen:].contiguous()
                nsplit = backend.split(free, free_counts, seed, it)
                c[:, frozen:], counts[:, frozen:] = free, free_counts
            else:
                nsplit = backend.split(c, counts, seed, it)
            stats.record(it, obj, imbalance, nsplit)
            if pruner is not None:
                stats.reassigned[it] = pruner.reassigned.to(device).double() / x.shape[1]
            _post_process(c, spherical, round_to)

        stats = _Stats(niter, batch, device, pruned=pruner is not None)
        faiss_options = weights is not None or inner_product or frozen or round_to is not None
        graph = (backend.capturable and device.type == "cuda" and not rows.streamed and niter > 0
                 and pruner is None and not verbose and process_group is None and not faiss_options
                 and batch * n * k * d <= GRAPH_MAX_WORK)
        search.enabled = not graph
        run = (_captured(step, work, stats) if graph
               else lambda iteration: step(work, iteration, stats))
        clock = IterationClock(device)
        for iteration in range(niter):
            search.iteration = iteration
            run(iteration)
            clock.mark()
            if verbose:
                print(f"  iteration {iteration}: objective={stats.obj[iteration].tolist()} "
                      f"nsplit={stats.nsplit[iteration].tolist()}", flush=True)
            if early_stop is not None and stats.converged(iteration, early_stop):
                break
        if work is not centroids:
            centroids.copy_(work)
        times = clock.seconds()
        return centroids, stats.history(times, search.seconds(len(times) - 1, graph))
