"""The CUDA backend: the steps of ``TorchBackend`` run by the compiled ``dc_kernels._cuda``.

Every step follows the same order: check what keeps the native call in bounds (device, dtypes,
shapes: backends/_checks.py, shared with the cpu backend), make the inputs contiguous, allocate
outputs and workspaces with torch on the inputs' device, then pass the ``data_ptr()``s and the
caller's current stream to the extension, by keyword. The extension only enqueues kernels on
that stream (no host sync) and the split can read the iteration from device memory, so the
Lloyd driver captures an iteration in a CUDA graph; given host data, the driver streams it.

Points may be float16, bfloat16 or float32 (read as they are, converted in registers); float64
points are converted to float32 first, as the reference does before its fp32 arithmetic.
"""

from types import ModuleType

import torch

from .. import _loader
from ..contract import split_seed
from . import ENTRIES
from ._checks import (
    check_assign,
    check_cluster_sums,
    check_covariance,
    check_pca_apply,
    check_split,
    float32,
)
from .reference import TorchBackend

# Point dtypes the kernels read directly, by the names the extension expects.
_KERNEL_DTYPES = {torch.float32: "float32", torch.float16: "float16",
                  torch.bfloat16: "bfloat16"}


def _ext() -> ModuleType:
    module = _loader.load("_cuda")
    if module is None:
        raise RuntimeError(f"dc_kernels._cuda is not available: {_loader.why('_cuda')}")
    return module


def _kernel_points(x: torch.Tensor) -> tuple[torch.Tensor, str]:
    """x as the kernels read it (contiguous, float64 converted to float32) and its dtype name."""
    if x.dtype == torch.float64:
        x = x.float()
    x = x.contiguous()
    return x, _KERNEL_DTYPES[x.dtype]


def _stream(device: torch.device) -> int:
    """The caller's current stream on ``device`` as the integer handle the extension takes."""
    return torch.cuda.current_stream(device).cuda_stream


class CudaBackend(TorchBackend):
    """Fused CUDA kernels (pybind11 extension) for every step; ``top_eigh`` stays in torch."""

    name = "cuda"
    precisions: tuple[str, ...] = ENTRIES["cuda"].precisions
    capturable = True
    streams_host_data = True

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str:
        if device.type not in ("cuda", "cpu"):
            return f"the cuda backend runs on CUDA devices (and streams host data), not {device}"
        if _loader.load("_cuda") is None:
            return f"the CUDA extension dc_kernels._cuda is not built: {_loader.why('_cuda')}"
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return ""

    # ------------------------------------------------------------------ k-means steps
    def assign(self, x: torch.Tensor, centroids: torch.Tensor,
               precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        check_assign(x, centroids, precision, "cuda", self.precisions)
        (xk, x_dtype), c = _kernel_points(x), float32(centroids)
        batch, n, d = xk.shape
        k = c.shape[1]
        dist = torch.empty(batch, n, dtype=torch.float32, device=x.device)
        labels = torch.empty(batch, n, dtype=torch.int64, device=x.device)
        c_sqnorm = torch.empty(batch, k, dtype=torch.float32, device=x.device)
        with torch.cuda.device(x.device):
            _ext().assign(x=xk.data_ptr(), centroids=c.data_ptr(), dist=dist.data_ptr(),
                          labels=labels.data_ptr(), batch=batch, n=n, k=k, d=d,
                          x_dtype=x_dtype, precision=precision, c_sqnorm=c_sqnorm.data_ptr(),
                          stream=_stream(x.device))
        return dist, labels

    def cluster_sums(self, x: torch.Tensor, labels: torch.Tensor, sums: torch.Tensor,
                     counts: torch.Tensor) -> None:
        check_cluster_sums(x, labels, sums, counts, "cuda")
        (xk, x_dtype), lab = _kernel_points(x), labels.contiguous()
        batch, n, d = xk.shape
        with torch.cuda.device(x.device):
            _ext().cluster_sums(x=xk.data_ptr(), labels=lab.data_ptr(), sums=sums.data_ptr(),
                                counts=counts.data_ptr(), batch=batch, n=n, k=sums.shape[1],
                                d=d, x_dtype=x_dtype, stream=_stream(x.device))

    def split(self, centroids: torch.Tensor, counts: torch.Tensor, seed: int,
              iteration: int | torch.Tensor) -> torch.Tensor:
        on_device = check_split(centroids, counts, iteration, "cuda")
        batch, k, d = centroids.shape
        nsplit = torch.empty(batch, dtype=torch.int64, device=centroids.device)
        with torch.cuda.device(centroids.device):
            _ext().split(centroids=centroids.data_ptr(), counts=counts.data_ptr(),
                         nsplit=nsplit.data_ptr(), batch=batch, k=k, d=d, seed=split_seed(seed),
                         iteration=0 if on_device else int(iteration),
                         iteration_on_device=iteration.data_ptr() if on_device else 0,
                         stream=_stream(centroids.device))
        return nsplit

    # ------------------------------------------------------------------ PCA steps
    def covariance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_covariance(x, "cuda")
        xk, x_dtype = _kernel_points(x)
        n, d = xk.shape
        mean = torch.empty(d, dtype=torch.float64, device=x.device)
        cov = torch.empty(d, d, dtype=torch.float64, device=x.device)
        with torch.cuda.device(x.device):
            _ext().covariance(x=xk.data_ptr(), mean=mean.data_ptr(), cov=cov.data_ptr(), n=n, d=d,
                              x_dtype=x_dtype, stream=_stream(x.device))
        return mean, cov

    def pca_apply(self, x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor,
                  normalize: bool) -> torch.Tensor:
        check_pca_apply(x, mean, proj, "cuda")
        (xk, x_dtype), m, p = _kernel_points(x), float32(mean), float32(proj)
        (n, d_in), d_out = xk.shape, p.shape[1]
        out = torch.empty(n, d_out, dtype=torch.float32, device=x.device)
        with torch.cuda.device(x.device):
            _ext().pca_apply(x=xk.data_ptr(), mean=m.data_ptr(), proj=p.data_ptr(),
                             out=out.data_ptr(), n=n, d_in=d_in, d_out=d_out,
                             normalize=bool(normalize), x_dtype=x_dtype,
                             stream=_stream(x.device))
        return out
