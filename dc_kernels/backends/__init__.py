"""Backend registry: name -> implementation, availability, and the ``auto`` choice.

Every backend implements the steps of ``TorchBackend`` (the reference, in ``reference.py``) with the
same contract; a backend module is imported only when asked for, so a missing optional package
(triton, a compiled extension) never breaks ``import dc_kernels``.
"""

import importlib
import logging

import torch

from .reference import TorchBackend

log = logging.getLogger("dc_kernels")

_CLASSES = {
    "torch": ("dc_kernels.backends.reference", "TorchBackend"),
    "cpu": ("dc_kernels.backends.cpu", "CpuBackend"),
    "triton": ("dc_kernels.backends.triton", "TritonBackend"),
    "cuda": ("dc_kernels.backends.cuda", "CudaBackend"),
}
NAMES = ("auto", *_CLASSES)
# Fastest first, per device type.
AUTO_ORDER = {"cuda": ("cuda", "triton", "torch"), "cpu": ("cpu", "torch")}

_instances: dict[str, TorchBackend] = {}


def _backend_class(name: str) -> tuple[type[TorchBackend] | None, str]:
    module_name, class_name = _CLASSES[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return None, f"cannot import {module_name}: {exc}"
    return getattr(module, class_name), ""


def unavailable_reason(name: str, device: torch.device) -> str:
    """'' when backend ``name`` can run on ``device``, else a sentence saying why not."""
    cls, why = _backend_class(name)
    return why if cls is None else cls.unavailable_reason(device)


def get_backend(name: str, device: torch.device) -> TorchBackend:
    """The backend called ``name`` for data on ``device``; 'auto' picks the fastest there."""
    if name not in NAMES:
        raise ValueError(f"unknown backend {name!r}; choose one of {NAMES}")
    if name == "auto":
        reasons = []
        for candidate in AUTO_ORDER.get(device.type, ("torch",)):
            why = unavailable_reason(candidate, device)
            if not why:
                log.info("dc_kernels: backend 'auto' chose %r on %s", candidate, device)
                return get_backend(candidate, device)
            reasons.append(f"{candidate}: {why}")
        raise ValueError(f"no backend can run on {device}: " + "; ".join(reasons))
    why = unavailable_reason(name, device)
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
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    table = {}
    for name in _CLASSES:
        reasons = {dev.type: unavailable_reason(name, dev) for dev in devices}
        ok = [dev for dev, why in reasons.items() if not why]
        table[name] = {
            "available": bool(ok),
            "devices": ok,
            "reason": "; ".join(f"{dev}: {why}" for dev, why in reasons.items() if why),
        }
    return table
