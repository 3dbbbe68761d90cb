"""One clustering step: PCA-whitening + L2 (DESIGN.md step 2), then k-means (step 3).

Both run through dc_kernels on the features' device; only the statistics come back to the host.
"""

import time
from dataclasses import dataclass

import numpy as np
import torch

import dc_kernels


def derived_seed(seed: int, *keys: int) -> int:
    """A 31-bit seed that is a fixed function of the run seed and ``keys`` (epoch, purpose)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass
class Clustering:
    """Pseudo-labels (N,) int64 on the features' device, and how the clustering went."""

    labels: torch.Tensor
    sizes: np.ndarray          # (k,) points per cluster
    objective: float           # k-means inertia of the final assignment
    empty_clusters: int        # clusters with no point in the final assignment
    nsplit: int                # empty-cluster splits over all Lloyd iterations
    time_pca: float
    time_kmeans: float
    backend: str
    seed: int


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cluster_features(features: torch.Tensor, k: int, *, pca_dim: int, niter: int, seed: int,
                     pca_power: float = -0.5, backend: str = "auto") -> Clustering:
    """PCA-whiten ``features`` (N, d) to min(pca_dim, d) dims (eigenvalue power ``pca_power``,
    -0.5 = whitening), L2-normalise each row, run k-means."""
    device = features.device
    start = time.perf_counter()
    pca = dc_kernels.PCAWhitening(features.shape[1], min(pca_dim, features.shape[1]),
                                  eigen_power=pca_power, normalize=True, backend=backend)
    whitened = pca.train(features).apply(features)
    _sync(device)
    time_pca = time.perf_counter() - start
    start = time.perf_counter()
    result = dc_kernels.kmeans(whitened, k, niter=niter, seed=seed, backend=backend)
    _sync(device)
    time_kmeans = time.perf_counter() - start
    sizes = torch.bincount(result.labels, minlength=k).cpu().numpy()
    return Clustering(labels=result.labels, sizes=sizes, objective=float(result.inertia),
                      empty_clusters=int((sizes == 0).sum()),
                      nsplit=int(sum(row["nsplit"] for row in result.history)),
                      time_pca=time_pca, time_kmeans=time_kmeans, backend=result.backend,
                      seed=seed)
