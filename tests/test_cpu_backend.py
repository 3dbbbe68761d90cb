"""What only the C++ ``cpu`` backend does (the shared contract is tests/test_backend_contract.py,
run there on every instruction set this CPU has): near-ties settled by exact distances, any
layout and dtype read, the instruction-set switch."""

import numpy as np
import pytest
import torch

from dc_kernels import _cpu
from dc_kernels.backends.cpu import CpuBackend
from tests import reference_numpy as oracle

CPU = CpuBackend()


@pytest.fixture(params=_cpu.supported_isas())
def isa(request):
    _cpu.set_isa(request.param)
    yield request.param
    _cpu.set_isa("auto")


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
    full = oracle.distances(x, c)
    best = np.sort(full, axis=1)
    clear = (best[:, 1] - best[:, 0]) > 1e-3 * best[:, 1]
    c_sq = (c.astype(np.float64) ** 2).sum(1).astype(np.float32)
    dots = (x.astype(np.float64) @ c.T.astype(np.float64)).astype(np.float32)  # exactly rounded
    expanded = (c_sq[None] - np.float32(2.0) * dots).argmin(1)
    assert np.mean((expanded != full.argmin(1))[clear]) > 0.05  # the case is hard
    dist, labels = CPU.assign(torch.from_numpy(x)[None], torch.from_numpy(c)[None], "fp32")
    np.testing.assert_array_equal(labels[0].numpy()[clear], full.argmin(1)[clear])
    np.testing.assert_allclose(dist[0].numpy(), best[:, 0], rtol=1e-5)


def test_assign_reads_any_layout():
    x = torch.randn(1, 200, 12)
    c = x[:, :10].clone()
    x_t = x.transpose(1, 2).contiguous().transpose(1, 2)  # same values, not contiguous
    assert not x_t.is_contiguous()
    expect = CPU.assign(x, c, "fp32")
    got = CPU.assign(x_t, c.double(), "fp32")
    assert torch.equal(expect[1], got[1]) and torch.equal(expect[0], got[0])


def test_availability():
    assert CpuBackend.unavailable_reason(torch.device("cpu")) == ""
    assert "CPU" in CpuBackend.unavailable_reason(torch.device("meta"))
    assert CpuBackend.precisions == ("fp32",)


def test_unknown_isa_is_rejected():
    with pytest.raises(ValueError, match="unknown instruction set"):
        _cpu.set_isa("sse9")


def test_steps_take_cpu_tensors_only():
    with pytest.raises(ValueError, match="cpu device"):
        CPU.assign(torch.randn(1, 4, 2, device="meta"), torch.randn(1, 2, 2, device="meta"),
                   "fp32")
