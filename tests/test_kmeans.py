"""k-means API and semantics on every backend that runs on this machine's CPU."""

import numpy as np
import pytest
import torch

import dc_kernels
from dc_kernels import _lloyd, _rows, testing
from dc_kernels.backends import AUTO_ORDER_VARIABLE, auto_order, get_backend
from tests import reference_numpy as ref


def _separated_blobs(n: int, d: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Every point beside one of k N(0, 1) means (all populated), and one point of each blob as
    the start: no point lies near a boundary between centroids, so the labels of a float32
    run cannot depend on its rounding (or on which BLAS sums its dot products)."""
    rng = np.random.default_rng(seed)
    owner = np.arange(n) % k
    x = (rng.normal(size=(k, d))[owner] + 0.05 * rng.normal(size=(n, d))).astype(np.float32)
    return x, x[:k].copy()


@pytest.mark.parametrize("n,d,k", [(600, 16, 7), (1000, 33, 50), (257, 1, 3), (300, 130, 1)])
def test_labels_and_inertia_match_float64_lloyd(backend, n, d, k):
    x, init = _separated_blobs(n, d, k, seed=n + d)
    res = dc_kernels.kmeans(x, k, niter=6, init_centroids=init, backend=backend)
    c64, objs = ref.lloyd(x, init, niter=6, seed=dc_kernels.kmeans.__kwdefaults__["seed"])
    dist64, labels64 = ref.assign(x, c64)
    # The data keep every label out of rounding's reach, from the start to the end.
    assert ref.decided(x, init, "fp32").all() and ref.decided(x, c64, "fp32").all()
    np.testing.assert_array_equal(res.labels, labels64)
    np.testing.assert_allclose(res.inertia, dist64.sum(), rtol=1e-5)
    np.testing.assert_allclose(res.centroids, c64, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose([h["obj"] for h in res.history], objs, rtol=1e-5)


def test_centroids_match_scikit_learn(backend):
    sklearn_cluster = pytest.importorskip("sklearn.cluster")
    x = ref.blobs(2000, 24, centres=12, seed=3, spread=0.5)
    init = x[:12].copy()
    ours = dc_kernels.kmeans(x, 12, niter=8, init_centroids=init, backend=backend)
    theirs = sklearn_cluster.KMeans(12, init=init, n_init=1, max_iter=8, tol=0.0,
                                    algorithm="lloyd").fit(x.astype(np.float64))
    np.testing.assert_allclose(ours.centroids, theirs.cluster_centers_, rtol=1e-4, atol=1e-4)


def test_faiss_api_shape(backend):
    x = ref.blobs(800, 10, centres=20, seed=5, spread=0.3)
    km = dc_kernels.Kmeans(10, 20, niter=8, seed=7, backend=backend, early_stop_threshold=None)
    final = km.train(x)
    assert isinstance(km.centroids, np.ndarray) and km.centroids.shape == (20, 10)
    assert km.centroids.dtype == np.float32
    assert km.obj.shape == (8,) and final == pytest.approx(km.obj[-1])
    assert np.all(np.diff(km.obj) <= 1e-6 * km.obj[0]), km.obj  # Lloyd never increases it
    assert [sorted(s) for s in km.iteration_stats][0] == ["imbalance_factor", "nsplit", "obj",
                                                          "time", "time_search"]
    D, I = km.assign(x)
    assert D.shape == (800,) and I.shape == (800,)
    assert D.dtype == np.float32 and I.dtype == np.int64
    d64, i64 = ref.assign(x, km.centroids)
    np.testing.assert_array_equal(I, i64)
    np.testing.assert_allclose(D, d64, rtol=1e-4, atol=1e-5)


def test_same_seed_same_result_other_seed_differs(backend):
    x = ref.blobs(500, 8, centres=10, seed=9, spread=0.4)
    a = dc_kernels.kmeans(x, 10, niter=5, seed=11, backend=backend)
    b = dc_kernels.kmeans(x, 10, niter=5, seed=11, backend=backend)
    c = dc_kernels.kmeans(x, 10, niter=5, seed=12, backend=backend)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    assert not np.array_equal(a.centroids, c.centroids)


def _far_init(x: np.ndarray, k: int, empty: int) -> np.ndarray:
    """k initial centroids, the last ``empty`` of them so far away that no point picks them."""
    init = x[:k].copy()
    init[k - empty:] = 1e3 + np.arange(empty)[:, None]
    return init


def test_update_then_split_leaves_no_empty_cluster(backend):
    x = ref.blobs(400, 6, centres=4, seed=2, spread=0.2)
    init = _far_init(x, 10, empty=5)
    impl = get_backend(backend, torch.device("cpu"))
    xb = torch.from_numpy(x)[None]
    centroids = torch.from_numpy(init)[None].clone()
    _, labels = impl.assign(xb, centroids, "fp32")
    counts = impl.update(xb, labels, centroids)
    assert int((counts == 0).sum()) == 5
    before = counts.clone()
    nsplit = impl.split(centroids, counts, seed=3, iteration=0)
    assert nsplit.tolist() == [5]
    assert bool((counts > 0).all()) and int(counts.sum()) == 400
    # donors keep at least one point and only clusters with 2+ points donated
    donors = (counts < before) & (before > 0)
    assert bool((before[donors] >= 2).all())
    # the split centroids are relative perturbations of their donors' means
    np_counts = before[0].numpy().copy()
    expect = init.astype(np.float64).copy()
    for j in np.flatnonzero(np_counts):
        expect[j] = x[labels[0].numpy() == j].astype(np.float64).mean(0)
    ref.split(expect, np_counts, seed=3, iteration=0)
    np.testing.assert_array_equal(np_counts, counts[0].numpy())
    np.testing.assert_allclose(centroids[0].numpy(), expect, rtol=1e-5, atol=1e-6)


def test_train_reports_splits_and_ends_without_empty_clusters(backend):
    x = ref.blobs(300, 4, centres=3, seed=4, spread=0.1)
    km = dc_kernels.Kmeans(4, 12, niter=4, backend=backend)
    km.train(x, init_centroids=_far_init(x, 12, empty=9))
    assert km.iteration_stats[0]["nsplit"] == 9
    _, labels = km.assign(x)
    assert len(np.unique(labels)) == 12


def test_batched_equals_separate_runs(backend):
    xs = np.stack([ref.blobs(300, 5, centres=6, seed=s, spread=0.3) for s in range(3)])
    inits = np.stack([_far_init(x, 8, empty=1) for x in xs])
    batched = dc_kernels.kmeans(xs, 8, niter=5, init_centroids=inits, backend=backend)
    assert batched.centroids.shape == (3, 8, 5) and batched.labels.shape == (3, 300)
    for b in range(3):
        single = dc_kernels.kmeans(xs[b], 8, niter=5, init_centroids=inits[b], backend=backend)
        np.testing.assert_allclose(batched.centroids[b], single.centroids, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(batched.labels[b], single.labels)
        assert batched.inertia[b] == pytest.approx(single.inertia, rel=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_every_input_dtype(backend, dtype):
    x = torch.from_numpy(ref.blobs(500, 12, centres=5, seed=6, spread=0.05)).to(dtype)
    res = dc_kernels.kmeans(x, 5, niter=4, backend=backend)
    assert isinstance(res.centroids, torch.Tensor) and res.centroids.dtype == torch.float32
    _, labels64 = ref.assign(x.double().numpy(), res.centroids.numpy())
    np.testing.assert_array_equal(res.labels.numpy(), labels64)


def test_torch_noncontiguous_roundtrip(backend):
    base = torch.from_numpy(ref.blobs(400, 20, centres=4, seed=8))
    x = base[:, ::2]  # non-contiguous view
    assert not x.is_contiguous()
    res = dc_kernels.kmeans(x, 4, niter=3, backend=backend)
    expect = dc_kernels.kmeans(x.contiguous().numpy(), 4, niter=3, backend=backend)
    assert isinstance(res.labels, torch.Tensor) and res.labels.dtype == torch.int64
    np.testing.assert_array_equal(res.labels.numpy(), expect.labels)


def test_spherical_centroids_have_unit_norm(backend):
    x = ref.blobs(400, 8, centres=5, seed=10)
    km = dc_kernels.Kmeans(8, 5, niter=3, spherical=True, backend=backend)
    km.train(x)
    np.testing.assert_allclose(np.linalg.norm(km.centroids, axis=1), 1.0, rtol=1e-5)


def test_nredo_keeps_the_best_start_per_problem(backend):
    # Overlapping blobs and few iterations: different starts end at different objectives.
    x = np.stack([ref.blobs(800, 6, centres=12, seed=s, spread=0.8) for s in (20, 21)])
    best = dc_kernels.kmeans(x, 12, niter=3, seed=40, nredo=4, backend=backend)
    singles = [dc_kernels.kmeans(x, 12, niter=3, seed=40 + r, backend=backend)
               for r in range(4)]
    runs = np.stack([s.inertia for s in singles])  # (nredo, B)
    assert len(best.history) == 4 * 3  # every run's iterations, as faiss's obj
    times = [h["time"] for h in best.history]
    assert times == sorted(times)  # cumulative over the starts
    np.testing.assert_allclose(best.inertia, runs.min(0), rtol=1e-6)
    assert (runs.max(0) > runs.min(0) * 1.001).all()  # the starts really differ
    for b in range(2):
        np.testing.assert_array_equal(best.centroids[b], singles[runs[:, b].argmin()].centroids[b])

    # Kmeans: faiss's seeds (start r: seed + 1 + r * 15486557); the statistics, obj and the
    # returned objective end with the kept start (they reported the last start before).
    km = dc_kernels.Kmeans(6, 12, niter=3, seed=40, nredo=4, backend=backend,
                           max_points_per_centroid=None, early_stop_threshold=None)
    final = km.train(x[0])
    starts = [dc_kernels.kmeans(x[0], 12, niter=3, seed=41 + r * 15486557, backend=backend)
              for r in range(4)]
    kept = int(np.argmin([s.inertia for s in starts]))
    assert kept != 3, "pick data where the last start is not the best"
    assert km.obj.shape == (3 * (kept + 1),)
    assert final == km.obj[-1] == pytest.approx(starts[kept].history[-1]["obj"], rel=1e-9)
    np.testing.assert_array_equal(km.centroids, starts[kept].centroids)
    np.testing.assert_allclose(km.assign(x[0])[0].sum(), starts[kept].inertia, rtol=1e-5)


def test_fp16_search_does_not_overflow_on_large_values():
    # |x.c| ~ 1.4e5 is beyond fp16's 65504: the products must still rank the centroids.
    rng = np.random.default_rng(4)
    centres = rng.normal(size=(40, 33)) * 4.0
    centres[:, 0] += 9.0 * np.arange(40)
    x = (centres[rng.integers(0, 40, 500)] + 0.05 * rng.normal(size=(500, 33))).astype(np.float32)
    c = torch.from_numpy(centres.astype(np.float32))[None]
    dist, labels = get_backend("torch", torch.device("cpu")).assign(
        torch.from_numpy(x)[None], c, "fp16")
    dist64, labels64 = ref.assign(x, centres.astype(np.float32))
    np.testing.assert_array_equal(labels[0].numpy(), labels64)
    np.testing.assert_allclose(dist[0].numpy(), dist64, rtol=1e-4, atol=1e-4)


def test_max_points_per_centroid_subsamples(backend):
    x = ref.blobs(1000, 4, centres=5, seed=12, spread=1.0)
    init = x[:5].copy()
    km = dc_kernels.Kmeans(4, 5, niter=1, max_points_per_centroid=20, backend=backend)
    km.train(x, init_centroids=init)
    # the first objective sums over the 100 sampled points (about a tenth), not over all 1000
    full, _ = ref.assign(x, init)
    assert 0.03 * full.sum() < km.obj[0] < 0.3 * full.sum()


BAD_INPUTS = [
    (lambda: dc_kernels.kmeans(np.full((10, 3), np.nan, np.float32), 2), "NaN"),
    (lambda: dc_kernels.kmeans(np.array([[np.inf, 0.0]] * 5, np.float32), 2), "Inf"),
    (lambda: dc_kernels.kmeans(np.ones((10, 3), np.float32), 0), "positive integer"),
    (lambda: dc_kernels.kmeans(np.ones((10, 3), np.float32), 11), "larger than the number"),
    (lambda: dc_kernels.kmeans(np.ones(10, np.float32), 2), "shape"),
    (lambda: dc_kernels.kmeans(np.ones((2, 2, 2, 2), np.float32), 2), "shape"),
    (lambda: dc_kernels.kmeans(np.ones((10, 3), np.int64), 2), "floating dtype"),
    (lambda: dc_kernels.kmeans(np.ones((10, 3), np.complex64), 2), "real floating"),
    (lambda: dc_kernels.kmeans(np.ones((0, 3), np.float32), 2), "empty"),
    (lambda: dc_kernels.kmeans(np.ones((10, 3), np.float32), 2, precision="fp8"), "precision"),
    (lambda: dc_kernels.kmeans(np.ones((10, 3), np.float32), 2, backend="gpu"), "backend"),
    (lambda: dc_kernels.kmeans("abc", 2), "NumPy array"),
    (lambda: dc_kernels.Kmeans(3, 2, update_indexes=True), "unknown Kmeans option"),
    (lambda: dc_kernels.kmeans(np.ones((10, 3), np.float32), 2, nredo=0), "nredo must be"),
    (lambda: dc_kernels.kmeans(np.ones((10, 3), np.float32), 2, nredo=2,
                               init_centroids=np.ones((2, 3), np.float32)), "cannot be combined"),
    (lambda: dc_kernels.Kmeans(0, 2), "d must be"),
    (lambda: dc_kernels.Kmeans(4, 2).train(np.ones((10, 3), np.float32)), "expected d=4"),
    (lambda: dc_kernels.Kmeans(3, 2).assign(np.ones((10, 3), np.float32)), "before train"),
    (lambda: dc_kernels.kmeans(np.ones((10, 3), np.float32), 2,
                               init_centroids=np.ones((3, 3), np.float32)), "init_centroids"),
]


@pytest.mark.parametrize("call,message", BAD_INPUTS)
def test_bad_input_raises_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_available_backends_reports_reasons():
    table = dc_kernels.available_backends()
    assert set(table) == {"torch", "cpu", "triton", "cuda"}
    assert table["torch"]["available"] and "cpu" in table["torch"]["devices"]
    for row in table.values():
        assert row["available"] or row["reason"]
    if not torch.cuda.is_available():
        assert "cuda" not in table["cuda"]["devices"]


@pytest.mark.parametrize("spherical", [False, True])
def test_chunked_pass_equals_whole_pass(backend, spherical):
    # The driver's chunked pass (what host streaming runs, chunk by chunk on the GPU), here on
    # CPU views. Integer rows: every cluster sum is exact in any order, so centroids, labels
    # and splits agree bit for bit; objectives are float64 sums in another order.
    x, init = testing.exact_ties(500, 6, 12, batch=2, seed=4)
    impl = get_backend(backend, torch.device("cpu"))
    runs = [_lloyd.lloyd(x, init.clone(), 5, impl, "fp32", seed=3, spherical=spherical,
                         chunk_rows=rows) for rows in (None, 37, 500)]
    (whole, whole_history), *chunked = runs
    assert sum(int(h["nsplit"].sum()) for h in whole_history) > 0
    for centroids, history in chunked:
        assert torch.equal(centroids, whole)
        for mine, theirs in zip(history, whole_history, strict=True):
            np.testing.assert_array_equal(mine["nsplit"], theirs["nsplit"])
            np.testing.assert_allclose(mine["obj"], theirs["obj"], rtol=1e-12)
            np.testing.assert_array_equal(mine["imbalance_factor"], theirs["imbalance_factor"])


def test_chunked_row_helpers_equal_whole_calls(backend):
    # assign, covariance (chunk moments merged) and PCA apply over chunks of rows, as they run
    # on host data streamed to a GPU, against one call on all rows.
    impl = get_backend(backend, torch.device("cpu"))
    x = testing.blobs(700, 9, 5, seed=6, spread=0.5, batch=2) * 3.0 + 50.0  # a large mean
    c = testing.random_rows(x, 5, seed=1)
    whole, chunked = (_rows.assign(impl, x, c, "fp32", chunk_rows) for chunk_rows in (None, 64))
    assert torch.equal(whole[1], chunked[1]) and torch.equal(whole[0], chunked[0])
    (mean, cov), (mean_c, cov_c) = (_rows.covariance(impl, x[0], rows) for rows in (None, 64))
    torch.testing.assert_close(mean_c, mean, rtol=1e-13, atol=0)
    torch.testing.assert_close(cov_c, cov, rtol=1e-10, atol=1e-12 * float(cov.abs().max()))
    proj = torch.randn(9, 4, generator=torch.Generator().manual_seed(2))
    applied = [_rows.pca_apply(impl, x[1], mean.float(), proj, True, rows) for rows in (None, 64)]
    torch.testing.assert_close(applied[1], applied[0], rtol=0, atol=0)


def test_auto_order_follows_the_table_and_the_environment(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv(AUTO_ORDER_VARIABLE, raising=False)
    assert auto_order(cuda) == ["triton", "cuda", "torch"]  # as bench measured (README)
    assert auto_order(cpu) == ["cpu", "torch"]
    monkeypatch.setenv(AUTO_ORDER_VARIABLE, "cuda, triton,torch")
    assert auto_order(cuda) == ["cuda", "triton", "torch"]
    monkeypatch.setenv(AUTO_ORDER_VARIABLE, "torch,cpu")
    assert auto_order(cpu) == ["torch", "cpu"]
    assert get_backend("auto", cpu).name == "torch"
    monkeypatch.setenv(AUTO_ORDER_VARIABLE, "cpu,gpu")
    with pytest.raises(ValueError, match="unknown backends"):
        get_backend("auto", cpu)


def test_auto_picks_a_backend_that_has_the_precision(monkeypatch):
    monkeypatch.delenv(AUTO_ORDER_VARIABLE, raising=False)
    x = ref.blobs(200, 4, centres=3, seed=1)
    res = dc_kernels.kmeans(x, 3, niter=2, precision="fp16")  # cpu has fp32 only
    assert res.backend == "torch"
    with pytest.raises(ValueError, match="precisions"):
        dc_kernels.kmeans(x, 3, niter=2, backend="cpu", precision="fp16")
    monkeypatch.setenv(AUTO_ORDER_VARIABLE, "cpu")
    with pytest.raises(ValueError, match="cpu: it supports precisions"):
        dc_kernels.kmeans(x, 3, niter=2, precision="fp16")


# ---------------------------------------------------------------- no silent wrong answer
@pytest.mark.parametrize("exponent", [70, -80, 120])
def test_extreme_magnitudes_give_the_exactly_scaled_answer(backend, exponent):
    # Squared distances of |x| ~ 2^70 overflow fp32 and those of 2^-80 vanish: the data are
    # rescaled by a power of two, so labels and centroids are those of the unscaled problem,
    # exactly, and the objectives scale by 4^exponent.
    x = ref.blobs(400, 6, centres=5, seed=30, spread=0.3)
    init = x[:5].copy()
    scale = np.float32(2.0 ** exponent)
    plain = dc_kernels.kmeans(x, 5, niter=4, init_centroids=init, backend=backend)
    big = dc_kernels.kmeans(x * scale, 5, niter=4, init_centroids=init * scale, backend=backend)
    np.testing.assert_array_equal(big.labels, plain.labels)
    np.testing.assert_array_equal(big.centroids, plain.centroids * scale)
    assert np.isfinite(big.inertia) and big.inertia > 0
    assert big.inertia == pytest.approx(plain.inertia * 4.0 ** exponent, rel=1e-6)
    for mine, theirs in zip(big.history, plain.history, strict=True):
        assert mine["obj"] == pytest.approx(theirs["obj"] * 4.0 ** exponent, rel=1e-6)


def test_float64_beyond_float32_is_refused_and_within_is_exact(backend):
    x = ref.blobs(300, 4, centres=3, seed=31, spread=0.3).astype(np.float64)
    with pytest.raises(ValueError, match="outside float32's normal range"):
        dc_kernels.kmeans(x * 1e300, 3, niter=2, backend=backend)
    with pytest.raises(ValueError, match="outside float32's normal range"):
        dc_kernels.kmeans(x * 1e-300, 3, niter=2, backend=backend)
    plain = dc_kernels.kmeans(x, 3, niter=3, backend=backend)
    big = dc_kernels.kmeans(x * 2.0 ** 100, 3, niter=3, backend=backend)  # |x| ~ 1e30
    np.testing.assert_array_equal(big.labels, plain.labels)
    assert big.inertia == pytest.approx(plain.inertia * 4.0 ** 100, rel=1e-6)


def test_assign_distances_beyond_float32_come_back_as_float64(backend):
    x = ref.blobs(200, 8, centres=4, seed=32, spread=0.5) * np.float32(2.0 ** 66)
    km = dc_kernels.Kmeans(8, 4, niter=3, backend=backend)
    km.train(x)
    with pytest.warns(UserWarning, match="float64"):
        D, I = km.assign(x)
    d64, i64 = ref.assign(x, km.centroids)
    assert D.dtype == np.float64 and np.isfinite(D).all()
    np.testing.assert_array_equal(I, i64)
    np.testing.assert_allclose(D, d64, rtol=1e-5)


def test_value_range_reads_in_chunks_and_broadcast_views_once(monkeypatch):
    from dc_kernels import _arrays

    sizes = []
    original = torch.Tensor.abs
    monkeypatch.setattr(torch.Tensor, "abs", lambda t: sizes.append(t.numel()) or original(t))
    x = torch.randn(4096, 3000)
    assert _arrays.value_range(x) == float(original(x).max())
    assert max(sizes) <= _arrays.FINITE_CHUNK < x.numel()
    sizes.clear()
    wide = torch.zeros(1, 4096).expand(3_000_000, 4096)  # 12e9 values, one row of storage
    wide_bad = torch.tensor([[0.0, np.nan]]).expand(10**9, 2)
    assert _arrays.value_range(wide) == 0.0 and max(sizes) == 4096
    with pytest.raises(ValueError, match="non-finite"):
        _arrays.value_range(wide_bad)


def test_a_request_beyond_memory_is_refused_before_allocating():
    from dc_kernels import _arrays

    free = _arrays.available_bytes(torch.device("cpu"))
    rows = int(free // (4 * 1024)) * 4 + 1024  # its float32 copy is 4x the available memory
    x = torch.ones(1, 1024).expand(rows, 1024)  # not contiguous: the kernels need a copy
    with pytest.raises(ValueError, match=r"needs about .* GiB on cpu \(working copy of x"):
        dc_kernels.kmeans(x, 10, niter=1, backend="torch")


BAD_ARGUMENTS = [
    ({"seed": -1}, "seed must be"), ({"seed": 2 ** 64}, "seed must be"),
    ({"seed": 1.5}, "seed must be"), ({"seed": "1"}, "seed must be"),
    ({"max_points_per_centroid": 0}, "max_points_per_centroid must be"),
    ({"max_points_per_centroid": -10}, "max_points_per_centroid must be"),
    ({"niter": -1}, "niter must be"), ({"niter": 2.0}, "niter must be"),
    ({"spherical": "yes"}, "spherical must be a bool"),
    ({"init_method": "afk_mc2"}, "AFK_MC2 is not implemented"),
]


@pytest.mark.parametrize("options,message", BAD_ARGUMENTS)
def test_every_argument_is_checked_where_it_enters(options, message):
    x = np.ones((20, 3), np.float32)
    with pytest.raises(ValueError, match=message):
        dc_kernels.kmeans(x, 2, **options)
    with pytest.raises(ValueError, match=message):
        dc_kernels.Kmeans(3, 2, **options)


def test_tensors_that_cannot_be_clustered_as_they_are(backend):
    x = torch.from_numpy(ref.blobs(100, 3, centres=2, seed=33))
    with pytest.raises(ValueError, match="x requires grad.*detach"):
        dc_kernels.kmeans(x.clone().requires_grad_(), 2, niter=1, backend=backend)
    with pytest.raises(ValueError, match="meta device"):
        dc_kernels.kmeans(torch.empty(100, 3, device="meta"), 2, niter=1, backend=backend)
    with pytest.raises(ValueError, match="weights requires grad"):
        dc_kernels.Kmeans(3, 2, backend=backend).train(
            x, weights=torch.ones(100, requires_grad=True))
    reversed_rows = x.numpy()[::-1]  # negative strides: copied, same answer as a copy
    res = dc_kernels.kmeans(reversed_rows, 2, niter=2, backend=backend)
    same = dc_kernels.kmeans(reversed_rows.copy(), 2, niter=2, backend=backend)
    np.testing.assert_array_equal(res.labels, same.labels)
