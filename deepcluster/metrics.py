"""Clustering metrics computed with torch on the labels' device.

DeepCluster compares labelings of the whole training set every epoch (1.28M images on ImageNet);
copying them to the host and building a dense K x K table there would cost more than the
metric. Here the contingency table is built sparsely on the device (only the non-empty cells,
via ``torch.unique`` on a combined index), so a 10,000 x 1,000 comparison never allocates 1e7
cells, and only a handful of scalars come back to the host.

Conventions shared by every function:
- inputs are 1-D integer torch tensors (any device), NumPy arrays or lists, of equal length;
- label values need not start at 0 nor be contiguous;
- a negative label means "unknown": samples where either labeling is negative are left out
  (datasets with partial labels mark the unlabelled images with -1);
- values agree with scikit-learn's (``normalized_mutual_info_score`` with the same
  ``average_method``, ``adjusted_rand_score``), including its conventions for degenerate
  labelings.
"""

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

__all__ = ["adjusted_rand_index", "clustering_accuracy", "contingency_matrix", "nmi",
           "paired_bootstrap_se", "purity"]


@dataclass
class _Contingency:
    """Sparse contingency table of two labelings after masking unknowns.

    cells: counts of the non-empty cells (C,), rows / cols: their row and column indices (C,),
    row_sums (R,), col_sums (Q,): class sizes of each labeling, n: number of samples.
    """

    cells: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    row_sums: torch.Tensor
    col_sums: torch.Tensor
    n: int


def _as_labels(x: Any, name: str, device: torch.device | None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        arr = np.asarray(x)
        if arr.dtype == object:
            raise ValueError(f"{name} must be an integer array, got an object array")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{name} must hold integer labels, got dtype {t.dtype}")
    if t.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.int64) if device is not None else t.long()


def _pair(a: Any, b: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Both labelings as int64 on one device (a tensor's device wins over a host array)."""
    device = None
    for x in (a, b):
        if isinstance(x, torch.Tensor) and x.device.type != "cpu":
            device = x.device
            break
    ta = _as_labels(a, "labels_a", device)
    tb = _as_labels(b, "labels_b", device if device is not None else ta.device)
    if ta.shape != tb.shape:
        raise ValueError(f"labelings differ in length: {ta.shape[0]} and {tb.shape[0]}")
    known = (ta >= 0) & (tb >= 0)
    if not bool(known.all()):
        ta, tb = ta[known], tb[known]
    if ta.numel() == 0:
        raise ValueError("no sample has a known (non-negative) label in both labelings")
    return ta, tb


def _contingency(a: Any, b: Any) -> _Contingency:
    ta, tb = _pair(a, b)
    _, ia = torch.unique(ta, return_inverse=True)
    _, ib = torch.unique(tb, return_inverse=True)
    n_b = int(ib.max()) + 1
    # One combined key per sample; unique keys are the non-empty cells.
    keys, counts = torch.unique(ia * n_b + ib, return_counts=True)
    return _Contingency(cells=counts, rows=keys // n_b, cols=keys % n_b,
                        row_sums=torch.bincount(ia), col_sums=torch.bincount(ib),
                        n=ta.numel())


def contingency_matrix(labels_a: Any, labels_b: Any) -> torch.Tensor:
    """Dense (distinct values of a) x (distinct values of b) count table, on the labels' device.

    Rows and columns follow the sorted distinct label values; unknown (negative) labels are
    left out. Dense, so meant for tables of moderate size (e.g. classes x clusters).
    """
    c = _contingency(labels_a, labels_b)
    table = torch.zeros(c.row_sums.numel(), c.col_sums.numel(), dtype=torch.int64,
                        device=c.cells.device)
    table[c.rows, c.cols] = c.cells
    return table


NMI_AVERAGES = ("geometric", "arithmetic")


def _nmi_of_cells(cells: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, n: int,
                  average: str) -> torch.Tensor:
    """NMI of B contingency tables at once: ``cells`` (B, C) float64 counts of C cells whose row
    and column indices are ``rows`` and ``cols`` (C,); every table holds ``n`` samples. (B,)."""
    n_rows, n_cols = int(rows.max()) + 1, int(cols.max()) + 1
    row_sums = cells.new_zeros(cells.shape[0], n_rows).index_add_(1, rows, cells)
    col_sums = cells.new_zeros(cells.shape[0], n_cols).index_add_(1, cols, cells)
    outer = row_sums[:, rows] * col_sums[:, cols]
    full = cells > 0
    terms = cells / n * (cells.log() + math.log(n) - outer.log())
    mi = torch.where(full, terms, torch.zeros_like(terms)).sum(1).clamp_min(0.0)

    def entropy(sums: torch.Tensor) -> torch.Tensor:
        p = sums / n
        return -torch.where(p > 0, p * p.log(), torch.zeros_like(p)).sum(1)

    h_a, h_b = entropy(row_sums), entropy(col_sums)
    mean = (h_a * h_b).sqrt() if average == "geometric" else (h_a + h_b) / 2.0
    score = torch.where(mi > 0, mi / mean.clamp_min(1e-300), torch.zeros_like(mi))
    # Both labelings one cluster each: identical partitions (scikit-learn's 1.0).
    single = ((row_sums > 0).sum(1) == 1) & ((col_sums > 0).sum(1) == 1)
    return torch.where(single, torch.ones_like(score), score)


def nmi(labels_a: Any, labels_b: Any, average: str = "geometric") -> float:
    """Normalised mutual information MI / mean(H(a), H(b)) (natural log; symmetric).

    ``average`` "geometric" is the paper's NMI(A; B) = I(A; B) / sqrt(H(A) H(B)); "arithmetic"
    divides by (H(A) + H(B)) / 2, scikit-learn's default. Like scikit-learn: 1.0 when both
    labelings put everything in one cluster, 0.0 when the mutual information is zero otherwise
    (e.g. one side a single cluster, the other not).
    """
    if average not in NMI_AVERAGES:
        raise ValueError(f"average must be one of {NMI_AVERAGES}, got {average!r}")
    c = _contingency(labels_a, labels_b)
    return float(_nmi_of_cells(c.cells[None].double(), c.rows, c.cols, c.n, average)[0])


BOOTSTRAP_STATISTICS = ("nmi", "accuracy")


def paired_bootstrap_se(truth: Any, predicted_a: Any, predicted_b: Any, statistic: str, *,
                        resamples: int = 200, seed: int = 0) -> float:
    """Standard error of ``statistic(truth, predicted_a) - statistic(truth, predicted_b)`` due
    to which samples were scored: the spread (ddof 1) of that difference over ``resamples``
    bootstrap resamples of the samples, each resample shared by both sides (so what the two
    predictions have in common cancels, as in a paired test).

    ``statistic``: "nmi" (the paper's, geometric; samples with a negative ``truth`` are left
    out) or "accuracy" (percent of samples whose prediction equals ``truth``; a negative truth
    counts as an error, e.g. a class the classifier could not have learned). It says nothing
    about the other sources of spread: training seeds, k-means starts, the probe's SGD.

    The samples enter only through their distinct (truth, a, b) triples, so a resample is one
    multinomial draw over those and the cost does not grow with the number of samples.
    """
    if statistic not in BOOTSTRAP_STATISTICS:
        raise ValueError(f"statistic must be one of {BOOTSTRAP_STATISTICS}, got {statistic!r}")
    if resamples < 2:
        raise ValueError(f"resamples must be at least 2, got {resamples}")
    t = _as_labels(truth, "truth", torch.device("cpu"))
    a = _as_labels(predicted_a, "predicted_a", torch.device("cpu"))
    b = _as_labels(predicted_b, "predicted_b", torch.device("cpu"))
    if not t.shape == a.shape == b.shape:
        raise ValueError(f"truth and predictions differ in length: {t.numel()}, {a.numel()} "
                         f"and {b.numel()}")
    if statistic == "nmi":
        known = (t >= 0) & (a >= 0) & (b >= 0)
        t, a, b = t[known], a[known], b[known]
    if t.numel() == 0:
        raise ValueError("no sample to resample")
    n = t.numel()
    triples, counts = torch.unique(torch.stack([t, a, b], 1), dim=0, return_counts=True)
    draws = np.random.default_rng(seed).multinomial(n, counts.double().numpy() / n,
                                                    size=resamples)
    weights = torch.from_numpy(draws).double()  # (resamples, distinct triples)
    sides = []
    for column in (1, 2):
        if statistic == "accuracy":
            correct = (triples[:, 0] == triples[:, column]).double()
            sides.append(100.0 * (weights @ correct) / n)
            continue
        pairs, cell = torch.unique(triples[:, [0, column]], dim=0, return_inverse=True)
        _, rows = torch.unique(pairs[:, 0], return_inverse=True)
        _, cols = torch.unique(pairs[:, 1], return_inverse=True)
        cells = weights.new_zeros(resamples, pairs.shape[0]).index_add_(1, cell, weights)
        sides.append(_nmi_of_cells(cells, rows, cols, n, "geometric"))
    return float((sides[0] - sides[1]).std())


def adjusted_rand_index(true: Any, pred: Any) -> float:
    """Adjusted Rand index (Hubert & Arabie), from pair counts as scikit-learn computes it.

    1.0 for identical partitions (including the degenerate one-cluster and all-singletons
    cases, where the chance-corrected ratio is 0/0), about 0.0 for independent ones.
    """
    c = _contingency(true, pred)
    n = float(c.n)
    sum_sq = float(c.cells.double().square().sum())
    # Pair confusion: ordered pairs together in both (tp), in pred only (fp), in true only (fn).
    fp = float((c.col_sums.double().square()).sum()) - sum_sq
    fn = float((c.row_sums.double().square()).sum()) - sum_sq
    tp = sum_sq - n
    tn = n * n - fp - fn - sum_sq
    if fp == 0.0 and fn == 0.0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def clustering_accuracy(true: Any, pred: Any) -> float:
    """Accuracy under the best one-to-one mapping of clusters to classes (Hungarian).

    With more clusters than classes the surplus clusters map to nothing and count as errors,
    the usual definition (so over-clustering is not rewarded as purity rewards it).
    """
    table = contingency_matrix(true, pred)
    n = int(table.sum())
    counts = table.cpu().numpy()
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum()) / n


def purity(true: Any, pred: Any) -> float:
    """Fraction of samples whose cluster's majority class is their class."""
    c = _contingency(true, pred)
    # Largest cell of each predicted cluster (column), summed.
    best = torch.zeros(c.col_sums.numel(), dtype=torch.int64, device=c.cells.device)
    best.scatter_reduce_(0, c.cols, c.cells, reduce="amax")
    return float(best.sum()) / c.n
