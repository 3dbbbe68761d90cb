"""The evaluation tasks on feature matrices: clustering, linear probe, kNN, retrieval.

Everything here takes torch tensors already on the chosen device and computes there (features
of a whole dataset fit on the device; similarity matrices are built in row chunks so that an
N x M matrix is never held at once). No task knows about models or files: deepcluster.eval
extracts the features and calls these.

Labels are int64 tensors; -1 marks an unknown label and such samples are left out of every
score that needs a label.
"""

import math
from dataclasses import dataclass

import torch
from torch import nn

import dc_kernels

from . import metrics

__all__ = ["ClusterResult", "Predictions", "cluster", "knn_classify", "linear_probe",
           "retrieval_map"]


@dataclass
class ClusterResult:
    """Scores of one k-means clustering against the labels, and the clustering itself.

    ``assignments`` (N,) and ``centroids`` (k, d) are in the PCA-whitened space ``whitened``
    (N, d), on the features' device; scores are None when no sample has a label.
    """

    k: int
    nmi: float | None
    ari: float | None
    acc: float | None
    purity: float | None
    assignments: torch.Tensor
    centroids: torch.Tensor
    whitened: torch.Tensor


def cluster(features: torch.Tensor, labels: torch.Tensor, k: int, *, pca_dim: int = 256,
            eigen_power: float = -0.5, niter: int = 20, seed: int = 0, nredo: int = 1,
            backend: str = "auto") -> ClusterResult:
    """DeepCluster's clustering step on ``features`` (PCA-whitening, L2, k-means), scored.

    ``eigen_power`` -0.5 whitens (the paper); a run may use another power, and the evaluation
    then clusters the way the run did. k-means keeps the lowest objective of ``nredo`` starts.

    The PCA dimension is capped by the feature dimension and by N - 1 (beyond that the
    covariance has no more non-zero eigenvalues to whiten).
    """
    n, d = features.shape
    dim = max(1, min(pca_dim, d, n - 1))
    pca = dc_kernels.PCAWhitening(d, dim, eigen_power=eigen_power, backend=backend)
    whitened = pca.train(features).apply(features)
    result = dc_kernels.kmeans(whitened, k, niter, seed=seed, nredo=nredo, backend=backend)
    assignments = result.labels
    scores: dict[str, float | None] = dict.fromkeys(("nmi", "ari", "acc", "purity"))
    if bool((labels >= 0).any()):
        scores = {"nmi": metrics.nmi(labels, assignments),
                  "ari": metrics.adjusted_rand_index(labels, assignments),
                  "acc": metrics.clustering_accuracy(labels, assignments),
                  "purity": metrics.purity(labels, assignments)}
    return ClusterResult(k=k, assignments=assignments, centroids=result.centroids,
                         whitened=whitened, **scores)


@dataclass
class Predictions:
    """A classifier's answers on the labelled test samples: ``truth`` and ``predicted`` (N,)
    int64 in the train split's classes renumbered 0..C-1 (a test class absent from the train
    split is -2 in ``truth``: always an error). Kept whole so that two feature sets scored on
    the same samples can be compared sample by sample (``metrics.paired_bootstrap_se``)."""

    truth: torch.Tensor
    predicted: torch.Tensor

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy in percent."""
        return 100.0 * float((self.predicted == self.truth).double().mean())


def _known(x: torch.Tensor, y: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    keep = y >= 0
    if not bool(keep.any()):
        raise ValueError(f"the {name} split has no labelled sample")
    return x[keep], y[keep]


def _compact_labels(train_y: torch.Tensor,
                    test_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Labels renumbered 0..C-1 by the train split's classes (values may be sparse, e.g. 7, 1000).

    Test labels absent from the train split become -2: no classifier trained on the train
    split can predict them, so they count as errors.
    """
    classes = torch.unique(train_y)
    train_c = torch.searchsorted(classes, train_y)
    pos = torch.searchsorted(classes, test_y).clamp_max(classes.numel() - 1)
    test_c = torch.where(classes[pos] == test_y, pos, torch.full_like(pos, -2))
    return train_c, test_c, classes.numel()


PROBE_EPOCHS = 30  # see linear_probe


def linear_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, *, epochs: int = PROBE_EPOCHS, batch_size: int = 1024,
                 lr: float = 0.05, weight_decay: float = 1e-4, seed: int = 0) -> Predictions:
    """A linear classifier trained on frozen features of the train split, applied to the test
    split (``.accuracy``: its top-1 %).

    Features are standardised with the train split's statistics (conv activations of different
    layers differ in scale by orders of magnitude; one step size then serves them all). The
    classifier is trained with SGD + momentum, cosine-decayed step size, cross-entropy; fixed
    hyper-parameters, no tuning on the test split. 30 epochs of 1024: with 10 (the default
    until 2026-11-29) the probe was still learning, by the 5-fold cross-validated accuracy on the
    train split of digits and of Fashion-MNIST, which rose with 30 epochs for almost every conv
    layer of both the learned and the random network (by up to 2.3 points) and moved little
    more with 100.
    """
    train_x, train_y = _known(train_x, train_y, "train")
    test_x, test_y = _known(test_x, test_y, "test")
    mean = train_x.mean(0)
    std = train_x.std(0).clamp_min(1e-6)
    train_x = (train_x - mean) / std
    test_x = (test_x - mean) / std
    train_y, test_y, classes = _compact_labels(train_y, test_y)
    generator = torch.Generator().manual_seed(seed)
    probe = nn.Linear(train_x.shape[1], classes)
    with torch.no_grad():  # drawn on the CPU (where the generator lives), then moved
        probe.weight.normal_(0.0, 0.01, generator=generator)
        probe.bias.zero_()
    probe = probe.to(train_x.device)
    optimizer = torch.optim.SGD(probe.parameters(), lr=lr, momentum=0.9,
                                weight_decay=weight_decay)
    steps_per_epoch = math.ceil(train_x.shape[0] / batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(epochs):
        order = torch.randperm(train_x.shape[0], generator=generator).to(train_x.device)
        for start in range(0, train_x.shape[0], batch_size):
            batch = order[start:start + batch_size]
            loss = loss_fn(probe(train_x[batch]), train_y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        predicted = torch.cat([probe(test_x[i:i + 4096]).argmax(1)
                               for i in range(0, test_x.shape[0], 4096)])
    return Predictions(test_y, predicted)


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x.float() / x.float().norm(dim=1, keepdim=True).clamp_min(1e-12)


def knn_classify(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor,
                 test_y: torch.Tensor, ks: tuple[int, ...] = (20, 200),
                 temperature: float = 0.07, chunk: int = 1024) -> dict[int, Predictions]:
    """Weighted k-nearest-neighbour classification of the test split for each k, cosine
    similarity (``.accuracy``: top-1 %).

    Each of the k most similar train samples votes for its class with weight exp(sim / T)
    (Wu et al. 2018, the usual kNN monitor of self-supervised features). k larger than the
    train split is capped to its size.
    """
    train_x, train_y = _known(train_x, train_y, "train")
    test_x, test_y = _known(test_x, test_y, "test")
    bank, queries = _unit(train_x), _unit(test_x)
    train_y, test_y, classes = _compact_labels(train_y, test_y)
    kmax = min(max(ks), bank.shape[0])
    predicted: dict[int, list[torch.Tensor]] = {k: [] for k in ks}
    for start in range(0, queries.shape[0], chunk):
        sims = queries[start:start + chunk] @ bank.T
        top_sims, top_idx = sims.topk(kmax, dim=1)
        weights = (top_sims / temperature).exp()
        votes_for = train_y[top_idx]
        for k in ks:
            kk = min(k, kmax)
            scores = torch.zeros(sims.shape[0], classes, device=sims.device)
            scores.scatter_add_(1, votes_for[:, :kk], weights[:, :kk])
            predicted[k].append(scores.argmax(1))
    return {k: Predictions(test_y, torch.cat(parts)) for k, parts in predicted.items()}


def retrieval_map(query_x: torch.Tensor, query_y: torch.Tensor, db_x: torch.Tensor,
                  db_y: torch.Tensor, chunk: int = 256) -> float:
    """Mean average precision (%) of ranking the database by cosine similarity to each query.

    Relevant = same label. AP of a query = mean over its relevant items of the precision at
    their rank; queries with no relevant item in the database are left out.
    """
    query_x, query_y = _known(query_x, query_y, "query")
    db_x, db_y = _known(db_x, db_y, "database")
    queries, db = _unit(query_x), _unit(db_x)
    ranks = torch.arange(1, db.shape[0] + 1, device=db.device, dtype=torch.float64)
    ap_sum, counted = 0.0, 0
    for start in range(0, queries.shape[0], chunk):
        order = (queries[start:start + chunk] @ db.T).argsort(dim=1, descending=True)
        relevant = (db_y[order] == query_y[start:start + chunk, None]).double()
        hits = relevant.sum(1)
        precision = relevant.cumsum(1) / ranks
        ap = (precision * relevant).sum(1) / hits.clamp_min(1)
        ap_sum += float(ap[hits > 0].sum())
        counted += int((hits > 0).sum())
    if counted == 0:
        raise ValueError("no query has a relevant item (same label) in the database")
    return 100.0 * ap_sum / counted
