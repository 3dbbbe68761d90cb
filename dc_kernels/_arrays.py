"""Array interchange and input validation: the one place where data entering the public API
(Kmeans, kmeans, PCAWhitening, PCAMatrix) is checked, with messages naming shapes and dtypes.

Inputs may be torch tensors (any device), NumPy arrays or CuPy arrays; internally everything is
a torch tensor (zero-copy where the source allows it) and results go back in the caller's kind.
Backends check only what keeps their native calls memory-safe (backends/_checks.py).

Magnitudes: the kernels compute in fp32, where a squared distance overflows from |x| ~ 1e19
and vanishes below |x| ~ 1e-22. ``value_range`` finds max|x| in the same chunked pass as the
finiteness check, ``pow2_exponent`` says by which power of two to rescale (exact: only the
exponent changes) so that the kernels see values near 1, and ``scaled_float32`` makes that copy.
"""

import math
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .contract import FLOAT_DTYPES

# Elements per piece of the range/finiteness pass: its temporaries stay small whatever the input.
FINITE_CHUNK = 1 << 22

FP32_MAX = float(torch.finfo(torch.float32).max)
FP32_TINY = float(torch.finfo(torch.float32).tiny)  # smallest normal, 2^-126

# max|x| the kernels take as is, per precision; outside, the data are rescaled by a power of
# two. fp32/tf32/bf16 (fp32's exponent range): squared distances of values up to 2^32 stay far
# below fp32's maximum for any d < 2^60, and those of values down to 2^-32 far above its smallest
# normal even for differences at fp32 rounding level. fp16 operands must stay below 65504 and
# above fp16's normal range (2^-14) for the coordinates that matter.
SAFE_RANGE = {"fp32": (2.0 ** -32, 2.0 ** 32), "tf32": (2.0 ** -32, 2.0 ** 32),
              "bf16": (2.0 ** -32, 2.0 ** 32), "fp16": (2.0 ** -8, 2.0 ** 8)}


@dataclass(frozen=True)
class ArrayKind:
    """Where an input came from, so that outputs can be returned the same way."""

    library: str  # "torch", "numpy" or "cupy"
    device: torch.device

    def wrap(self, t: torch.Tensor) -> Any:
        if self.library == "numpy":
            return t.detach().cpu().numpy()
        if self.library == "cupy":
            import cupy

            return cupy.from_dlpack(t.detach().contiguous())
        return t.to(self.device)


def _is_cupy(x: Any) -> bool:
    return type(x).__module__.split(".")[0] == "cupy"


def to_tensor(x: Any, name: str = "x") -> tuple[torch.Tensor, ArrayKind]:
    """Torch view of ``x`` plus its kind; raises ValueError for what cannot be an array."""
    if isinstance(x, torch.Tensor):
        if x.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (shape {tuple(x.shape)}), which "
                             f"holds no values to cluster")
        if x.requires_grad:
            raise ValueError(f"{name} requires grad: k-means and PCA are not differentiated "
                             f"through; pass {name}.detach()")
        return x, ArrayKind("torch", x.device)
    if _is_cupy(x):
        t = torch.from_dlpack(x)
        return t, ArrayKind("cupy", t.device)
    if isinstance(x, np.ndarray | np.generic | list | tuple):
        arr = np.asarray(x)
        if arr.dtype == object:
            raise ValueError(f"{name} must be a numeric array, got an object array")
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"{name} must be a real floating-point array, got dtype {arr.dtype}")
        # torch views neither read-only memory nor negative strides (a reversed view): copy.
        if not arr.flags.writeable or any(s < 0 for s in arr.strides):
            arr = arr.copy()
        return torch.from_numpy(arr), ArrayKind("numpy", torch.device("cpu"))
    raise ValueError(
        f"{name} must be a torch tensor, NumPy array or CuPy array, got {type(x).__name__}"
    )


def check_int(name: str, value: Any, minimum: int, maximum: int | None = None) -> int:
    """``value`` as an int, or ValueError unless it is an integer in [minimum, maximum]."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum \
            or (maximum is not None and value > maximum):
        kind = {0: "non-negative", 1: "positive"}.get(minimum, f">= {minimum}")
        bound = "" if maximum is None else f" at most {maximum}"
        raise ValueError(f"{name} must be a {kind} integer{bound}, got {value!r}")
    return int(value)


def check_seed(seed: Any) -> int:
    """A seed: an integer in [0, 2^64) (the split's draws take it as an unsigned 64-bit value)."""
    return check_int("seed", seed, 0, (1 << 64) - 1)


def check_float(name: str, value: Any) -> float:
    """``value`` as a finite float, or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating) \
            or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _unique_elements(t: torch.Tensor) -> torch.Tensor:
    """``t`` without its broadcast dimensions (stride 0): the same values, each once."""
    for dim in range(t.dim()):
        if t.stride(dim) == 0 and t.shape[dim] > 1:
            t = t.narrow(dim, 0, 1)
    return t


def value_range(t: torch.Tensor, name: str = "x") -> float:
    """max|t| of a (N, d) or (B, N, d) array, ValueError when it holds NaN or Inf: one pass over
    row views of at most FINITE_CHUNK elements (no full-size temporary, no copy of strided input,
    each element of a broadcast view read once), one host read."""
    t = _unique_elements(t)
    step = max(1, FINITE_CHUNK // max(1, t.shape[-1]))
    peak = torch.zeros((), dtype=torch.float64, device=t.device)
    for problem in as_batched(t):
        for start in range(0, problem.shape[0], step):
            # NaN propagates through amax; Inf is its own maximum.
            peak = torch.maximum(peak, problem[start:start + step].abs().amax().double())
    value = float(peak)
    if not math.isfinite(value):
        bad = sum(int((~torch.isfinite(problem[start:start + step])).sum())
                  for problem in as_batched(t) for start in range(0, problem.shape[0], step))
        raise ValueError(f"{name} contains {bad} non-finite values (NaN or Inf)")
    return value


def check_points(t: torch.Tensor, name: str = "x", d: int | None = None,
                 batched_ok: bool = True) -> float:
    """Validate a (N, d) or, when allowed, (B, N, d) floating array of finite values; returns
    max|t|."""
    ranks = "(N, d) or (B, N, d)" if batched_ok else "(N, d)"
    if t.dim() not in ((2, 3) if batched_ok else (2,)):
        raise ValueError(f"{name} must have shape {ranks}, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must have a floating dtype (float16, bfloat16, float32, "
                         f"float64), got {t.dtype}")
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if d is not None and t.shape[-1] != d:
        raise ValueError(f"{name} has dimension {t.shape[-1]}, expected d={d} "
                         f"(shape {tuple(t.shape)})")
    return value_range(t, name)


def as_batched(t: torch.Tensor) -> torch.Tensor:
    """(N, d) -> (1, N, d); (B, N, d) unchanged."""
    return t.unsqueeze(0) if t.dim() == 2 else t


def pow2_exponent(peak: float, precision: str, name: str = "x") -> int:
    """e such that the kernels should see x * 2^-e (0: as it is), for data whose max|x| is
    ``peak``; ValueError when float32 centroids cannot represent such data at all."""
    if peak == 0.0:
        return 0
    if peak > FP32_MAX or peak < FP32_TINY:
        raise ValueError(f"{name} has values up to {peak:.3g} in magnitude, outside float32's "
                         f"normal range [{FP32_TINY:.3g}, {FP32_MAX:.3g}]: its centroids and "
                         f"distances cannot be represented in float32; rescale it first (a "
                         f"power of two keeps every value's digits)")
    low, high = SAFE_RANGE[precision]
    if low <= peak <= high:
        return 0
    return math.frexp(peak)[1] - 1  # floor(log2(peak)): peak * 2^-e lies in [1, 2)


def scaled_float32(t: torch.Tensor, exponent: int) -> torch.Tensor:
    """t * 2^-exponent as a new contiguous float32 tensor, computed in chunks of rows in float64
    (exact: 2^-exponent and every product are normal float64 numbers), then rounded once."""
    out = torch.empty(t.shape, dtype=torch.float32, device=t.device)
    work = torch.float64
    flat_in, flat_out = t.reshape(-1, t.shape[-1]), out.view(-1, t.shape[-1])
    step = max(1, FINITE_CHUNK // max(1, t.shape[-1]))
    for start in range(0, flat_in.shape[0], step):
        flat_out[start:start + step] = torch.ldexp(flat_in[start:start + step].to(work),
                                                   torch.tensor(-exponent, dtype=work))
    return out


def available_bytes(device: torch.device) -> int | None:
    """Memory that can still be allocated on ``device`` (None when unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo") as meminfo:
                for line in meminfo:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None


def check_memory(device: torch.device, needs: dict[str, int]) -> None:
    """ValueError, before anything is allocated, when the buffers ``needs`` (name -> bytes) do
    not fit the memory still available on ``device``."""
    total = sum(needs.values())
    free = available_bytes(device)
    if free is None or total <= free:
        return
    parts = ", ".join(f"{name} {size / 2**30:.3g} GiB" for name, size in needs.items() if size)
    raise ValueError(f"this request needs about {total / 2**30:.3g} GiB on {device} ({parts}) "
                     f"but only {free / 2**30:.3g} GiB is available")
