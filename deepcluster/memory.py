"""Will the network fit? A lower bound of a training step's memory, checked before allocating.

The network is built on PyTorch's meta device (shapes only, no memory) and one batch goes
through it in training mode: its parameters (with their gradients and the SGD momentum: three
copies) and the activations a backward pass keeps (the output of every layer that does not work
in place) are what any training step needs at least. That is compared with the memory free on
the device (``torch.cuda.mem_get_info``) or the host (MemAvailable of /proc/meminfo, within a
cgroup's limit), so a width or an image size far too large is refused with a message instead of
dying by the out-of-memory killer.
"""

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import ConfigError
from .models import build_model

GIB = 2**30


@dataclass
class Footprint:
    params: int        # number of parameters
    model_bytes: int   # weights, gradients, momentum (fp32)
    batch_bytes: int   # activations of one batch kept for the backward pass (fp32)

    @property
    def total(self) -> int:
        return self.model_bytes + self.batch_bytes


def footprint(model_spec: dict[str, Any], batch_size: int) -> Footprint:
    """The lower bound above for ``build_model(**model_spec)`` and a batch of ``batch_size``.
    Raises ``ValueError`` (from build_model) for a spec no network fits."""
    with torch.device("meta"):
        model = build_model(**model_spec)
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    kept = 0

    def count(module: torch.nn.Module, _: Any, output: Any) -> None:
        nonlocal kept
        if isinstance(output, torch.Tensor) and not getattr(module, "inplace", False):
            kept += output.numel()

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if not any(True for _ in m.children())]
    side = model_spec["image_size"]
    model.train()
    try:
        with torch.no_grad():
            model(torch.empty(batch_size, model_spec["in_channels"], side, side, device="meta"))
    except (RuntimeError, ValueError):  # e.g. BatchNorm refuses a batch of one: no bound
        kept = 0
    for hook in hooks:
        hook.remove()
    return Footprint(params, 4 * (params + 2 * trainable), 4 * kept)


def _cgroup_free() -> int | None:
    """Bytes left under this process's cgroup (v2) memory limit; None without a limit."""
    try:
        line = Path("/proc/self/cgroup").read_text().splitlines()[0]
        base = Path("/sys/fs/cgroup") / line.split(":", 2)[2].lstrip("/")
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return int(limit) - int((base / "memory.current").read_text())
    except (OSError, IndexError, ValueError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Memory this process can still allocate on ``device``; None when it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    free = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    if free is None:
        try:
            free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return None
    cgroup = _cgroup_free()
    return free if cgroup is None else min(free, cgroup)


def check_fits(model_spec: dict[str, Any], batch_size: int, device: torch.device,
               processes: int = 1) -> Footprint:
    """Raise ``ConfigError`` when ``processes`` copies of the network (torchrun's local ranks
    on a shared host) and one batch each cannot fit in the memory free on ``device``; else
    return the estimate. Builds nothing outside the meta device."""
    try:
        need = footprint(model_spec, batch_size)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    free = available_bytes(device)
    total = need.total * processes
    if free is not None and total > free:
        each = "" if processes == 1 else f" x {processes} processes"
        lower = ("--batch-size, --image-size or --width" if need.batch_bytes > need.model_bytes
                 else "--width or --image-size")
        raise ConfigError(
            f"not enough memory on {device}: {model_spec['arch']} at width "
            f"{model_spec['width']} and {model_spec['image_size']} px needs at least "
            f"{total / GIB:.2f} GiB (network {need.model_bytes / GIB:.2f} GiB + one batch of "
            f"{batch_size} {need.batch_bytes / GIB:.2f} GiB{each}), {free / GIB:.2f} GiB free: "
            f"lower {lower}")
    return need
