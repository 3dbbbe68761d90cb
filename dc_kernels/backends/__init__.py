"""Backend registry: one table of what exists, availability, and the ``auto`` choice.

Every backend implements the steps of ``TorchBackend`` (the reference, in ``reference.py``) with the
same contract; a backend module is imported only when asked for, so a missing optional package
(triton, a compiled extension) never breaks ``import dc_kernels``.
"""

import importlib
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from ..contract import PRECISIONS

if TYPE_CHECKING:
    from .reference import TorchBackend

log = logging.getLogger("dc_kernels")


@dataclass(frozen=True)
class Entry:
    name: str
    module: str
    cls: str
    devices: tuple[str, ...]     # device types ``auto`` considers it for
    precisions: tuple[str, ...]  # of the nearest-centroid search


# In ``auto``'s order, fastest first as bench/kmeans_bench.py measured (H200, 1.28M x 256 into
# 10k: triton 2.5x (fp32) to 7.5x (fp16) faster than cuda; README). DC_KERNELS_AUTO_ORDER
# (e.g. "cuda,triton,torch") replaces the order; backends it does not name are not tried.
TABLE = (
    Entry("triton", "dc_kernels.backends.triton", "TritonBackend", ("cuda",), PRECISIONS),
    Entry("cuda", "dc_kernels.backends.cuda", "CudaBackend", ("cuda",), PRECISIONS),
    Entry("cpu", "dc_kernels.backends.cpu", "CpuBackend", ("cpu",), ("fp32",)),
    Entry("torch", "dc_kernels.backends.reference", "TorchBackend", ("cpu", "cuda"), PRECISIONS),
)
ENTRIES = {entry.name: entry for entry in TABLE}
NAMES = ("auto", *ENTRIES)
AUTO_ORDER_VARIABLE = "DC_KERNELS_AUTO_ORDER"

_instances: dict[str, "TorchBackend"] = {}


def _backend_class(name: str) -> tuple[type["TorchBackend"] | None, str]:
    entry = ENTRIES[name]
    try:
        module = importlib.import_module(entry.module)
    except ImportError as exc:
        return None, f"cannot import {entry.module}: {exc}"
    return getattr(module, entry.cls), ""


def unavailable_reason(name: str, device: torch.device) -> str:
    """'' when backend ``name`` can run on ``device``, else a sentence saying why not."""
    cls, why = _backend_class(name)
    return why if cls is None else cls.unavailable_reason(device)


def auto_order(device: torch.device) -> list[str]:
    """The backends ``auto`` tries for data on ``device``, in order."""
    names = list(ENTRIES)
    override = os.environ.get(AUTO_ORDER_VARIABLE, "").strip()
    if override:
        names = [name.strip() for name in override.split(",") if name.strip()]
        unknown = sorted(set(names) - set(ENTRIES))
        if unknown:
            raise ValueError(f"{AUTO_ORDER_VARIABLE}={override!r} names unknown backends "
                             f"{unknown}; choose from {tuple(ENTRIES)}")
    return [name for name in names if device.type in ENTRIES[name].devices]


def _why_not(name: str, device: torch.device, precision: str | None) -> str:
    why = unavailable_reason(name, device)
    if not why and precision is not None and precision not in ENTRIES[name].precisions:
        why = f"it supports precisions {ENTRIES[name].precisions}, not {precision!r}"
    return why


def get_backend(name: str, device: torch.device, precision: str | None = None) -> "TorchBackend":
    """The backend called ``name`` for data on ``device`` (with ``precision`` when given);
    'auto' picks the first of ``auto_order`` that can run it."""
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {NAMES}")
    if name == "auto":
        reasons = []
        for candidate in auto_order(device):
            why = _why_not(candidate, device, precision)
            if not why:
                break
            reasons.append(f"{candidate}: {why}")
        else:
            raise ValueError(f"no backend can run on {device}: " + "; ".join(reasons))
        log.info("dc_kernels: backend 'auto' chose %r on %s", candidate, device)
        name = candidate
    why = _why_not(name, device, precision)
    if why:
        raise ValueError(f"backend {name!r} cannot run on {device}: {why}")
    if name not in _instances:
        cls, _ = _backend_class(name)
        _instances[name] = cls()
    return _instances[name]


def available_backends() -> dict[str, dict]:
    """For each backend: whether it can run on this machine's CPU and CUDA device, and why not.

    ``{"cpu": {"available": True, "devices": ["cpu"], "reason": ""}, ...}``
    """
    devices = ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]
    table = {}
    for name in ENTRIES:
        reasons = {dev: unavailable_reason(name, torch.device(dev)) for dev in devices}
        ok = [dev for dev, why in reasons.items() if not why]
        table[name] = {"available": bool(ok), "devices": ok,
                       "reason": "; ".join(f"{dev}: {why}" for dev, why in reasons.items() if why)}
    return table
