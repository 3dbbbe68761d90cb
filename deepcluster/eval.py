"""deepcluster-eval: measure what a DeepCluster run learned, and show it.

    deepcluster-eval --checkpoint RUN/checkpoint.pt [--data SPEC] [--task ...] \
        [--baseline random|none] [--out DIR]

Tasks (all on frozen features, computed with torch and dc_kernels on the chosen device):
- cluster: k-means on the train split, k = the number of classes, after PCA to the run's
  --pca-dim (plain projection, no whitening) and L2; the embedding also after the run's own
  clustering step (its eigenvalue power, "whitened" rows), with k = the classes and the run's k.
  NMI, adjusted Rand index, Hungarian accuracy, purity.
- linear: a linear classifier (conv activations average-pooled to at most --pool-dim dims, as
  in the paper's Table 1), trained on the train split, top-1 on the test split.
- knn: weighted kNN top-1 (cosine, k = 20 and 200) of the test split among the train split.
These three score the embedding (the clustered features) and every conv layer; "best conv" rows
repeat them at the conv layer whose linear probe scores highest in a 5-fold cross-validation on
the train split (chosen per model; the test split plays no part in the choice).
- retrieval: mAP of ranking the train split for each test image, relevant = same label.
- extract: the --layer features and labels of each split to .npz (``features`` N x D float32,
  ``labels`` N int64, -1 = unknown).
- pictures: NMI curves from the run's metrics.jsonl, the last clustering's size histogram,
  conv1 filters, the 9 most typical images of a few clusters (Fig. 4) and the 9 most
  activating images of a few last-conv-layer filters (Fig. 5).
By default (``--baseline random``) the same tasks also run on the same architecture at random
initialisation, and every number is tabulated beside it with the difference learned - random
(results.md, results.json): a run whose features collapsed shows it on the row where it loses.
Beside each NMI and top-1 difference, its standard error from which images were scored (a
paired bootstrap of the samples; not the spread from the training seed): a difference within
one or two of it could turn over on another draw of the images.
``--baseline none`` skips it. Written files are listed at the end of the output.

From Python: ``evaluate(checkpoint, ...)`` returns an ``EvalReport``.
"""

import argparse
import json
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from . import data as dc_data
from . import eval_tasks, metrics, plots, rundir
from .checkpoint import (
    MODEL_KEYS,
    CheckpointError,
    level_assignments,
    load_checkpoint,
    model_from_checkpoint,
)
from .config import BACKENDS, SEED_LIMIT, ConfigError, resolve_device
from .data import DataError, ImageSet, load_images
from .eval_features import (
    EMBED,
    TOP_CONV_MAX,
    conv_layers,
    display_images,
    extract_features,
)
from .models import DeepClusterNet, build_model
from .rundir import OutputError

TASKS = ("cluster", "linear", "knn", "retrieval", "extract", "pictures")
DEFAULT_TASKS = ("cluster", "linear", "knn", "retrieval", "pictures")
BASELINES = ("random", "none")
KNN_KS = (20, 200)
CV_FOLDS = 5  # folds of the labelled train samples that choose the best conv layer
BOOTSTRAP_RESAMPLES = 200  # of the samples, for each difference's standard error
CLUSTER_METRICS = {"nmi": "NMI", "ari": "ARI", "acc": "ACC", "purity": "purity"}
PICTURE_ROWS = 6  # clusters / filters shown in the top-image pictures
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")


class EvalError(ValueError):
    """An evaluation that cannot run as asked; the message says why."""


@dataclass
class Splits:
    """The images the features are learned on (train) and scored on (test)."""

    train: ImageSet
    test: ImageSet
    description: str


class Evidence(NamedTuple):
    """What a score was computed from, sample by sample: ``statistic`` ("nmi" or "accuracy",
    see ``metrics.paired_bootstrap_se``) of ``predicted`` against ``truth`` (CPU tensors)."""

    statistic: str
    truth: torch.Tensor
    predicted: torch.Tensor


@dataclass
class EvalReport:
    """``rows``: (task, metric) -> {model name: value or None}, in display order;
    ``evidence``: the same keys -> {model name: ``Evidence``} for the NMI and top-1 rows, from
    which the standard error of learned - random is drawn."""

    models: list[str]
    rows: dict[tuple[str, str], dict[str, float | None]] = field(default_factory=dict)
    evidence: dict[tuple[str, str], dict[str, Evidence]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)
    # difference_se's answers, each drawn once (markdown and to_json both ask).
    _standard_errors: dict[tuple[str, str], float | None] = field(
        default_factory=dict, init=False, repr=False)

    def add(self, task: str, metric: str, model: str, value: float | None,
            evidence: Evidence | None = None) -> None:
        self.rows.setdefault((task, metric), {})[model] = value
        if evidence is not None:
            self.evidence.setdefault((task, metric), {})[model] = Evidence(
                evidence.statistic, evidence.truth.cpu(), evidence.predicted.cpu())

    def difference_se(self, task: str, metric: str) -> float | None:
        """Standard error of the row's learned - random from which samples were scored (a
        paired bootstrap over them); None without both models' evidence on the same samples."""
        key = (task, metric)
        if key not in self._standard_errors:
            sides = self.evidence.get(key, {})
            learned, baseline = sides.get("learned"), sides.get("random")
            self._standard_errors[key] = None
            if learned is not None and baseline is not None and \
                    torch.equal(learned.truth, baseline.truth):
                self._standard_errors[key] = metrics.paired_bootstrap_se(
                    learned.truth, learned.predicted, baseline.predicted, learned.statistic,
                    resamples=BOOTSTRAP_RESAMPLES)
        return self._standard_errors[key]

    def _with_difference(self, key: tuple[str, str],
                         values: dict[str, float | None]) -> dict[str, float | None]:
        """The row's values, plus "difference" = learned - random and its standard error
        "difference_se" when there is a baseline."""
        if "random" not in self.models:
            return values
        learned, baseline = values.get("learned"), values.get("random")
        return {**values, "difference": (None if learned is None or baseline is None
                                         else learned - baseline),
                "difference_se": self.difference_se(*key)}

    def markdown(self) -> str:
        random_too = "random" in self.models
        columns = self.models + (["learned - random", "s.e."] if random_too else [])
        lines = ["| task | metric | " + " | ".join(columns) + " |",
                 "|---|---|" + "---:|" * len(columns)]
        for (task, metric), values in self.rows.items():
            row = self._with_difference((task, metric), values)
            cells = ["-" if row.get(m) is None else f"{row[m]:.3f}" for m in self.models]
            if random_too:
                diff, error = row["difference"], row["difference_se"]
                cells.append("-" if diff is None else f"{diff:+.3f}")
                cells.append("-" if error is None else f"{error:.3f}")
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
        notes = [""] + [f"- {note}" for note in self.notes] if self.notes else []
        return "\n".join(lines + notes) + "\n"

    def to_json(self) -> list[dict[str, Any]]:
        return [{"task": task, "metric": metric, **self._with_difference((task, metric), values)}
                for (task, metric), values in self.rows.items()]


# ---- data -------------------------------------------------------------------------------------

def _fashion_mnist_test() -> ImageSet:
    """Fashion-MNIST's official 10k test split (deepcluster.data loads the train split only)."""
    root = dc_data.FASHION_MNIST_DIR
    files = [root / "t10k-images-idx3-ubyte.gz", root / "t10k-labels-idx1-ubyte.gz"]
    if not all(f.is_file() for f in files):
        raise DataError(f"Fashion-MNIST's test files are not in {root}; install the Debian "
                        "package dataset-fashion-mnist")
    return dc_data._from_array("fashion-mnist-test", dc_data._read_idx(files[0]),
                               dc_data._read_idx(files[1]))


def _split_dirs(path: Path) -> tuple[Path, Path] | None:
    test = next((path / n for n in ("test", "val") if (path / n).is_dir()), None)
    return (path / "train", test) if test is not None and (path / "train").is_dir() else None


def _subsample(images: ImageSet, limit: int, seed: int) -> ImageSet:
    if not 0 < limit < len(images):
        return images
    rng = np.random.default_rng(seed)
    return images.subset(np.sort(rng.choice(len(images), limit, replace=False)))


def load_splits(spec: str, test_spec: str | None = None, *, seed: int = 0,
                test_fraction: float = 0.2, max_train: int = 0, max_test: int = 0) -> Splits:
    """Train and test images for ``spec`` (a ``--data`` value).

    ``test_spec`` names the test split explicitly; otherwise Fashion-MNIST uses its official
    test set, a directory with ``train/`` and ``test/`` (or ``val/``) uses those, and any
    other set is split at random (``test_fraction`` held out, fixed by ``seed``).
    ``max_train`` / ``max_test`` > 0 keep a random subset of that size.
    """
    if test_spec is not None:
        train, test = load_images(spec), load_images(test_spec)
        how = f"train {spec}, test {test_spec}"
    elif spec == "fashion-mnist":
        train, test = load_images(spec), _fashion_mnist_test()
        how = "Fashion-MNIST official train / test"
    elif (dirs := _split_dirs(Path(spec).expanduser())) is not None:
        train, test = load_images(str(dirs[0])), load_images(str(dirs[1]))
        how = f"{dirs[0]} / {dirs[1]}"
    else:
        images = load_images(spec)
        if len(images) < 2:
            raise EvalError(f"{spec}: {len(images)} image(s) cannot be split into train / test")
        order = np.random.default_rng(seed).permutation(len(images))
        cut = min(len(images) - 1, max(1, round(len(images) * test_fraction)))
        train, test = images.subset(np.sort(order[cut:])), images.subset(np.sort(order[:cut]))
        how = f"{spec} split at random: {100 * test_fraction:.0f} % held out (seed {seed})"
    train, test = _subsample(train, max_train, seed + 1), _subsample(test, max_test, seed + 2)
    return Splits(train, test, f"{how}; {len(train)} train / {len(test)} test images")


def _labels(images: ImageSet, device: torch.device) -> torch.Tensor:
    if images.labels is None:
        return torch.full((len(images),), -1, dtype=torch.int64, device=device)
    return torch.as_tensor(images.labels, dtype=torch.int64, device=device)


def _class_name(images: ImageSet, label: int) -> str:
    names = images.class_names or (FASHION_MNIST_CLASSES
                                   if images.name.startswith("fashion-mnist") else ())
    return names[label] if 0 <= label < len(names) else str(label)


# ---- models -----------------------------------------------------------------------------------

def random_model(spec: dict[str, Any], seed: int, device: torch.device) -> DeepClusterNet:
    """The run's architecture at random initialisation (the paper's random baseline).

    Called with the run's seed it draws the weights as deepcluster-train does (global torch
    seed, then build_model), i.e. the network the run started from.
    """
    torch.manual_seed(seed)
    return build_model(**spec).to(device).eval()


# ---- tasks ------------------------------------------------------------------------------------

def _layers_needed(tasks: Sequence[str], model: DeepClusterNet, layer: str,
                   pictures: bool) -> tuple[list[str], list[str]]:
    """(train layers, test layers) to extract for ``tasks``: the scored tasks run on the
    embedding and on every conv layer, retrieval on the embedding."""
    scored = [EMBED, *(name for name, _ in conv_layers(model))]
    train, test = set(), set()
    if "cluster" in tasks:
        train.update(scored)
    if {"knn", "linear"} & set(tasks):
        train.update(scored)
        test.update(scored)
    if "retrieval" in tasks or pictures:
        train.add(EMBED)
    if "retrieval" in tasks:
        test.add(EMBED)
    if "extract" in tasks:
        train.add(layer)
        test.add(layer)
    if pictures:
        train.add(TOP_CONV_MAX)
    return sorted(train), sorted(test)


def _cluster_ks(labels: torch.Tensor, run_k: int | None, n: int) -> list[int]:
    """k = the number of classes, and the run's k when given, each in [2, n]."""
    classes = int(torch.unique(labels[labels >= 0]).numel())
    return sorted({k for k in (classes, run_k or 0) if 2 <= k <= n})


def _cv_folds(labels: torch.Tensor, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """(fit, held out) indices of the ``CV_FOLDS`` folds of the labelled train samples, shuffled
    by ``seed``: each sample is held out once. None with fewer labelled samples than folds."""
    known = torch.nonzero(labels >= 0).flatten().cpu()
    if known.numel() < CV_FOLDS:
        return None
    order = known[torch.randperm(known.numel(), generator=torch.Generator().manual_seed(seed))]
    folds = order.tensor_split(CV_FOLDS)
    return [(torch.cat(folds[:i] + folds[i + 1:]).to(labels.device), held.to(labels.device))
            for i, held in enumerate(folds)]


class _BestConv:
    """The conv layers' scores of one model, and the choice of its best conv layer.

    The best conv layer is the one whose linear probe scores highest in a cross-validation on
    the train split (``select``; on a tie, the shallower layer), never on the test split whose
    scores are then reported at it: a layer picked by its test score would carry that split's
    noise into the best-conv rows. Every train sample is held out once, so the choice does not
    rest on a few hundred of them. The note that names it also names the layers whose
    cross-validated probe is within one standard error of it (the spread of their paired
    per-fold differences): between those, the choice is not settled by the data.
    """

    def __init__(self) -> None:
        self.values: dict[tuple[str, str], dict[str, tuple[float, Evidence | None]]] = {}
        self.cross_validated: dict[str, float] = {}
        self.per_fold: dict[str, list[float]] = {}

    def add(self, layer: str, task: str, metric: str, value: float | None,
            evidence: Evidence | None = None) -> None:
        if layer != EMBED and value is not None:
            self.values.setdefault((task, metric), {})[layer] = (value, evidence)

    def select(self, layer: str, fold_accuracies: Sequence[float],
               fold_sizes: Sequence[int]) -> float:
        """Record ``layer``'s probe accuracy on each held-out fold of the train split; returns
        the cross-validated accuracy (the folds' mean weighted by their sizes)."""
        self.per_fold[layer] = list(fold_accuracies)
        weighted = sum(a * n for a, n in zip(fold_accuracies, fold_sizes, strict=True))
        self.cross_validated[layer] = weighted / sum(fold_sizes)
        return self.cross_validated[layer]

    def tied_with(self, best: str) -> list[tuple[str, float, float]]:
        """(layer, its cross-validated probe minus ``best``'s, one standard error of that
        difference) of each other layer within one standard error of ``best``."""
        tied = []
        for layer, folds in self.per_fold.items():
            if layer == best or len(folds) < 2:
                continue
            gaps = [b - a for a, b in zip(folds, self.per_fold[best], strict=True)]
            error = statistics.stdev(gaps) / math.sqrt(len(gaps))
            difference = self.cross_validated[layer] - self.cross_validated[best]
            if -difference <= error:
                tied.append((layer, difference, error))
        return tied

    def report(self, report: EvalReport, name: str) -> None:
        if not self.cross_validated:
            return
        layer = max(self.cross_validated, key=self.cross_validated.__getitem__)
        tied = self.tied_with(layer)
        report.notes.append(
            f"{name}: the best conv layer (highest linear probe in {CV_FOLDS}-fold "
            f"cross-validation on the train split) is {layer}; within one standard error of it "
            f"(paired over the folds): " + (", ".join(
                f"{other} ({difference:+.2f} ± {error:.2f} points)"
                for other, difference, error in tied) or "no other layer"))
        for (task, metric), values in self.values.items():
            report.add(task, f"best conv {metric}", name, *values.get(layer, (None, None)))


def _run_tasks(name: str, model: DeepClusterNet, spec: dict[str, Any], splits: Splits,
               tasks: Sequence[str], report: EvalReport, opts: dict[str, Any], out: Path,
               pictures: bool, run_k: int) -> tuple[dict[str, torch.Tensor],
                                                    eval_tasks.ClusterResult | None]:
    """Every task of ``tasks`` for one model; returns its train features and the run-k
    clustering of the embedding for the pictures.

    Clustering (k = the number of classes, plain PCA; the embedding also as the run clusters,
    at the classes and at the run's k), kNN and the linear probe score the embedding and each
    conv layer, then again at the best conv layer (the highest linear probe in a cross-validation
    on the train split).
    """
    device = opts["device"]
    train_layers, test_layers = _layers_needed(tasks, model, opts["layer"], pictures)
    common = {"image_size": spec["image_size"], "in_channels": spec["in_channels"],
              "device": device, "pool_dim": opts["pool_dim"],
              "batch_size": opts["batch_size"], "workers": opts["workers"]}
    print(f"[{name}] features of {len(splits.train)} train images: {', '.join(train_layers)}",
          flush=True)
    train_f = extract_features(model, splits.train, layers=train_layers, **common)
    test_f: dict[str, torch.Tensor] = {}
    if test_layers:
        print(f"[{name}] features of {len(splits.test)} test images: {', '.join(test_layers)}",
              flush=True)
        test_f = extract_features(model, splits.test, layers=test_layers, **common)
    train_y, test_y = _labels(splits.train, device), _labels(splits.test, device)
    has_train_labels = bool((train_y >= 0).any())
    has_test_labels = has_train_labels and bool((test_y >= 0).any())
    run_clustering = None
    skipped = [t for t in ("linear", "knn", "retrieval") if t in tasks and not has_test_labels]
    if skipped:
        print(f"[{name}] {', '.join(skipped)} skipped: they need labels on both splits",
              flush=True)
    scored = [EMBED, *(layer for layer, _ in conv_layers(model))]
    best = _BestConv()

    n = len(splits.train)
    class_ks = _cluster_ks(train_y, None, n)
    run_power = opts["pca_power"]
    # (layer, k, eigenvalue power) of each clustering. Into the classes, every layer is
    # clustered after plain PCA (power 0): whitening gives all --pca-dim directions the same
    # weight, which serves the run's over-clustering but lets many weak directions outvote the
    # few that separate a handful of classes. The embedding is also clustered exactly as the
    # run did (its power: "whitened" rows), at k = classes and at the run's k.
    jobs: list[tuple[str, int, float]] = []
    if "cluster" in tasks:
        jobs += [(layer, k, 0.0) for layer in scored for k in class_ks]
        jobs += [(EMBED, k, run_power) for k in _cluster_ks(train_y, run_k, n)]
    if pictures and run_k <= n:
        jobs.append((EMBED, run_k, run_power))
    for layer, k, power in dict.fromkeys(jobs):  # in order, each once
        result = eval_tasks.cluster(train_f[layer], train_y, k, pca_dim=opts["pca_dim"],
                                    eigen_power=power, seed=opts["seed"],
                                    nredo=opts["kmeans_redo"],
                                    backend=opts["kmeans_backend"])
        if "cluster" in tasks:
            clustering = f"k={k}" + (" whitened" if power != 0 else "")
            for field_name, metric in CLUSTER_METRICS.items():
                value = getattr(result, field_name)
                evidence = Evidence("nmi", train_y, result.assignments) \
                    if field_name == "nmi" and value is not None else None
                report.add("cluster", f"{layer} {clustering} {metric}", name, value, evidence)
                best.add(layer, "cluster", f"{clustering} {metric}", value, evidence)
        if layer == EMBED and k == run_k and power == run_power:
            run_clustering = result
    if "linear" in tasks and has_test_labels:
        folds = _cv_folds(train_y, opts["seed"])
        if folds is None:
            print(f"[{name}] no best conv layer: fewer labelled train samples than the "
                  f"{CV_FOLDS} folds that choose it", flush=True)
        for layer in scored:
            probe = eval_tasks.linear_probe(train_f[layer], train_y, test_f[layer], test_y,
                                            epochs=opts["probe_epochs"], seed=opts["seed"])
            acc, evidence = probe.accuracy, Evidence("accuracy", probe.truth, probe.predicted)
            report.add("linear", f"{layer} ({train_f[layer].shape[1]} d) top-1 %", name, acc,
                       evidence)
            best.add(layer, "linear", "top-1 %", acc, evidence)
            cv_line = ""
            if layer != EMBED and folds is not None:
                # The folds' accuracies weighted by their sizes: the share of train samples that
                # the probe not trained on them labels right.
                cv_acc = best.select(layer, [eval_tasks.linear_probe(
                    train_f[layer][fit], train_y[fit], train_f[layer][held], train_y[held],
                    epochs=opts["probe_epochs"], seed=opts["seed"]).accuracy
                    for fit, held in folds],
                    [len(held) for _, held in folds])
                cv_line = f" (cross-validated on train: {cv_acc:.2f} %)"
            print(f"[{name}] linear {layer}: {acc:.2f} %{cv_line}", flush=True)
    if "knn" in tasks and has_test_labels:
        for layer in scored:
            for k, knn in eval_tasks.knn_classify(train_f[layer], train_y, test_f[layer],
                                                  test_y, ks=KNN_KS).items():
                evidence = Evidence("accuracy", knn.truth, knn.predicted)
                report.add("knn", f"{layer} k={k} top-1 %", name, knn.accuracy, evidence)
                best.add(layer, "knn", f"k={k} top-1 %", knn.accuracy, evidence)
    best.report(report, name)
    if "retrieval" in tasks and has_test_labels:
        report.add("retrieval", "mAP %", name,
                   eval_tasks.retrieval_map(test_f[EMBED], test_y, train_f[EMBED], train_y))
    if "extract" in tasks:
        for split, feats, labels in (("train", train_f, train_y), ("test", test_f, test_y)):
            path = out / f"features_{name}_{opts['layer']}_{split}.npz"
            np.savez(path, features=feats[opts["layer"]].cpu().numpy().astype(np.float32),
                     labels=labels.cpu().numpy())
            report.files.append(path)
    return train_f, run_clustering


# ---- pictures ---------------------------------------------------------------------------------

def _majority(images: ImageSet, indices: np.ndarray) -> str:
    if images.labels is None:
        return ""
    labels = images.labels[indices]
    labels = labels[labels >= 0]
    if labels.size == 0:
        return ""
    values, counts = np.unique(labels, return_counts=True)
    best = int(counts.argmax())
    return f"\n{counts[best]}/{labels.size}: {_class_name(images, int(values[best]))}"


def _top_cluster_images(clustering: eval_tasks.ClusterResult, images: ImageSet,
                        size: int, path: Path) -> Path:
    """Fig. 4 for clusters: per cluster, the 9 members closest to its centroid.

    Clusters are taken at evenly spaced ranks of the size ranking (largest first), among those
    with at least 9 members, so the picture shows typical clusters rather than chosen ones.
    """
    assignments = clustering.assignments
    sizes = torch.bincount(assignments, minlength=clustering.k).cpu().numpy()
    ranked = [c for c in np.argsort(-sizes, kind="stable")
              if sizes[c] >= plots.TOP_IMAGES_PER_ROW]
    if not ranked:
        ranked = [c for c in np.argsort(-sizes, kind="stable") if sizes[c] > 0]
    chosen = [ranked[i] for i in np.unique(np.linspace(0, len(ranked) - 1, PICTURE_ROWS)
                                           .round().astype(int))]
    per_row = min(plots.TOP_IMAGES_PER_ROW, int(min(sizes[c] for c in chosen)))
    rows, titles = [], []
    for c in chosen:
        members = torch.nonzero(assignments == int(c)).flatten()
        # Rows of ``whitened`` are unit vectors: the largest dot product is the nearest point.
        score = clustering.whitened[members] @ clustering.centroids[int(c)]
        top = members[score.topk(per_row).indices].cpu().numpy()
        rows.append(display_images(images, top, size))
        titles.append(f"cluster {c}\n{sizes[c]} images{_majority(images, top)}")
    return plots.plot_top_images(torch.stack(rows), titles, path,
                                 title=f"closest images to {len(chosen)} of "
                                       f"{clustering.k} k-means centroids")


def _top_filter_images(responses: torch.Tensor, layer: str, images: ImageSet, size: int,
                       path: Path) -> Path:
    """Fig. 5: for the most selective filters of the last conv layer, the 9 images whose
    strongest response (spatial max) is the largest. Selectivity = standard deviation of that
    response over the images."""
    per_row = min(plots.TOP_IMAGES_PER_ROW, responses.shape[0])
    filters = responses.std(dim=0).topk(min(PICTURE_ROWS, responses.shape[1])).indices
    rows, titles = [], []
    for f in filters.tolist():
        top = responses[:, f].topk(per_row).indices.cpu().numpy()
        rows.append(display_images(images, top, size))
        titles.append(f"{layer} filter {f}{_majority(images, top)}")
    return plots.plot_top_images(torch.stack(rows), titles, path,
                                 title=f"most activating images of {len(rows)} {layer} filters")


def _conv1_picture(model: DeepClusterNet, path: Path) -> Path:
    sobel = model.sobel.filters.weight.detach().cpu() if model.sobel is not None else None
    return plots.plot_conv1_filters(model.conv1.weight.detach().cpu(), path,
                                    sobel_kernels=sobel)


# ---- driver -----------------------------------------------------------------------------------

def evaluate(checkpoint: str | Path, *, data: str | None = None, test_data: str | None = None,
             tasks: Sequence[str] = DEFAULT_TASKS, out: str | Path | None = None,
             baseline: str = "random", layer: str = EMBED, device: str = "auto",
             batch_size: int = 256, workers: int = 0, max_train: int = 0, max_test: int = 0,
             pool_dim: int = 2048, probe_epochs: int = eval_tasks.PROBE_EPOCHS, seed: int = 0,
             kmeans_redo: int = 10, kmeans_backend: str = "auto") -> EvalReport:
    """Run ``tasks`` on the checkpoint's model and, with ``baseline='random'`` (the default; 'none'
    skips it), on the same architecture at random initialisation.

    Every clustering keeps the lowest k-means objective of ``kmeans_redo`` random starts (no
    label is looked at): one start's NMI into a handful of classes moves by a few hundredths
    from seed to seed, as much as the differences the report is read for.

    ``data`` defaults to the run's data; ``out`` to ``<checkpoint dir>/eval``. Writes
    results.md, results.json and the task outputs to ``out``; returns the report.
    """
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise EvalError(f"unknown task(s) {unknown}; choose from {TASKS}")
    if baseline not in BASELINES:
        raise EvalError(f"--baseline must be one of {BASELINES}, got {baseline!r}")
    for name, value, low in (("batch-size", batch_size, 1), ("workers", workers, 0),
                             ("max-train", max_train, 0), ("max-test", max_test, 0),
                             ("pool-dim", pool_dim, 0), ("probe-epochs", probe_epochs, 1),
                             ("kmeans-redo", kmeans_redo, 1), ("seed", seed, 0)):
        if not low <= value or (name == "seed" and value >= SEED_LIMIT):
            bound = "in [0, 2**32)" if name == "seed" else f"at least {low}"
            raise EvalError(f"--{name} must be {bound}, got {value}")
    dev = resolve_device(device)
    checkpoint = Path(checkpoint)
    out_dir = Path(out) if out is not None else checkpoint.parent / "eval"
    rundir.writable_dir(out_dir)  # before anything is loaded: a read-only --out fails now
    state = load_checkpoint(checkpoint, keys=MODEL_KEYS)
    spec = state["model_spec"]
    learned, config = model_from_checkpoint(state, dev)
    valid_layers = [EMBED, *(name for name, _ in conv_layers(learned))]
    if layer not in valid_layers:
        raise EvalError(f"--layer {layer!r} is not a layer of this {spec['arch']}; choose from "
                        f"{valid_layers}")
    splits = load_splits(data or config.data, test_data, seed=seed, max_train=max_train,
                         max_test=max_test)
    print(f"checkpoint {checkpoint}: {spec['arch']} (head {learned.head}, sobel {spec['sobel']}, "
          f"width {spec['width']}, {spec['image_size']} px), epoch {state['epoch']}, "
          f"k {config.k} | data: {splits.description} | device {dev}", flush=True)
    models = [("learned", learned)]
    if baseline == "random":
        models.append(("random", random_model(spec, config.seed, dev)))
    report = EvalReport(models=[name for name, _ in models])
    opts = {"device": dev, "layer": layer, "pool_dim": pool_dim, "batch_size": batch_size,
            "workers": workers, "probe_epochs": probe_epochs, "seed": seed,
            "kmeans_redo": kmeans_redo, "kmeans_backend": kmeans_backend, "pca_dim": config.pca_dim,
            "pca_power": config.pca_power}
    pictures = "pictures" in tasks
    for name, model in models:
        train_f, clustering = _run_tasks(name, model, spec, splits, tasks, report, opts,
                                         out_dir, pictures and name == "learned", config.k)
        if pictures and name == "learned":
            size = spec["image_size"]
            report.files.append(_top_filter_images(train_f[TOP_CONV_MAX],
                                                   conv_layers(model)[-1][0], splits.train, size,
                                                   out_dir / "top_filter_images.png"))
            if clustering is not None:
                report.files.append(_top_cluster_images(clustering, splits.train, size,
                                                        out_dir / "top_cluster_images.png"))
        if pictures:
            report.files.append(_conv1_picture(model, out_dir / f"conv1_filters_{name}.png"))
        del train_f, clustering
    if pictures:
        metrics_file = checkpoint.parent / "metrics.jsonl"
        if metrics_file.is_file():
            report.files.append(plots.plot_nmi_curves(rundir.read_metrics(metrics_file),
                                                      out_dir / "nmi_curves.png"))
        else:
            print(f"no {metrics_file}: no NMI curves", flush=True)
        sizes = torch.bincount(level_assignments(state["assignments"])[:, 0].long(),
                               minlength=config.k)
        report.files.append(plots.plot_cluster_sizes(sizes, out_dir / "cluster_sizes.png"))
    md = out_dir / "results.md"
    rundir.write_text_atomic(md, f"Checkpoint `{checkpoint}` (epoch {state['epoch']}); "
                                 f"{splits.description}.\n\n{report.markdown()}")
    rundir.write_text_atomic(out_dir / "results.json",
                             json.dumps(report.to_json(), indent=1) + "\n")
    report.files += [md, out_dir / "results.json"]
    return report


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepcluster-eval",
        description="Evaluate a DeepCluster checkpoint: clustering scores, linear probes per "
                    "conv layer, kNN, retrieval, feature export and pictures.")
    parser.add_argument("--checkpoint", required=True, help="the run's checkpoint.pt")
    parser.add_argument("--data", help="a deepcluster-train --data value (default: the run's)")
    parser.add_argument("--test-data", help="the test split as a --data value (default: the "
                        "dataset's own test split, else 20 %% of --data held out)")
    parser.add_argument("--task", nargs="+", choices=TASKS, default=list(DEFAULT_TASKS),
                        help="tasks to run (default: all but extract)")
    parser.add_argument("--out", help="output directory (default: CHECKPOINT_DIR/eval)")
    parser.add_argument("--baseline", choices=BASELINES, default="random",
                        help="random (default): also evaluate the architecture at random "
                             "initialisation and show learned - random, with the standard "
                             "error of NMI and top-1 differences over the scored images; "
                             "none: skip it")
    parser.add_argument("--layer", default=EMBED, help="layer for extract: embed (default, "
                        "the clustered features) or conv1 .. convN (pooled to --pool-dim)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="data-loader processes")
    parser.add_argument("--max-train", type=int, default=0,
                        help="random subset of the train split (0: all)")
    parser.add_argument("--max-test", type=int, default=0,
                        help="random subset of the test split (0: all)")
    parser.add_argument("--pool-dim", type=int, default=2048,
                        help="conv activations are average-pooled to at most this many dims "
                             "(0: unpooled)")
    parser.add_argument("--probe-epochs", type=int, default=eval_tasks.PROBE_EPOCHS,
                        help="epochs of each linear probe (SGD, batches of 1024)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kmeans-redo", type=int, default=10,
                        help="k-means starts per clustering; the lowest objective is kept")
    parser.add_argument("--kmeans-backend", default="auto",
                        choices=BACKENDS)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``deepcluster-eval``; returns the exit status: 2 for bad input or a fault
    (one ``error:`` line), 130 for Ctrl-C."""
    args = build_parser().parse_args(argv)
    try:
        report = evaluate(args.checkpoint, data=args.data, test_data=args.test_data,
                          tasks=args.task, out=args.out, baseline=args.baseline,
                          layer=args.layer, device=args.device, batch_size=args.batch_size,
                          workers=args.workers, max_train=args.max_train,
                          max_test=args.max_test, pool_dim=args.pool_dim,
                          probe_epochs=args.probe_epochs, seed=args.seed,
                          kmeans_redo=args.kmeans_redo, kmeans_backend=args.kmeans_backend)
    except KeyboardInterrupt:
        print("deepcluster-eval: interrupted (the files of --out may be incomplete; run it "
              "again)", file=sys.stderr)
        return 130
    except (EvalError, ConfigError, DataError, CheckpointError, OutputError) as exc:
        print(f"deepcluster-eval: error: {exc}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as exc:
        if not isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError) and \
                "can't allocate memory" not in str(exc):
            raise  # a bug: its traceback is the report
        print(f"deepcluster-eval: error: out of memory: lower --batch-size (now "
              f"{args.batch_size}) or --pool-dim (now {args.pool_dim})", file=sys.stderr)
        return 2
    except OSError as exc:
        where = f": {exc.filename}" if exc.filename else ""
        print(f"deepcluster-eval: error: {rundir.os_reason(exc)}{where}", file=sys.stderr)
        return 2
    print()
    print(report.markdown(), end="")
    print("\nfiles written:")
    for path in report.files:
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
