"""Array interchange and input validation: the one place where data entering the public API
(Kmeans, kmeans, PCAWhitening) is checked, with messages naming shapes and dtypes.

Inputs may be torch tensors (any device), NumPy arrays or CuPy arrays; internally everything is
a torch tensor (zero-copy where the source allows it) and results go back in the caller's kind.
Backends check only what keeps their native calls memory-safe (backends/_checks.py).
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .contract import FLOAT_DTYPES

# Elements per piece of the finiteness pass: its temporaries stay small whatever the input.
FINITE_CHUNK = 1 << 22


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
        return x, ArrayKind("torch", x.device)
    if _is_cupy(x):
        t = torch.from_dlpack(x)
        return t, ArrayKind("cupy", t.device)
    if isinstance(x, np.ndarray | np.generic | list | tuple):
        arr = np.asarray(x)
        if arr.dtype == object:
            raise ValueError(f"{name} must be a numeric array, got an object array")
        if not arr.flags.writeable:
            arr = arr.copy()
        if arr.dtype.kind not in "fiub":
            raise ValueError(f"{name} must be a real floating-point array, got dtype {arr.dtype}")
        return torch.from_numpy(arr), ArrayKind("numpy", torch.device("cpu"))
    raise ValueError(
        f"{name} must be a torch tensor, NumPy array or CuPy array, got {type(x).__name__}"
    )


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as an int, or ValueError unless it is an integer >= ``minimum`` (0 or 1)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        kind = "positive" if minimum == 1 else "non-negative"
        raise ValueError(f"{name} must be a {kind} integer, got {value!r}")
    return int(value)


def check_finite(t: torch.Tensor, name: str = "x") -> None:
    """NaN/Inf check of a (N, d) or (B, N, d) array: one pass over row views of at most
    FINITE_CHUNK elements (no full-size temporary, no copy of strided input), one host read."""
    step = max(1, FINITE_CHUNK // max(1, t.shape[-1]))
    views = [p[s:s + step] for p in as_batched(t) for s in range(0, p.shape[0], step)]
    bad = torch.zeros((), dtype=torch.int64, device=t.device)
    for view in views:
        bad += (~torch.isfinite(view)).sum()
    if int(bad):
        raise ValueError(f"{name} contains {int(bad)} non-finite values (NaN or Inf)")


def check_points(t: torch.Tensor, name: str = "x", d: int | None = None,
                 batched_ok: bool = True) -> None:
    """Validate a (N, d) or, when allowed, (B, N, d) floating array of finite values."""
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
    check_finite(t, name)


def as_batched(t: torch.Tensor) -> torch.Tensor:
    """(N, d) -> (1, N, d); (B, N, d) unchanged."""
    return t.unsqueeze(0) if t.dim() == 2 else t
