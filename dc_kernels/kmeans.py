"""k-means: the faiss-compatible ``Kmeans`` class (with its ``index``) and the functional
``kmeans``.

Both validate their inputs where they enter, rescale data whose squared distances would leave
fp32's range by an exact power of two, pick the starts (random points or k-means++, nredo) and
run the one Lloyd driver (dc_kernels._lloyd) on the chosen backend.
"""

import logging
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from . import _arrays, _distributed, _rows
from ._lloyd import inner_products, lloyd
from .backends import NAMES, get_backend
from .backends.reference import TILE_ENTRIES, TorchBackend
from .contract import MASK64, check_precision

log = logging.getLogger("dc_kernels")

DEFAULT_SEED = 1234  # faiss's default
# faiss seeds start r of nredo with seed + 1 + r * this (Clustering.cpp); Kmeans does the same.
FAISS_REDO_STRIDE = 15486557
INIT_METHODS = {"random": "random", 0: "random", "kmeans++": "kmeans++", "k-means++": "kmeans++",
                1: "kmeans++", "afk_mc2": "afk_mc2", 2: "afk_mc2"}


@dataclass
class KmeansResult:
    """What ``kmeans`` returns, in the caller's array kind and device.

    centroids (K, d) float32, labels (N,) int64 (assignment to the final centroids), inertia
    (sum of squared distances of those labels; with ``spherical``, sum of inner products),
    history (one dict per iteration, as ``Kmeans.iteration_stats``), backend (the one that
    ran). Batched inputs give a leading B axis and inertia of shape (B,).
    """

    centroids: Any
    labels: Any
    inertia: float | np.ndarray
    history: list[dict] = field(default_factory=list)
    backend: str = ""


@dataclass
class _Problem:
    """Validated inputs of a run: batched (B, N, d) data as the kernels see them (x * 2^-exponent
    when rescaled), optional partial initial centroids (B, n_in, d) and weights (B, N)."""

    x: torch.Tensor
    kind: _arrays.ArrayKind
    batched: bool
    init: torch.Tensor | None
    weights: torch.Tensor | None
    exponent: int
    backend: TorchBackend


def _check_weights(weights: Any, x: torch.Tensor) -> torch.Tensor:
    """weights (N,) or (B, N) for x (B, N, d): finite, non-negative, not all zero -> (B, N)
    float32 on x's device, scaled by a power of two to a largest weight in [1, 2) (weighted
    means do not change; tiny or huge weights neither vanish nor overflow in fp32)."""
    w, _ = _arrays.to_tensor(weights, "weights")
    want = (x.shape[1],) if w.dim() == 1 else tuple(x.shape[:2])
    if w.dim() not in (1, 2) or tuple(w.shape) != want:
        raise ValueError(f"weights must have shape (N,) = ({x.shape[1]},) or (B, N) = "
                         f"{tuple(x.shape[:2])}, got {tuple(w.shape)}")
    w = w if w.is_floating_point() else w.double()
    peak = _arrays.value_range(w.unsqueeze(-1), "weights")  # max|w|: max w once non-negative
    if bool((w < 0).any()):
        raise ValueError("weights must be non-negative")
    if peak == 0 or bool((w.sum(-1) == 0).any()):
        raise ValueError("weights sum to 0: there is no weighted mean to compute")
    w = _arrays.scaled_float32(w.unsqueeze(-1), math.frexp(peak)[1] - 1)[..., 0]
    return w.to(x.device).expand(x.shape[0], -1).contiguous()


def _prepare(x: Any, k: int, d: int | None, init_centroids: Any, backend_name: str,
             precision: str, process_group: Any = None, weights: Any = None,
             device: torch.device | None = None) -> _Problem:
    """Validate and convert the inputs of a k-means run (refusing, before any copy, what would
    not fit in memory)."""
    _arrays.check_int("k", k, 1)
    check_precision(precision)
    xt, kind = _arrays.to_tensor(x)
    peak = _arrays.check_points(xt, "x", d=d)
    batched = xt.dim() == 3
    xb = _arrays.as_batched(xt)
    if k > xb.shape[1] and process_group is None:  # across ranks: checked at init
        raise ValueError(f"k={k} is larger than the number of points N={xb.shape[1]}")
    device = xb.device if device is None else device
    backend = get_backend(backend_name, device, precision)
    init = None
    if init_centroids is not None:
        it, _ = _arrays.to_tensor(init_centroids, "init_centroids")
        peak = max(peak, _arrays.check_points(it, "init_centroids", d=xb.shape[-1]))
        ib = _arrays.as_batched(it)
        if it.dim() != xt.dim() or ib.shape[0] != xb.shape[0] or not 1 <= ib.shape[1] <= k:
            want = "(B, n, d)" if batched else "(n, d)"
            raise ValueError(f"init_centroids must have shape {want} with n <= k={k} (and the "
                             f"B of x), got {tuple(it.shape)}")
        init = ib
    exponent = _arrays.pow2_exponent(peak, precision)
    batch, n, dim = xb.shape
    copied = exponent != 0 or not xb.is_contiguous() or xb.device != device
    converted = backend.name in ("cpu", "cuda") and not exponent and xb.dtype != torch.float32
    _arrays.check_memory(device, {
        "working copy of x": batch * n * dim * (4 if exponent else xb.element_size()) * copied,
        "float32 copy of x in the kernels": batch * n * dim * 4 * converted,
        "distances and labels": batch * n * 12,
        "centroids, sums and counts": batch * k * (dim * 12 + 24)})
    if exponent:
        log.info("dc_kernels: x rescaled by 2^%d for fp32 distances", -exponent)
    xb = (_arrays.scaled_float32(xb, exponent) if exponent else xb.contiguous()).to(device)
    if init is not None:
        init = (_arrays.scaled_float32(init, exponent) if exponent
                else init.to(torch.float32).contiguous()).to(device)
    w = None if weights is None else _check_weights(weights, xb)
    return _Problem(xb, kind, batched, init, w, exponent, backend)


def _subsample(x: torch.Tensor, weights: torch.Tensor | None, k: int,
               max_points_per_centroid: int | None, seed: int, with_replacement: bool,
               ) -> tuple[torch.Tensor, torch.Tensor | None]:
    n = x.shape[1]
    if max_points_per_centroid is None or n <= k * max_points_per_centroid:
        return x, weights
    keep = k * max_points_per_centroid
    log.warning("dc_kernels: sampling %d of %d points (max_points_per_centroid=%d)",
                keep, n, max_points_per_centroid)
    generator = torch.Generator().manual_seed(seed)
    index = (torch.randint(n, (keep,), generator=generator) if with_replacement
             else torch.randperm(n, generator=generator)[:keep]).to(x.device)
    return x[:, index].contiguous(), None if weights is None else weights[:, index].contiguous()


def _squared_distances_to(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """||x_i - c_b||^2 for x (B, N, d) and one centroid per problem c (B, d): (B, N) float64,
    in tiles of rows."""
    batch, n, d = x.shape
    out = torch.empty(batch, n, dtype=torch.float64, device=x.device)
    rows = max(1, TILE_ENTRIES // max(1, d))
    for start in range(0, n, rows):
        diff = x[:, start:start + rows].float() - c.unsqueeze(1)
        out[:, start:start + rows] = diff.square().sum(-1, dtype=torch.float64)
    return out


def _kmeans_plus_plus(x: torch.Tensor, k: int, seed: int, given: torch.Tensor | None,
                      backend: TorchBackend) -> torch.Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii) on x's device: each next centroid is a point
    drawn with probability proportional to its squared distance to the closest centroid so far
    (the ``given`` ones first). The draws come from a CPU generator (the same on every device);
    nothing is read back to the host."""
    batch, n, d = x.shape
    generator = torch.Generator().manual_seed(seed)
    out = torch.empty(batch, k, d, dtype=torch.float32, device=x.device)
    problems = torch.arange(batch, device=x.device)
    if given is not None:
        start = given.shape[1]
        out[:, :start] = given
        closest = _rows.assign(backend, x, given, "fp32")[0].double()
    else:
        start = 1
        first = torch.randint(n, (batch,), generator=generator).to(x.device)
        out[:, 0] = x[problems, first].float()
        closest = _squared_distances_to(x, out[:, 0])
    for j in range(start, k):
        cumulative = closest.cumsum(-1)
        target = torch.rand(batch, 1, generator=generator, dtype=torch.float64).to(x.device)
        pick = torch.searchsorted(cumulative, target * cumulative[:, -1:], right=True)
        pick = pick.clamp_max(n - 1).squeeze(1)
        out[:, j] = x[problems, pick].float()
        closest = torch.minimum(closest, _squared_distances_to(x, out[:, j]))
    return out


def _start(sample: torch.Tensor, k: int, given: torch.Tensor | None, init_method: str,
           seed: int, backend: TorchBackend, process_group: Any) -> torch.Tensor:
    """Initial (B, k, d) centroids: the ``given`` ones (n_in <= k), the rest drawn."""
    if given is not None and given.shape[1] == k:
        return given.clone()
    if init_method == "kmeans++":
        return _kmeans_plus_plus(sample, k, seed, given, backend)
    drawn = _distributed.random_init(sample, k, seed, process_group)
    if given is not None:  # as faiss: the drawn points after the given ones
        drawn[:, :given.shape[1]] = given
    return drawn


def _objective(backend: TorchBackend, x: torch.Tensor, centroids: torch.Tensor, precision: str,
               inner_product: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(per-row value, labels, per-problem float64 sum): squared distances, or inner products
    with ``inner_product``."""
    dist, labels = _rows.assign(backend, x, centroids, precision)
    if inner_product:
        dist = inner_products(x, centroids.to(x.device), labels)
    return dist, labels, dist.sum(-1, dtype=torch.float64)


@dataclass
class _Settings:
    """What a k-means run does besides its data: the functional ``kmeans``'s arguments or the
    ``Kmeans`` options, validated (``check``)."""

    niter: int = 20
    seed: int = DEFAULT_SEED
    spherical: bool = False
    precision: str = "fp32"
    max_points_per_centroid: int | None = None
    min_points_per_centroid: int | None = None
    nredo: int = 1
    verbose: bool = False
    init_method: str = "random"
    int_centroids: bool = False
    frozen_centroids: bool = False
    early_stop_threshold: float | None = None
    use_faster_subsampling: bool = False
    faiss_seeds: bool = False  # starts seeded seed + 1 + r * FAISS_REDO_STRIDE, sample with seed

    def check(self) -> "_Settings":
        _arrays.check_int("niter", self.niter, 0)
        _arrays.check_int("nredo", self.nredo, 1)
        _arrays.check_seed(self.seed)
        check_precision(self.precision)
        for name in ("max_points_per_centroid", "min_points_per_centroid"):
            if getattr(self, name) is not None:
                _arrays.check_int(name, getattr(self, name), 1 if name[:3] == "max" else 0)
        for name in ("spherical", "verbose", "int_centroids", "frozen_centroids",
                     "use_faster_subsampling"):
            if not isinstance(getattr(self, name), bool | np.bool_ | int):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.init_method not in INIT_METHODS:
            raise ValueError(f"init_method must be 'random' or 'kmeans++' (faiss's "
                             f"ClusteringInitMethod RANDOM or KMEANS_PLUS_PLUS), got "
                             f"{self.init_method!r}")
        if INIT_METHODS[self.init_method] == "afk_mc2":
            raise ValueError("init_method AFK_MC2 is not implemented in dc_kernels; use "
                             "'kmeans++' (the exact seeding it approximates) or 'random'")
        if self.early_stop_threshold is not None:
            threshold = _arrays.check_float("early_stop_threshold", self.early_stop_threshold)
            if not 0.0 <= threshold <= 1.0:
                raise ValueError(f"early_stop_threshold must be in [0, 1], got {threshold}")
        return self

    def start_seed(self, redo: int) -> int:
        if self.faiss_seeds:
            return (self.seed + 1 + redo * FAISS_REDO_STRIDE) & MASK64
        return (self.seed + redo) & MASK64


def _train(problem: _Problem, k: int, s: _Settings, process_group: Any = None,
           ) -> tuple[torch.Tensor, list[dict], np.ndarray]:
    """Run ``s.nredo`` starts on the problem's (rescaled) data; each problem of the batch keeps
    the centroids of its start with the best objective on the training points (lowest distance,
    highest inner product when spherical). Returns those centroids (still rescaled), the
    history in the caller's units (times run on across starts) and each problem's objective at
    the last iteration of its kept start. With one problem, the history ends with the kept start
    (as faiss's); with B > 1 it holds every start's iterations."""
    xb, impl, precision, init = problem.x, problem.backend, s.precision, problem.init
    inner_product = bool(s.spherical)
    if s.frozen_centroids and init is None:
        log.info("dc_kernels: frozen_centroids without init_centroids freezes nothing")
    frozen = init.shape[1] if (s.frozen_centroids and init is not None) else 0
    if process_group is not None:
        total = sum(_distributed.shard_sizes(xb.shape[1], xb.device, process_group))
        if s.max_points_per_centroid is not None and total > k * s.max_points_per_centroid:
            raise ValueError("max_points_per_centroid subsampling is not supported with a "
                             "process_group: subsample each rank's shard before calling, or "
                             "pass max_points_per_centroid=None")
        if INIT_METHODS[s.init_method] == "kmeans++":
            raise ValueError("init_method='kmeans++' is not supported with a process_group")
        sample, weights = xb, problem.weights
    else:
        total = xb.shape[1]
        sample, weights = _subsample(xb, problem.weights, k, s.max_points_per_centroid,
                                     s.seed if s.faiss_seeds else s.seed + 1,
                                     s.use_faster_subsampling)
    if s.min_points_per_centroid is not None and total < k * s.min_points_per_centroid:
        warnings.warn(f"clustering {total} points to {k} centroids: please provide at least "
                      f"{k * s.min_points_per_centroid} training points "
                      f"(min_points_per_centroid={s.min_points_per_centroid})", stacklevel=3)
    if s.verbose:
        print(f"dc_kernels k-means: B={xb.shape[0]} N={sample.shape[1]} d={xb.shape[2]} k={k} "
              f"niter={s.niter} nredo={s.nredo} backend={impl.name} precision={precision}",
              flush=True)
    obj_unit = math.ldexp(1.0, (1 if inner_product else 2) * problem.exponent)
    better = torch.gt if inner_product else torch.lt
    best = best_obj = best_last = None
    history: list[dict] = []
    run_ends = []
    for redo in range(s.nredo):
        run_seed = s.start_seed(redo)
        centroids = _start(sample, k, init, INIT_METHODS[s.init_method], run_seed, impl,
                           process_group)
        centroids, run_history = lloyd(
            sample, centroids, s.niter, impl, precision, run_seed, bool(s.spherical),
            bool(s.verbose), process_group, weights=weights, inner_product=inner_product,
            frozen=frozen,
            round_to=math.ldexp(1.0, -problem.exponent) if s.int_centroids else None,
            early_stop=s.early_stop_threshold)
        elapsed = history[-1]["time"] if history else 0.0  # times run on across starts
        search = history[-1]["time_search"] if history else 0.0
        history += [{**row, "obj": row["obj"] * obj_unit, "time": row["time"] + elapsed,
                     "time_search": row["time_search"] + search} for row in run_history]
        run_ends.append(len(history))
        last = history[-1]["obj"] if run_history else np.zeros(xb.shape[0])  # faiss: 0
        if s.nredo == 1:
            return centroids, history, np.asarray(last, dtype=np.float64)
        obj = _objective(impl, sample, centroids, precision, inner_product)[2]
        if process_group is not None:
            obj = _distributed.reduce_sum(obj, process_group)
        if best is None:
            best, best_obj, best_last = centroids, obj, np.asarray(last, dtype=np.float64)
            best_run = torch.zeros(xb.shape[0], dtype=torch.int64)
        else:
            improved = better(obj, best_obj)
            best = torch.where(improved[:, None, None], centroids, best)
            best_obj = torch.where(improved, obj, best_obj)
            keep = improved.cpu().numpy()
            best_last = np.where(keep, last, best_last)
            best_run = torch.where(improved.cpu(), redo, best_run)
    if xb.shape[0] == 1:  # as faiss: the statistics end with the kept start
        history = history[:run_ends[int(best_run[0])]]
    return best, history, best_last


def _unbatch_history(history: list[dict]) -> list[dict]:
    return [{key: (value[0].item() if isinstance(value, np.ndarray) else value)
             for key, value in row.items()} for row in history]


def _unscaled(centroids: torch.Tensor, exponent: int, spherical: bool) -> torch.Tensor:
    """Centroids in the caller's units (unit-norm spherical centroids do not scale)."""
    if exponent == 0 or spherical:
        return centroids
    out = torch.ldexp(centroids.double(), torch.tensor(exponent, dtype=torch.float64)).float()
    if not bool(torch.isfinite(out).all()):
        raise ValueError("the centroids exceed float32's range once scaled back by "
                         f"2^{exponent}: rescale x first")
    return out


def _distances_out(values: torch.Tensor, exponent: int, inner_product: bool) -> torch.Tensor:
    """Per-row squared distances (inner products) of rescaled data in the caller's units:
    float32 when they fit, float64 (with a warning) when float32 would overflow or flush them."""
    if exponent == 0:
        return values
    out = torch.ldexp(values.double(),
                      torch.tensor((1 if inner_product else 2) * exponent, dtype=torch.float64))
    magnitude = out.abs()
    if bool((magnitude > _arrays.FP32_MAX).any()
            or ((magnitude > 0) & (magnitude < _arrays.FP32_TINY)).any()):
        warnings.warn("distances beyond float32's range: returned as float64", stacklevel=3)
        return out
    return out.float()


def kmeans(x: Any, k: int, niter: int = 20, *, seed: int = DEFAULT_SEED, spherical: bool = False,
           backend: str = "auto", precision: str = "fp32", init_centroids: Any = None,
           max_points_per_centroid: int | None = None, nredo: int = 1, verbose: bool = False,
           process_group: Any = None, weights: Any = None, init_method: str = "random",
           ) -> KmeansResult:
    """Cluster the rows of x (N, d) — or B independent problems x (B, N, d) — into k clusters.

    Returns centroids, labels and inertia of the final centroids over all of x, and the
    per-iteration history, in the caller's array kind and on its device. With a torch.distributed
    ``process_group``, x is this rank's shard of the rows: centroids, inertia and history are
    those of the concatenated data (the same on every rank), labels those of this shard.
    ``nredo`` > 1 runs k-means from that many random starts (seeds seed, seed + 1, ...) and keeps
    the best. ``weights`` (N,) or (B, N): weighted k-means. ``init_method``: 'random' (k distinct
    points) or 'kmeans++'. ``spherical``: unit-norm centroids, objective and inertia are sums of
    inner products (as faiss). Own defaults, unlike ``Kmeans``: 20 iterations, no subsampling,
    no early stop.
    """
    settings = _Settings(niter=niter, seed=seed, spherical=spherical, precision=precision,
                         max_points_per_centroid=max_points_per_centroid, nredo=nredo,
                         verbose=verbose, init_method=init_method).check()
    if nredo > 1 and init_centroids is not None:
        raise ValueError("nredo > 1 restarts from random points: it cannot be combined with "
                         "init_centroids")
    problem = _prepare(x, k, None, init_centroids, backend, precision, process_group, weights)
    if init_centroids is not None and problem.init.shape[1] != k:
        raise ValueError(f"init_centroids must hold k={k} rows, got {problem.init.shape[1]}")
    centroids, history, _ = _train(problem, k, settings, process_group)
    dist, labels, inertia = _objective(problem.backend, problem.x, centroids, precision,
                                       bool(spherical))
    if process_group is not None:
        inertia = _distributed.reduce_sum(inertia, process_group)
    inertia = inertia.cpu().numpy() * math.ldexp(1.0, (1 if spherical else 2) * problem.exponent)
    centroids = _unscaled(centroids, problem.exponent, bool(spherical))
    batched = problem.batched
    if not batched:
        centroids, labels, inertia, history = (centroids[0], labels[0], float(inertia[0]),
                                               _unbatch_history(history))
    kind = problem.kind
    return KmeansResult(kind.wrap(centroids), kind.wrap(labels), inertia, history,
                        problem.backend.name)


class CentroidIndex:
    """The flat index ``Kmeans.index`` holds, as faiss's ``IndexFlatL2`` (``IndexFlatIP`` when
    spherical): ``add`` vectors, ``search(x, k)`` -> (D, I) of the k nearest (largest inner
    products for IP) in order, ``reset()``, ``ntotal``, ``d``. Vectors live on the device they
    were added from; results come back in x's array kind."""

    def __init__(self, d: int, metric: str = "L2", backend: str = "auto",
                 precision: str = "fp32"):
        self.d = _arrays.check_int("d", d, 1)
        if metric not in ("L2", "IP"):
            raise ValueError(f"metric must be 'L2' or 'IP', got {metric!r}")
        self.metric, self.backend, self.precision = metric, backend, precision
        self.vectors: torch.Tensor | None = None  # (ntotal, d) float32

    @property
    def ntotal(self) -> int:
        return 0 if self.vectors is None else self.vectors.shape[0]

    @property
    def is_trained(self) -> bool:
        return True

    def train(self, x: Any) -> None:
        """A flat index needs no training (faiss's ``update_index`` retrains it: a no-op)."""

    def reset(self) -> None:
        self.vectors = None

    def add(self, x: Any) -> None:
        xt, _ = _arrays.to_tensor(x)
        _arrays.check_points(xt, "x", d=self.d, batched_ok=False)
        xt = xt.to(torch.float32)
        self.vectors = xt.clone() if self.vectors is None else torch.cat(
            [self.vectors, xt.to(self.vectors.device)])

    def search(self, x: Any, k: int) -> tuple[Any, Any]:
        """(D, I), each (n, k): squared L2 distances (inner products) and indices of the k
        nearest vectors of each row of x, nearest first (ties to the lowest index for k = 1)."""
        if self.vectors is None:
            raise ValueError("search called on an empty index (train or add first)")
        k = _arrays.check_int("k", k, 1, self.ntotal)
        xt, kind = _arrays.to_tensor(x)
        peak = _arrays.check_points(xt, "x", d=self.d, batched_ok=False)
        vectors = self.vectors.to(xt.device)
        exponent = _arrays.pow2_exponent(max(peak, float(vectors.abs().amax())), self.precision)
        xs = _arrays.scaled_float32(xt, exponent) if exponent else xt.contiguous()
        cs = _arrays.scaled_float32(vectors, exponent) if exponent else vectors
        ip = self.metric == "IP"
        if k == 1 and not ip:
            impl = get_backend(self.backend, xs.device, self.precision)
            dist, labels = _rows.assign(impl, xs[None], cs[None], self.precision)
            dist, labels = dist[0, :, None], labels[0, :, None]
        else:
            dist, labels = self._exact_topk(xs, cs, k, ip)
        return kind.wrap(_distances_out(dist, exponent, ip)), kind.wrap(labels)

    @staticmethod
    def _exact_topk(x: torch.Tensor, c: torch.Tensor, k: int,
                    ip: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """k best of every row in float64, in tiles of rows."""
        c64 = c.double()
        c_sq = c64.square().sum(-1)
        n = x.shape[0]
        dist = torch.empty(n, k, dtype=torch.float32, device=x.device)
        labels = torch.empty(n, k, dtype=torch.int64, device=x.device)
        rows = max(1, TILE_ENTRIES // c.shape[0])
        for start in range(0, n, rows):
            xs = x[start:start + rows].double()
            dots = xs @ c64.T
            scores = dots if ip else xs.square().sum(-1, keepdim=True) + c_sq - 2.0 * dots
            values, index = scores.topk(k, dim=1, largest=ip, sorted=True)
            dist[start:start + rows] = values.clamp_min(0.0) if not ip else values
            labels[start:start + rows] = index
        return dist, labels


class Kmeans:
    """Drop-in for ``faiss.Kmeans(d, k, **options)``, with faiss's options, defaults and
    meanings (README "dc_kernels and faiss" lists what differs).

    Options (faiss's ClusteringParameters, default in brackets): niter [25], nredo [1], verbose,
    spherical, int_centroids, update_index (no-op for a flat index, as in faiss),
    frozen_centroids, min_points_per_centroid [39] (a warning below it),
    max_points_per_centroid [256] (subsample above it), seed [1234], decode_block_size (only for
    encoded data, which faiss's Python Kmeans never passes), check_input_data_for_NaNs
    (the check always runs: it shares its pass with the range check), use_faster_subsampling
    (sample with replacement), init_method ['random' or 'kmeans++'], afkmc2_chain_length,
    early_stop_threshold [0.0: stop when the objective stops changing], gpu (run on the current
    CUDA device); ours: backend ['auto'], precision ['fp32'], process_group. Options faiss
    lacks or that cannot be honoured raise a ValueError that says why. ``cp`` holds them as
    faiss's ``ClusteringParameters`` does; reading or setting ``km.<option>`` reaches ``cp``.

    ``train(x, weights=None, init_centroids=None)`` returns the objective of the last
    iteration; then ``centroids`` (k, d) float32 in x's array kind, ``obj`` and
    ``iteration_stats`` (obj, time, time_search, imbalance_factor, nsplit), ending with the kept
    start when nredo > 1, and ``index`` (a ``CentroidIndex`` holding the centroids: ``search(x,
    k) -> (D, I)``). With ``spherical``, objectives and D are inner products (higher is better).
    ``assign(x)`` = ``index.search(x, 1)`` flattened. Inputs (B, N, d) train B independent
    problems: centroids, obj and stats gain a leading B axis, stats then hold every start.
    """

    OPTIONS: dict[str, Any] = {
        "niter": 25, "nredo": 1, "verbose": False, "spherical": False, "int_centroids": False,
        "update_index": False, "frozen_centroids": False, "min_points_per_centroid": 39,
        "max_points_per_centroid": 256, "seed": DEFAULT_SEED, "decode_block_size": 32768,
        "check_input_data_for_NaNs": True, "use_faster_subsampling": False,
        "init_method": "random", "afkmc2_chain_length": 50, "early_stop_threshold": 0.0,
        "backend": "auto", "precision": "fp32", "process_group": None}
    REFUSED = {
        "progressive_dim_steps": "progressive-dimension clustering (faiss's "
                                 "ProgressiveDimClustering) is not implemented in dc_kernels",
        "apply_pca": "apply_pca belongs to progressive-dimension clustering, which dc_kernels "
                     "does not implement"}

    def __init__(self, d: int, k: int, **options: Any):
        for name in options:
            if name in self.REFUSED:
                raise ValueError(f"Kmeans option {name!r}: {self.REFUSED[name]}")
        unknown = sorted(set(options) - set(self.OPTIONS) - {"gpu"})
        if unknown:
            raise ValueError(f"unknown Kmeans option(s) {unknown}; "
                             f"accepted: {sorted([*self.OPTIONS, 'gpu'])}")
        object.__setattr__(self, "d", _arrays.check_int("d", d, 1))
        object.__setattr__(self, "gpu", self._check_gpu(options.pop("gpu", False)))
        object.__setattr__(self, "cp", _Parameters(**{**self.OPTIONS, **options}))
        self._settings()  # early errors
        self.reset(k)

    # faiss keeps the options in ``cp``; km.niter etc. reach it too.
    def __getattr__(self, name: str) -> Any:
        cp = self.__dict__.get("cp")
        if cp is not None and name in Kmeans.OPTIONS:
            return getattr(cp, name)
        raise AttributeError(f"'Kmeans' object has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        if name in Kmeans.OPTIONS:
            setattr(self.cp, name, value)
        elif name == "gpu":
            object.__setattr__(self, name, self._check_gpu(value))
        else:
            object.__setattr__(self, name, value)

    @staticmethod
    def _check_gpu(gpu: Any) -> Any:
        if gpu is False or gpu == 0:
            return False
        if gpu is True or gpu in (1, -1):
            if not torch.cuda.is_available():
                raise ValueError(f"gpu={gpu!r}, but no CUDA device is available to torch")
            return gpu
        raise ValueError(f"gpu={gpu!r}: dc_kernels runs k-means on one GPU (gpu=True, 1 or -1); "
                         f"for several, pass each rank's shard with a process_group")

    def _settings(self) -> _Settings:
        cp = self.cp
        if cp.backend not in NAMES:
            raise ValueError(f"unknown backend {cp.backend!r}; choose one of {NAMES}")
        _arrays.check_int("decode_block_size", cp.decode_block_size, 1)
        _arrays.check_int("afkmc2_chain_length", cp.afkmc2_chain_length, 1)
        for name in ("update_index", "check_input_data_for_NaNs"):
            if not isinstance(getattr(cp, name), bool | np.bool_ | int):
                raise ValueError(f"{name} must be a bool, got {getattr(cp, name)!r}")
        return _Settings(
            niter=cp.niter, seed=cp.seed, spherical=cp.spherical, precision=cp.precision,
            max_points_per_centroid=cp.max_points_per_centroid,
            min_points_per_centroid=cp.min_points_per_centroid, nredo=cp.nredo,
            verbose=cp.verbose, init_method=cp.init_method, int_centroids=cp.int_centroids,
            frozen_centroids=cp.frozen_centroids, early_stop_threshold=cp.early_stop_threshold,
            use_faster_subsampling=cp.use_faster_subsampling, faiss_seeds=True).check()

    def reset(self, k: int | None = None) -> None:
        """Forget the training (centroids, obj, stats, index), optionally with another k."""
        if k is not None:
            object.__setattr__(self, "k", _arrays.check_int("k", k, 1))
        self.centroids: Any = None
        self.obj: np.ndarray | None = None
        self.iteration_stats: list[dict] | None = None
        self.index = CentroidIndex(self.d, "IP" if self.cp.spherical else "L2",
                                   self.cp.backend, self.cp.precision)
        self._centroids_t: torch.Tensor | None = None
        self._batched = False

    def train(self, x: Any, weights: Any = None, init_centroids: Any = None,
              ) -> float | np.ndarray:
        """Run k-means on x (N, d) or (B, N, d), optionally weighted, from optional initial
        centroids (n <= k rows; the rest drawn); returns the last iteration's objective."""
        settings = self._settings()
        device = torch.device("cuda", torch.cuda.current_device()) if self.gpu else None
        problem = _prepare(x, self.k, self.d, init_centroids, self.cp.backend,
                           settings.precision, self.cp.process_group, weights, device)
        centroids, history, last = _train(problem, self.k, settings, self.cp.process_group)
        centroids = _unscaled(centroids, problem.exponent, bool(settings.spherical))
        self._centroids_t, self._batched = centroids, problem.batched
        self.iteration_stats = history if problem.batched else _unbatch_history(history)
        self.obj = np.array([row["obj"] for row in self.iteration_stats])
        self.centroids = problem.kind.wrap(centroids if problem.batched else centroids[0])
        self.index = CentroidIndex(self.d, "IP" if settings.spherical else "L2",
                                   self.cp.backend, settings.precision)
        if not problem.batched:
            self.index.add(problem.kind.wrap(centroids[0]))
        return last if problem.batched else float(last[0])

    def assign(self, x: Any) -> tuple[Any, Any]:
        """(D, I): squared distance to (inner product with, when spherical), and index of, the
        nearest centroid of each row."""
        if self._centroids_t is None:
            raise ValueError("Kmeans.assign called before train")
        xt, kind = _arrays.to_tensor(x)
        if not self._batched:
            dist, labels = self.index.search(xt, 1)
            return kind.wrap(dist[:, 0]), kind.wrap(labels[:, 0])
        peak = _arrays.check_points(xt, "x", d=self.d)
        if xt.dim() != 3 or xt.shape[0] != self._centroids_t.shape[0]:
            raise ValueError(f"x has shape {tuple(xt.shape)} but the model was trained with "
                             f"centroids of shape {tuple(self._centroids_t.shape)}")
        centroids = self._centroids_t.to(xt.device)
        exponent = _arrays.pow2_exponent(max(peak, float(centroids.abs().amax())),
                                         self.cp.precision)
        xs = _arrays.scaled_float32(xt, exponent) if exponent else xt.contiguous()
        cs = _arrays.scaled_float32(centroids, exponent) if exponent else centroids
        impl = get_backend(self.cp.backend, xs.device, self.cp.precision)
        dist, labels, _ = _objective(impl, xs, cs, self.cp.precision, bool(self.cp.spherical))
        return kind.wrap(_distances_out(dist, exponent, bool(self.cp.spherical))), \
            kind.wrap(labels)


class _Parameters:
    """faiss's ``ClusteringParameters`` as a plain object: one attribute per option; unknown
    names are refused (faiss raises on them too)."""

    def __init__(self, **options: Any):
        self.__dict__.update(options)

    def __setattr__(self, name: str, value: Any) -> None:
        if name not in Kmeans.OPTIONS:
            raise ValueError(f"unknown Kmeans option {name!r}; accepted: "
                             f"{sorted(Kmeans.OPTIONS)}")
        self.__dict__[name] = value

    def __repr__(self) -> str:
        return "ClusteringParameters(" + ", ".join(
            f"{name}={value!r}" for name, value in self.__dict__.items()) + ")"
