"""The Lloyd driver with the ``cpu`` backend's pruned assignment (``CpuBackend.pruner``) against
the same driver with the plain ``assign``: identical labels, centroids, objectives and splits on
every instruction set this CPU can run, on data that stresses the bounds (splits, exact ties,
overlap), and proof that it does skip rows on clustered data (a counter, not a timing)."""

import numpy as np
import pytest
import torch

import dc_kernels
from dc_kernels import _cpu, testing
from dc_kernels.backends import get_backend
from dc_kernels.backends.cpu import CpuBackend


@pytest.fixture(params=_cpu.supported_isas())
def isa(request):
    _cpu.set_isa(request.param)
    yield request.param
    _cpu.set_isa("auto")


def run(x: torch.Tensor, init: torch.Tensor, niter: int, pruned: bool,
        monkeypatch: pytest.MonkeyPatch, spherical: bool = False) -> dc_kernels.KmeansResult:
    """One k-means run on the cpu backend, with pruning forced on (any size) or off."""
    with monkeypatch.context() as patch:
        patch.setattr(CpuBackend, "prune_min_work", 0 if pruned else 1 << 62)
        patch.setattr(CpuBackend, "prune_min_k", 2)
        return dc_kernels.kmeans(x, init.shape[-2], niter=niter, init_centroids=init,
                                 backend="cpu", seed=11, spherical=spherical)


def assert_same(pruned: dc_kernels.KmeansResult, plain: dc_kernels.KmeansResult) -> None:
    assert torch.equal(pruned.labels, plain.labels)
    np.testing.assert_allclose(pruned.centroids.numpy(), plain.centroids.numpy(), rtol=1e-6,
                               atol=1e-6 * float(plain.centroids.abs().max()))
    for mine, theirs in zip(pruned.history, plain.history, strict=True):
        np.testing.assert_allclose(mine["obj"], theirs["obj"], rtol=1e-9)
        np.testing.assert_array_equal(mine["nsplit"], theirs["nsplit"])
        np.testing.assert_allclose(mine["imbalance_factor"], theirs["imbalance_factor"],
                                   rtol=1e-12)


def blobs(batch: int, n: int, k: int, d: int, spread: float,
          seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Points around k N(0, 1) centres with N(0, spread^2) noise; init: k distinct points."""
    x = testing.blobs(n, d, k, seed=seed, spread=spread, batch=batch)
    return x, testing.random_rows(x, k, seed=seed)


# (batch, n, k, d, spread): well separated, overlapping (Lloyd keeps moving), K large enough
# that some movers are measured on every ISA (a quarter of K spans an AVX-512 panel of 48).
CASES = [(1, 3000, 40, 16, 0.05), (1, 3000, 40, 16, 1.0), (1, 4000, 200, 8, 0.3),
         (3, 1500, 50, 24, 0.5), (1, 2000, 60, 130, 0.7)]


@pytest.mark.parametrize("batch,n,k,d,spread", CASES)
def test_pruned_equals_unpruned(isa, monkeypatch, batch, n, k, d, spread):
    x, init = blobs(batch, n, k, d, spread, seed=n + k + d)
    assert_same(run(x, init, 12, True, monkeypatch), run(x, init, 12, False, monkeypatch))


def test_pruned_equals_unpruned_with_splits(isa, monkeypatch):
    # Half the initial centroids are copies of the other half: the copies lose every tie, so
    # their clusters empty and are split (one centroid jumps to a donor's): the drifts must
    # carry the bounds across the jump.
    x, init = blobs(1, 3000, 64, 12, 0.4, seed=3)
    init[:, 32:] = init[:, :32]
    pruned, plain = run(x, init, 10, True, monkeypatch), run(x, init, 10, False, monkeypatch)
    assert plain.history[0]["nsplit"] == 32
    assert_same(pruned, plain)


def test_pruned_equals_unpruned_on_exact_ties(isa, monkeypatch):
    # Integer points (many duplicates, many points exactly equidistant from two centroids) and
    # duplicated initial centroids: every near-tie rule of the assignment is exercised.
    x, init = testing.exact_ties(2500, 6, 48, batch=2, seed=5, high=1)
    assert_same(run(x, init, 10, True, monkeypatch), run(x, init, 10, False, monkeypatch))


@pytest.mark.parametrize("scale,offset", [(1.0, 100.0), (1e-21, 0.0)])
def test_pruned_equals_unpruned_at_awkward_scales(isa, monkeypatch, scale, offset):
    # Far from the origin, cancellation in ||c||^2 - 2 x.c makes the fp32 error bounds wide;
    # at 1e-21, products underflow into subnormals. The bounds must stay safe (and give up).
    x, init = blobs(1, 2000, 40, 16, 0.3, seed=9)
    x, init = x * scale + offset, init * scale + offset
    assert_same(run(x, init, 8, True, monkeypatch), run(x, init, 8, False, monkeypatch))


def test_pruned_equals_unpruned_spherical(isa, monkeypatch):
    x, init = blobs(1, 3000, 40, 16, 0.3, seed=13)
    assert_same(run(x, init, 8, True, monkeypatch, spherical=True),
                run(x, init, 8, False, monkeypatch, spherical=True))


def test_pruning_skips_rows_on_clustered_data(monkeypatch):
    x, init = blobs(1, 4000, 200, 8, 0.05, seed=21)
    run(x, init, 10, True, monkeypatch)
    skipped = torch.stack(get_backend("cpu", torch.device("cpu")).last_skipped)[:, 0]
    assert skipped[0] == 0  # the first assignment has no bounds yet
    # Once the clusters have formed, nearly every row keeps its centroid provably.
    assert skipped[1:].sum() > 0.5 * 9 * 4000 and skipped[-1] > 0.9 * 4000, skipped.tolist()


def test_small_problems_are_not_pruned():
    x, _ = blobs(1, 500, 40, 8, 0.3, seed=1)
    assert CpuBackend().pruner(x, 40) is None
    assert CpuBackend().pruner(blobs(1, 500, 8, 8, 0.3, seed=1)[0].repeat(1, 2000, 1), 8) is None
