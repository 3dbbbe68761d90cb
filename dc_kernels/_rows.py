"""Rows of x handed to a backend: all at once, in chunks of rows, or streamed from host memory.

A backend that declares ``streams_host_data`` computes on the GPU while x stays in host memory
(larger than the GPU, ideally pinned: ``x.pin_memory()``): the rows travel in chunks on a copy
stream, double-buffered, so that the copy of chunk i + 1 overlaps the compute on chunk i. Which
rows form a chunk does not depend on where x lives, so the chunked pass is tested on the CPU,
where chunks are views.
"""

import os
from collections.abc import Iterator

import torch

from .backends.reference import TorchBackend

# Host-memory streaming: bytes of x per chunk (two chunks live on the GPU at once).
STREAM_CHUNK_BYTES = 256 << 20

# (problems, rows, data): a slice of the B problems, a slice of their N rows, and those rows
# (len(problems), len(rows), d) on the compute device.
Piece = tuple[slice, slice, torch.Tensor]


def compute_device(backend: TorchBackend, x: torch.Tensor) -> torch.device:
    """Where the backend computes on x: x's device, or the current GPU when it streams x from
    host memory (never in the Triton interpreter, which runs host data on the CPU)."""
    if (backend.streams_host_data and x.device.type == "cpu" and torch.cuda.is_available()
            and os.environ.get("TRITON_INTERPRET") != "1"):
        return torch.device("cuda", torch.cuda.current_device())
    return x.device


class Rows:
    """x (B, N, d) as pieces on ``device``: one piece (all of x) unless ``chunk_rows`` is given
    or x must be streamed, then chunks of at most ``chunk_rows`` rows of one problem."""

    def __init__(self, x: torch.Tensor, device: torch.device, chunk_rows: int | None = None):
        self.x = x
        self.device = device
        batch, n, d = x.shape
        self.streamed = device != x.device
        if self.streamed and chunk_rows is None:
            chunk_rows = STREAM_CHUNK_BYTES // max(1, d * x.element_size())
        self.chunked = chunk_rows is not None
        rows = max(1, min(n, chunk_rows or n))
        self.spans = [(b, start, min(start + rows, n)) for b in range(batch)
                      for start in range(0, n, rows)]
        if self.streamed:
            self._host = _HostChunks(x, device, rows, self.spans)

    def __iter__(self) -> Iterator[Piece]:
        if not self.chunked:
            yield slice(None), slice(None), self.x
        elif self.streamed:
            yield from self._host
        else:
            for b, start, stop in self.spans:
                yield slice(b, b + 1), slice(start, stop), self.x[b:b + 1, start:stop]


class _HostChunks:
    """The spans of a host tensor x delivered to the GPU chunk by chunk.

    Two device buffers alternate; copies run on their own stream and wait only for the compute
    that last used their buffer. Pageable x goes through two pinned staging buffers (a host
    memcpy, then an asynchronous copy).
    """

    def __init__(self, x: torch.Tensor, device: torch.device, rows: int,
                 spans: list[tuple[int, int, int]]):
        self.x, self.device, self.spans = x, device, spans
        d = x.shape[2]
        self.pinned = x.is_pinned()
        self.copy_stream = torch.cuda.Stream(device)
        self.bufs = [torch.empty(rows, d, dtype=x.dtype, device=device) for _ in range(2)]
        self.staging = [] if self.pinned else [
            torch.empty(rows, d, dtype=x.dtype).pin_memory() for _ in range(2)]
        # Per buffer: the compute that last read it, the copy that last wrote it. Kept across
        # passes, so the first copies of a pass wait for the last compute of the previous one.
        self.used: list[torch.cuda.Event | None] = [None, None]
        self.copied: list[torch.cuda.Event | None] = [None, None]

    def __iter__(self) -> Iterator[Piece]:
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
            yield slice(b, b + 1), slice(start, stop), self.bufs[slot][:stop - start].unsqueeze(0)
            used[slot] = torch.cuda.Event()
            used[slot].record(compute)


def _rows(backend: TorchBackend, x: torch.Tensor) -> Rows:
    return Rows(x, compute_device(backend, x))


def _copied(rows: Rows) -> None:
    """Wait for the asynchronous copies of results to the host."""
    torch.cuda.current_stream(rows.device).synchronize()


def assign(backend: TorchBackend, x: torch.Tensor, centroids: torch.Tensor,
           precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``backend.assign`` of x (B, N, d), streamed when x must be; results on x's device."""
    rows = _rows(backend, x)
    if not rows.streamed:
        return backend.assign(x, centroids.to(x.device), precision)
    c = centroids.to(rows.device)
    dist = torch.empty(x.shape[:2], dtype=torch.float32).pin_memory()
    labels = torch.empty(x.shape[:2], dtype=torch.int64).pin_memory()
    for problems, span, data in rows:
        dd, ll = backend.assign(data, c[problems], precision)
        dist[problems, span].copy_(dd, non_blocking=True)
        labels[problems, span].copy_(ll, non_blocking=True)
    _copied(rows)
    return dist, labels


def covariance(backend: TorchBackend, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``backend.covariance`` of x (N, d); streamed, the chunks' float64 moments are merged
    (Chan et al.'s pairwise update: no cancellation from a large mean). Results on x's device."""
    rows = _rows(backend, x.unsqueeze(0))
    if not rows.streamed:
        return backend.covariance(x)
    count, mean, scatter = 0, None, None
    for _, span, data in rows:
        part = span.stop - span.start
        part_mean, part_cov = backend.covariance(data[0])
        if mean is None:
            count, mean, scatter = part, part_mean, part_cov * part
            continue
        delta = part_mean - mean
        total = count + part
        scatter = scatter + part_cov * part + torch.outer(delta, delta) * (count * part / total)
        mean = mean + delta * (part / total)
        count = total
    return mean.cpu(), (scatter / count).cpu()


def pca_apply(backend: TorchBackend, x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor,
              normalize: bool) -> torch.Tensor:
    """``backend.pca_apply`` of x (N, d_in), streamed when x must be; result on x's device."""
    rows = _rows(backend, x.unsqueeze(0))
    if not rows.streamed:
        return backend.pca_apply(x, mean.to(x.device), proj.to(x.device), normalize)
    mean, proj = mean.to(rows.device), proj.to(rows.device)
    out = torch.empty(x.shape[0], proj.shape[1], dtype=torch.float32).pin_memory()
    for _, span, data in rows:
        out[span].copy_(backend.pca_apply(data[0], mean, proj, normalize), non_blocking=True)
    _copied(rows)
    return out
