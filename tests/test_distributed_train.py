"""deepcluster-train on several processes: shard split, label gather, sampler split."""

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from deepcluster import distributed
from deepcluster.sampler import UniformLabelSampler


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 10, 101])
@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_shard_range_covers_every_index_once(n, world):
    shards = [distributed.shard_range(n, r, world) for r in range(world)]
    # Independent reference: NumPy's split into near-equal contiguous parts, larger ones first.
    expected = np.array_split(np.arange(n), world)
    for shard, part in zip(shards, expected, strict=True):
        assert list(shard) == part.tolist()
    assert [i for shard in shards for i in shard] == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_range_rejects_bad_ranks():
    for n, r, world in ((5, 2, 2), (5, -1, 2), (5, 0, 0), (-1, 0, 1)):
        with pytest.raises(ValueError):
            distributed.shard_range(n, r, world)


@pytest.mark.parametrize("num_samples", [60, 61, 63])
@pytest.mark.parametrize("world", [1, 2, 3])
def test_epoch_share_splits_one_global_epoch(num_samples, world):
    labels = np.random.default_rng(3).integers(0, 5, 40)
    epoch = list(UniformLabelSampler(labels, num_samples, seed=11))
    # Every rank draws the epoch from the same seed, then keeps its share.
    shares = [list(distributed.EpochShare(UniformLabelSampler(labels, num_samples, seed=11), r,
                                          world)) for r in range(world)]
    per_rank = num_samples // world
    assert [len(s) for s in shares] == [per_rank] * world  # same number of steps on every rank
    # Disjoint positions of the global epoch, in rank order: the concatenation is its prefix.
    assert [item for share in shares for item in share] == epoch[:per_rank * world]
    assert num_samples - per_rank * world < world


def test_epoch_share_of_a_single_process_is_the_epoch():
    sampler = UniformLabelSampler(np.arange(10) % 3, 10, seed=2)
    assert list(distributed.EpochShare(sampler, 0, 1)) == list(sampler)
    with pytest.raises(ValueError):
        distributed.EpochShare(sampler, 1, 1)


def test_helpers_are_the_identity_without_a_process_group():
    assert not dist.is_initialized()
    labels = torch.tensor([3, 1, 2])
    assert distributed.gather_labels(labels, None) is labels
    assert distributed.all_sum([1.5, 2.0], torch.device("cpu")) == [1.5, 2.0]
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.group() is None
    model = nn.Linear(2, 2)
    assert distributed.wrap(model, torch.device("cpu")) is model


SHARD_SIZES = (5, 0, 2)  # unequal, one rank empty


def _shard(rank):
    start = sum(SHARD_SIZES[:rank])
    return torch.arange(start, start + SHARD_SIZES[rank], dtype=torch.int64) * 7 % 11


def _worker(rank, world, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        gathered = distributed.gather_labels(_shard(rank), distributed.group())
        sums = distributed.all_sum([rank + 0.5, 1.0], torch.device("cpu"))
        bn = nn.BatchNorm1d(3)
        bn.running_mean.fill_(float(rank + 1))
        distributed.sync_buffers(bn)
        distributed.print0(f"printed by rank {rank}")
        torch.save({"gathered": gathered, "sums": sums, "running_mean": bn.running_mean,
                    "is_main": distributed.is_main(), "rank": distributed.rank(),
                    "world": distributed.world_size()}, f"{out_dir}/rank{rank}.pt")
    finally:
        distributed.teardown()


def test_gather_of_unequal_label_shards_and_rank0_helpers(tmp_path, capfd):
    world = len(SHARD_SIZES)
    mp.spawn(_worker, args=(world, str(tmp_path / "init"), str(tmp_path)), nprocs=world)
    expected = (torch.arange(sum(SHARD_SIZES), dtype=torch.int64) * 7 % 11)
    for r in range(world):
        out = torch.load(tmp_path / f"rank{r}.pt")
        assert torch.equal(out["gathered"], expected)
        assert out["sums"] == [0.5 + 1.5 + 2.5, 3.0]
        assert torch.equal(out["running_mean"], torch.ones(3))  # rank 0's statistics
        assert (out["rank"], out["world"], out["is_main"]) == (r, world, r == 0)
    printed = capfd.readouterr().out
    assert "printed by rank 0" in printed and "printed by rank 1" not in printed

