"""One clustering step: PCA-whitening + L2 (DESIGN.md step 2), then k-means (step 3).

Both run through dc_kernels on the features' device; only the statistics come back to the host.
Under torchrun each rank passes its shard of the features and the process group: PCA and k-means
reduce across ranks, and the labels come back gathered for the whole dataset.
"""

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import dc_kernels

from .distributed import gather_labels


def derived_seed(seed: int, *keys: int) -> int:
    """A 31-bit seed that is a fixed function of the run seed and ``keys`` (epoch, purpose)."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0] & 0x7FFFFFFF)


@dataclass
class Clustering:
    """Pseudo-labels (N,) int64 of the whole dataset on the features' device (every rank's,
    in dataset order, under torchrun), and how the clustering went."""

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


def cluster_features(features: torch.Tensor, ks: Sequence[int], *, pca_dim: int, niter: int,
                     seed: int, pca_power: float = -0.5, nredo: int = 1, backend: str = "auto",
                     process_group: Any = None) -> list[Clustering]:
    """PCA-whiten ``features`` (N, d) to min(pca_dim, d) dims (eigenvalue power ``pca_power``,
    -0.5 = whitening), L2-normalise each row, run k-means (the best of ``nredo`` starts) once
    for each k of ``ks`` on those vectors, the first with ``seed``, level i with a seed derived
    from it and i; ``time_pca`` of each is the shared PCA's.

    With a torch.distributed ``process_group``, ``features`` is this rank's contiguous shard
    (shards in rank order = the dataset) and the result is that of the whole dataset.
    """
    device = features.device
    start = time.perf_counter()
    pca = dc_kernels.PCAWhitening(features.shape[1], min(pca_dim, features.shape[1]),
                                  eigen_power=pca_power, normalize=True, backend=backend,
                                  process_group=process_group)
    whitened = pca.train(features).apply(features)
    _sync(device)
    time_pca = time.perf_counter() - start
    clusterings = []
    for level, k in enumerate(ks):
        start = time.perf_counter()
        level_seed = seed if level == 0 else derived_seed(seed, level)
        result = dc_kernels.kmeans(whitened, k, niter=niter, seed=level_seed, nredo=nredo,
                                   backend=backend, process_group=process_group)
        labels = gather_labels(result.labels, process_group)
        _sync(device)
        time_kmeans = time.perf_counter() - start
        sizes = torch.bincount(labels, minlength=k).cpu().numpy()
        clusterings.append(Clustering(
            labels=labels, sizes=sizes, objective=float(result.inertia),
            empty_clusters=int((sizes == 0).sum()),
            nsplit=int(sum(row["nsplit"] for row in result.history)), time_pca=time_pca,
            time_kmeans=time_kmeans, backend=result.backend, seed=level_seed))
    return clusterings
