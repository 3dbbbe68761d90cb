"""Uniform sampling over pseudo-labels (DESIGN.md step 4).

Every non-empty cluster gets the same number of draws (the remainder of N / clusters goes to a
random subset of them, one extra each), without replacement when the cluster is large enough
and with replacement when it is smaller; the draws are then shuffled. Empty clusters get none,
so k-means leaving a cluster empty cannot break training.
"""

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler


class UniformLabelSampler(Sampler):
    """Yields ``num_samples`` (image index, augmentation seed) pairs for one epoch.

    Everything is drawn at construction from ``np.random.default_rng(seed)``, so the epoch's
    sample order and augmentations are a pure function of (labels, num_samples, seed).
    """

    def __init__(self, labels: torch.Tensor | np.ndarray, num_samples: int, seed: int):
        labels = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if labels.ndim != 1 or len(labels) == 0:
            raise ValueError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        rng = np.random.default_rng(seed)
        clusters = np.unique(labels)
        per_cluster, extra = divmod(num_samples, len(clusters))
        counts = np.full(len(clusters), per_cluster)
        counts[rng.choice(len(clusters), size=extra, replace=False)] += 1
        order = np.argsort(labels, kind="stable")
        starts = np.searchsorted(labels[order], clusters)
        ends = np.append(starts[1:], len(labels))
        draws = []
        for start, end, count in zip(starts, ends, counts, strict=True):
            members = order[start:end]
            draws.append(rng.choice(members, size=count, replace=len(members) < count))
        self.indices = rng.permutation(np.concatenate(draws))
        self.seeds = rng.integers(0, 2**62, size=num_samples)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return zip(self.indices.tolist(), self.seeds.tolist(), strict=True)
