"""The CUDA backend: the steps of ``TorchBackend`` run by the compiled ``dc_kernels._cuda``.

Every step follows the same order: validate everything (device, dtypes, shapes; the ``check_*``
functions below, which need no GPU and are tested on CPU and meta tensors), make the inputs
contiguous, allocate outputs and workspaces with torch on the inputs' device, then pass the
``data_ptr()``s and the caller's current stream to the extension. The extension only enqueues
kernels on that stream (no host sync), so the Lloyd loop stays graph-capturable.

Points may be float16, bfloat16 or float32 (read as they are, converted in registers); float64
points are converted to float32 first, as the reference does before its fp32 arithmetic.
"""

from types import ModuleType

import torch

from .. import _loader
from .reference import TorchBackend

_MASK64 = (1 << 64) - 1
# Point dtypes the kernels read directly, by the names the extension expects.
_KERNEL_DTYPES = {torch.float32: "float32", torch.float16: "float16",
                  torch.bfloat16: "bfloat16"}
_POINT_DTYPES = (*_KERNEL_DTYPES, torch.float64)
_PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
# The kernels index rows, clusters and dims with 32-bit ints and put the batch on grid axis y.
_MAX_INT = (1 << 31) - 1
_MAX_BATCH = 65535


# ----------------------------------------------------------------------------- validation
def _shape(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)} and dtype {t.dtype}"


def _check_devices(device_type: str, **tensors: torch.Tensor) -> None:
    """All tensors on one device of type ``device_type``."""
    first_name, first = next(iter(tensors.items()))
    if first.device.type != device_type:
        raise ValueError(f"the cuda backend needs tensors on a CUDA device; {first_name} is on "
                         f"{first.device}")
    for name, t in tensors.items():
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def _check_points(name: str, t: torch.Tensor, rank: int) -> None:
    if t.dim() != rank:
        want = "(B, N, d)" if rank == 3 else "(N, d)"
        raise ValueError(f"{name} must have shape {want}, got {_shape(t)}")
    if t.dtype not in _POINT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {_shape(t)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty ({_shape(t)})")
    if max(t.shape) > _MAX_INT:
        raise ValueError(f"{name} has a dimension of 2^31 or more ({_shape(t)})")


def _check_dtype(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {_shape(t)}")


def _check_batch(name: str, batch: int) -> None:
    if batch > _MAX_BATCH:
        raise ValueError(f"{name} holds {batch} problems; the cuda backend runs at most "
                         f"{_MAX_BATCH} at once")


def _check_centroids(x: torch.Tensor, centroids: torch.Tensor) -> None:
    if centroids.dim() != 3 or centroids.shape[0] != x.shape[0] or centroids.shape[2] != x.shape[2]:
        raise ValueError(f"centroids must have shape (B, K, d) = ({x.shape[0]}, K, {x.shape[2]}) "
                         f"for x of {_shape(x)}, got {_shape(centroids)}")
    _check_dtype("centroids", centroids, torch.float32)
    if centroids.shape[1] < 1 or centroids.shape[1] > _MAX_INT:
        raise ValueError(f"centroids must hold 1 to 2^31 - 1 clusters, got {_shape(centroids)}")


def check_assign(x: torch.Tensor, centroids: torch.Tensor, precision: str,
                 device_type: str = "cuda") -> None:
    """ValueError unless ``assign(x, centroids, precision)`` can run (no data is read)."""
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {_PRECISIONS}, got {precision!r}")
    _check_devices(device_type, x=x, centroids=centroids)
    _check_points("x", x, 3)
    _check_batch("x", x.shape[0])
    _check_centroids(x, centroids)


def check_update(x: torch.Tensor, labels: torch.Tensor, centroids: torch.Tensor,
                 device_type: str = "cuda") -> None:
    """ValueError unless ``update(x, labels, centroids)`` can run (no data is read)."""
    _check_devices(device_type, x=x, labels=labels, centroids=centroids)
    _check_points("x", x, 3)
    _check_batch("x", x.shape[0])
    _check_centroids(x, centroids)
    if not centroids.is_contiguous():
        raise ValueError("centroids is updated in place and must be contiguous "
                         f"({_shape(centroids)})")
    if tuple(labels.shape) != tuple(x.shape[:2]):
        raise ValueError(f"labels must have shape (B, N) = {tuple(x.shape[:2])}, "
                         f"got {_shape(labels)}")
    _check_dtype("labels", labels, torch.int64)


def check_split(centroids: torch.Tensor, counts: torch.Tensor,
                device_type: str = "cuda") -> None:
    """ValueError unless ``split(centroids, counts, ...)`` can run (no data is read)."""
    _check_devices(device_type, centroids=centroids, counts=counts)
    if centroids.dim() != 3 or centroids.numel() == 0:
        raise ValueError(f"centroids must have shape (B, K, d), non-empty, got {_shape(centroids)}")
    _check_dtype("centroids", centroids, torch.float32)
    _check_batch("centroids", centroids.shape[0])
    if max(centroids.shape) > _MAX_INT:
        raise ValueError(f"centroids has a dimension of 2^31 or more ({_shape(centroids)})")
    if tuple(counts.shape) != tuple(centroids.shape[:2]):
        raise ValueError(f"counts must have shape (B, K) = {tuple(centroids.shape[:2])}, "
                         f"got {_shape(counts)}")
    _check_dtype("counts", counts, torch.int64)
    for name, t in (("centroids", centroids), ("counts", counts)):
        if not t.is_contiguous():
            raise ValueError(f"{name} is updated in place and must be contiguous ({_shape(t)})")


def check_covariance(x: torch.Tensor, device_type: str = "cuda") -> None:
    """ValueError unless ``covariance(x)`` can run (no data is read)."""
    _check_devices(device_type, x=x)
    _check_points("x", x, 2)


def check_pca_apply(x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor,
                    device_type: str = "cuda") -> None:
    """ValueError unless ``pca_apply(x, mean, proj, ...)`` can run (no data is read)."""
    _check_devices(device_type, x=x, mean=mean, proj=proj)
    _check_points("x", x, 2)
    d_in = x.shape[1]
    if tuple(mean.shape) != (d_in,):
        raise ValueError(f"mean must have shape ({d_in},) for x of {_shape(x)}, "
                         f"got {_shape(mean)}")
    if proj.dim() != 2 or proj.shape[0] != d_in or proj.shape[1] < 1:
        raise ValueError(f"proj must have shape ({d_in}, d_out) for x of {_shape(x)}, "
                         f"got {_shape(proj)}")
    if proj.shape[1] > _MAX_INT:
        raise ValueError(f"proj has 2^31 or more columns ({_shape(proj)})")
    _check_dtype("mean", mean, torch.float32)
    _check_dtype("proj", proj, torch.float32)


# ----------------------------------------------------------------------------- launching
def _ext() -> ModuleType:
    module = _loader.load("_cuda")
    if module is None:
        raise RuntimeError(f"dc_kernels._cuda is not available: {_loader.why('_cuda')}")
    return module


def _kernel_points(x: torch.Tensor) -> torch.Tensor:
    """x as the kernels read it: contiguous, float64 converted to float32."""
    if x.dtype == torch.float64:
        x = x.float()
    return x.contiguous()


def _stream(device: torch.device) -> int:
    """The caller's current stream on ``device`` as the integer handle the extension takes."""
    return torch.cuda.current_stream(device).cuda_stream


class CudaBackend(TorchBackend):
    """Fused CUDA kernels (pybind11 extension) for every step; ``top_eigh`` stays in torch."""

    name = "cuda"
    precisions: tuple[str, ...] = _PRECISIONS

    @classmethod
    def unavailable_reason(cls, device: torch.device) -> str:
        if device.type != "cuda":
            return f"the cuda backend runs on CUDA devices only, not {device.type}"
        if _loader.load("_cuda") is None:
            return f"the CUDA extension dc_kernels._cuda is not built: {_loader.why('_cuda')}"
        if not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return ""

    # ------------------------------------------------------------------ k-means steps
    def assign(self, x: torch.Tensor, centroids: torch.Tensor,
               precision: str) -> tuple[torch.Tensor, torch.Tensor]:
        check_assign(x, centroids, precision)
        xk, c = _kernel_points(x), centroids.contiguous()
        batch, n, d = xk.shape
        k = c.shape[1]
        dist = torch.empty(batch, n, dtype=torch.float32, device=x.device)
        labels = torch.empty(batch, n, dtype=torch.int64, device=x.device)
        c_sqnorm = torch.empty(batch, k, dtype=torch.float32, device=x.device)
        with torch.cuda.device(x.device):
            _ext().assign(xk.data_ptr(), _KERNEL_DTYPES[xk.dtype], c.data_ptr(),
                          c_sqnorm.data_ptr(), dist.data_ptr(), labels.data_ptr(), batch, n, k,
                          d, precision, _stream(x.device))
        return dist, labels

    def update(self, x: torch.Tensor, labels: torch.Tensor,
               centroids: torch.Tensor) -> torch.Tensor:
        check_update(x, labels, centroids)
        xk, lab = _kernel_points(x), labels.contiguous()
        batch, n, d = xk.shape
        k = centroids.shape[1]
        sums = torch.empty(batch, k, d, dtype=torch.float32, device=x.device)
        counts = torch.empty(batch, k, dtype=torch.int64, device=x.device)
        with torch.cuda.device(x.device):
            _ext().update(xk.data_ptr(), _KERNEL_DTYPES[xk.dtype], lab.data_ptr(),
                          centroids.data_ptr(), sums.data_ptr(), counts.data_ptr(), batch, n, k,
                          d, _stream(x.device))
        return counts

    def split(self, centroids: torch.Tensor, counts: torch.Tensor, seed: int,
              iteration: int) -> torch.Tensor:
        check_split(centroids, counts)
        batch, k, d = centroids.shape
        nsplit = torch.empty(batch, dtype=torch.int64, device=centroids.device)
        with torch.cuda.device(centroids.device):
            # Masking to 64 bits gives the two's-complement value the reference's Python-int
            # hash sees for negative seeds.
            _ext().split(centroids.data_ptr(), counts.data_ptr(), nsplit.data_ptr(), batch, k, d,
                         int(seed) & _MASK64, int(iteration) & _MASK64,
                         _stream(centroids.device))
        return nsplit

    # ------------------------------------------------------------------ PCA steps
    def covariance(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        check_covariance(x)
        xk = _kernel_points(x)
        n, d = xk.shape
        mean = torch.empty(d, dtype=torch.float64, device=x.device)
        cov = torch.empty(d, d, dtype=torch.float64, device=x.device)
        with torch.cuda.device(x.device):
            _ext().covariance(xk.data_ptr(), _KERNEL_DTYPES[xk.dtype], mean.data_ptr(),
                              cov.data_ptr(), n, d, _stream(x.device))
        return mean, cov

    def pca_apply(self, x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor,
                  normalize: bool) -> torch.Tensor:
        check_pca_apply(x, mean, proj)
        xk, m, p = _kernel_points(x), mean.contiguous(), proj.contiguous()
        n, d_in = xk.shape
        d_out = p.shape[1]
        out = torch.empty(n, d_out, dtype=torch.float32, device=x.device)
        with torch.cuda.device(x.device):
            _ext().pca_apply(xk.data_ptr(), _KERNEL_DTYPES[xk.dtype], m.data_ptr(), p.data_ptr(),
                             out.data_ptr(), n, d_in, d_out, bool(normalize), _stream(x.device))
        return out
