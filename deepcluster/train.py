"""deepcluster-train: DeepCluster (Caron et al., ECCV 2018), one file, top to bottom.

Each epoch: features of every image (eval mode, center crop) -> PCA-whitening + L2 -> k-means
(k clusters, then the coarser levels of --k-levels on the same vectors) -> pseudo-labels -> a
fresh top layer (every level's logits) -> one pass of SGD on the mean of the levels'
cross-entropies over images sampled uniformly across the k pseudo-labels (random resized crop,
brightness/contrast jitter, flips when asked). ``deepcluster-train --help`` lists the settings.

Reproducibility: every random choice comes from an explicit seed derived from the run seed and
the epoch (k-means, sampler, augmentation, top layer, loaders), and the process-wide RNGs
(dropout) are saved in the checkpoint, so a resumed run repeats an uninterrupted one exactly on
the CPU.

Under torchrun (WORLD_SIZE > 1) the same loop runs on every rank: each embeds its shard of the
images, PCA and k-means reduce across ranks, DistributedDataParallel trains on each rank's share
of one global epoch, and rank 0 alone writes files and logs (deepcluster/distributed.py,
docs/distributed.md).
"""

import contextlib
import datetime
import json
import os
import random
import shlex
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader, Sampler

from dc_kernels.backends import auto_order, unavailable_reason

from . import distributed, metrics, rundir
from .checkpoint import (
    CheckpointError,
    check_compatible,
    check_sobel,
    level_assignments,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .clustering import cluster_features, derived_seed
from .config import NO_OUT, Config, ConfigError, parse_config, resolve_device
from .data import (
    DataError,
    ImageDataset,
    ImageSet,
    decode_file,
    default_image_size,
    default_workers,
    load_images,
    normalize,
)
from .distributed import print0
from .eval_tasks import knn_classify
from .memory import check_fits
from .models import DeepClusterNet, build_model
from .progress import Progress
from .rundir import OutputError
from .sampler import UniformLabelSampler

# Purposes of the seeds derived from (run seed, epoch, purpose).
SEED_KMEANS, SEED_SAMPLER, SEED_TOP_LAYER, SEED_LOADER, SEED_SUBSET, SEED_RANK, SEED_KNN = range(7)
# The kNN monitor of each clustering epoch: this many images (at most a fifth of them) are
# classified by their 20 nearest neighbours among at most KNN_BANK others, with their labels.
KNN_QUERIES, KNN_BANK = 1000, 10000


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the last checkpoint is intact."""


def prepare_out(config: Config, cleanup: contextlib.ExitStack) -> Path | None:
    """The run's directory, the same on every rank (None with ``--out none``).

    Rank 0 creates it (a new ``runs/<data>-<date>-<time>`` when ``--out`` is not given), proves
    it writable, locks it until ``cleanup`` closes, and refuses a directory that holds another
    run or is in use (``rundir.open_run_dir``). ``config.out`` becomes its path, as config.yaml
    and the resume command show it.
    """
    if config.out == NO_OUT:
        return None
    path = None
    if distributed.is_main():
        run_dir = rundir.open_run_dir(config.out, config.data, config.resume)
        cleanup.callback(run_dir.close)
        for note in run_dir.notes:
            print(note, flush=True)
        path = str(run_dir.path)
    config.out = rundir.same_on_every_rank(path)
    print0(f"output directory: {config.out}", flush=True)
    return Path(config.out)


def reset_top_layer(model: DeepClusterNet, k: int, seed: int, device: torch.device) -> nn.Linear:
    """A fresh Linear(feature_dim, k): weights N(0, 0.01), bias 0, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(model.feature_dim, k)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.01)
        layer.bias.zero_()
    model.top_layer = layer.to(device)
    return model.top_layer


def level_loss(logits: torch.Tensor, targets: torch.Tensor, ks: list[int]) -> torch.Tensor:
    """The mean over the clustering levels of the cross-entropy of each level's logits (the
    top layer's outputs, split by ``ks``) against its pseudo-labels (``targets``, (B, levels))."""
    levels = logits.split(ks, dim=1)
    return sum(F.cross_entropy(part, targets[:, i]) for i, part in enumerate(levels)) / len(ks)


def _feature_buffer(n: int, dim: int, device: torch.device, where: str) -> torch.Tensor:
    """Where one pass's features go (``where``: --features-on): float32 on the device, or
    float16 in host memory (pinned for a GPU; 1.28M x 4096 = 9.8 GiB), which dc_kernels streams
    to the GPU chunk by chunk. 'auto' takes the device when they use at most a quarter of its
    free memory (the rest is the network's, and k-means')."""
    if where == "auto":
        fits = device.type != "cuda" or n * dim * 4 <= torch.cuda.mem_get_info(device)[0] // 4
        where = "device" if fits else "host"
    if where == "device":
        return torch.empty(n, dim, device=device)
    return torch.empty(n, dim, dtype=torch.float16, pin_memory=device.type == "cuda")


def extract_features(model: DeepClusterNet, loader: DataLoader, first: int, device: torch.device,
                     amp: bool, progress: Progress,
                     where: str = "auto") -> tuple[torch.Tensor, list[int]]:
    """Embeddings of the images ``first``, ``first + 1``, ... that ``loader`` yields (row i =
    image first + i; ``where`` and ``_feature_buffer`` say where they are kept), and the
    images whose file was unreadable (replaced by the next readable one)."""
    model.eval()
    features = _feature_buffer(len(loader.sampler), model.feature_dim, device, where)
    replaced: list[int] = []
    with torch.no_grad(), _autocast(device, amp):
        for x, index, was_replaced in loader:
            embedding = model.embed(normalize(x.to(device, non_blocking=True))).float()
            if features.dtype == torch.float16:  # host features: saturate, not inf
                embedding = embedding.clamp(-65504, 65504).to(features.dtype).cpu()
            features[(index - first).to(features.device)] = embedding
            replaced += index[was_replaced].tolist()
            progress.step(len(index))
    progress.close()
    return features, replaced


class _PassItems(Sampler):
    """What the persistent loader loads next: the feature pass's image indices, or the training
    pass's (index, seed) pairs. Its workers outlive the passes; only this changes."""

    def __init__(self) -> None:
        self.items: Any = ()

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Any:
        return iter(self.items)


class _LossMeter:
    """The epoch's loss, summed on the device (no host sync per step) and read only when a
    progress line is due or the epoch ends; a non-finite value stops training there."""

    def __init__(self, device: torch.device, epoch: int):
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count, self.epoch, self._read = 0, epoch, (0.0, 0)

    def add(self, loss: torch.Tensor, count: int) -> None:
        self.total += loss.detach().double() * count
        self.count += count

    def read(self) -> float:
        total = float(self.total)
        if not np.isfinite(total):
            raise TrainingError(f"loss is {total} at epoch {self.epoch}, by sample "
                                f"{self.count}: lower --lr or --wd")
        return total

    def since_last_read(self) -> str:
        """'loss X': the mean over the samples since the previous call."""
        total, (last_total, last_count) = self.read(), self._read
        self._read = (total, self.count)
        return f"loss {(total - last_total) / max(self.count - last_count, 1):.4f}"


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp)


def _loader(dataset: ImageDataset, config: Config, workers: int, device: torch.device,
            items: _PassItems) -> DataLoader:
    """One loader for both passes: persistent workers (forked once per run), each keeping 4
    batches ready; uint8 batches in pinned memory when they go to a GPU."""
    # An explicit generator keeps the loader off the global torch RNG (and seeds its workers);
    # augmentation does not use it (the sampler hands every sample its seed).
    return DataLoader(dataset, batch_size=config.batch_size, sampler=items, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      prefetch_factor=4 if workers > 0 else None,
                      generator=torch.Generator().manual_seed(config.seed))


INDEX_FILE = "index.npz"          # the image directory's file list, in --out
UNREADABLE_FILE = "unreadable.txt"  # image files found unreadable, one "path<TAB>why" a line


def _load_data(config: Config, out: Path | None) -> ImageSet:
    """The images of ``--data``. A directory is listed once, by rank 0, and its index kept in
    ``--out`` (a resumed run reads it back); the other ranks receive it from rank 0."""
    folder = Path(config.data).expanduser().is_dir()
    loaded: list[Any] = [None]
    if distributed.is_main() or not folder:
        index_file = None if out is None else out / INDEX_FILE
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        try:
            if index_file is not None and folder:
                out.mkdir(parents=True, exist_ok=True)
            with distributed.warnings_on_main():
                loaded[0] = load_images(config.data, index_file=index_file,
                                        check=config.check_images,
                                        workers=config.workers if config.workers > 0 else cpus,
                                        every=config.log_every, show=distributed.is_main())
        except DataError as exc:
            loaded[0] = exc  # every rank raises it
    if folder and dist.is_initialized():
        dist.broadcast_object_list(loaded, src=0)
    if isinstance(loaded[0], DataError):
        raise loaded[0]
    images: ImageSet = loaded[0]
    if images.skipped:
        print0(f"skipped {len(images.skipped)} unreadable image(s) (see the warnings above)")
        _list_unreadable(out, images.skipped)
    return images


def _list_unreadable(out: Path | None, entries: list[tuple[str, str]]) -> None:
    """Add ``entries`` (path, why) to --out's list of unreadable image files (rank 0)."""
    if out is not None and entries and distributed.is_main():
        with open(out / UNREADABLE_FILE, "a") as f:
            f.writelines(f"{path}\t{why}\n" for path, why in entries)


def _listed_unreadable(out: Path | None) -> set[str]:
    """The files a previous part of the run (before a resume) found unreadable."""
    if out is None or not (out / UNREADABLE_FILE).exists():
        return set()
    return {line.split("\t", 1)[0] for line in (out / UNREADABLE_FILE).read_text().splitlines()}


def _new_unreadable(found: list[int], known: set[str], images: ImageSet, epoch: int,
                    device: torch.device, out: Path | None) -> int:
    """Count this epoch's unreadable files (every rank's ``found``), warn about and list the
    ones not ``known`` before; returns the epoch's count."""
    local = torch.tensor([-1, *sorted(set(found))], dtype=torch.int64, device=device)
    every = {i for i in distributed.gather_labels(local, distributed.group()).tolist() if i >= 0}
    new = sorted(path for path in map(images.path, every) if path not in known)
    known.update(new)
    entries = []
    for path in new:
        try:
            decode_file(path)
            why = "failed while loading, reads now"
        except ValueError as exc:
            why = str(exc).removeprefix(f"{path}: ")
        entries.append((path, why))
    if every:
        print0(f"epoch {epoch}: {len(every)} unreadable image file(s) replaced by the next "
               f"readable one ({len(new)} new" + (f", listed in {out / UNREADABLE_FILE})"
                                                 if out is not None else ")"), flush=True)
    if distributed.is_main():
        for path, why in entries:
            warnings.warn(f"unreadable image {path}: {why}", stacklevel=2)
    _list_unreadable(out, entries)
    return len(every)


def knn_monitor(features: torch.Tensor, labels: np.ndarray | None, seed: int) -> float | None:
    """kNN-20 top-1 (%, cosine) of a fixed slice of the images against others, from the features
    of a clustering epoch: a cheap signal that the features keep (or lose, when they collapse
    onto the pseudo-classes) the structure the labels have; None without labels. The labels are
    only read here, never trained on; the same ``seed`` keeps the same slice every epoch."""
    if labels is None or len(labels) < 10:
        return None
    order = np.random.default_rng(seed).permutation(len(labels))
    queries = order[:min(KNN_QUERIES, len(labels) // 5)]
    bank = order[len(queries):len(queries) + KNN_BANK]
    device = features.device if features.device.type == "cuda" else torch.device("cpu")
    rows = features[torch.from_numpy(np.concatenate([queries, bank])).to(features.device)]
    rows = rows.to(device, torch.float32)
    y = torch.from_numpy(np.asarray(labels)[np.concatenate([queries, bank])]).long().to(device)
    if int((y[:len(queries)] >= 0).sum()) == 0 or int((y[len(queries):] >= 0).sum()) == 0:
        return None
    return knn_classify(rows[len(queries):], y[len(queries):], rows[:len(queries)],
                        y[:len(queries)], ks=(20,))[20].accuracy


def _label_scores(true: np.ndarray | None, pred: torch.Tensor) -> tuple[float | None, float | None]:
    if true is None:
        return None, None
    return metrics.nmi(true, pred.cpu()), metrics.clustering_accuracy(true, pred.cpu())


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _summary(r: dict[str, Any], n: int, show_lr: bool) -> str:
    """The epoch's log line (``n`` images); '-' where a value does not apply (no labels). An
    epoch that does not cluster (``--reassign`` > 1) says so instead of the clustering fields;
    ``show_lr`` adds the body's learning rate (a schedule that changes it)."""
    if "time_features" in r:
        clustering = (
            f"features {r['time_features']:.1f}s ({n / r['time_features']:.0f} img/s) pca "
            f"{r['time_pca']:.2f}s kmeans {r['time_kmeans']:.2f}s obj {r['kmeans_obj']:.1f} "
            f"empty {r['empty_clusters']} splits {r['nsplit']} | sizes "
            f"{r['size_min']}/{r['size_median']:g}/{r['size_max']} | NMI(t-1,t) "
            f"{_fmt(r.get('nmi_prev'))} | NMI labels {_fmt(r.get('nmi_labels'))} acc "
            f"{_fmt(r.get('acc_labels'))} kNN {_fmt(r.get('knn_labels'), '.1f')}")
    else:
        clustering = "no clustering: the previous pseudo-labels and top layer"
    return (f"epoch {r['epoch']}" + (f" | lr {r['lr']:.3g}" if show_lr else "")
            + f" | loss {r['loss']:.4f} | {clustering} | train "
            f"{r['time_train']:.1f}s ({n / r['time_train']:.0f} img/s)"
            + (f" | unreadable {r['unreadable_images']}" if r.get("unreadable_images") else "")
            + (f" | GPU peak {r['gpu_peak_gib']:.2f} GiB" if "gpu_peak_gib" in r else ""))


def train(config: Config) -> list[dict[str, Any]]:
    """Run (or resume) the training ``config`` describes; returns the per-epoch records. The
    output directory is locked until this returns or raises."""
    with contextlib.ExitStack() as cleanup:
        records = _train(config, cleanup)
    if config.out != NO_OUT:
        print0(f"run written to {config.out}", flush=True)
    return records


def _train(config: Config, cleanup: contextlib.ExitStack) -> list[dict[str, Any]]:
    # ---- setup: everything that can fail on bad input fails here, before anything is written
    # Under torchrun: join the job (env://); each rank gets its own device (LOCAL_RANK's GPU).
    device = distributed.init(resolve_device(config.device),
                              datetime.timedelta(minutes=config.dist_timeout))
    rank, world = distributed.rank(), distributed.world_size()
    if config.kmeans_backend != "auto":
        why = unavailable_reason(config.kmeans_backend, device)
        if why:
            raise ConfigError(f"--kmeans-backend {config.kmeans_backend} cannot run on "
                              f"{device}: {why}")
    out = prepare_out(config, cleanup)
    checkpoint = None
    if out is not None and config.resume and (out / "checkpoint.pt").exists():
        checkpoint = load_checkpoint(out / "checkpoint.pt", map_location=device)
        check_compatible(checkpoint["config"], config, out / "checkpoint.pt")
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    images = _load_data(config, out)
    if 0 < config.max_images < len(images):
        rng = np.random.default_rng(derived_seed(config.seed, 0, SEED_SUBSET))
        images = images.subset(np.sort(rng.choice(len(images), config.max_images, replace=False)))
    n = len(images)
    if config.k > n:
        raise ConfigError(f"k={config.k} is larger than the number of images ({n}); "
                          "choose --k at most that")
    if n < world:
        raise ConfigError(f"{n} images cannot be shared out among {world} processes")
    image_size = config.image_size or default_image_size(images)
    workers = config.workers if config.workers >= 0 else default_workers(images)
    if checkpoint is not None and checkpoint["num_images"] != n:
        raise CheckpointError(f"checkpoint has {checkpoint['num_images']} images, the data "
                                  f"now has {n}: resume on the same data")
    ks = config.cluster_ks()
    model_spec = {"arch": config.arch, "num_clusters": sum(ks),
                  "sobel": config.sobel_for(images.grey),
                  "in_channels": images.channels, "image_size": image_size,
                  "width": config.width, "dropout": config.dropout, "head": config.head,
                  "pool2": config.pool2}
    if checkpoint is not None:
        check_sobel(checkpoint["model_spec"], model_spec["sobel"], out / "checkpoint.pt")
    try:
        check_fits(model_spec, config.batch_size, device,
                   int(os.environ.get("LOCAL_WORLD_SIZE", "1")) if device.type == "cpu" else 1)
        model = build_model(**model_spec).to(device)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    body_params = [p for name, p in model.named_parameters()
                   if not name.startswith("top_layer.") and p.requires_grad]
    optimizer = torch.optim.SGD(body_params, lr=config.lr, momentum=config.momentum,
                                weight_decay=config.wd)
    top_optimizer = torch.optim.SGD(model.top_layer.parameters(), lr=config.lr,
                                    weight_decay=config.wd)
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    start_epoch, assignments, targets, records = 0, None, None, []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        top_optimizer.load_state_dict(checkpoint["top_optimizer"])
        if checkpoint["scaler"]:
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch = checkpoint["epoch"]
        targets = level_assignments(checkpoint["assignments"]).to(device)
        assignments = targets[:, 0]
        records = rundir.read_metrics(out / "metrics.jsonl")
        # Records of an epoch the kill interrupted after its record but before its checkpoint.
        records = [r for r in records if r["epoch"] < start_epoch]
        set_rng_state(checkpoint["rng"])
    if rank > 0:
        # Dropout masks of their own (the model is built, so its weights are rank 0's); rank 0
        # keeps the single-process stream, which the checkpoint saves.
        torch.manual_seed(derived_seed(config.seed, start_epoch, SEED_RANK, rank))
    distributed.barrier()  # every rank has checked --out before rank 0 writes in it
    writer = None
    if out is not None and distributed.is_main():
        out.mkdir(parents=True, exist_ok=True)
        rundir.write_text_atomic(out / "config.yaml",
                                 yaml.safe_dump(config.to_dict(), sort_keys=False))
        rundir.write_text_atomic(out / "metrics.jsonl",
                                 "".join(json.dumps(r) + "\n" for r in records))
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            print("tensorboard is not installed: no event files (pip install tensorboard)")
    labels_info = f"{len(np.unique(images.labels))} classes" if images.labels is not None \
        else "no labels"
    print0(f"data {images.name}: {n} images, {labels_info}, {images.channels} channel(s) -> "
           f"{image_size}px | {config.arch} (width {config.width}, head {config.head}, sobel "
           f"{model_spec['sobel']}) "
           f"feature dim {model.feature_dim} | k {'/'.join(map(str, ks))} | device {device} | "
           f"epochs {start_epoch}..{config.epochs - 1}", flush=True)
    print0(f"{world} process(es) | batch size {config.batch_size} per process, "
           f"{config.batch_size * world} global | lr {config.lr} ({config.lr_schedule}) in every "
           "process, for the gradient averaged over the global batch (not scaled with the "
           "process count)",
           flush=True)

    # Each rank embeds its contiguous shard of the images: every image exactly once.
    shard = distributed.shard_range(n, rank, world)
    items = _PassItems()
    loader = _loader(ImageDataset(images, image_size, config.min_crop_scale, config.flip,
                                  config.jitter), config, workers, device, items)
    unreadable = _listed_unreadable(out)  # image files found unreadable so far
    sizes = None if assignments is None else np.bincount(assignments.cpu().numpy(),
                                                         minlength=config.k)

    # ---- the epoch loop
    for epoch in range(start_epoch, config.epochs):
        record: dict[str, Any] = {"epoch": epoch, "lr": config.body_lr(epoch)}
        for group in optimizer.param_groups:
            group["lr"] = record["lr"]
        found: list[int] = []  # this epoch's unreadable files (their image indices)
        if assignments is None or epoch % config.reassign == 0:
            items.items = shard
            progress = Progress(f"epoch {epoch} features", len(loader), config.log_every,
                                distributed.is_main())
            features, found = extract_features(model, loader, shard.start, device, config.amp,
                                               progress, config.features_on)
            record["time_features"] = time.perf_counter() - progress.start
            backend = config.kmeans_backend
            if features.device != device and backend == "auto":
                # Host-resident features: the first backend of the GPU's order that runs on
                # them (triton and cuda stream them to the GPU), not the one for CPU data.
                backend = next((name for name in auto_order(device)
                                if not unavailable_reason(name, features.device)), "auto")
            clusterings = cluster_features(
                features, ks, pca_dim=config.pca_dim, pca_power=config.pca_power,
                niter=config.kmeans_iters, nredo=config.kmeans_redo,
                seed=derived_seed(config.seed, epoch, SEED_KMEANS),
                backend=backend, process_group=distributed.group())
            clustering = clusterings[0]  # the k clusters: sampler, statistics, NMI
            local_labels = (None if images.labels is None
                            else images.labels[shard.start:shard.stop])
            record["knn_labels"] = knn_monitor(features, local_labels,
                                               derived_seed(config.seed, 0, SEED_KNN))
            del features
            nmi_prev = None if assignments is None else metrics.nmi(assignments.cpu(),
                                                                    clustering.labels.cpu())
            targets = torch.stack([c.labels for c in clusterings], dim=1).to(device)
            assignments, sizes = targets[:, 0], clustering.sizes
            nmi_labels, acc_labels = _label_scores(images.labels, assignments)
            record.update(
                time_pca=clustering.time_pca,
                time_kmeans=sum(c.time_kmeans for c in clusterings),
                kmeans_obj=clustering.objective, empty_clusters=clustering.empty_clusters,
                nsplit=clustering.nsplit, size_min=int(sizes.min()),
                size_median=float(np.median(sizes)), size_max=int(sizes.max()),
                nmi_prev=nmi_prev, nmi_labels=nmi_labels, acc_labels=acc_labels,
                kmeans_seed=clustering.seed, kmeans_backend=clustering.backend)
            # New pseudo-classes: a new top layer with its own momentum-free SGD (one layer
            # whose outputs are every level's logits, k first).
            top = reset_top_layer(model, sum(ks), derived_seed(config.seed, epoch,
                                                               SEED_TOP_LAYER), device)
            top_optimizer = torch.optim.SGD(top.parameters(), lr=config.lr,
                                            weight_decay=config.wd)

        # Every rank draws the same global epoch and trains on its own share of it.
        items.items = distributed.EpochShare(UniformLabelSampler(
            assignments, n, derived_seed(config.seed, epoch, SEED_SAMPLER)), rank, world)
        net = distributed.wrap(model, device)  # DDP, rebuilt: the top layer may be new
        net.train()
        progress = Progress(f"epoch {epoch}", len(loader), config.log_every,
                            distributed.is_main())
        loss = _LossMeter(device, epoch)
        for x, index, was_replaced in loader:
            x = normalize(x.to(device, non_blocking=True))
            y = targets[index.to(device, non_blocking=True)]
            found += index[was_replaced].tolist()
            with _autocast(device, config.amp):
                batch_loss = level_loss(net(x), y, ks)
            optimizer.zero_grad(set_to_none=True)
            top_optimizer.zero_grad(set_to_none=True)
            scaler.scale(batch_loss).backward()
            scaler.step(optimizer)
            scaler.step(top_optimizer)
            scaler.update()
            loss.add(batch_loss, len(y))
            progress.step(len(y), loss.since_last_read)
        record["time_train"] = progress.close()
        distributed.sync_buffers(model)  # rank 0's BatchNorm statistics on every rank
        loss_sum, seen = distributed.all_sum([loss.read(), loss.count], device)
        record["loss"] = loss_sum / seen
        record["unreadable_images"] = _new_unreadable(found, unreadable, images, epoch, device,
                                                      out)
        if device.type == "cuda":  # the run's peak so far (training, features and clustering)
            record["gpu_peak_gib"] = torch.cuda.max_memory_allocated(device) / 2**30

        # ---- bookkeeping: record, then checkpoint (a kill between them is undone on resume)
        records.append(record)
        print0(_summary(record, n, config.lr_schedule != "constant"), flush=True)
        if out is not None and distributed.is_main():
            rundir.append_line(out / "metrics.jsonl", json.dumps(record))
            if writer is not None:
                for key, value in record.items():
                    if isinstance(value, int | float) and key != "epoch":
                        writer.add_scalar(key, value, epoch)
                writer.flush()
            save_checkpoint({
                "config": config.to_dict(), "model_spec": model_spec,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "top_optimizer": top_optimizer.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch + 1, "rng": rng_state(), "assignments": targets.cpu(),
                "num_images": n}, out / "checkpoint.pt")
        distributed.barrier()  # no rank starts the next epoch before the checkpoint is written

    # ---- final plots
    if out is not None and records and distributed.is_main():
        from . import plots  # matplotlib: imported here, not at launch (a second of start-up)

        sobel = model.sobel.filters.weight.detach().cpu() if model.sobel is not None else None
        for path in (plots.plot_nmi_curves(records, out / "nmi.png"),
                     plots.plot_cluster_sizes(sizes, out / "cluster_sizes.png"),
                     plots.plot_conv1_filters(model.conv1.weight.detach().cpu(),
                                              out / "conv1_filters.png", sobel_kernels=sobel)):
            print0(f"wrote {path}")
        if writer is not None:
            writer.close()
    return records


def _left_behind(config: Config | None) -> str:
    """What a run that stopped early left in its directory, in a few words ('' if nothing)."""
    if config is None or config.out in ("", NO_OUT):
        return ""
    out = Path(config.out)
    if (out / "checkpoint.pt").is_file():
        return f"{out / 'checkpoint.pt'} is intact"
    if any((out / name).exists() for name in rundir.RUN_FILES):
        return f"no checkpoint yet in {out}: --resume starts the run over"
    return ""


def _resume_command(config: Config, argv: list[str]) -> str:
    if distributed.env_world_size() > 1:
        return f"relaunch the torchrun command with --out {config.out} --resume"
    given_out = any(a == "--out" or a.startswith("--out=") for a in argv)
    command = ["deepcluster-train", *argv, *([] if given_out else ["--out", config.out]),
               *([] if "--resume" in argv else ["--resume"])]
    return f"resume with: {shlex.join(command)}"


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``deepcluster-train``; returns the exit status: 2 for bad input or a fault
    (one ``error:`` line), 130 for Ctrl-C (one line with the command that resumes)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    config = None
    try:
        config = parse_config(argv)
        train(config)
    except KeyboardInterrupt:
        left = _left_behind(config)
        print0("deepcluster-train: interrupted" + (
            f"; {left}; {_resume_command(config, argv)}" if left else
            " before anything was written"), file=sys.stderr, flush=True)
        return 130
    except (ConfigError, DataError, CheckpointError, TrainingError, OutputError, OSError,
            MemoryError, RuntimeError) as exc:
        message = _error_message(exc, config)
        if message is None:
            raise  # a bug: its traceback is the report
        left = _left_behind(config) if config is not None and config.out else ""
        print(f"deepcluster-train: error: {message}" + (f" ({left})" if left else ""),
              file=sys.stderr, flush=True)
        return 2
    finally:
        distributed.teardown()
    return 0


def _error_message(exc: BaseException, config: Config | None) -> str | None:
    """The one line for a failure of the run (None: an unexpected error, a bug)."""
    if isinstance(exc, ConfigError | DataError | CheckpointError | TrainingError | OutputError):
        return str(exc)
    out_of_memory = isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))
    if out_of_memory:
        now = f" (now {config.batch_size})" if config is not None else ""
        return f"out of memory: lower --batch-size{now}, then --width or --image-size"
    if isinstance(exc, OSError):
        where = f": {exc.filename}" if exc.filename else ""
        return f"{rundir.os_reason(exc)}{where}"
    if distributed.world_size() > 1:  # most often a lost peer (a rank died or timed out)
        first = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        return (f"rank {distributed.rank()} stopped ({first}); if "
                "another rank died, relaunch the job with --resume")
    return None


if __name__ == "__main__":
    sys.exit(main())
