"""deepcluster.eval: the tasks against independent references, extract, pictures, end to end."""

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    adjusted_rand_score,
    average_precision_score,
    normalized_mutual_info_score,
)

from deepcluster import eval_tasks


def _separable(n: int, d: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points labelled by argmax(x @ W), keeping only those with a margin: linearly separable."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(d, classes))
    x = rng.normal(size=(4 * n, d))
    scores = x @ w
    top2 = np.sort(scores, axis=1)[:, -2:]
    keep = (top2[:, 1] - top2[:, 0]) > 1.0
    x, y = x[keep][:n], scores[keep][:n].argmax(1)
    # A large offset and uneven scales, as raw conv activations have.
    x = x * rng.uniform(0.1, 50.0, size=d) + 100.0
    return torch.from_numpy(x).float(), torch.from_numpy(y).long()


def test_linear_probe_separable_reaches_100() -> None:
    x, y = _separable(1200, 20, 4, seed=0)
    acc = eval_tasks.linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], epochs=40, seed=0)
    assert acc == 100.0


def test_linear_probe_chance_on_noise_and_unknown_labels() -> None:
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(600, 10))).float()
    y = torch.from_numpy(rng.integers(0, 4, 600)).long()
    y[::3] = -1  # unknown labels are left out, they must not become a class
    acc = eval_tasks.linear_probe(x[:400], y[:400], x[400:], y[400:], epochs=5)
    assert acc < 45.0  # 4 balanced classes of pure noise: about 25 %


def _knn_reference(train_x, train_y, test_x, test_y, k, temperature=0.07) -> float:
    """Loop-per-query weighted kNN in float64 NumPy."""
    tr = train_x / np.linalg.norm(train_x, axis=1, keepdims=True)
    te = test_x / np.linalg.norm(test_x, axis=1, keepdims=True)
    classes = np.unique(train_y)
    correct = 0
    for q, label in zip(te, test_y, strict=True):
        sims = tr @ q
        nearest = np.argsort(-sims)[:k]
        votes = {c: np.exp(sims[nearest][train_y[nearest] == c] / temperature).sum()
                 for c in classes}
        correct += int(max(votes, key=votes.get) == label)
    return 100.0 * correct / len(test_y)


def test_knn_matches_brute_force() -> None:
    rng = np.random.default_rng(2)
    centers = rng.normal(size=(5, 16))
    train_y = rng.integers(0, 5, 500)
    test_y = rng.integers(0, 5, 120)
    train_x = centers[train_y] + 1.2 * rng.normal(size=(500, 16))
    test_x = centers[test_y] + 1.2 * rng.normal(size=(120, 16))
    # Sparse label values: 0..4 -> 3, 10, 17, ...
    train_y, test_y = train_y * 7 + 3, test_y * 7 + 3
    got = eval_tasks.knn_accuracy(torch.from_numpy(train_x), torch.from_numpy(train_y),
                                  torch.from_numpy(test_x), torch.from_numpy(test_y),
                                  ks=(1, 20, 200, 1000), chunk=50)
    for k in (1, 20, 200):
        assert got[k] == pytest.approx(_knn_reference(train_x, train_y, test_x, test_y, k))
    assert got[1000] == pytest.approx(_knn_reference(train_x, train_y, test_x, test_y, 500))
    assert 30.0 < got[20] < 100.0  # informative but not trivial: the test can tell k apart


def test_retrieval_map_matches_sklearn() -> None:
    rng = np.random.default_rng(3)
    centers = rng.normal(size=(4, 8))
    db_y = rng.integers(0, 4, 300)
    q_y = rng.integers(0, 5, 40)  # label 4 has no relevant item: left out
    db_x = centers[db_y] + rng.normal(size=(300, 8))
    q_x = np.concatenate([centers, rng.normal(size=(1, 8))])[q_y] + rng.normal(size=(40, 8))
    db_y[:10] = -1  # unknown database labels are not part of the database
    got = eval_tasks.retrieval_map(torch.from_numpy(q_x), torch.from_numpy(q_y),
                                   torch.from_numpy(db_x), torch.from_numpy(db_y), chunk=7)
    known = db_y >= 0
    dbn = db_x[known] / np.linalg.norm(db_x[known], axis=1, keepdims=True)
    aps = []
    for q, label in zip(q_x, q_y, strict=True):
        relevant = db_y[known] == label
        if relevant.any():
            aps.append(average_precision_score(relevant, dbn @ (q / np.linalg.norm(q))))
    assert got == pytest.approx(100.0 * np.mean(aps), abs=1e-6)


def test_cluster_scores_agree_with_sklearn() -> None:
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 6, 900)
    x = rng.normal(size=(6, 32))[labels] * 3.0 + rng.normal(size=(900, 32))
    labels[:50] = -1
    result = eval_tasks.cluster(torch.from_numpy(x).float(), torch.from_numpy(labels), 6,
                                pca_dim=16, seed=1)
    assert result.whitened.shape == (900, 16)
    assert result.assignments.shape == (900,) and result.centroids.shape == (6, 16)
    known = labels >= 0
    pred = result.assignments.numpy()[known]
    assert result.nmi == pytest.approx(normalized_mutual_info_score(labels[known], pred),
                                       abs=1e-6)
    assert result.ari == pytest.approx(adjusted_rand_score(labels[known], pred), abs=1e-6)
    assert result.nmi > 0.9 and result.acc > 0.9 and result.purity >= result.acc
