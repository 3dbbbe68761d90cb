"""Data makers shared by the tests and the benchmarks (one generator each, seeded, CPU tensors).

- ``blobs``: Gaussian blobs, the everyday k-means input (well separated at the default spread,
  overlapping at spread 1, where Lloyd keeps moving).
- ``random_rows``: k distinct rows of each problem, the usual initial centroids.
- ``exact_ties``: small-integer points and centroids on which every backend, in every
  precision, computes the same scores exactly, so that ties (which these data are full of) go
  to the lowest index everywhere and cluster sums are exact whatever the order of additions.
  Tests that depend on which of two equal centroids wins use these, never real-valued data
  whose near-ties are decided by BLAS rounding.

The same arguments give the same values on every machine (NumPy's PCG64 and torch's CPU
generator are platform-independent).
"""

import numpy as np
import torch


def blobs(n: int, d: int, centres: int, *, seed: int = 0, spread: float = 0.05,
          batch: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Rows around ``centres`` N(0, 1) means with N(0, spread^2) noise: (n, d), or
    (batch, n, d) when ``batch`` is given (each problem with its own means).

    Drawn in float64 by ``numpy.random.default_rng(seed)`` (means, owners, noise, problem by
    problem), then cast to ``dtype``; a CPU tensor (``.numpy()`` for NumPy callers).
    """
    rng = np.random.default_rng(seed)
    problems = []
    for _ in range(1 if batch is None else batch):
        means = rng.normal(size=(centres, d))
        owner = rng.integers(0, centres, size=n)
        problems.append(means[owner] + spread * rng.normal(size=(n, d)))
    x = torch.from_numpy(np.stack(problems)).to(dtype)
    return x[0] if batch is None else x


def random_rows(x: torch.Tensor, k: int, *, seed: int = 0) -> torch.Tensor:
    """k distinct rows of x (n, d) -> (k, d), or of each problem of x (B, n, d) -> (B, k, d)
    (an independent draw per problem), as float32 contiguous copies."""
    gen = torch.Generator().manual_seed(seed)
    xb = x if x.dim() == 3 else x.unsqueeze(0)
    picked = torch.stack([p[torch.randperm(p.shape[0], generator=gen)[:k].to(p.device)]
                          for p in xb]).float()
    return picked if x.dim() == 3 else picked[0]


def exact_ties(n: int, d: int, k: int, *, seed: int = 0, batch: int | None = None,
               high: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, centroids) of integers in [-high, high]: x (n, d) or (batch, n, d), centroids
    (k, d) or (batch, k, d) float32, whose second half repeats the first (exact duplicates).

    Every coordinate is exactly representable in fp32, tf32, bf16 and fp16, and every score
    ||c||^2 - 2 x.c and distance is an integer far below 2^24 (for d * high^2 < 2^20), so all
    arithmetics compute them exactly: the nearest centroid, ties to the lowest index, is the
    same for every backend and precision, and so are cluster sums and their means.
    """
    if d * high * high >= 1 << 20 or n * high >= 1 << 24:
        raise ValueError(f"n={n}, d={d}, high={high}: scores or sums would not be exact in fp32")
    gen = torch.Generator().manual_seed(seed)
    shape = (n, d) if batch is None else (batch, n, d)
    x = torch.randint(-high, high + 1, shape, generator=gen).float()
    first = (k + 1) // 2
    centroids = torch.randint(-high, high + 1, (*shape[:-2], first, d), generator=gen).float()
    centroids = torch.cat([centroids, centroids[..., :k - first, :]], dim=-2).contiguous()
    return x, centroids
