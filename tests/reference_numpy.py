"""Float64 NumPy k-means and PCA used as independent oracles by the tests."""

import numpy as np

from dc_kernels.backends.reference import SPLIT_EPS, split_draw


def blobs(n: int, d: int, centres: int, seed: int = 0, spread: float = 0.05,
          dtype=np.float32) -> np.ndarray:
    """Well-separated Gaussian blobs: no near-ties between the two nearest centroids."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, d))
    labels = rng.integers(0, centres, size=n)
    return (means[labels] + spread * rng.normal(size=(n, d))).astype(dtype)


def assign(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, c = x.astype(np.float64), c.astype(np.float64)
    dist = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    labels = dist.argmin(1)
    return dist[np.arange(len(x)), labels], labels


def split(c: np.ndarray, counts: np.ndarray, seed: int, iteration: int) -> int:
    """The shared empty-cluster split, written independently of the torch reference."""
    k, d = c.shape
    sign = np.where(np.arange(d) % 2 == 0, 1.0, -1.0)
    done = 0
    for j in range(k):
        if counts[j] != 0:
            continue
        weights = np.maximum(counts - 1, 0)
        total = int(weights.sum())
        if total == 0:
            break
        r = split_draw(seed, iteration, j) % total
        donor = int(np.searchsorted(np.cumsum(weights), r, side="right"))
        base = c[donor].copy()
        c[j] = base * (1 + SPLIT_EPS * sign)
        c[donor] = base * (1 - SPLIT_EPS * sign)
        counts[j] = counts[donor] // 2
        counts[donor] -= counts[j]
        done += 1
    return done


def lloyd(x: np.ndarray, init: np.ndarray, niter: int, seed: int) -> tuple[np.ndarray, list]:
    """Float64 Lloyd iterations with the shared split; returns centroids and objectives."""
    c = init.astype(np.float64).copy()
    objs = []
    for it in range(niter):
        dist, labels = assign(x, c)
        objs.append(dist.sum())
        counts = np.bincount(labels, minlength=len(c))
        for j in np.flatnonzero(counts):
            c[j] = x[labels == j].astype(np.float64).mean(0)
        split(c, counts, seed, it)
    return c, objs
