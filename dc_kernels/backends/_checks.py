"""What the compiled backends (cpu: dc_kernels._cpu, cuda: dc_kernels._cuda) check before they
hand raw addresses to native code: devices, ranks, shapes, dtypes and contiguity, the things
that keep a native call inside its buffers. Nothing here reads the data (no host sync, so the
checks run inside a captured CUDA graph); the input checks of the public API (finiteness,
ranks, k <= N) are dc_kernels._arrays'. Written once for both extensions; tested on CPU and
meta tensors.
"""

import torch

from ..contract import FLOAT_DTYPES

# The kernels index rows, clusters and dims with 32-bit ints (the CUDA extension checks its
# batch limit, 65535 on grid axis y, itself).
MAX_INT = (1 << 31) - 1


def _shape(t: torch.Tensor) -> str:
    return f"shape {tuple(t.shape)} and dtype {t.dtype}"


def _check_devices(device_type: str, **tensors: torch.Tensor) -> None:
    """All tensors on one device of type ``device_type``."""
    first_name, first = next(iter(tensors.items()))
    if first.device.type != device_type:
        raise ValueError(f"this backend needs tensors on a {device_type} device here; "
                         f"{first_name} is on {first.device}")
    for name, t in tensors.items():
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}")


def _check_points(name: str, t: torch.Tensor, rank: int) -> None:
    if t.dim() != rank:
        want = "(B, N, d)" if rank == 3 else "(N, d)"
        raise ValueError(f"{name} must have shape {want}, got {_shape(t)}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float16, bfloat16, float32 or float64, got {_shape(t)}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty ({_shape(t)})")
    if max(t.shape) > MAX_INT:
        raise ValueError(f"{name} has a dimension of 2^31 or more ({_shape(t)})")


def _check_dtype(name: str, t: torch.Tensor, dtype: torch.dtype) -> None:
    if t.dtype != dtype:
        raise ValueError(f"{name} must be {dtype}, got {_shape(t)}")


def _check_counts(counts: torch.Tensor, per_cluster: torch.Tensor) -> None:
    """counts (B, K) int64 for the (B, K, d) ``per_cluster`` (centroids or sums)."""
    if tuple(counts.shape) != tuple(per_cluster.shape[:2]):
        raise ValueError(f"counts must have shape (B, K) = {tuple(per_cluster.shape[:2])}, "
                         f"got {_shape(counts)}")
    _check_dtype("counts", counts, torch.int64)


def _check_in_place(**tensors: torch.Tensor) -> None:
    for name, t in tensors.items():
        if not t.is_contiguous():
            raise ValueError(f"{name} is updated in place and must be contiguous ({_shape(t)})")


def _check_centroids(x: torch.Tensor, c: torch.Tensor, name: str = "centroids") -> None:
    if c.dim() != 3 or c.shape[0] != x.shape[0] or c.shape[2] != x.shape[2]:
        raise ValueError(f"{name} must have shape (B, K, d) = ({x.shape[0]}, K, {x.shape[2]}) "
                         f"for x of {_shape(x)}, got {_shape(c)}")
    if c.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be floating, got {_shape(c)}")
    if c.shape[1] < 1 or c.shape[1] > MAX_INT:
        raise ValueError(f"{name} must hold 1 to 2^31 - 1 clusters, got {_shape(c)}")


def check_assign(x: torch.Tensor, centroids: torch.Tensor, precision: str,
                 device_type: str, precisions: tuple[str, ...]) -> None:
    """ValueError unless ``assign(x, centroids, precision)`` can run."""
    if precision not in precisions:
        raise ValueError(f"the {device_type} backend supports precisions {precisions}, "
                         f"not {precision!r}")
    _check_devices(device_type, x=x, centroids=centroids)
    _check_points("x", x, 3)
    _check_centroids(x, centroids)


def check_cluster_sums(x: torch.Tensor, labels: torch.Tensor, sums: torch.Tensor,
                       counts: torch.Tensor, device_type: str) -> None:
    """ValueError unless ``cluster_sums(x, labels, sums, counts)`` can run."""
    _check_devices(device_type, x=x, labels=labels, sums=sums, counts=counts)
    _check_points("x", x, 3)
    _check_centroids(x, sums, "sums")
    _check_dtype("sums", sums, torch.float32)
    if tuple(labels.shape) != tuple(x.shape[:2]):
        raise ValueError(f"labels must have shape (B, N) = {tuple(x.shape[:2])}, "
                         f"got {_shape(labels)}")
    _check_dtype("labels", labels, torch.int64)
    _check_counts(counts, sums)
    _check_in_place(sums=sums, counts=counts)


def check_split(centroids: torch.Tensor, counts: torch.Tensor, iteration: int | torch.Tensor,
                device_type: str) -> bool:
    """ValueError unless ``split(centroids, counts, seed, iteration)`` can run; returns whether
    the iteration is a device tensor (one int64 on the centroids' device, which a captured
    CUDA graph advances) rather than a non-negative int."""
    _check_devices(device_type, centroids=centroids, counts=counts)
    _check_points("centroids", centroids, 3)
    _check_dtype("centroids", centroids, torch.float32)
    _check_counts(counts, centroids)
    _check_in_place(centroids=centroids, counts=counts)
    if not isinstance(iteration, torch.Tensor):
        if int(iteration) < 0:
            raise ValueError(f"iteration must be non-negative, got {iteration}")
        return False
    if iteration.numel() != 1 or iteration.dtype != torch.int64 \
            or iteration.device != centroids.device:
        raise ValueError(f"a tensor iteration must be one int64 on {centroids.device}, got "
                         f"{_shape(iteration)} on {iteration.device}")
    return True


def check_covariance(x: torch.Tensor, device_type: str) -> None:
    """ValueError unless ``covariance(x)`` can run."""
    _check_devices(device_type, x=x)
    _check_points("x", x, 2)


def check_pca_apply(x: torch.Tensor, mean: torch.Tensor, proj: torch.Tensor,
                    device_type: str) -> None:
    """ValueError unless ``pca_apply(x, mean, proj, ...)`` can run."""
    _check_devices(device_type, x=x, mean=mean, proj=proj)
    _check_points("x", x, 2)
    d_in = x.shape[1]
    if tuple(mean.shape) != (d_in,) or mean.dtype not in FLOAT_DTYPES:
        raise ValueError(f"mean must be floating of shape ({d_in},) for x of {_shape(x)}, "
                         f"got {_shape(mean)}")
    if proj.dim() != 2 or proj.shape[0] != d_in or not 1 <= proj.shape[1] <= MAX_INT \
            or proj.dtype not in FLOAT_DTYPES:
        raise ValueError(f"proj must be floating of shape ({d_in}, d_out) for x of {_shape(x)}, "
                         f"got {_shape(proj)}")


def float32(t: torch.Tensor) -> torch.Tensor:
    """t as float32 and contiguous (itself when it already is)."""
    return t.to(torch.float32).contiguous()
