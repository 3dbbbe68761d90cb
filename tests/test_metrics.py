"""deepcluster.metrics against scikit-learn (NMI, ARI) and brute-force references."""

import itertools

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from deepcluster import metrics


def _random_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    pairs = []
    for n, ka, kb in [(1, 1, 1), (2, 2, 2), (50, 3, 7), (500, 10, 10), (1000, 10, 100),
                      (300, 300, 5), (2000, 2, 2)]:
        pairs.append((rng.integers(0, ka, n), rng.integers(0, kb, n)))
    # Correlated: b is a noisy copy of a.
    a = rng.integers(0, 10, 3000)
    b = np.where(rng.random(3000) < 0.7, a, rng.integers(0, 10, 3000))
    pairs.append((a, b))
    # Permuted labels with an offset and gaps: values need not start at 0 nor be contiguous.
    perm = rng.permutation(10) * 7 + 100
    pairs.append((a, perm[a]))
    pairs.append((perm[b], a))
    n = 40
    one, distinct = np.zeros(n, dtype=np.int64), np.arange(n)
    halves = np.repeat([3, 9], n // 2)
    # Degenerate labelings: a single cluster, all singletons, and their mixtures.
    pairs += [(one, one), (distinct, distinct), (one, distinct), (distinct, one),
              (one, halves), (halves, one), (distinct, halves), (halves, rng.permutation(distinct))]
    return pairs


PAIRS = _random_pairs()


@pytest.mark.parametrize("average", metrics.NMI_AVERAGES)
@pytest.mark.parametrize("a, b", PAIRS)
def test_nmi_matches_sklearn(a: np.ndarray, b: np.ndarray, average: str) -> None:
    expected = normalized_mutual_info_score(a, b, average_method=average)
    assert metrics.nmi(a, b, average) == pytest.approx(expected, abs=1e-6)
    assert metrics.nmi(torch.from_numpy(b), torch.from_numpy(a), average) == pytest.approx(
        expected, abs=1e-6)


def test_nmi_default_is_the_papers_geometric_mean() -> None:
    # Unequal entropies make the two normalisations differ: I / sqrt(Ha Hb) > I / ((Ha + Hb)/2).
    a, b = PAIRS[4]
    h_a = -sum(p * np.log(p) for p in np.bincount(a) / len(a) if p > 0)
    h_b = -sum(p * np.log(p) for p in np.bincount(b) / len(b) if p > 0)
    mi = normalized_mutual_info_score(a, b, average_method="arithmetic") * (h_a + h_b) / 2
    assert metrics.nmi(a, b) == pytest.approx(mi / np.sqrt(h_a * h_b), rel=1e-9)
    assert metrics.nmi(a, b) > metrics.nmi(a, b, "arithmetic")
    with pytest.raises(ValueError, match="average"):
        metrics.nmi(a, b, "max")


@pytest.mark.parametrize("a, b", PAIRS)
def test_ari_matches_sklearn(a: np.ndarray, b: np.ndarray) -> None:
    expected = adjusted_rand_score(a, b)
    assert metrics.adjusted_rand_index(a, b) == pytest.approx(expected, abs=1e-6)


def _brute_accuracy(true: np.ndarray, pred: np.ndarray) -> float:
    """Best one-to-one mapping found by trying every injection of clusters into classes.

    Each cluster maps to a distinct class or to nothing (None, padded so that every cluster
    could be left unmapped); unmapped clusters' samples count as errors.
    """
    classes, clusters = list(np.unique(true)), list(np.unique(pred))
    options = classes + [None] * len(clusters)
    best = 0
    for image in set(itertools.permutations(options, len(clusters))):
        mapping = dict(zip(clusters, image, strict=True))
        best = max(best, sum(int(mapping[p] == t) for t, p in zip(true, pred, strict=True)))
    return best / len(true)


def test_accuracy_known_case() -> None:
    true = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    # Cluster 5 is mostly class 1, 7 mostly class 0, 9 mostly class 2, one mistake each in 5, 9.
    pred = np.array([7, 7, 7, 5, 5, 9, 9, 9, 9, 5])
    # Mapping 7->0, 5->1, 9->2 gets 3 + 2 + 3 = 8 of 10.
    assert metrics.clustering_accuracy(true, pred) == pytest.approx(0.8)
    # Majority voting would map two clusters to one class; one-to-one forbids it.
    true = np.array([0, 0, 0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 2, 2])
    assert metrics.clustering_accuracy(true, pred) == pytest.approx(4 / 6)
    assert metrics.purity(true, pred) == pytest.approx(1.0)


@pytest.mark.parametrize("seed", range(6))
def test_accuracy_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_classes, n_clusters = rng.integers(1, 5, 2)
    true = rng.integers(0, n_classes, 30) * 3 + 1
    pred = rng.integers(0, n_clusters, 30)  # values may collide with class values
    assert metrics.clustering_accuracy(true, pred) == pytest.approx(_brute_accuracy(true, pred))


@pytest.mark.parametrize("a, b", PAIRS)
def test_purity_matches_reference(a: np.ndarray, b: np.ndarray) -> None:
    expected = sum(np.bincount(a[b == c]).max() for c in np.unique(b)) / len(a)
    assert metrics.purity(a, b) == pytest.approx(expected, abs=1e-12)


def test_permutation_invariance_and_perfect_scores() -> None:
    rng = np.random.default_rng(3)
    true = rng.integers(0, 8, 400)
    pred = rng.permutation(8)[true] + 50
    assert metrics.nmi(true, pred) == pytest.approx(1.0)
    assert metrics.adjusted_rand_index(true, pred) == pytest.approx(1.0)
    assert metrics.clustering_accuracy(true, pred) == pytest.approx(1.0)
    assert metrics.purity(true, pred) == pytest.approx(1.0)


def test_unknown_labels_are_left_out() -> None:
    rng = np.random.default_rng(4)
    true = rng.integers(0, 5, 600)
    pred = np.where(rng.random(600) < 0.6, true, rng.integers(0, 5, 600))
    unknown = rng.random(600) < 0.3
    masked = np.where(unknown, -1, true)
    keep = ~unknown
    assert metrics.nmi(masked, pred) == pytest.approx(
        normalized_mutual_info_score(true[keep], pred[keep], average_method="geometric"), abs=1e-6)
    assert metrics.adjusted_rand_index(masked, pred) == pytest.approx(
        adjusted_rand_score(true[keep], pred[keep]), abs=1e-6)
    assert metrics.clustering_accuracy(masked, pred) == pytest.approx(
        metrics.clustering_accuracy(true[keep], pred[keep]))


def test_contingency_matrix() -> None:
    a = np.array([5, 5, 2, 2, 2, 9])
    b = np.array([1, 0, 0, 0, 1, 1])
    expected = np.array([[2, 1], [1, 1], [0, 1]])  # rows 2, 5, 9; columns 0, 1
    np.testing.assert_array_equal(metrics.contingency_matrix(a, b).numpy(), expected)


def _noisy_copy(rng: np.random.Generator, truth: np.ndarray, keep: float) -> np.ndarray:
    return np.where(rng.random(truth.size) < keep, truth, rng.integers(0, 12, truth.size))


def test_paired_bootstrap_se_of_nmi_matches_an_index_bootstrap() -> None:
    # Reference: resample the samples themselves and score both sides with scikit-learn.
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 10, 1000)
    a, b = _noisy_copy(rng, truth, 0.6), _noisy_copy(rng, truth, 0.5)
    truth[rng.random(1000) < 0.1] = -1  # unknown labels are left out on both sides
    known = truth >= 0
    t, ka, kb = truth[known], a[known], b[known]
    differences = []
    for _ in range(1500):
        i = rng.integers(0, t.size, t.size)
        differences.append(normalized_mutual_info_score(t[i], ka[i], average_method="geometric")
                           - normalized_mutual_info_score(t[i], kb[i], average_method="geometric"))
    expected = np.std(differences, ddof=1)
    got = metrics.paired_bootstrap_se(truth, a, b, "nmi", resamples=1500, seed=1)
    assert got == pytest.approx(expected, rel=0.12)  # both Monte Carlo: about 3 % each


def test_paired_bootstrap_se_of_accuracy_matches_the_paired_formula() -> None:
    rng = np.random.default_rng(4)
    truth = rng.integers(0, 5, 2000)
    a, b = _noisy_copy(rng, truth, 0.8), _noisy_copy(rng, truth, 0.7)
    truth[:50] = -2  # a class the classifier never saw: an error on both sides
    d = 100.0 * ((a == truth).astype(float) - (b == truth))
    expected = d.std() / np.sqrt(d.size)
    got = metrics.paired_bootstrap_se(torch.from_numpy(truth), a, b, "accuracy", resamples=4000)
    assert got == pytest.approx(expected, rel=0.08)


def test_paired_bootstrap_se_is_zero_when_the_sides_agree() -> None:
    rng = np.random.default_rng(5)
    truth = rng.integers(0, 10, 500)
    a = _noisy_copy(rng, truth, 0.5)
    assert metrics.paired_bootstrap_se(truth, a, a, "accuracy") == 0.0
    # Renamed clusters are the same partition: every resample scores both sides alike.
    renamed = (a * 7 + 3) % 97
    assert metrics.paired_bootstrap_se(truth, a, renamed, "nmi") == pytest.approx(0.0, abs=1e-12)


def test_paired_bootstrap_se_bad_input() -> None:
    with pytest.raises(ValueError, match="statistic"):
        metrics.paired_bootstrap_se([0, 1], [0, 1], [1, 0], "ari")
    with pytest.raises(ValueError, match="resamples"):
        metrics.paired_bootstrap_se([0, 1], [0, 1], [1, 0], "nmi", resamples=1)
    with pytest.raises(ValueError, match="length"):
        metrics.paired_bootstrap_se([0, 1, 2], [0, 1], [1, 0, 1], "accuracy")
    with pytest.raises(ValueError, match="no sample"):
        metrics.paired_bootstrap_se([-1, -1], [0, 1], [1, 0], "nmi")


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="length"):
        metrics.nmi([0, 1, 2], [0, 1])
    with pytest.raises(ValueError, match="integer"):
        metrics.nmi(np.array([0.0, 1.0]), np.array([0, 1]))
    with pytest.raises(ValueError, match="1-D"):
        metrics.purity(np.zeros((2, 2), dtype=int), np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="known"):
        metrics.clustering_accuracy([-1, -1], [0, 1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_metrics_on_cuda() -> None:
    a, b = PAIRS[8]
    ta, tb = torch.from_numpy(a).cuda(), torch.from_numpy(b).cuda()
    assert metrics.nmi(ta, tb) == pytest.approx(
        normalized_mutual_info_score(a, b, average_method="geometric"), abs=1e-6)
    assert metrics.adjusted_rand_index(ta, b) == pytest.approx(adjusted_rand_score(a, b),
                                                               abs=1e-6)
    assert metrics.clustering_accuracy(ta, tb) == pytest.approx(
        metrics.clustering_accuracy(a, b))
