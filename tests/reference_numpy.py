"""The float64 NumPy oracle of every backend step, written independently of the backends.

Arrays may carry a leading batch axis: (..., N, d) points and (..., K, d) centroids.
``decided`` says where a float64 label is a fair test of a search in a given precision: where
the two best distances differ by more than that search's error bound, so that no test depends
on how some BLAS or tensor core rounds a near-tie.
"""

import numpy as np

from dc_kernels import testing
from dc_kernels.contract import SPLIT_EPS, split_draw

# Relative error of one search operand rounded to the precision (tf32 counted as truncated:
# 10 mantissa bits kept; bf16 and fp16 as rounded to nearest: 8 and 11 significant bits).
OPERAND_UNIT = {"fp32": 0.0, "tf32": 2.0 ** -10, "bf16": 2.0 ** -8, "fp16": 2.0 ** -11}
FP32_UNIT = 2.0 ** -24


def blobs(n: int, d: int, centres: int, seed: int = 0, spread: float = 0.05) -> np.ndarray:
    """``dc_kernels.testing.blobs`` as a float32 NumPy array."""
    return testing.blobs(n, d, centres, seed=seed, spread=spread).numpy()


def correlated(n: int, d: int, seed: int = 0) -> np.ndarray:
    """PCA input (n, d) float32: a large mean, variances spread over four decades (the data
    maker dc_kernels.testing lacks)."""
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(d, d)) * np.logspace(0, -2, d)
    return (rng.normal(size=(n, d)) @ mixing.T + 3.0 * rng.normal(size=d)).astype(np.float32)


def distances(x: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Squared distances (..., N, K) in float64 (exact for small-integer data)."""
    x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
    full = ((x * x).sum(-1)[..., :, None] + (c * c).sum(-1)[..., None, :]
            - 2.0 * x @ np.swapaxes(c, -1, -2))
    return np.maximum(full, 0.0)


def assign(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distance to and index of the nearest centroid (ties to the lowest index), per point."""
    full = distances(x, c)
    labels = full.argmin(-1)
    return np.take_along_axis(full, labels[..., None], -1)[..., 0], labels


def search_error_bound(x: np.ndarray, c: np.ndarray, precision: str) -> np.ndarray:
    """An upper bound (..., N) on how far the gap between two scores ||c||^2 - 2 x.c can move
    when computed in ``precision``: operands rounded (twice the unit for a product), a 16-bit
    product rounded once more on output, fp32 accumulation over d terms, and the fp32 norms."""
    x, c = np.asarray(x, np.float64), np.asarray(c, np.float64)
    d = x.shape[-1]
    scale = np.linalg.norm(x, axis=-1) + np.linalg.norm(c, axis=-1).max(-1)[..., None]
    return 4.0 * (3.0 * OPERAND_UNIT[precision] + (d + 2) * FP32_UNIT) * scale ** 2


def decided(x: np.ndarray, c: np.ndarray, precision: str,
            full: np.ndarray | None = None) -> np.ndarray:
    """Points (..., N) whose nearest centroid a search in ``precision`` cannot get wrong
    (``full``: their ``distances``, when the caller has them)."""
    full = distances(x, c) if full is None else full
    if full.shape[-1] == 1:
        return np.ones(full.shape[:-1], bool)
    top2 = np.partition(full, 1, axis=-1)
    return top2[..., 1] - top2[..., 0] > search_error_bound(x, c, precision)


def round_operand(a: np.ndarray, precision: str, tf32_nearest: bool = False) -> np.ndarray:
    """``a`` as a search in ``precision`` reads it, in float64 (tf32 truncated, as the Triton
    interpreter emulates it, or rounded to nearest, as a GPU compiler may)."""
    f = np.ascontiguousarray(a, np.float32)
    if precision == "fp16":
        return f.astype(np.float16).astype(np.float64)
    if precision in ("bf16", "tf32"):
        drop = 16 if precision == "bf16" else 13
        bits = f.view(np.uint32).astype(np.uint64)
        if precision == "bf16" or tf32_nearest:  # to nearest, ties to even
            bits = bits + (1 << (drop - 1)) - 1 + ((bits >> drop) & 1)
        bits = (bits >> drop << drop).astype(np.uint32)
        return bits.view(np.float32).astype(np.float64)
    return f.astype(np.float64)


def cluster_sums(x: np.ndarray, labels: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-cluster sums (..., K, d) and counts (..., K) of the points, float64 and int64."""
    x, labels = np.asarray(x, np.float64), np.asarray(labels)
    sums = np.zeros(labels.shape[:-1] + (k, x.shape[-1]))
    counts = np.zeros(labels.shape[:-1] + (k,), np.int64)
    for b in np.ndindex(labels.shape[:-1]):
        np.add.at(sums[b], labels[b], x[b])
        counts[b] = np.bincount(labels[b], minlength=k)
    return sums, counts


def update(x: np.ndarray, labels: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Means of each cluster's points (float64; empty clusters keep c) and the counts."""
    c = np.asarray(c, np.float64)
    sums, counts = cluster_sums(x, labels, c.shape[-2])
    nonempty = counts[..., None] > 0
    return np.where(nonempty, sums / np.maximum(counts, 1)[..., None], c), counts


def split(c: np.ndarray, counts: np.ndarray, seed: int, iteration: int) -> int:
    """The empty-cluster split of one problem, in place on c (K, d) and counts (K,).

    On a float32 ``c`` each perturbed coordinate is the correctly rounded fp32 product, which
    is what every backend computes: results are then bit for bit those of the backends.
    """
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
        base = c[donor].astype(np.float64)
        c[j] = base * (1 + SPLIT_EPS * sign)
        c[donor] = base * (1 - SPLIT_EPS * sign)
        counts[j] = counts[donor] // 2
        counts[donor] -= counts[j]
        done += 1
    return done


def lloyd(x: np.ndarray, init: np.ndarray, niter: int, seed: int) -> tuple[np.ndarray, list]:
    """Float64 Lloyd iterations of one problem with the shared split; centroids, objectives."""
    c = init.astype(np.float64).copy()
    objs = []
    for it in range(niter):
        dist, labels = assign(x, c)
        objs.append(dist.sum())
        c, counts = update(x, labels, c)
        split(c, counts, seed, it)
    return c, objs


def covariance(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and population covariance (divided by N, as faiss.PCAMatrix) in float64."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    return mean, (x - mean).T @ (x - mean) / len(x)


def top_eigh(cov: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``count`` largest eigenvalues and their eigenvectors (columns), largest first."""
    values, vectors = np.linalg.eigh(cov)
    return values[::-1][:count], vectors[:, ::-1][:, :count]


def pca_apply(x: np.ndarray, mean: np.ndarray, proj: np.ndarray, normalize: bool) -> np.ndarray:
    y = (np.asarray(x, np.float64) - mean) @ np.asarray(proj, np.float64)
    if normalize:
        y /= np.linalg.norm(y, axis=1, keepdims=True)
    return y
