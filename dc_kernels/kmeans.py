"""k-means: the faiss-shaped ``Kmeans`` class and the functional ``kmeans``.

Both validate their inputs, pick the starts (random points, nredo) and run the one Lloyd
driver (dc_kernels._lloyd) on the chosen backend.
"""

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import _arrays, _distributed, _rows
from ._lloyd import lloyd
from .backends import NAMES, get_backend
from .backends.reference import TorchBackend
from .contract import check_precision

log = logging.getLogger("dc_kernels")

DEFAULT_SEED = 1234  # faiss's default


@dataclass
class KmeansResult:
    """What ``kmeans`` returns, in the caller's array kind and device.

    centroids (K, d) float32, labels (N,) int64 (assignment to the final centroids), inertia
    (sum of squared distances of those labels), history (one dict per iteration, as
    ``Kmeans.iteration_stats``), backend (the one that ran). Batched inputs give a leading B
    axis and inertia of shape (B,).
    """

    centroids: Any
    labels: Any
    inertia: float | np.ndarray
    history: list[dict] = field(default_factory=list)
    backend: str = ""


def _subsample(x: torch.Tensor, k: int, max_points_per_centroid: int | None,
               seed: int) -> torch.Tensor:
    n = x.shape[1]
    if max_points_per_centroid is None or n <= k * max_points_per_centroid:
        return x
    keep = k * max_points_per_centroid
    log.warning("dc_kernels: sampling %d of %d points (max_points_per_centroid=%d)",
                keep, n, max_points_per_centroid)
    generator = torch.Generator().manual_seed(seed + 1)
    index = torch.randperm(n, generator=generator)[:keep].to(x.device)
    return x[:, index].contiguous()


def _unbatch_history(history: list[dict]) -> list[dict]:
    return [{key: (value[0].item() if isinstance(value, np.ndarray) else value)
             for key, value in row.items()} for row in history]


def _prepare(x: Any, k: int, d: int | None, init_centroids: Any, backend_name: str,
             precision: str, process_group: Any = None,
             ) -> tuple[torch.Tensor, _arrays.ArrayKind, bool, torch.Tensor | None, TorchBackend]:
    """Validate and convert the inputs of a k-means run; returns batched tensors."""
    _arrays.check_int("k", k, 1)
    check_precision(precision)
    xt, kind = _arrays.to_tensor(x)
    _arrays.check_points(xt, "x", d=d)
    batched = xt.dim() == 3
    xb = _arrays.as_batched(xt)
    if k > xb.shape[1] and process_group is None:  # across ranks: checked at init
        raise ValueError(f"k={k} is larger than the number of points N={xb.shape[1]}")
    backend = get_backend(backend_name, xb.device, precision)
    init = None
    if init_centroids is not None:
        it, _ = _arrays.to_tensor(init_centroids, "init_centroids")
        _arrays.check_points(it, "init_centroids", d=xb.shape[-1])
        want = (xb.shape[0], k, xb.shape[-1]) if batched else (k, xb.shape[-1])
        if tuple(it.shape) != want:
            raise ValueError(f"init_centroids must have shape {want}, got {tuple(it.shape)}")
        init = _arrays.as_batched(it).to(device=xb.device, dtype=torch.float32).contiguous()
    return xb.contiguous(), kind, batched, init, backend


def kmeans(x: Any, k: int, niter: int = 20, *, seed: int = DEFAULT_SEED, spherical: bool = False,
           backend: str = "auto", precision: str = "fp32", init_centroids: Any = None,
           max_points_per_centroid: int | None = None, nredo: int = 1, verbose: bool = False,
           process_group: Any = None) -> KmeansResult:
    """Cluster the rows of x (N, d) — or B independent problems x (B, N, d) — into k clusters.

    Returns centroids, labels and inertia of the final centroids over all of x, and the
    per-iteration history, in the caller's array kind and on its device. With a torch.distributed
    ``process_group``, x is this rank's shard of the rows: centroids, inertia and history are
    those of the concatenated data (the same on every rank), labels those of this shard.
    ``nredo`` > 1 runs k-means from that many random starts and keeps the best (faiss's nredo).
    """
    xb, kind, batched, init, impl = _prepare(x, k, None, init_centroids, backend, precision,
                                             process_group)
    centroids, history = _train(xb, k, niter, init, impl, precision, seed, spherical,
                                max_points_per_centroid, verbose, process_group, nredo)
    dist, labels = _rows.assign(impl, xb, centroids, precision)
    inertia = dist.sum(-1, dtype=torch.float64)
    if process_group is not None:
        inertia = _distributed.reduce_sum(inertia, process_group)
    inertia = inertia.cpu().numpy()
    if not batched:
        centroids, labels, inertia, history = (centroids[0], labels[0], float(inertia[0]),
                                               _unbatch_history(history))
    return KmeansResult(kind.wrap(centroids), kind.wrap(labels), inertia, history, impl.name)


def _train(xb: torch.Tensor, k: int, niter: int, init: torch.Tensor | None, impl: TorchBackend,
           precision: str, seed: int, spherical: bool, max_points_per_centroid: int | None,
           verbose: bool, process_group: Any = None, nredo: int = 1,
           ) -> tuple[torch.Tensor, list[dict]]:
    """``nredo`` runs from different random starts (seeds seed, seed + 1, ...); each problem of
    the batch keeps the centroids of its run with the lowest final objective. The history holds
    every run's iterations, one after the other, with times that run on (as faiss's stats)."""
    _arrays.check_int("niter", niter, 0)
    _arrays.check_int("nredo", nredo, 1)
    if nredo > 1 and init is not None:
        raise ValueError("nredo > 1 restarts from random points: it cannot be combined with "
                         "init_centroids")
    if process_group is not None and max_points_per_centroid is not None:
        raise ValueError("max_points_per_centroid is not supported with a process_group: "
                         "subsample each rank's shard before calling")
    sample = (xb if process_group is not None
              else _subsample(xb, k, max_points_per_centroid, seed))
    if verbose:
        print(f"dc_kernels k-means: B={xb.shape[0]} N={sample.shape[1]} d={xb.shape[2]} k={k} "
              f"niter={niter} nredo={nredo} backend={impl.name} precision={precision}",
              flush=True)
    best, best_obj, history = None, None, []
    for redo in range(nredo):
        run_seed = seed + redo
        centroids = (init.clone() if init is not None
                     else _distributed.random_init(sample, k, run_seed, process_group))
        centroids, run_history = lloyd(sample, centroids, niter, impl, precision, run_seed,
                                       spherical, verbose, process_group)
        elapsed = history[-1]["time"] if history else 0.0  # times run on across starts
        history += [{**row, "time": row["time"] + elapsed} for row in run_history]
        if nredo == 1:
            return centroids, history
        obj = _rows.assign(impl, sample, centroids, precision)[0].sum(-1, dtype=torch.float64)
        if process_group is not None:
            obj = _distributed.reduce_sum(obj, process_group)
        if best is None:
            best, best_obj = centroids, obj
        else:
            better = obj < best_obj
            best = torch.where(better[:, None, None], centroids, best)
            best_obj = torch.minimum(obj, best_obj)
    return best, history


class Kmeans:
    """Drop-in for ``faiss.Kmeans``: ``Kmeans(d, k, niter=20, seed=1234, ...).train(x)``.

    After ``train``: ``centroids`` (k, d) float32 in the caller's array kind, ``obj`` (per
    iteration objective, a NumPy array), ``iteration_stats`` (dicts with obj, time,
    imbalance_factor, nsplit). ``assign(x)`` returns (D, I) like faiss. Inputs of shape
    (B, N, d) train B independent problems; then everything gains a leading B axis. With
    ``nredo`` > 1, as in faiss, ``obj`` and ``iteration_stats`` hold every start's iterations
    and the centroids are those of the start with the lowest final objective.
    """

    _OPTIONS = {"niter": 20, "seed": DEFAULT_SEED, "spherical": False, "backend": "auto",
                "precision": "fp32", "max_points_per_centroid": None, "nredo": 1,
                "verbose": False, "process_group": None}

    def __init__(self, d: int, k: int, **options: Any):
        unknown = sorted(set(options) - set(self._OPTIONS))
        if unknown:
            raise ValueError(f"unknown Kmeans option(s) {unknown}; "
                             f"accepted: {sorted(self._OPTIONS)}")
        self.d, self.k = _arrays.check_int("d", d, 1), _arrays.check_int("k", k, 1)
        settings = {**self._OPTIONS, **options}
        check_precision(settings["precision"])
        if settings["backend"] not in NAMES:
            raise ValueError(f"unknown backend {settings['backend']!r}; choose one of {NAMES}")
        # niter, seed, spherical, backend, precision, max_points_per_centroid, nredo, verbose,
        # process_group: as faiss.Kmeans's attributes.
        for name, value in settings.items():
            setattr(self, name, value)
        self.centroids: Any = None
        self.obj: np.ndarray = np.zeros(0)
        self.iteration_stats: list[dict] = []
        self._centroids_t: torch.Tensor | None = None
        self._batched = False

    def train(self, x: Any, init_centroids: Any = None) -> float | np.ndarray:
        """Run k-means on x (N, d) or (B, N, d); returns the last iteration's objective."""
        xb, kind, batched, init, impl = _prepare(x, self.k, self.d, init_centroids,
                                                 self.backend, self.precision,
                                                 self.process_group)
        centroids, history = _train(xb, self.k, self.niter, init, impl, self.precision,
                                    self.seed, self.spherical, self.max_points_per_centroid,
                                    self.verbose, self.process_group, self.nredo)
        self._centroids_t, self._batched = centroids, batched
        self.iteration_stats = history if batched else _unbatch_history(history)
        self.obj = np.array([row["obj"] for row in self.iteration_stats])
        self.centroids = kind.wrap(centroids if batched else centroids[0])
        last = self.obj[-1] if history else np.full(xb.shape[0], np.nan)
        return last if batched else float(np.ravel(last)[0])

    def assign(self, x: Any) -> tuple[Any, Any]:
        """(D, I): squared distance to, and index of, the nearest centroid of each row."""
        if self._centroids_t is None:
            raise ValueError("Kmeans.assign called before train")
        xt, kind = _arrays.to_tensor(x)
        _arrays.check_points(xt, "x", d=self.d)
        batched = xt.dim() == 3
        xb = _arrays.as_batched(xt).contiguous()
        if batched != self._batched or xb.shape[0] != self._centroids_t.shape[0]:
            raise ValueError(f"x has shape {tuple(xt.shape)} but the model was trained with "
                             f"centroids of shape {tuple(self.centroids.shape)}")
        impl = get_backend(self.backend, xb.device, self.precision)
        dist, labels = _rows.assign(impl, xb, self._centroids_t, self.precision)
        if not batched:
            dist, labels = dist[0], labels[0]
        return kind.wrap(dist), kind.wrap(labels)
