"""``PCAWhitening`` (fit, whitening, floor, array kinds) against float64 NumPy; its steps
(covariance, top_eigh, pca_apply) are checked on every backend by test_backend_contract.py."""

import numpy as np
import pytest
import torch

import dc_kernels
from tests import reference_numpy as oracle
from tests.reference_numpy import correlated


def test_fit_is_the_float64_eigendecomposition(backend):
    x = correlated(2000, 20, seed=20)
    pca = dc_kernels.PCAWhitening(20, 8, backend=backend).train(x)
    mean, cov = oracle.covariance(x)
    values, vectors = oracle.top_eigh(cov, 8)
    np.testing.assert_allclose(pca.mean.numpy(), mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(pca.eigenvalues.numpy(), values, rtol=1e-8)
    dots = np.abs((pca.components.numpy() * vectors.T).sum(1))  # up to sign
    np.testing.assert_allclose(dots, 1.0, atol=1e-6)


def test_whitened_output_has_identity_covariance(backend):
    x = correlated(4000, 32, seed=1)
    pca = dc_kernels.PCAWhitening(32, 12, normalize=False, backend=backend).train(x)
    y = pca.apply(x).astype(np.float64)
    np.testing.assert_allclose(np.cov(y, rowvar=False, bias=True), np.eye(12), atol=2e-4)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4)


def test_normalised_rows_are_unit(backend):
    x = correlated(1000, 24, seed=2)
    y = dc_kernels.PCAWhitening(24, 10, backend=backend).train(x).apply(x)
    np.testing.assert_allclose(np.linalg.norm(y, axis=1), 1.0, rtol=1e-5)


def test_eigen_power_zero_is_plain_pca(backend):
    x = correlated(800, 16, seed=3)
    pca = dc_kernels.PCAWhitening(16, 5, eigen_power=0.0, normalize=False,
                                  backend=backend).train(x)
    np.testing.assert_allclose(pca.apply(x).astype(np.float64).var(0), pca.eigenvalues.numpy(),
                               rtol=1e-4)


def test_zero_variance_direction_cannot_blow_up(backend):
    x = correlated(500, 10, seed=4)
    x[:, 3] = 1.5  # a constant feature: one eigenvalue is exactly zero
    pca = dc_kernels.PCAWhitening(10, 10, backend=backend).train(x)
    assert np.isfinite(pca.apply(x)).all()
    assert pca.eigenvalues.min() >= pca.eigenvalues.max() * pca.eigenvalue_floor * 0.999


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_torch_in_torch_out_every_dtype(backend, dtype):
    x = torch.from_numpy(correlated(600, 12, seed=5)).to(dtype)
    pca = dc_kernels.PCAWhitening(12, 6, backend=backend).train(x)
    y = pca.apply(x[::2])
    assert isinstance(y, torch.Tensor) and y.shape == (300, 6) and y.dtype == torch.float32
    ref = dc_kernels.PCAWhitening(12, 6, backend="torch").train(x.double().numpy())
    np.testing.assert_allclose(y.numpy(), ref.apply(x[::2].double().numpy()), atol=2e-4)


BAD = [  # those of every backend's inputs are in test_backend_contract.py
    (lambda: dc_kernels.PCAWhitening(4, 5), "d_out=5 must not exceed d_in=4"),
    (lambda: dc_kernels.PCAWhitening(0, 0), "d_in must be"),
    (lambda: dc_kernels.PCAWhitening(4, 2).train(np.ones((10, 3), np.float32)), "expected d=4"),
    (lambda: dc_kernels.PCAWhitening(3, 2).train(np.ones((1, 3), np.float32)), "at least 2"),
    (lambda: dc_kernels.PCAWhitening(3, 2).apply(np.ones((4, 3), np.float32)), "before train"),
    (lambda: dc_kernels.PCAWhitening(3, 2, eigen_power=float("nan")), "eigen_power must be"),
    (lambda: dc_kernels.PCAWhitening(3, 2, eigen_power=float("inf")), "eigen_power must be"),
    (lambda: dc_kernels.PCAWhitening(3, 2, eigenvalue_floor=float("nan")), "eigenvalue_floor"),
    (lambda: dc_kernels.PCAWhitening(3, 2).train(torch.ones(5, 3, requires_grad=True)),
     "requires grad"),
    (lambda: dc_kernels.PCAWhitening(3, 2).train(np.full((5, 3), 1e300)), "outside float32"),
]


@pytest.mark.parametrize("call,message", BAD)
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("value", [0.0, 1.5, 0.1, -3e7])
def test_constant_data_gives_finite_output_and_a_warning(backend, value):
    # Every direction has zero variance: 0^-0.5 would be Inf (NaN after the L2 step).
    x = np.full((50, 6), value, np.float32)
    with pytest.warns(UserWarning, match="zero variance"):
        pca = dc_kernels.PCAWhitening(6, 3, backend=backend).train(x)
    y = pca.apply(x)
    assert np.isfinite(y).all()
    np.testing.assert_array_equal(y, 0.0)  # nothing varies: no direction carries a value


def test_extreme_magnitudes_fit_as_the_scaled_data(backend):
    x = correlated(500, 8, seed=7)
    plain = dc_kernels.PCAWhitening(8, 4, normalize=False, backend=backend).train(x)
    big = dc_kernels.PCAWhitening(8, 4, normalize=False, backend=backend).train(
        x * np.float32(2.0 ** 100))
    np.testing.assert_allclose(big.eigenvalues.numpy(), plain.eigenvalues.numpy() * 4.0 ** 100,
                               rtol=1e-9)
    np.testing.assert_allclose(big.apply(x * np.float32(2.0 ** 100)), plain.apply(x),
                               rtol=1e-4, atol=1e-4)


def test_a_fit_beyond_memory_is_refused_before_allocating():
    from dc_kernels import _arrays

    free = _arrays.available_bytes(torch.device("cpu"))
    d = int((free / 8) ** 0.5) + 1  # its d x d float64 covariance alone exceeds the memory
    x = torch.zeros(1, d).expand(3, d)
    with pytest.raises(ValueError, match=r"needs about .* GiB on cpu .*covariance"):
        dc_kernels.PCAWhitening(d, 2).train(x)
    with pytest.raises(ValueError, match=r"needs about .* GiB on cpu .*covariance"):
        dc_kernels.PCAMatrix(d, 2).train(x)
