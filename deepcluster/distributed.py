"""Running deepcluster-train on several processes with torch.distributed (under torchrun).

torchrun starts one process per GPU (or per CPU worker) and sets RANK, LOCAL_RANK and
WORLD_SIZE; ``init`` joins them into one process group over env:// (NCCL on GPUs, gloo on
CPUs). Without torchrun, or with WORLD_SIZE=1, every helper here is the single-process
identity, so the trainer has one code path.

What each rank does (see docs/distributed.md):
- features: its contiguous ``shard_range`` of the images, each image exactly once;
- PCA and k-means: dc_kernels with the process group (moments, sums and counts reduced);
- pseudo-labels: ``gather_labels`` puts every rank's labels back in dataset order;
- training: DistributedDataParallel, each rank taking its ``EpochShare`` of one global epoch
  drawn identically on all ranks;
- files and logs: rank 0 only (``is_main``, ``print0``, ``warnings_on_main``), the others
  wait at ``barrier``.
"""

import contextlib
import datetime
import os
import warnings
from collections.abc import Iterator
from itertools import islice
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler

from .config import ConfigError


def env_world_size() -> int:
    """The number of processes torchrun started (1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init(device: torch.device, timeout: datetime.timedelta) -> torch.device:
    """Join the job's process group when WORLD_SIZE > 1; returns the device of this process.

    On CUDA each process takes the GPU of its LOCAL_RANK (one process per GPU, as NCCL wants)
    and the group uses NCCL; on the CPU it uses gloo. ``timeout`` bounds every collective, so a
    rank whose peer died (another node, where torchrun's agent cannot kill it) stops with an
    error instead of waiting for ever. Raises ``ConfigError`` for a device that cannot be shared
    out this way.
    """
    if env_world_size() <= 1 or dist.is_initialized():
        return device
    if device.type == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if device.index is not None and device.index != local_rank:
            raise ConfigError(f"--device {device} names one GPU, but under torchrun each process "
                             f"uses the GPU of its LOCAL_RANK ({local_rank} here): pass "
                             "--device cuda or auto")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        # device_id binds the group to this GPU (barriers and collectives need not guess it).
        dist.init_process_group("nccl", init_method="env://", timeout=timeout, device_id=device)
    else:
        dist.init_process_group("gloo", init_method="env://", timeout=timeout)
    return device


def teardown() -> None:
    """Leave the process group (if this process joined one)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes files and logs (rank 0, or the only process)."""
    return rank() == 0


def group() -> dist.ProcessGroup | None:
    """The process group for dc_kernels' ``process_group`` (None: single process)."""
    return dist.group.WORLD if dist.is_initialized() else None


def print0(*args: Any, **kwargs: Any) -> None:
    """``print`` on rank 0 only: one log for the job, not one per process."""
    if is_main():
        print(*args, **kwargs)


@contextlib.contextmanager
def warnings_on_main() -> Iterator[None]:
    """Within: warnings show on rank 0 only (every rank reads the same data, so each warning
    about it, e.g. a corrupt image, would otherwise repeat once per process)."""
    with warnings.catch_warnings():
        if not is_main():
            warnings.simplefilter("ignore")
        yield


def barrier() -> None:
    """Wait until every rank gets here (e.g. until rank 0 has written the checkpoint)."""
    if dist.is_initialized():
        dist.barrier()


def shard_range(n: int, rank: int, world_size: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(n)``: the first n % world_size ranks get one
    item more. Every index belongs to exactly one rank, and the shards in rank order are
    range(n), so results concatenated in rank order come back in dataset order."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in a world of {world_size} process(es)")
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (rank < extra))


def gather_labels(local: torch.Tensor, group: dist.ProcessGroup | None) -> torch.Tensor:
    """Every rank's 1-D ``local`` concatenated in rank order, on every rank of ``group``
    (None: a single process, ``local`` itself).

    Shards may differ in length (all_gather needs equal shapes, so each is padded to the
    longest and trimmed after). ``local`` must be on the group's device (CUDA for NCCL).
    """
    if group is None:
        return local
    if local.dim() != 1:
        raise ValueError(f"local must be 1-D, got shape {tuple(local.shape)}")
    world = dist.get_world_size(group)
    lengths = [torch.zeros(1, dtype=torch.int64, device=local.device) for _ in range(world)]
    dist.all_gather(lengths, torch.tensor([len(local)], dtype=torch.int64, device=local.device),
                    group=group)
    sizes = [int(size) for size in lengths]
    padded = local.new_zeros(max(sizes))
    padded[:len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """The sums over the ranks of ``values`` (float64), e.g. a loss total and a sample count."""
    if not dist.is_initialized():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return total.tolist()


def sync_buffers(model: nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank.

    DDP broadcasts them at the start of each forward, so after the last training step every rank
    holds the statistics of its own last batch; features (eval mode) and checkpoints must use
    the same ones everywhere.
    """
    if dist.is_initialized():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` under DistributedDataParallel when there are several ranks, else itself.

    Build it anew whenever a parameter is replaced (DeepCluster's fresh top layer): DDP
    registers the parameters it reduces at construction.
    """
    if not dist.is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


class EpochShare(Sampler):
    """This rank's contiguous share of an epoch that every rank draws identically.

    Every rank builds ``epoch`` (a sampler) from the same seed and keeps positions
    [rank * m, (rank + 1) * m) of it, m = len(epoch) // world_size: the shares are disjoint and
    together are the global epoch. The last len(epoch) % world_size draws (fewer than one per
    rank) are left out so every rank runs the same number of steps, which DDP requires.
    """

    def __init__(self, epoch: Sampler, rank: int, world_size: int):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in a world of {world_size} process(es)")
        self.epoch = epoch
        share = len(epoch) // world_size
        self.start, self.stop = rank * share, (rank + 1) * share

    def __len__(self) -> int:
        return self.stop - self.start

    def __iter__(self) -> Iterator[Any]:
        return islice(iter(self.epoch), self.start, self.stop)
