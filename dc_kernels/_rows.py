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
    or x must be streamed, then chunks of at most ``chunk_rows`` rows of one problem.

    Streamed, two device buffers alternate; copies run on their own stream and wait only for
    the compute that last used their buffer. Pageable x goes through two pinned staging
    buffers (a host memcpy, then an asynchronous copy).
    """

    def __init__(self, x: torch.Tensor, device: torch.device, chunk_rows: int | None = None):
        self.x, self.device = x, device
        batch, n, d = x.shape
        self.streamed = device != x.device
        if self.streamed and chunk_rows is None:
            chunk_rows = STREAM_CHUNK_BYTES // max(1, d * x.element_size())
        self.chunked = chunk_rows is not None
        rows = max(1, min(n, chunk_rows or n))
        self.spans = [(b, start, min(start + rows, n)) for b in range(batch)
                      for start in range(0, n, rows)]
        if self.streamed:
            self.pinned = x.is_pinned()
            self.copy_stream = torch.cuda.Stream(device)
            self.bufs = [torch.empty(rows, d, dtype=x.dtype, device=device) for _ in range(2)]
            self.staging = [] if self.pinned else [
                torch.empty(rows, d, dtype=x.dtype).pin_memory() for _ in range(2)]
            # Per buffer: the compute that last read it, the copy that last wrote it. Kept
            # across passes: the first copies of a pass wait for the last compute of the last.
            self.used: list[torch.cuda.Event | None] = [None, None]
            self.copied: list[torch.cuda.Event | None] = [None, None]

    def __iter__(self) -> Iterator[Piece]:
        if not self.chunked:
            yield slice(None), slice(None), self.x
        elif not self.streamed:
            for b, start, stop in self.spans:
                yield slice(b, b + 1), slice(start, stop), self.x[b:b + 1, start:stop]
        else:
            yield from self._streamed()

    def _streamed(self) -> Iterator[Piece]:
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


def _rows(backend: TorchBackend, x: torch.Tensor, chunk_rows: int | None) -> Rows:
    return Rows(x, compute_device(backend, x), chunk_rows)


def _output(rows: Rows, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Room for results on x's device (pinned when they arrive from the GPU)."""
    out = torch.empty(shape, dtype=dtype, device=rows.x.device)
    return out.pin_memory() if rows.streamed else out


def _copied(rows: Rows) -> None:
    """Wait for the asynchronous copies of results to the host."""
    if rows.streamed:
        torch.cuda.current_stream(rows.device).synchronize()


# The helpers below run a backend step over x streamed when x must be (or in chunks of
# ``chunk_rows`` rows: tests); results are on x's device.
def assign(backend: TorchBackend, x: torch.Tensor, centroids: torch.Tensor, precision: str,
           chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``backend.assign`` of x (B, N, d)."""
    rows = _rows(backend, x, chunk_rows)
    if not rows.chunked:
        return backend.assign(x, centroids.to(x.device), precision)
    c = centroids.to(rows.device)
    dist = _output(rows, x.shape[:2], torch.float32)
    labels = _output(rows, x.shape[:2], torch.int64)
    for problems, span, data in rows:
        dd, ll = backend.assign(data, c[problems], precision)
        dist[problems, span].copy_(dd, non_blocking=True)
        labels[problems, span].copy_(ll, non_blocking=True)
    _copied(rows)
    return dist, labels


def covariance(backend: TorchBackend, x: torch.Tensor,
               chunk_rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``backend.covariance`` of x (N, d); in chunks, the chunks' float64 moments are merged
    (Chan et al.'s pairwise update: no cancellation from a large mean)."""
    rows = _rows(backend, x.unsqueeze(0), chunk_rows)
    if not rows.chunked:
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
    return mean.to(x.device), (scatter / count).to(x.device)


def pca_apply(backend: TorchBackend, x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor,
              normalize: bool, chunk_rows: int | None = None) -> torch.Tensor:
    """``backend.pca_apply`` of x (N, d_in)."""
    rows = _rows(backend, x.unsqueeze(0), chunk_rows)
    if not rows.chunked:
        return backend.pca_apply(x, mean.to(x.device), proj.to(x.device), normalize)
    mean, proj = mean.to(rows.device), proj.to(rows.device)
    out = _output(rows, (x.shape[0], proj.shape[1]), torch.float32)
    for _, span, data in rows:
        out[span].copy_(backend.pca_apply(data[0], mean, proj, normalize), non_blocking=True)
    _copied(rows)
    return out
