"""The C++ ``cpu`` backend against float64 NumPy and the torch reference, on every instruction
set this CPU can run (AVX-512, AVX2, scalar), with shapes that straddle the tile edges."""

import numpy as np
import pytest
import torch

from dc_kernels import _cpu
from dc_kernels.backends.cpu import CpuBackend
from dc_kernels.backends.reference import TorchBackend, split_draw

CPU = CpuBackend()
REF = TorchBackend()


@pytest.fixture(params=_cpu.supported_isas())
def isa(request):
    _cpu.set_isa(request.param)
    yield request.param
    _cpu.set_isa("auto")


def separated(batch: int, n: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points near k well-separated centres (every centre used when n >= k), and the centres."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(batch, k, d)) * 4.0
    means[..., 0] += 3.0 * np.arange(k)  # separation even when d is tiny
    owner = np.arange(n) % k
    x = means[:, owner] + 0.05 * rng.normal(size=(batch, n, d))
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(means.astype(np.float32))


def assign64(x: torch.Tensor, c: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 squared distances to the nearest centroid, its index, and the margin to the
    second nearest (relative), per problem of a batch."""
    x64, c64 = x.double().numpy(), c.double().numpy()
    full = ((x64[:, :, None, :] - c64[:, None, :, :]) ** 2).sum(-1)
    labels = full.argmin(-1)
    best = np.take_along_axis(full, labels[..., None], -1)[..., 0]
    if full.shape[-1] > 1:
        second = np.partition(full, 1, axis=-1)[..., 1]
        margin = (second - best) / np.maximum(second, 1e-30)
    else:
        margin = np.ones_like(best)
    return best, labels, margin


# B, N, K, d: microkernel tiles are 8x48 (AVX-512), 6x16 (AVX2), 4x8 (scalar); none of these
# is a multiple of all of them, and K=1, K=N, d=1 and d=1000 are the corners.
SHAPES = [(1, 1000, 37, 19), (1, 257, 1, 5), (1, 130, 130, 33), (1, 300, 49, 1),
          (1, 61, 97, 1000), (2, 333, 100, 256), (1, 49, 48, 16)]


@pytest.mark.parametrize("batch,n,k,d", SHAPES)
def test_assign_matches_float64_and_reference(isa, batch, n, k, d):
    x, c = separated(batch, n, k, d, seed=n + k + d)
    dist, labels = CPU.assign(x, c, "fp32")
    best64, labels64, margin = assign64(x, c)
    assert margin.min() > 1e-3  # the data has no near-ties, so labels must be exact
    np.testing.assert_array_equal(labels.numpy(), labels64)
    np.testing.assert_allclose(dist.numpy(), best64, rtol=1e-5, atol=1e-6)
    ref_dist, ref_labels = REF.assign(x, c, "fp32")
    assert torch.equal(labels, ref_labels)
    torch.testing.assert_close(dist, ref_dist, rtol=1e-5, atol=1e-6)
    assert dist.dtype == torch.float32 and labels.dtype == torch.int64


def test_assign_random_data_agrees_with_reference(isa):
    # Unstructured data: labels may differ only where float32 rounding decides a near-tie.
    torch.manual_seed(0)
    x, c = torch.randn(1, 2000, 64), torch.randn(1, 300, 64)
    dist, labels = CPU.assign(x, c, "fp32")
    best64, labels64, margin = assign64(x, c)
    differ = labels.numpy() != labels64
    assert np.all(margin[differ] < 1e-5)
    np.testing.assert_allclose(dist.numpy()[~differ], best64[~differ], rtol=1e-5)


def test_assign_ties_go_to_lowest_index(isa):
    # Copies of one centroid at indices in different lanes and panels of every microkernel.
    torch.manual_seed(1)
    c = torch.randn(1, 150, 24)
    copies = [3, 20, 47, 50, 100, 149]
    c[0, copies] = c[0, 149].clone()
    x = c[:, copies].clone()
    _, labels = CPU.assign(x, c, "fp32")
    assert labels.tolist() == [[3] * len(copies)]


def test_assign_settles_near_ties_with_exact_distances(isa):
    # Far from the origin, ||c||^2 - 2 x.c loses its last digits to cancellation in fp32: two
    # centroids 1 apart around (1000, ..., 1000) are misordered for many points even with
    # exactly rounded dot products, although their true distances differ by more than 0.1 %.
    # The kernel must still label those points exactly (it settles near-ties by the exact
    # distances of the two best candidates).
    rng = np.random.default_rng(0)
    d = 64
    centre = np.full(d, 1000.0)
    c = np.concatenate([np.stack([centre, centre]), centre + 30 * rng.normal(size=(6, d))])
    c[0, 0] += 0.5
    c[1, 0] -= 0.5
    x = (centre + 0.5 * rng.normal(size=(2000, d))).astype(np.float32)
    c = c.astype(np.float32)
    best64, labels64, margin = assign64(torch.from_numpy(x)[None], torch.from_numpy(c)[None])
    clear = margin[0] > 1e-3
    x64, c64 = x.astype(np.float64), c.astype(np.float64)
    c_sq = (c64 * c64).sum(1).astype(np.float32)
    dots = (x64 @ c64.T).astype(np.float32)  # exactly rounded fp32 dot products
    expanded = (c_sq[None] - np.float32(2.0) * dots).argmin(1)
    assert np.mean((expanded != labels64[0])[clear]) > 0.05  # the case is hard
    dist, labels = CPU.assign(torch.from_numpy(x)[None], torch.from_numpy(c)[None], "fp32")
    np.testing.assert_array_equal(labels[0].numpy()[clear], labels64[0][clear])
    np.testing.assert_allclose(dist[0].numpy(), best64[0], rtol=1e-5)


def test_batched_equals_separate_calls(isa):
    x, c = separated(3, 301, 53, 40, seed=7)
    dist, labels = CPU.assign(x, c, "fp32")
    for b in range(3):
        d1, l1 = CPU.assign(x[b:b + 1], c[b:b + 1].clone(), "fp32")
        assert torch.equal(l1[0], labels[b]) and torch.equal(d1[0], dist[b])
    counts = CPU.update(x, labels, c)
    for b in range(3):
        cb = separated(3, 301, 53, 40, seed=7)[1][b:b + 1].clone()
        assert torch.equal(CPU.update(x[b:b + 1], labels[b:b + 1], cb)[0], counts[b])
        torch.testing.assert_close(cb[0], c[b], rtol=1e-6, atol=1e-6)


def test_assign_converts_dtype_and_layout():
    x, c = separated(1, 200, 10, 12, seed=3)
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, not contiguous
    assert not x_t.is_contiguous()
    expect = CPU.assign(x, c, "fp32")
    got = CPU.assign(x_t, c.double(), "fp32")
    assert torch.equal(expect[1], got[1]) and torch.equal(expect[0], got[0])


@pytest.mark.parametrize("batch,n,k,d", [(1, 500, 40, 17), (2, 1000, 300, 64), (1, 50, 1, 3)])
def test_update_matches_float64(batch, n, k, d):
    rng = np.random.default_rng(n + k)
    x = torch.from_numpy(rng.normal(size=(batch, n, d)).astype(np.float32))
    # Only every third cluster receives points, so most are empty and must stay unchanged.
    labels = torch.from_numpy(rng.choice(np.arange(0, k, 3), size=(batch, n)))
    before = torch.from_numpy(rng.normal(size=(batch, k, d)).astype(np.float32))
    c = before.clone()
    counts = CPU.update(x, labels, c)
    for b in range(batch):
        expect_counts = np.bincount(labels[b].numpy(), minlength=k)
        np.testing.assert_array_equal(counts[b].numpy(), expect_counts)
        for j in range(k):
            if expect_counts[j] == 0:
                assert torch.equal(c[b, j], before[b, j])
            else:
                mean = x[b][labels[b] == j].double().mean(0).numpy()
                np.testing.assert_allclose(c[b, j].numpy(), mean, rtol=1e-5, atol=1e-6)
    c_ref = before.clone()
    assert torch.equal(REF.update(x, labels, c_ref), counts)
    torch.testing.assert_close(c, c_ref, rtol=1e-5, atol=1e-6)


def test_split_draw_equals_python():
    for seed in (0, 1234, -7, 2**63 + 5):
        for iteration in (0, 1, 19, 10**6):
            for cluster in (0, 3, 9999, 2**40):
                assert _cpu.split_draw(seed & (2**64 - 1), iteration, cluster) == split_draw(
                    seed, iteration, cluster)


def _split_case(batch: int, k: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    counts = rng.integers(0, 6, size=(batch, k))
    counts[rng.random((batch, k)) < 0.3] = 0  # many empty clusters
    counts[:, 0] = 1  # a singleton, which must never donate
    c = rng.normal(size=(batch, k, d)).astype(np.float32)
    return torch.from_numpy(c), torch.from_numpy(counts.astype(np.int64))


@pytest.mark.parametrize("seed,iteration", [(1234, 0), (5, 17), (-3, 2)])
def test_split_equals_reference_exactly(seed, iteration):
    c, counts = _split_case(2, 60, 9, seed=abs(seed))
    c_ref, n_ref = c.clone(), counts.clone()
    ns_ref = REF.split(c_ref, n_ref, seed, iteration)
    c_cpu, n_cpu = c.clone(), counts.clone()
    ns_cpu = CPU.split(c_cpu, n_cpu, seed, iteration)
    assert ns_cpu.tolist() == ns_ref.tolist() and min(ns_cpu.tolist()) > 0
    assert torch.equal(n_cpu, n_ref) and torch.equal(c_cpu, c_ref)
    assert counts.sum() == n_cpu.sum()  # points are shared, never created
    # Deterministic: the same call again gives bit-identical results.
    c_again, n_again = c.clone(), counts.clone()
    CPU.split(c_again, n_again, seed, iteration)
    assert torch.equal(c_again, c_cpu) and torch.equal(n_again, n_cpu)


def test_split_with_nothing_to_donate_stops():
    c = torch.randn(1, 5, 4)
    counts = torch.tensor([[1, 0, 1, 0, 1]])
    before = c.clone()
    assert CPU.split(c, counts, 0, 0).tolist() == [0]
    assert torch.equal(c, before) and counts.tolist() == [[1, 0, 1, 0, 1]]


def test_split_changes_with_seed():
    c, counts = _split_case(1, 200, 3, seed=9)
    donors = []
    for seed in (1, 2):
        cc, nn = c.clone(), counts.clone()
        CPU.split(cc, nn, seed, 0)
        donors.append(nn)
    assert not torch.equal(donors[0], donors[1])


@pytest.mark.parametrize("n,d_in,d_out", [(300, 64, 16), (97, 1000, 50), (10, 7, 7), (5, 1, 1)])
@pytest.mark.parametrize("normalize", [True, False])
def test_pca_apply_matches_float64(isa, n, d_in, d_out, normalize):
    rng = np.random.default_rng(d_in)
    x = rng.normal(size=(n, d_in)) + 2.0
    mean = x.mean(0)
    proj = rng.normal(size=(d_in, d_out)) / np.sqrt(d_in)
    y64 = (x - mean) @ proj
    if normalize:
        y64 /= np.linalg.norm(y64, axis=1, keepdims=True)
    xt, mt, pt = (torch.from_numpy(a.astype(np.float32)) for a in (x, mean, proj))
    y = CPU.pca_apply(xt, mt, pt, normalize)
    assert y.shape == (n, d_out) and y.dtype == torch.float32
    np.testing.assert_allclose(y.numpy(), y64, rtol=2e-4, atol=2e-5)
    torch.testing.assert_close(y, REF.pca_apply(xt, mt, pt, normalize), rtol=1e-4, atol=1e-5)


def test_pca_apply_accepts_float64_input():
    x = torch.randn(40, 20, dtype=torch.float64)
    mean, proj = x.mean(0).float(), torch.randn(20, 5)
    torch.testing.assert_close(CPU.pca_apply(x, mean, proj, True),
                               REF.pca_apply(x, mean, proj, True), rtol=1e-5, atol=1e-6)


def test_availability():
    assert CpuBackend.unavailable_reason(torch.device("cpu")) == ""
    assert "CPU" in CpuBackend.unavailable_reason(torch.device("meta"))
    assert CpuBackend.precisions == ("fp32",)


def test_unknown_isa_is_rejected():
    with pytest.raises(ValueError, match="unknown instruction set"):
        _cpu.set_isa("sse9")


@pytest.mark.parametrize("call,match", [
    (lambda: CPU.assign(torch.randn(10, 3), torch.randn(1, 2, 3), "fp32"), "3 dimensions"),
    (lambda: CPU.assign(torch.ones(1, 10, 3, dtype=torch.int32), torch.randn(1, 2, 3), "fp32"),
     "dtype"),
    (lambda: CPU.assign(torch.randn(1, 10, 3), torch.randn(1, 2, 4), "fp32"), r"\(1, 2, 4\)"),
    (lambda: CPU.assign(torch.randn(2, 10, 3), torch.randn(1, 2, 3), "fp32"), "do not match"),
    (lambda: CPU.assign(torch.randn(1, 0, 3), torch.randn(1, 2, 3), "fp32"), "empty"),
    (lambda: CPU.assign(torch.randn(1, 10, 3), torch.randn(1, 2, 3), "tf32"), "precisions"),
    (lambda: CPU.update(torch.randn(1, 10, 3), torch.zeros(1, 9, dtype=torch.int64),
                        torch.randn(1, 2, 3)), "labels must have shape"),
    (lambda: CPU.update(torch.randn(1, 10, 3), torch.full((1, 10), 2), torch.randn(1, 2, 3)),
     r"\[0, 2\)"),
    (lambda: CPU.update(torch.randn(1, 10, 3), torch.zeros(1, 10, dtype=torch.int32),
                        torch.randn(1, 2, 3)), "int64"),
    (lambda: CPU.update(torch.randn(1, 10, 3), torch.zeros(1, 10, dtype=torch.int64),
                        torch.randn(1, 3, 2).transpose(1, 2)), "contiguous"),
    (lambda: CPU.update(torch.randn(1, 10, 3), torch.zeros(1, 10, dtype=torch.int64),
                        torch.randn(1, 2, 3).double()), "float32"),
    (lambda: CPU.split(torch.randn(1, 4, 3), torch.zeros(1, 5, dtype=torch.int64), 0, 0),
     "counts must have shape"),
    (lambda: CPU.split(torch.randn(1, 4, 3), torch.zeros(1, 4, dtype=torch.int64), 0, -1),
     "non-negative"),
    (lambda: CPU.pca_apply(torch.randn(5, 4), torch.zeros(3), torch.randn(4, 2), True),
     "disagree on d_in"),
    (lambda: CPU.pca_apply(torch.randn(5, 4), torch.zeros(4), torch.randn(4), True),
     "2 dimensions"),
    (lambda: CPU.assign(np.zeros((1, 4, 2), np.float32), torch.randn(1, 2, 2), "fp32"),
     "torch tensor"),
])
def test_bad_inputs_raise(call, match):
    with pytest.raises(ValueError, match=match):
        call()
