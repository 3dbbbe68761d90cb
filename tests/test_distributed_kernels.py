"""k-means and PCA over 2 gloo processes equal a single process on the concatenated data."""

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import dc_kernels
from dc_kernels import testing

WORLD = 2


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = testing.blobs(901, 12, 9, seed=21, spread=0.3).numpy()  # odd N: unequal shards
    far_init = x[:40].copy()
    far_init[30:] = 100.0  # ten centroids that no point picks: they must be split
    pca_x = testing.blobs(700, 16, 5, seed=22, spread=1.0).numpy()
    return x, far_init, pca_x


def _shard(a: np.ndarray, rank: int) -> np.ndarray:
    return np.array_split(a, WORLD)[rank]


def _worker(rank: int, init_file: str, out_dir: str, backend: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=WORLD)
    try:
        torch.set_num_threads(1)
        x, far_init, pca_x = _data()
        group = dist.group.WORLD
        res = dc_kernels.kmeans(torch.from_numpy(_shard(x, rank)), 9, niter=6, seed=5, nredo=2,
                                backend=backend, process_group=group)
        km = dc_kernels.Kmeans(12, 40, niter=3, seed=6, backend=backend, process_group=group)
        km.train(_shard(x, rank), init_centroids=far_init)
        pca = dc_kernels.PCAWhitening(16, 6, backend=backend, process_group=group)
        pca.train(_shard(pca_x, rank))
        np.savez(f"{out_dir}/rank{rank}.npz", centroids=res.centroids.numpy(),
                 labels=res.labels.numpy(), inertia=res.inertia,
                 obj=np.array([h["obj"] for h in res.history]), km_centroids=km.centroids,
                 km_nsplit=np.array([s["nsplit"] for s in km.iteration_stats]),
                 pca_y=pca.apply(pca_x), pca_mean=pca.mean.numpy())
    finally:
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_single_process(tmp_path, backend):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path), backend), nprocs=WORLD)
    x, far_init, pca_x = _data()
    single = dc_kernels.kmeans(x, 9, niter=6, seed=5, nredo=2, backend=backend)
    km = dc_kernels.Kmeans(12, 40, niter=3, seed=6, backend=backend)
    km.train(x, init_centroids=far_init)
    pca = dc_kernels.PCAWhitening(16, 6, backend=backend).train(pca_x)
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(WORLD)]
    for out in ranks:
        np.testing.assert_allclose(out["centroids"], single.centroids, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(out["inertia"], single.inertia, rtol=1e-6)
        np.testing.assert_allclose(out["obj"], [h["obj"] for h in single.history], rtol=1e-6)
        np.testing.assert_allclose(out["km_centroids"], km.centroids, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(out["km_nsplit"], [s["nsplit"] for s in km.iteration_stats])
        np.testing.assert_allclose(out["pca_mean"], pca.mean.numpy(), rtol=1e-12)
        np.testing.assert_allclose(out["pca_y"], pca.apply(pca_x), atol=1e-5)
    assert km.iteration_stats[0]["nsplit"] == 10
    labels = np.concatenate([out["labels"] for out in ranks])
    np.testing.assert_array_equal(labels, single.labels)
