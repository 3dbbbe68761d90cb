"""deepcluster-train on several processes: shard split, label gather, sampler split (units), and
2-rank gloo runs under torchrun (train, resume single-process, a rank killed then resumed)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

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
        with distributed.warnings_on_main():
            warnings.warn(f"warned by rank {rank}", UserWarning, stacklevel=1)
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
    printed = capfd.readouterr()
    assert "printed by rank 0" in printed.out and "printed by rank 1" not in printed.out
    assert "warned by rank 0" in printed.err
    assert "warned by rank 1" not in printed.err and "warned by rank 2" not in printed.err


# ---- deepcluster-train under torchrun: 2 gloo ranks on the CPU

ROOT = Path(__file__).resolve().parents[1]
# 96 digits: 48 per rank, 3 steps of 16 per rank and epoch (a single process takes 6).
ARGS = ["--data", "digits", "--max-images", "96", "--image-size", "16", "--width", "0.125",
        "--k", "4", "--pca-dim", "8", "--kmeans-iters", "5", "--batch-size", "16",
        "--workers", "0", "--seed", "5", "--device", "cpu", "--log-every", "0",  # every step
        "--reassign", "1"]
CLUSTERING = ("kmeans_seed", "empty_clusters", "size_min", "size_median", "size_max",
              "nmi_labels", "acc_labels")
TIMINGS = {"time_features", "time_pca", "time_kmeans", "time_train"}


def _torchrun(out, *extra):
    # --standalone: a rendezvous on a free local port, so parallel test runs cannot collide.
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "deepcluster.train", *ARGS, "--out", str(out), *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _records(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """A finished 2-epoch run of 2 ranks, and what it printed."""
    out = tmp_path_factory.mktemp("distributed") / "run"
    done = subprocess.run(_torchrun(out, "--epochs", "2"), env=_env(), cwd=ROOT, text=True,
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done.stdout


def test_two_ranks_cluster_as_one_process_and_log_once(two_rank_run, tmp_path):
    # Imported here, not at the top: mp.spawn's workers above import this module and need
    # little of the trainer.
    from deepcluster.checkpoint import load_checkpoint
    from deepcluster.train import main

    out, printed = two_rank_run
    assert ("2 process(es) | batch size 16 per process, 32 global | lr 0.05 (constant) in "
            "every") in printed
    # Rank 0 alone logs; each rank trains on half of the 96-sample epoch.
    for epoch in (0, 1):
        assert printed.count(f"epoch {epoch} step 1/3 loss") == 1
        assert f"epoch {epoch} step 3/3 loss" in printed
        assert f"epoch {epoch} step 4/" not in printed
    records = _records(out)
    assert [r["epoch"] for r in records] == [0, 1]
    checkpoint = load_checkpoint(out / "checkpoint.pt")
    assert checkpoint["epoch"] == 2 and checkpoint["num_images"] == 96
    assert not any(name.startswith("module.") for name in checkpoint["model"])  # not DDP's
    sizes = np.bincount(checkpoint["assignments"][:, 0].numpy(), minlength=4)
    assert (sizes.sum(), sizes.min(), sizes.max()) == (96, records[1]["size_min"],
                                                      records[1]["size_max"])
    # Epoch 0 clusters the untrained network: sharded features, reduced PCA and k-means and the
    # gathered labels must give what one process gives on all the images.
    assert main([*ARGS, "--epochs", "1", "--out", str(tmp_path / "single")]) == 0
    single = _records(tmp_path / "single")[0]
    assert {k: records[0][k] for k in CLUSTERING} == {k: single[k] for k in CLUSTERING}
    assert records[0]["kmeans_obj"] == pytest.approx(single["kmeans_obj"], rel=1e-6)


def _pid_of_rank(parent, rank):
    """The pid of the worker process of ``rank`` that torchrun (pid ``parent``) started."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            environ = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError):
            continue  # the process ended meanwhile
        if ppid == parent and f"RANK={rank}".encode() in environ:
            return int(stat.parent.name)
    raise AssertionError(f"no worker of rank {rank} under pid {parent}")


def test_a_dead_rank_ends_the_job_and_resume_continues(two_rank_run, tmp_path):
    from deepcluster.checkpoint import load_checkpoint
    from deepcluster.train import main

    run, _ = two_rank_run
    # Reference: the finished run continued by one process for a third epoch.
    shutil.copytree(run, tmp_path / "reference")
    assert main([*ARGS, "--epochs", "3", "--out", str(tmp_path / "reference"), "--resume"]) == 0
    killed = tmp_path / "killed"
    shutil.copytree(run, killed)
    job = subprocess.Popen(_torchrun(killed, "--epochs", "3", "--resume"), env=_env(), cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in job.stdout:
        if line.startswith("epoch 2 step 1/3"):
            os.kill(_pid_of_rank(job.pid, 1), signal.SIGKILL)
            break
    _, stderr = job.communicate(timeout=120)
    # torchrun stops the other rank and names the one that died.
    assert job.returncode != 0
    assert "SIGKILL" in stderr and "rank      : 1" in stderr, stderr[-3000:]
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] == 2
    assert main([*ARGS, "--epochs", "3", "--out", str(killed), "--resume"]) == 0
    assert _records(killed) == _records(tmp_path / "reference")
    assert [r["epoch"] for r in _records(killed)] == [0, 1, 2]
