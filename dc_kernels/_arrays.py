"""Array interchange and input validation shared by every public entry point.

Inputs may be torch tensors (any device), NumPy arrays or CuPy arrays; internally everything is
a torch tensor (zero-copy where the source allows it) and results go back in the caller's kind.
"""

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")


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
        t = torch.from_numpy(arr) if arr.dtype.kind in "fiub" else None
        if t is None:
            raise ValueError(f"{name} must be a real floating-point array, got dtype {arr.dtype}")
        return t, ArrayKind("numpy", torch.device("cpu"))
    raise ValueError(
        f"{name} must be a torch tensor, NumPy array or CuPy array, got {type(x).__name__}"
    )


def check_float(t: torch.Tensor, name: str = "x") -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(
            f"{name} must have a floating dtype (float16, bfloat16, float32, float64), "
            f"got {t.dtype}"
        )


def check_finite(t: torch.Tensor, name: str = "x") -> None:
    """NaN/Inf check (one reduction, one host sync; done once per call, never per iteration)."""
    if not bool(torch.isfinite(t).all()):
        n_nan = int(torch.isnan(t).sum())
        n_inf = int(torch.isinf(t).sum())
        raise ValueError(f"{name} contains {n_nan} NaN and {n_inf} Inf values")


def check_points(t: torch.Tensor, name: str = "x", d: int | None = None,
                 batched_ok: bool = True) -> None:
    """Validate a (N, d) or, when allowed, (B, N, d) floating array of finite values."""
    ranks = "(N, d) or (B, N, d)" if batched_ok else "(N, d)"
    if t.dim() not in ((2, 3) if batched_ok else (2,)):
        raise ValueError(f"{name} must have shape {ranks}, got shape {tuple(t.shape)}")
    check_float(t, name)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(t.shape)})")
    if d is not None and t.shape[-1] != d:
        raise ValueError(f"{name} has dimension {t.shape[-1]}, expected d={d} "
                         f"(shape {tuple(t.shape)})")
    check_finite(t, name)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def as_batched(t: torch.Tensor) -> torch.Tensor:
    """(N, d) -> (1, N, d); (B, N, d) unchanged."""
    return t.unsqueeze(0) if t.dim() == 2 else t
