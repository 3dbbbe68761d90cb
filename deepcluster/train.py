"""deepcluster-train: DeepCluster (Caron et al., ECCV 2018), one file, top to bottom.

Each epoch: features of every image (eval mode, center crop) -> PCA-whitening + L2 -> k-means
-> pseudo-labels -> a fresh top layer -> one pass of SGD over images sampled uniformly across
pseudo-labels (random resized crop + flip). ``deepcluster-train --help`` lists the settings.

Reproducibility: every random choice comes from an explicit seed derived from the run seed and
the epoch (k-means, sampler, augmentation, top layer, loaders), and the process-wide RNGs
(dropout) are saved in the checkpoint, so a resumed run repeats an uninterrupted one exactly on
the CPU.

Under torchrun (WORLD_SIZE > 1) the same loop runs on every rank: each embeds its shard of the
images, PCA and k-means reduce across ranks, DistributedDataParallel trains on each rank's share
of one global epoch, and rank 0 alone writes files and logs (deepcluster/distributed.py,
docs/distributed.md).
"""

import datetime
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from dc_kernels.backends import unavailable_reason

from . import distributed, metrics, plots
from .checkpoint import (
    CheckpointError,
    check_compatible,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from .clustering import cluster_features, derived_seed
from .config import Config, ConfigError, parse_config, resolve_device
from .data import (
    DataError,
    FeatureDataset,
    ImageSet,
    PseudoLabelDataset,
    TrainTransform,
    default_image_size,
    load_images,
)
from .distributed import print0
from .models import DeepClusterNet, build_model
from .sampler import UniformLabelSampler

# Purposes of the seeds derived from (run seed, epoch, purpose).
SEED_KMEANS, SEED_SAMPLER, SEED_TOP_LAYER, SEED_LOADER, SEED_SUBSET, SEED_RANK = range(6)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss diverged); the last checkpoint is intact."""


def _quiet() -> bool:
    return not sys.stderr.isatty() or not distributed.is_main()


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def prepare_out(config: Config) -> Path | None:
    """The output directory, refusing to overwrite an existing run unless resuming it."""
    if not config.out:
        if config.resume:
            raise ConfigError("--resume needs --out DIR (the directory of the run to continue)")
        return None
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} exists and is not a directory")
    has_run = (out / "checkpoint.pt").exists() or (out / "metrics.jsonl").exists()
    if config.resume and not (out / "checkpoint.pt").exists():
        raise ConfigError(f"--resume: no checkpoint.pt in {out} to continue from")
    if has_run and not config.resume:
        raise ConfigError(f"{out} already holds a run: pass --resume to continue it, or choose "
                          "another --out (nothing was changed)")
    return out


def reset_top_layer(model: DeepClusterNet, k: int, seed: int, device: torch.device) -> nn.Linear:
    """A fresh Linear(feature_dim, k): weights N(0, 0.01), bias 0, drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    layer = nn.Linear(model.feature_dim, k)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.01)
        layer.bias.zero_()
    model.top_layer = layer.to(device)
    return model.top_layer


def extract_features(model: DeepClusterNet, loader: DataLoader, device: torch.device,
                     amp: bool, desc: str) -> torch.Tensor:
    """(N, feature_dim) float32 embeddings of the whole dataset, kept on ``device``."""
    model.eval()
    features = torch.empty(len(loader.dataset), model.feature_dim, device=device)
    with torch.no_grad(), _autocast(device, amp):
        for x, index in tqdm(loader, desc=desc, disable=_quiet(), leave=False):
            features[index.to(device)] = model.embed(x.to(device, non_blocking=True)).float()
    return features


def _autocast(device: torch.device, amp: bool) -> torch.autocast:
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=amp)


def _loader(dataset: Any, config: Config, workers: int, seed: int, **kwargs: Any) -> DataLoader:
    # An explicit generator keeps loaders off the global torch RNG (and seeds their workers).
    return DataLoader(dataset, batch_size=config.batch_size, num_workers=workers,
                      pin_memory=torch.cuda.is_available(),
                      generator=torch.Generator().manual_seed(seed), **kwargs)


def _label_scores(true: np.ndarray | None, pred: torch.Tensor) -> tuple[float | None, float | None]:
    if true is None:
        return None, None
    return metrics.nmi(true, pred.cpu()), metrics.clustering_accuracy(true, pred.cpu())


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _summary(r: dict[str, Any]) -> str:
    """The epoch's log line; '-' where a value does not apply (no clustering, no labels)."""
    return (f"epoch {r['epoch']} | loss {r['loss']:.4f} | features "
            f"{_fmt(r.get('time_features'), '.1f')}s pca {_fmt(r.get('time_pca'), '.2f')}s "
            f"kmeans {_fmt(r.get('time_kmeans'), '.2f')}s obj {_fmt(r.get('kmeans_obj'), '.1f')} "
            f"empty {r.get('empty_clusters', '-')} splits {r.get('nsplit', '-')} | sizes "
            f"{r.get('size_min', '-')}/{_fmt(r.get('size_median'), 'g')}/{r.get('size_max', '-')}"
            f" | NMI(t-1,t) {_fmt(r.get('nmi_prev'))} | NMI labels {_fmt(r.get('nmi_labels'))} "
            f"acc {_fmt(r.get('acc_labels'))} | train {r['time_train']:.1f}s")


def train(config: Config) -> list[dict[str, Any]]:
    """Run (or resume) the training ``config`` describes; returns the per-epoch records."""
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
    out = prepare_out(config)
    checkpoint = None
    if config.resume:
        checkpoint = load_checkpoint(out / "checkpoint.pt", map_location=device)
        check_compatible(checkpoint["config"], config, out / "checkpoint.pt")
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)
    with distributed.warnings_on_main():
        images: ImageSet = load_images(config.data, progress=lambda files: tqdm(
            files, desc="checking images", disable=_quiet()))
    if images.skipped:
        print0(f"skipped {len(images.skipped)} unreadable image(s) (see the warnings above)")
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
    workers = config.workers if config.workers >= 0 else (
        0 if isinstance(images.images, torch.Tensor) else min(4, os.cpu_count() or 1))
    if checkpoint is not None and checkpoint["num_images"] != n:
        raise CheckpointError(f"checkpoint has {checkpoint['num_images']} images, the data "
                                  f"now has {n}: resume on the same data")
    model_spec = {"arch": config.arch, "num_clusters": config.k, "sobel": config.sobel,
                  "in_channels": images.channels, "image_size": image_size,
                  "width": config.width}
    try:
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
    start_epoch, assignments, records = 0, None, []
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        top_optimizer.load_state_dict(checkpoint["top_optimizer"])
        if checkpoint["scaler"]:
            scaler.load_state_dict(checkpoint["scaler"])
        start_epoch, assignments = checkpoint["epoch"], checkpoint["assignments"].to(device)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
                   if line.strip()] if (out / "metrics.jsonl").exists() else []
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
        _write_atomic(out / "config.yaml", yaml.safe_dump(config.to_dict(), sort_keys=False))
        _write_atomic(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in records))
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(str(out / "tensorboard"))
        except ImportError:
            print("tensorboard is not installed: no event files (pip install tensorboard)")
    labels_info = f"{len(np.unique(images.labels))} classes" if images.labels is not None \
        else "no labels"
    print0(f"data {images.name}: {n} images, {labels_info}, {images.channels} channel(s) -> "
           f"{image_size}px | {config.arch} (width {config.width}, sobel {config.sobel}) "
           f"feature dim {model.feature_dim} | k {config.k} | device {device} | "
           f"epochs {start_epoch}..{config.epochs - 1}", flush=True)
    print0(f"{world} process(es) | batch size {config.batch_size} per process, "
           f"{config.batch_size * world} global | lr {config.lr} in every process, for the "
           "gradient averaged over the global batch (not scaled with the process count)",
           flush=True)

    # Each rank embeds its contiguous shard of the images: every image exactly once.
    shard = images.subset(np.asarray(distributed.shard_range(n, rank, world)))
    feature_loader = _loader(FeatureDataset(shard, image_size), config, workers, config.seed,
                             shuffle=False)
    train_transform = TrainTransform(image_size, config.min_crop_scale)
    sizes = None if assignments is None else np.bincount(assignments.cpu().numpy(),
                                                         minlength=config.k)

    # ---- the epoch loop
    for epoch in range(start_epoch, config.epochs):
        record: dict[str, Any] = {"epoch": epoch}
        if assignments is None or epoch % config.reassign == 0:
            start = time.perf_counter()
            features = extract_features(model, feature_loader, device, config.amp,
                                        f"epoch {epoch} features")
            record["time_features"] = time.perf_counter() - start
            clustering = cluster_features(
                features, config.k, pca_dim=config.pca_dim, pca_power=config.pca_power,
                niter=config.kmeans_iters, nredo=config.kmeans_redo,
                seed=derived_seed(config.seed, epoch, SEED_KMEANS),
                backend=config.kmeans_backend, process_group=distributed.group())
            del features
            nmi_prev = None if assignments is None else metrics.nmi(assignments.cpu(),
                                                                    clustering.labels.cpu())
            assignments, sizes = clustering.labels, clustering.sizes
            nmi_labels, acc_labels = _label_scores(images.labels, assignments)
            record.update(
                time_pca=clustering.time_pca, time_kmeans=clustering.time_kmeans,
                kmeans_obj=clustering.objective, empty_clusters=clustering.empty_clusters,
                nsplit=clustering.nsplit, size_min=int(sizes.min()),
                size_median=float(np.median(sizes)), size_max=int(sizes.max()),
                nmi_prev=nmi_prev, nmi_labels=nmi_labels, acc_labels=acc_labels,
                kmeans_seed=clustering.seed, kmeans_backend=clustering.backend)
            # New pseudo-classes: a new top layer with its own momentum-free SGD.
            top = reset_top_layer(model, config.k, derived_seed(config.seed, epoch,
                                                                SEED_TOP_LAYER), device)
            top_optimizer = torch.optim.SGD(top.parameters(), lr=config.lr,
                                            weight_decay=config.wd)

        # Every rank draws the same global epoch and trains on its own share of it.
        sampler = distributed.EpochShare(UniformLabelSampler(
            assignments, n, derived_seed(config.seed, epoch, SEED_SAMPLER)), rank, world)
        loader = _loader(PseudoLabelDataset(images, assignments.cpu(), train_transform), config,
                         workers, derived_seed(config.seed, epoch, SEED_LOADER), sampler=sampler)
        net = distributed.wrap(model, device)  # DDP, rebuilt: the top layer may be new
        net.train()
        start, loss_sum, seen = time.perf_counter(), 0.0, 0
        for step, (x, y) in enumerate(loader):
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with _autocast(device, config.amp):
                loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            top_optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.step(top_optimizer)
            scaler.update()
            loss_value = loss.item()
            if not np.isfinite(loss_value):
                raise TrainingError(f"loss is {loss_value} at epoch {epoch} step {step}: lower "
                                    "--lr (the checkpoint of the previous epoch is intact)")
            loss_sum, seen = loss_sum + loss_value * len(y), seen + len(y)
            print0(f"epoch {epoch} step {step + 1}/{len(loader)} loss {loss_value:.4f}",
                   flush=True)
        record["time_train"] = time.perf_counter() - start
        distributed.sync_buffers(model)  # rank 0's BatchNorm statistics on every rank
        loss_sum, seen = distributed.all_sum([loss_sum, seen], device)
        record["loss"] = loss_sum / seen

        # ---- bookkeeping: record, then checkpoint (a kill between them is undone on resume)
        records.append(record)
        print0(_summary(record), flush=True)
        if out is not None and distributed.is_main():
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if writer is not None:
                for key, value in record.items():
                    if isinstance(value, int | float) and key != "epoch":
                        writer.add_scalar(key, value, epoch)
                writer.flush()
            save_checkpoint({
                "config": config.to_dict(), "model_spec": model_spec,
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "top_optimizer": top_optimizer.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch + 1, "rng": rng_state(), "assignments": assignments.cpu(),
                "num_images": n}, out / "checkpoint.pt")
        distributed.barrier()  # no rank starts the next epoch before the checkpoint is written

    # ---- final plots
    if out is not None and records and distributed.is_main():
        sobel = model.sobel.filters.weight.detach().cpu() if model.sobel is not None else None
        for path in (plots.plot_nmi_curves(records, out / "nmi.png"),
                     plots.plot_cluster_sizes(sizes, out / "cluster_sizes.png"),
                     plots.plot_conv1_filters(model.conv1.weight.detach().cpu(),
                                              out / "conv1_filters.png", sobel_kernels=sobel)):
            print0(f"wrote {path}")
        if writer is not None:
            writer.close()
    return records


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``deepcluster-train``; returns the exit status (2 for bad input)."""
    try:
        train(parse_config(argv))
    except (ConfigError, DataError, CheckpointError, TrainingError) as exc:
        print(f"deepcluster-train: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError:
        if distributed.world_size() > 1:  # most often a lost peer (a rank died or timed out)
            print(f"deepcluster-train: rank {distributed.rank()} stopped; if another rank died, "
                  "relaunch the job with --resume (the last checkpoint is intact)",
                  file=sys.stderr)
        raise
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
