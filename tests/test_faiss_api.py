"""dc_kernels as faiss.Kmeans / faiss.PCAMatrix: the properties faiss's own tests check
(tests/test_clustering.py, test_build_blocks.py, contrib clustering), written afresh, on every
backend that runs here (Triton in the interpreter: tiny shapes, few iterations), plus faiss's
options and their refusals. Where ``import faiss`` works, the last tests compare with it."""

import numpy as np
import pytest
import torch

import dc_kernels
from dc_kernels.backends import unavailable_reason
from tests.conftest import CPU_BACKENDS

BACKENDS = CPU_BACKENDS + (["triton"] if not unavailable_reason("triton", torch.device("cpu"))
                           else [])
NO_STOP = {"early_stop_threshold": None}  # every iteration runs (faiss always checks)
# faiss's min_points_per_centroid (39) warns on small tests, as faiss's own do
pytestmark = pytest.mark.filterwarnings("ignore:clustering .* please provide at least")


@pytest.fixture(params=BACKENDS)
def any_backend(request) -> str:
    return request.param


def uniform(n: int, d: int, seed: int = 123, scale: float = 10.0) -> np.ndarray:
    return (np.random.default_rng(seed).uniform(size=(n, d)) * scale).astype(np.float32)


def clustered(sizes: list[int], d: int, seed: int = 0, sigma: float = 0.1,
              ) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian clusters of the given sizes around unit-norm centres -> (x, centres)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), d))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = np.vstack([c + sigma * rng.normal(size=(m, d))
                   for c, m in zip(centres, sizes, strict=True)])
    return x.astype(np.float32), centres.astype(np.float32)


def nearest(x: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float64 squared distance to, and index of, the nearest row of c for each row of x."""
    dist = ((x.astype(np.float64)[:, None] - c.astype(np.float64)[None]) ** 2).sum(-1)
    return dist.min(1), dist.argmin(1)


def weighted_lloyd(x: np.ndarray, w: np.ndarray, init: np.ndarray, niter: int) -> np.ndarray:
    """float64 weighted Lloyd (no cluster may become empty on the data it is used with)."""
    c = init.astype(np.float64).copy()
    for _ in range(niter):
        _, labels = nearest(x, c)
        for j in range(len(c)):
            mask = labels == j
            assert mask.any()
            c[j] = (w[mask, None] * x[mask]).sum(0) / w[mask].sum()
    return c


# ------------------------------------------------------------------ test_clustering.py's
def test_objective_decreases_and_more_centroids_quantise_better(any_backend):
    small = any_backend == "triton"
    x = uniform(300 if small else 1000, 16 if small else 64)
    niter = 4 if small else 10
    km = dc_kernels.Kmeans(x.shape[1], 16, niter=niter, backend=any_backend, **NO_STOP)
    err16 = km.train(x)
    assert len(km.obj) == niter and np.all(np.diff(km.obj) < 0), km.obj
    err32 = dc_kernels.Kmeans(x.shape[1], 32, niter=niter, backend=any_backend,
                              **NO_STOP).train(x)
    assert err32 < err16
    km_int = dc_kernels.Kmeans(x.shape[1], 16, niter=niter, int_centroids=True,
                               backend=any_backend, **NO_STOP)
    err_int = km_int.train(x)
    assert err_int > err16
    np.testing.assert_array_equal(km_int.centroids, np.round(km_int.centroids))


def test_int_centroids_on_rescaled_data_are_integers(backend):
    x = uniform(200, 4, seed=3)
    x[:, 0] += np.float32(2.0 ** 36)  # beyond 2^32: the kernels see x / 2^36
    km = dc_kernels.Kmeans(4, 3, niter=3, int_centroids=True, backend=backend)
    km.train(x)
    np.testing.assert_array_equal(km.centroids, np.round(km.centroids))
    assert (km.centroids[:, 1:] != 0).any()  # the small coordinates are rounded, not lost


def test_more_centroids_than_distinct_points(any_backend):
    x = np.zeros((100, 2), np.float32)
    x[:] = np.repeat(np.random.default_rng(1).uniform(size=(5, 2)), 20, axis=0)
    km = dc_kernels.Kmeans(2, 10, niter=5, backend=any_backend)
    km.train(x)
    assert np.isfinite(km.centroids).all()
    D, I = km.index.search(x, 1)
    assert D.shape == I.shape == (100, 1) and (0 <= I).all() and (I < 10).all()
    assert D.max() < 1e-5  # every distinct point sits on (a copy of) its centroid


@pytest.mark.parametrize("distinct", [False, True])
def test_one_point_per_cluster(any_backend, distinct):
    x = uniform(5, 10, seed=7) if distinct else np.zeros((5, 10), np.float32)
    km = dc_kernels.Kmeans(10, 5, niter=10, backend=any_backend)
    km.train(x)
    D, I = km.index.search(x, 1)
    np.testing.assert_array_equal(D, 0.0)
    if distinct:  # each point is its own centroid
        assert sorted(I[:, 0].tolist()) == [0, 1, 2, 3, 4]
        np.testing.assert_array_equal(km.centroids[I[:, 0]], x)


def test_weights_pull_the_centroids(any_backend):
    x, centres = clustered([100] * 5 + [10] * 5, 32, seed=5, sigma=0.05)
    weights = np.where(np.arange(len(x)) < 500, 0.1, 10.0).astype(np.float32)
    niter = 4 if any_backend == "triton" else 25
    plain = dc_kernels.Kmeans(32, 5, niter=niter, backend=any_backend)
    plain.train(x)
    weighted = dc_kernels.Kmeans(32, 5, niter=niter, backend=any_backend)
    weighted.train(x, weights)
    first, last = (nearest(centres[s], plain.centroids)[0].sum() for s in (slice(5), slice(5, 10)))
    assert last > 2 * first  # unweighted: the big clusters win
    first, last = (nearest(centres[s], weighted.centroids)[0].sum()
                   for s in (slice(5), slice(5, 10)))
    assert first > 2 * last  # weighted: the heavy small ones do


def test_weighted_lloyd_matches_float64_and_integer_weights_repeat_rows(any_backend):
    x, _ = clustered([40, 30, 30], 6, seed=5, sigma=0.3)
    w = np.random.default_rng(2).integers(1, 4, size=len(x)).astype(np.float32)
    init = x[[0, 40, 70]]
    km = dc_kernels.Kmeans(6, 3, niter=3, backend=any_backend, **NO_STOP)
    km.train(x, weights=w, init_centroids=init)
    np.testing.assert_allclose(km.centroids, weighted_lloyd(x, w, init, 3), rtol=1e-5, atol=1e-6)
    repeated = dc_kernels.Kmeans(6, 3, niter=3, backend=any_backend, **NO_STOP)
    repeated.train(np.repeat(x, w.astype(int), axis=0), init_centroids=init)
    np.testing.assert_allclose(km.centroids, repeated.centroids, rtol=1e-5, atol=1e-6)
    for scale in (1e-300, 1e-40, 1e30, 1e300):  # float64 weights far outside fp32's range
        scaled = dc_kernels.Kmeans(6, 3, niter=3, backend=any_backend, **NO_STOP)
        scaled.train(x, weights=w.astype(np.float64) * scale, init_centroids=init)
        np.testing.assert_allclose(scaled.centroids, km.centroids, rtol=1e-5, atol=1e-6)


def test_given_centroids_start_better(any_backend):
    x = uniform(300, 16, seed=4)
    km = dc_kernels.Kmeans(16, 5, niter=3, backend=any_backend)
    km.train(x)
    again = dc_kernels.Kmeans(16, 5, niter=3, backend=any_backend)
    again.train(x, init_centroids=km.centroids)
    assert km.obj[0] > again.obj[0] * 1.01


def test_stats_are_consistent(any_backend):
    x = uniform(300, 16, seed=5)
    km = dc_kernels.Kmeans(16, 5, niter=4, backend=any_backend, **NO_STOP)
    final = km.train(x)
    stats = km.iteration_stats
    assert list(km.obj) == [row["obj"] for row in stats] and final == km.obj[-1]
    assert [sorted(row) for row in stats] == [["imbalance_factor", "nsplit", "obj", "time",
                                               "time_search"]] * 4
    times = [row["time"] for row in stats]
    assert times == sorted(times)
    assert all(0 <= row["time_search"] <= row["time"] for row in stats)
    D, I = km.assign(x)
    counts = np.bincount(I, minlength=5)
    # the first iteration's objective is that of the initial centroids: random rows of x
    assert stats[0]["obj"] > D.sum() and all(row["nsplit"] == 0 for row in stats)
    assert stats[-1]["imbalance_factor"] >= 1.0
    assert 5 * (counts.astype(float) ** 2).sum() / 300 ** 2 >= 1.0


def test_splits_under_stress_stay_near_scikit_learn(any_backend):
    # contrib's stress test: half the points are one point, so clusters empty again and again
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    n, k, niter = (600, 20, 4) if any_backend == "triton" else (2000, 50, 10)
    x = uniform(n, 16, seed=17)
    x[:n // 2] = x[0]
    km = dc_kernels.Kmeans(16, k, niter=niter, backend=any_backend)
    km.train(torch.from_numpy(x))  # torch in, torch out
    assert isinstance(km.centroids, torch.Tensor) and km.centroids.shape == (k, 16)
    D, I = km.index.search(torch.from_numpy(x), 1)
    assert isinstance(D, torch.Tensor) and I.dtype == torch.int64
    err = nearest(x, km.centroids.numpy())[0].sum()
    np.testing.assert_allclose(D.sum().item(), err, rtol=1e-4)
    theirs = sklearn_cluster.KMeans(k, n_init=1, max_iter=niter, random_state=0).fit(x)
    assert err < 1.1 * nearest(x, theirs.cluster_centers_)[0].sum()


# ------------------------------------------------------------------ composite clustering
def test_more_starts_reach_a_lower_objective(any_backend):
    x = uniform(300 if any_backend == "triton" else 1000, 16, seed=6)
    niter, nredo = (2, 3) if any_backend == "triton" else (10, 10)
    one = dc_kernels.Kmeans(16, 20, niter=niter, seed=4, backend=any_backend, **NO_STOP)
    one.train(x)
    many = dc_kernels.Kmeans(16, 20, niter=niter, nredo=nredo, seed=4, backend=any_backend,
                             **NO_STOP)
    many.train(x)
    assert many.assign(x)[0].sum() < one.assign(x)[0].sum()
    # the kept start is the best of the starts run one by one (faiss's seeds)
    starts = [dc_kernels.kmeans(x, 20, niter=niter, seed=5 + r * 15486557, backend=any_backend)
              for r in range(nredo)]
    kept = int(np.argmin([s.inertia for s in starts]))
    assert kept > 0 and len(many.obj) == niter * (kept + 1)  # stats end with the kept start
    np.testing.assert_array_equal(many.centroids, starts[kept].centroids)
    assert many.obj[0] == one.obj[0]


def test_spherical_reports_inner_products(any_backend):
    x = uniform(300, 16, seed=8)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    niter, nredo = (3, 3) if any_backend == "triton" else (10, 10)
    one = dc_kernels.Kmeans(16, 20, niter=niter, spherical=True, backend=any_backend, **NO_STOP)
    obj1 = one.train(x)
    assert np.all(np.diff(one.obj) >= 0) and one.obj[-1] > one.obj[0], one.obj  # IPs rise
    np.testing.assert_allclose(np.linalg.norm(one.centroids, axis=1), 1.0, rtol=1e-6)
    D, I = one.assign(x)
    np.testing.assert_allclose(D, (x * one.centroids[I]).sum(1), rtol=1e-5)
    ips = x.astype(np.float64) @ one.centroids.T.astype(np.float64)
    top2 = np.sort(ips, axis=1)[:, -2:]
    decided = top2[:, 1] - top2[:, 0] > 1e-5  # beyond fp32 rounding of the scores
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(I[decided], ips.argmax(1)[decided])
    assert (D <= 1.0 + 1e-6).all() and one.index.metric == "IP"
    many = dc_kernels.Kmeans(16, 20, niter=niter, nredo=nredo, spherical=True,
                             backend=any_backend, **NO_STOP)
    obj_many = many.train(x)
    assert obj_many >= obj1 and many.assign(x)[0].sum() > D.sum()


def test_early_stopping(any_backend):
    x = uniform(200, 8, seed=42)
    km = dc_kernels.Kmeans(8, 6, niter=1000, backend=any_backend)  # faiss's default: 0.0
    km.train(x)
    assert 2 <= len(km.obj) < 1000 and km.obj[-1] == km.obj[-2]
    loose = dc_kernels.Kmeans(8, 6, niter=1000, early_stop_threshold=0.1, backend=any_backend)
    loose.train(x)
    assert len(loose.obj) < len(km.obj)
    change = abs(loose.obj[-2] - loose.obj[-1]) / loose.obj[-2]
    assert change <= 0.1 and all(abs(a - b) / a > 0.1 for a, b in zip(loose.obj[:-2],
                                                                        loose.obj[1:-1],
                                                                        strict=True))
    every = dc_kernels.Kmeans(8, 6, niter=12, backend=any_backend, **NO_STOP)
    every.train(x)
    assert len(every.obj) == 12


# ------------------------------------------------------------------ other faiss options
def test_frozen_centroids_stay(any_backend):
    x = uniform(300, 8, seed=9)
    given = x[:3] + 0.25
    km = dc_kernels.Kmeans(8, 6, niter=4, frozen_centroids=True, backend=any_backend)
    km.train(x, init_centroids=given)
    np.testing.assert_array_equal(km.centroids[:3], given)
    free = dc_kernels.Kmeans(8, 6, niter=4, backend=any_backend)
    free.train(x, init_centroids=given)
    assert not np.array_equal(free.centroids[:3], given)


def test_kmeans_plus_plus_seeds_every_separated_cluster(any_backend):
    x, _ = clustered([60] * 8, 10, seed=11, sigma=0.01)
    x *= 10  # clusters far apart from each other
    km = dc_kernels.Kmeans(10, 8, niter=0, init_method="kmeans++", backend=any_backend)
    km.train(x)
    _, owner = nearest(km.centroids, x)
    assert (nearest(km.centroids, x)[0] == 0).all()  # the seeds are rows of x
    assert sorted(set((owner // 60).tolist())) == list(range(8))  # one in each cluster
    again = dc_kernels.Kmeans(10, 8, niter=0, init_method=1, backend="torch")  # faiss's enum
    again.train(x)
    np.testing.assert_array_equal(again.centroids, km.centroids)  # the same draws anywhere


def test_seed_convention_and_subsampling(any_backend):
    x = uniform(400, 8, seed=12)
    km = dc_kernels.Kmeans(8, 5, niter=3, seed=77, backend=any_backend, **NO_STOP)
    km.train(x)
    functional = dc_kernels.kmeans(x, 5, niter=3, seed=78, backend=any_backend)  # seed + 1
    np.testing.assert_array_equal(km.centroids, functional.centroids)
    sampled = dc_kernels.Kmeans(8, 5, niter=1, max_points_per_centroid=20, backend=any_backend)
    sampled.train(x)
    assert sampled.obj[0] < 0.5 * functional.history[0]["obj"]  # over 100 points, not 400


def test_index_search_and_reset(any_backend):
    x = uniform(300, 8, seed=13)
    km = dc_kernels.Kmeans(8, 10, niter=3, backend=any_backend)
    km.train(x)
    assert km.index.ntotal == 10 and km.index.d == 8
    D, I = km.index.search(x, 4)
    dist = ((x.astype(np.float64)[:, None] - km.centroids[None].astype(np.float64)) ** 2).sum(-1)
    ranked = np.sort(dist, axis=1)
    # Rows whose five nearest distances are apart beyond fp32 rounding rank the same anywhere.
    decided = (np.diff(ranked[:, :5], axis=1) > 1e-5 * ranked[:, 4:5]).all(1)
    assert decided.mean() > 0.9
    np.testing.assert_array_equal(I[decided], np.argsort(dist, axis=1)[decided, :4])
    np.testing.assert_allclose(D, np.sort(dist, axis=1)[:, :4], rtol=1e-5)
    D1, I1 = km.assign(x)
    np.testing.assert_array_equal(I1, I[:, 0])
    km.reset(4)
    assert km.k == 4 and km.centroids is None and km.obj is None and km.index.ntotal == 0
    km.train(x)
    assert km.centroids.shape == (4, 8)


def test_options_as_faiss_keeps_them():
    km = dc_kernels.Kmeans(8, 4)
    assert (km.niter, km.max_points_per_centroid, km.min_points_per_centroid, km.seed) == \
        (25, 256, 39, 1234)
    assert km.cp.niter == 25 and km.early_stop_threshold == 0.0 and km.gpu is False
    km.cp.niter = 3
    km.nredo = 2
    assert km.niter == 3 and km.cp.nredo == 2
    for option in ("update_index", "check_input_data_for_NaNs", "use_faster_subsampling"):
        dc_kernels.Kmeans(8, 4, **{option: True}).train(uniform(100, 8))
    with pytest.warns(UserWarning, match="please provide at least 156"):
        dc_kernels.Kmeans(8, 4, niter=1).train(uniform(100, 8))


REFUSED = [
    ({"progressive_dim_steps": 10}, "progressive-dimension clustering"),
    ({"gpu": 2}, "one GPU"),
    ({"init_method": 2}, "AFK_MC2 is not implemented"),
    ({"init_method": "best"}, "init_method must be"),
    ({"early_stop_threshold": 2.0}, r"early_stop_threshold must be in \[0, 1\]"),
    ({"early_stop_threshold": float("nan")}, "early_stop_threshold must be a finite"),
    ({"decode_block_size": 0}, "decode_block_size must be"),
    ({"min_points_per_centroid": -1}, "min_points_per_centroid must be"),
    ({"update_index": "no"}, "update_index must be a bool"),
    ({"max_iter": 3}, "unknown Kmeans option"),
]


@pytest.mark.parametrize("options,message", REFUSED)
def test_options_that_cannot_be_honoured_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        dc_kernels.Kmeans(8, 4, **options)


def test_bad_train_arguments():
    x = uniform(50, 4)
    km = dc_kernels.Kmeans(4, 3)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        km.train(x, weights=-np.ones(50))
    with pytest.raises(ValueError, match=r"weights must have shape \(N,\)"):
        km.train(x, weights=np.ones(49))
    with pytest.raises(ValueError, match="weights contains 1 non-finite"):
        km.train(x, weights=np.r_[np.ones(49), np.nan])
    with pytest.raises(ValueError, match="weights sum to 0"):
        km.train(x, weights=np.zeros(50))
    with pytest.raises(ValueError, match="n <= k=3"):
        km.train(x, init_centroids=x[:4])
    with pytest.raises(ValueError, match="outside float32"):
        km.train(x.astype(np.float64) * 1e300)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            dc_kernels.Kmeans(4, 3, gpu=True)
    with pytest.raises(ValueError, match="before train"):
        km.assign(x)
    with pytest.raises(ValueError, match="empty index"):
        km.index.search(x, 1)


# ------------------------------------------------------------------ test_build_blocks.py's PCA
def test_pca_energy_decreases_and_retraining_gives_the_same_map(any_backend):
    x = np.random.default_rng(123).uniform(size=(1000, 32)).astype(np.float32)
    pca = dc_kernels.PCAMatrix(32, 10, backend=any_backend)
    pca.train(x)
    y = pca.apply_py(x)
    energy = (y.astype(np.float64) ** 2).sum(0)
    assert np.all(np.diff(energy) < 0)
    first = pca.A.copy()
    pca.train(x[:20])  # fewer rows than dimensions, then the first data again
    pca.train(x)
    np.testing.assert_allclose(pca.A, first, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pca.apply(x), y, rtol=1e-5, atol=1e-5)


def test_pca_attributes_are_faiss_s(any_backend):
    x = uniform(500, 12, seed=14)
    pca = dc_kernels.PCAMatrix(12, 5, -0.5, backend=any_backend)
    pca.train(x)
    centred = x.astype(np.float64) - x.astype(np.float64).mean(0)
    scatter = centred.T @ centred  # faiss's eigenvalues: of the scatter, not the covariance
    values, vectors = np.linalg.eigh(scatter)
    np.testing.assert_allclose(pca.eigenvalues, values[::-1], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pca.mean, x.mean(0), rtol=1e-6)
    assert pca.A.shape == (5, 12) and pca.b.shape == (5,) and pca.PCAMat.shape == (12, 12)
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32
               for a in (pca.A, pca.b, pca.mean, pca.eigenvalues, pca.PCAMat))
    np.testing.assert_allclose(np.abs(pca.PCAMat[:5] @ vectors[:, ::-1][:, :5]), np.eye(5),
                               atol=1e-4)  # faiss: fp32 scatter
    np.testing.assert_allclose(pca.apply(x), x @ pca.A.T + pca.b, rtol=1e-4, atol=1e-5)
    whitened = pca.apply(x).astype(np.float64)
    np.testing.assert_allclose(whitened.T @ whitened, np.eye(5), atol=1e-4)  # scatter -> I
    # PCAWhitening is this map then L2: the same rows
    y = dc_kernels.PCAWhitening(12, 5, eigenvalue_floor=0.0, backend=any_backend).train(x)
    ours = whitened / np.linalg.norm(whitened, axis=1, keepdims=True)
    np.testing.assert_allclose(y.apply(x), ours, atol=1e-4)


def test_pca_epsilon_and_zero_variance(any_backend):
    x = np.random.default_rng(123).uniform(size=(500, 16)).astype(np.float32)
    x[:, ::2] = 0  # a subspace: half the eigenvalues are 0
    pca = dc_kernels.PCAMatrix(16, 12, -0.5, backend=any_backend)
    with pytest.warns(UserWarning, match="zero variance"):
        pca.train(x)  # faiss: Inf/NaN; here the unwhitenable directions give 0
    y = pca.apply(x)
    assert np.isfinite(y).all() and (y[:, 8:] == 0).all() and (y[:, :8] != 0).any()
    pca.epsilon = 1e-5
    pca.train(x)
    assert np.isfinite(pca.apply(x)).all()


def test_pca_reverse_transform_and_refusals():
    x = uniform(200, 6, seed=15)
    pca = dc_kernels.PCAMatrix(6, 6)
    pca.train(x)
    np.testing.assert_allclose(pca.reverse_transform(pca.apply(x)), x, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="random_rotation"):
        dc_kernels.PCAMatrix(6, 3, random_rotation=True)
    with pytest.raises(ValueError, match="eigen_power must be a finite"):
        dc_kernels.PCAMatrix(6, 3, float("nan"))
    whitening = dc_kernels.PCAMatrix(6, 3, -0.5)
    whitening.balanced_bins = 2
    with pytest.raises(ValueError, match="balanced_bins"):
        whitening.train(x)
    whitening.balanced_bins = 0
    whitening.train(x)
    with pytest.raises(ValueError, match="orthonormal"):
        whitening.reverse_transform(whitening.apply(x))


# ------------------------------------------------------------------ against faiss itself
def test_same_centroids_as_faiss_from_the_same_start():
    faiss = pytest.importorskip("faiss")
    x = uniform(2000, 16, seed=16)
    init = x[:20].copy()
    # 5 iterations on uniform data: neither run converges (so neither stops early)
    theirs = faiss.Kmeans(16, 20, niter=5, max_points_per_centroid=10**6)
    theirs.train(x, init_centroids=init)
    ours = dc_kernels.Kmeans(16, 20, niter=5, max_points_per_centroid=10**6, backend="torch")
    ours.train(x, init_centroids=init)
    assert len(ours.obj) == len(theirs.obj)
    np.testing.assert_allclose(ours.obj, theirs.obj, rtol=1e-4)
    np.testing.assert_allclose(ours.centroids, theirs.centroids, rtol=1e-3, atol=1e-3)
    D, I = theirs.index.search(x, 3)
    D2, I2 = ours.index.search(x, 3)
    assert (I == I2).mean() > 0.99
    pca, ours_pca = faiss.PCAMatrix(16, 8, -0.5), dc_kernels.PCAMatrix(16, 8, -0.5)
    pca.train(x)
    ours_pca.train(x)
    np.testing.assert_allclose(ours_pca.eigenvalues, faiss.vector_to_array(pca.eigenvalues),
                               rtol=1e-3)
    np.testing.assert_allclose(np.abs(ours_pca.apply(x)), np.abs(pca.apply(x)), rtol=1e-3,
                               atol=1e-4)  # faiss: fp32 scatter


@pytest.mark.parametrize("options", [{"niter": 100}, {"niter": 5, "nredo": 3, "seed": 7},
                                     {"niter": 10, "max_points_per_centroid": 50}])
def test_same_starts_stops_and_statistics_as_faiss(options):
    # faiss's seeds give faiss's random starts and subsamples (both draw with a Mersenne
    # twister): the same labels, the same early stop, the same nredo statistics
    faiss = pytest.importorskip("faiss")
    x = uniform(3000, 16, seed=18)
    theirs = faiss.Kmeans(16, 30, **options)
    theirs.train(x)
    ours = dc_kernels.Kmeans(16, 30, backend="torch", **options)
    ours.train(x)
    assert len(ours.obj) == len(theirs.obj)
    np.testing.assert_allclose(ours.obj, theirs.obj, rtol=1e-5)
    assert (ours.index.search(x, 1)[1] == theirs.index.search(x, 1)[1]).mean() > 0.999
