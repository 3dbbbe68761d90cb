"""k-means and PCA across the ranks of a torch.distributed process group.

Each rank holds a shard of the rows; the concatenation of the shards in rank order is the data
set. What crosses ranks is small (K x d sums, K counts, d x d moments) and goes through the
group's own collectives (NCCL on GPUs, gloo on CPUs): results equal a single process on the
concatenated data up to floating-point summation order.
"""

import torch
import torch.distributed as dist


def _all_reduce(t: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)
    return t


def shard_sizes(n_local: int, device: torch.device, group: dist.ProcessGroup) -> list[int]:
    """The number of rows on every rank, in rank order."""
    sizes = [torch.zeros(1, dtype=torch.int64, device=device)
             for _ in range(dist.get_world_size(group))]
    dist.all_gather(sizes, torch.tensor([n_local], dtype=torch.int64, device=device), group=group)
    return [int(s) for s in sizes]


def random_init(x: torch.Tensor, k: int, seed: int,
                group: dist.ProcessGroup | None) -> torch.Tensor:
    """k distinct random rows of x (B, N, d), the same indices for every problem, as (B, k, d)
    float32; with a group, x is this rank's shard and every rank gets the rows a single process
    would pick from the concatenated data."""
    sizes = [x.shape[1]] if group is None else shard_sizes(x.shape[1], x.device, group)
    total = sum(sizes)
    if k > total:
        raise ValueError(f"k={k} is larger than the number of points N={total} across ranks")
    start = 0 if group is None else sum(sizes[:dist.get_rank(group)])
    generator = torch.Generator().manual_seed(seed)
    index = torch.randperm(total, generator=generator)[:k].to(x.device)
    mine = (index >= start) & (index < start + x.shape[1])
    picked = torch.zeros(x.shape[0], k, x.shape[2], dtype=torch.float32, device=x.device)
    picked[:, mine] = x[:, index[mine] - start].float()
    return picked if group is None else _all_reduce(picked, group)


def all_reduce_(group: dist.ProcessGroup, *tensors: torch.Tensor) -> None:
    """Sum each tensor over the ranks, in place (k-means: cluster sums, counts, objectives)."""
    for t in tensors:
        _all_reduce(t, group)


def reduce_sum(t: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """Sum of ``t`` over the ranks (a new tensor)."""
    return _all_reduce(t.clone(), group)


def reduce_moments(mean: torch.Tensor, cov: torch.Tensor, n_local: int,
                   group: dist.ProcessGroup) -> tuple[torch.Tensor, torch.Tensor]:
    """Global mean and covariance (float64) from each rank's own mean and covariance; the
    scatter of the ranks' means is taken about the global mean (no cancellation)."""
    n = reduce_sum(torch.tensor(float(n_local), dtype=torch.float64, device=mean.device), group)
    global_mean = reduce_sum(mean * n_local, group) / n
    delta = mean - global_mean
    return global_mean, reduce_sum((cov + torch.outer(delta, delta)) * n_local, group) / n
