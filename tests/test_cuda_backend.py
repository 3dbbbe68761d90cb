"""What only the ``cuda`` backend (pybind11 extension ``dc_kernels._cuda``) does; the shared
contract, on a GPU, is tests/test_backend_contract.py.

On a machine without a GPU: the extension was built whenever nvcc is present, its host code
(the split draw, size checks, CUDA errors raised as Python exceptions) works, it takes keyword
arguments only (in the order of the cpu extension's), and the backend refuses host tensors.
"""

import os
import re
import shutil
from pathlib import Path

import pytest
import torch

import dc_kernels
from dc_kernels import _loader
from dc_kernels.backends import get_backend, unavailable_reason
from dc_kernels.backends.cuda import CudaBackend
from dc_kernels.contract import split_draw, split_seed

HAS_GPU = torch.cuda.is_available()
EXT = _loader.load("_cuda")
needs_ext = pytest.mark.skipif(EXT is None, reason="dc_kernels._cuda is not built")


def _nvcc_present() -> bool:
    """The rule setup.py follows to decide whether it builds the extension."""
    cuda_home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if cuda_home and (Path(cuda_home) / "bin" / "nvcc").exists():
        return True
    return shutil.which("nvcc") is not None


@pytest.mark.skipif(not _nvcc_present() or os.environ.get("DC_SKIP_CUDA_BUILD") == "1",
                    reason="nvcc absent or DC_SKIP_CUDA_BUILD=1: the extension is not built")
def test_extension_was_built_and_imports():
    assert EXT is not None, _loader.why("_cuda")
    for entry in ("assign", "cluster_sums", "split", "covariance", "pca_apply", "split_draw"):
        assert callable(getattr(EXT, entry))


@needs_ext
@pytest.mark.parametrize("seed,iteration,cluster", [
    (1234, 0, 0), (1234, 19, 9999), (0, 3, 7), (2**63 + 5, 2, 100_000), (-1, 0, 5), (-77, 4, 1)])
def test_split_draw_is_the_contract_hash_bit_for_bit(seed, iteration, cluster):
    # The kernel's own hash function (csrc/common/contract.h), evaluated on the host.
    assert EXT.split_draw(split_seed(seed), iteration, cluster) == split_draw(seed, iteration,
                                                                              cluster)


def _argument_names(function) -> list[str]:
    return re.findall(r"(\w+):", function.__doc__.splitlines()[0])


@needs_ext
@pytest.mark.parametrize("step", ["assign", "cluster_sums", "split", "pca_apply"])
def test_native_steps_take_keywords_in_the_cpu_extension_order(step):
    names = _argument_names(getattr(EXT, step))
    cpu_ext = _loader.load("_cpu")
    if cpu_ext is not None:
        shared = [n for n in _argument_names(getattr(cpu_ext, step)) if n in names]
        assert shared == [n for n in names if n in shared] and len(shared) >= 6
    with pytest.raises(TypeError, match="incompatible function arguments"):
        getattr(EXT, step)(*range(len(names)))  # a positional call could swap two pointers


@needs_ext
def test_extension_rejects_bad_sizes_and_names_with_value_error():
    assign = dict(x=0, centroids=0, dist=0, labels=0, batch=1, n=1, k=1, d=1, x_dtype="float32",
                  precision="fp32", c_sqnorm=0, stream=0)
    with pytest.raises(ValueError, match="float64"):
        EXT.assign(**{**assign, "x_dtype": "float64"})
    with pytest.raises(ValueError, match="precision 'int8'"):
        EXT.assign(**{**assign, "precision": "int8"})
    with pytest.raises(ValueError, match=r"B=0"):
        EXT.cluster_sums(x=0, labels=0, sums=0, counts=0, batch=0, n=1, k=1, d=1,
                         x_dtype="float32", stream=0)
    with pytest.raises(ValueError, match=r"B=70000"):
        EXT.split(centroids=0, counts=0, nsplit=0, batch=70000, k=4, d=4, seed=0, iteration=0,
                  iteration_on_device=0, stream=0)


@needs_ext
@pytest.mark.skipif(HAS_GPU, reason="checks the error path of a machine without a GPU")
def test_cuda_failure_raises_runtime_error_naming_the_call():
    with pytest.raises(RuntimeError, match="split_kernel"):
        EXT.split(centroids=0, counts=0, nsplit=0, batch=1, k=4, d=4, seed=0, iteration=0,
                  iteration_on_device=0, stream=0)
    with pytest.raises(RuntimeError, match="cudaMemsetAsync"):
        EXT.covariance(x=0, mean=0, cov=0, n=1, d=1, x_dtype="float32", stream=0)


def test_steps_refuse_host_tensors_before_launching():
    backend = CudaBackend()
    x, c = torch.zeros(1, 10, 3), torch.zeros(1, 4, 3)
    counts = torch.zeros(1, 4, dtype=torch.int64)
    calls = [lambda: backend.assign(x, c, "fp32"),
             lambda: backend.cluster_sums(x, torch.zeros(1, 10, dtype=torch.int64), c, counts),
             lambda: backend.split(c, counts, 0, 0), lambda: backend.covariance(x[0]),
             lambda: backend.pca_apply(x[0], torch.zeros(3), torch.zeros(3, 2), True)]
    for call in calls:
        with pytest.raises(ValueError, match="cuda device here; .* is on cpu"):
            call()


def test_availability_reasons():
    assert "not meta" in CudaBackend.unavailable_reason(torch.device("meta"))
    reason = unavailable_reason("cuda", torch.device("cuda"))
    if EXT is None:
        assert "not built" in reason and "nvcc" in reason
    elif not HAS_GPU:
        assert reason == "torch sees no CUDA device"
        with pytest.raises(ValueError, match="cannot run on cpu"):
            get_backend("cuda", torch.device("cpu"))  # host data streams only to a GPU
    else:
        assert reason == ""
    assert "cuda" in dc_kernels.available_backends()


def test_missing_extension_reason_says_how_to_build(monkeypatch):
    monkeypatch.setitem(_loader._modules, "_cuda", None)
    monkeypatch.setitem(_loader._errors, "_cuda", "No module named 'dc_kernels._cuda'; "
                        + _loader._HOW_TO_BUILD["_cuda"])
    reason = CudaBackend.unavailable_reason(torch.device("cuda", 0))
    assert "dc_kernels._cuda is not built" in reason
    assert "DC_SKIP_CUDA_BUILD" in reason


# ----------------------------------------------------------------------------- GPU
@pytest.mark.gpu
@pytest.mark.skipif(not (HAS_GPU and EXT is not None),
                    reason="needs a CUDA device and the built extension")
def test_gpu_steps_capture_in_a_cuda_graph():
    # No host sync inside a step, the iteration read on the device: assign + cluster_sums +
    # finalize + split are captured and replayed with the eager result.
    backend = CudaBackend()
    x = torch.round(8 * torch.randn(1, 5000, 32, generator=torch.Generator().manual_seed(8)))
    x = x.cuda()
    c = torch.cat([x[:, :32], x[:, :32]], dim=1).contiguous()  # duplicates: splits
    it = torch.zeros(1, dtype=torch.int64, device="cuda")

    def iteration(centroids: torch.Tensor) -> torch.Tensor:
        _, labels = backend.assign(x, centroids, "fp16")
        sums = torch.zeros_like(centroids)
        counts = torch.zeros(centroids.shape[:2], dtype=torch.int64, device="cuda")
        backend.cluster_sums(x, labels, sums, counts)
        backend.finalize(sums, counts, centroids)
        return backend.split(centroids, counts, 5, it)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # warm-up outside the capture, as torch asks
        iteration(c.clone())
    torch.cuda.current_stream().wait_stream(stream)
    graphed = c.clone()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        graph_nsplit = iteration(graphed)
    graph.replay()
    eager = c.clone()
    nsplit = iteration(eager)
    torch.cuda.synchronize()
    assert int(graph_nsplit) == int(nsplit) == 32
    torch.testing.assert_close(graphed, eager, rtol=0, atol=0)
