"""The trainer's image pipelines against torchvision's standard ImageFolder pipeline, one run.

    python bench/data_bench.py                      # builds a folder of photo-like JPEGs
    python bench/data_bench.py --folder DIR         # an ImageFolder tree of yours

Measured side by side (rounds alternate the pipelines, the best round of each is kept, so other
jobs on the machine disturb both alike):
- CPU ms per image, one process, one thread: our feature pipeline (decode_image + resize +
  centre crop on uint8) and training pipeline (random resized crop + flip on uint8), against
  ImageFolder with Resize(256) / CenterCrop(224) and RandomResizedCrop(224) / flip, both with
  ToTensor + Normalize (the standard recipe; ours normalises on the training device instead);
- images/s through a DataLoader with the same workers and batch size for both;
- start-up on a folder of many small files: listing into the index (and ``sorted(rglob)``, the
  old way), the index's bytes per 1M files, and the seconds from launching
  ``deepcluster-train`` to its first feature-batch line;
- the extrapolation to ImageNet's 1,281,167 images on 16 cores (CPU ms/img x images / 16).

The photo-like folder: random crops of scikit-learn's two sample photographs, rescaled to
ImageNet sizes (long side 400-500 px, aspect ratios 4:3, 3:4, 1:1, 3:2), flipped, colour-
jittered, saved as JPEG quality 90 in 100 class folders.
"""

import argparse
import concurrent.futures
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T

from deepcluster import data

IMAGENET = 1_281_167
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _make_photos(root: Path, first: int, stop: int, seed: int) -> None:
    from sklearn.datasets import load_sample_images

    photos = [Image.fromarray(x) for x in load_sample_images().images]
    for i in range(first, stop):
        rng = np.random.default_rng([seed, i])  # image i is the same however the work is split
        src = photos[i % len(photos)]
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        left, top = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        img = src.crop((left, top, left + cw, top + ch))
        long_side = int(rng.integers(400, 501))
        aspect = (4 / 3, 3 / 4, 1.0, 3 / 2)[int(rng.integers(0, 4))]
        size = (long_side, round(long_side / aspect)) if aspect >= 1 else \
            (round(long_side * aspect), long_side)
        img = img.resize(size, Image.BICUBIC)
        if rng.random() < 0.5:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)
        for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
            img = enhance(img).enhance(rng.uniform(0.7, 1.3))
        folder = root / f"n{i % 100:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"n{i % 100:08d}_{i}.JPEG", quality=90)


def make_photo_folder(root: Path, count: int, seed: int = 0, workers: int = 1) -> Path:
    """``count`` photo-like JPEGs of ImageNet sizes under root/nXXXXXXXX/ (100 classes),
    written by ``workers`` processes."""
    step = -(-count // max(1, workers))
    with concurrent.futures.ProcessPoolExecutor(max(1, workers)) as pool:
        for done in [pool.submit(_make_photos, root, s, min(s + step, count), seed)
                     for s in range(0, count, step)]:
            done.result()
    return root


def make_listing_folder(root: Path, count: int) -> Path:
    """``count`` small JPEG files with ImageNet-like names (1000 classes), hard links to 50
    distinct 32 px images, so the folder costs little disk but lists like a real one."""
    rng = np.random.default_rng(1)
    sources = root / "_sources"
    sources.mkdir(parents=True)
    originals = []
    for i in range(50):
        path = sources / f"{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
        originals.append(path)
    data_dir = root / "data"
    for i in range(count):
        folder = data_dir / f"n{i % 1000:08d}"
        if i < 1000:
            folder.mkdir(parents=True)
        os.link(originals[i % 50], folder / f"n{i % 1000:08d}_{i // 1000 + 10000}.JPEG")
    return data_dir


def pipelines(root: Path) -> dict[str, tuple[torch.utils.data.Dataset, Callable[[int], object]]]:
    """name -> (dataset, item of position i) for the four pipelines compared."""
    images = data.load_images(str(root), show=False)
    ours = data.ImageDataset(images, 224, 0.08)
    normalize = T.Normalize(MEAN, STD)
    tv_features = datasets.ImageFolder(str(root), T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize]))
    tv_train = datasets.ImageFolder(str(root), T.Compose(
        [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize]))
    seeds = np.random.default_rng(2).integers(0, 2**62, len(images)).tolist()
    return {
        "ours features": (ours, lambda i: i),
        "torchvision features": (tv_features, lambda i: i),
        "ours training": (ours, lambda i: (i, seeds[i])),
        "torchvision training": (tv_train, lambda i: i),
    }


def cpu_ms_per_image(dataset: torch.utils.data.Dataset, item: Callable[[int], object],
                     count: int) -> float:
    start = time.process_time()
    for i in range(count):
        dataset[item(i)]
    return (time.process_time() - start) * 1000 / count


class _Items(torch.utils.data.Sampler):
    def __init__(self, items: list) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self):  # noqa: ANN204
        return iter(self.items)


def images_per_second(dataset: torch.utils.data.Dataset, item: Callable[[int], object],
                      count: int, workers: int, batch_size: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                        sampler=_Items([item(i) for i in range(count)]))
    start = time.perf_counter()
    for _ in loader:
        pass
    return count / (time.perf_counter() - start)


def model_pass_rate(dataset: torch.utils.data.Dataset, item: Callable[[int], object],
                    count: int, workers: int, batch_size: int, model: torch.nn.Module,
                    train: bool, ours: bool) -> float:
    """Images/s of the feature pass (``model.embed``) or the training pass (forward, backward,
    SGD step) fed by the pipeline; ``ours`` batches are uint8, normalised on the device."""
    device = next(model.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=True,
                        sampler=_Items([item(i) for i in range(count)]),
                        prefetch_factor=4 if workers else None)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    model.train(train)
    torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.set_grad_enabled(train):
        for batch in loader:
            x = batch[0].to(device, non_blocking=True)
            x = data.normalize(x) if ours else x
            if train:
                loss = torch.nn.functional.cross_entropy(model(x), batch[1].to(device) % 1000)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                model.embed(x)
    torch.cuda.synchronize(device)
    return count / (time.perf_counter() - start)


def first_batch_seconds(folder: Path, out: Path, workers: int) -> tuple[float, str]:
    """Seconds from launching deepcluster-train on ``folder`` to its first feature-batch line,
    and that line."""
    command = [sys.executable, "-m", "deepcluster.train", "--data", str(folder), "--out",
               str(out), "--epochs", "1", "--k", "10", "--log-every", "0", "--device", "cpu",
               "--workers", str(workers)]
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = ""
    for line in proc.stdout:
        if re.match(r"epoch 0 features step 1/", line):
            break
    seconds = time.perf_counter() - start
    proc.kill()
    proc.wait()
    return seconds, line.strip()


def startup(listing_files: int, workers: int, work: Path) -> dict[str, float | str]:
    folder = make_listing_folder(work / "listing", listing_files)
    # The old way: sorted(rglob) into a list of Path, its memory traced.
    tracemalloc.start()
    start = time.perf_counter()
    old = sorted(p for p in folder.rglob("*") if p.suffix.lower() in data.IMAGE_EXTENSIONS
                 and p.is_file())
    rglob_s = time.perf_counter() - start
    old_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del old
    start = time.perf_counter()
    images = data.load_images(str(folder), show=False)
    index_s = time.perf_counter() - start
    per_million = 1e6 / len(images)
    seconds, line = first_batch_seconds(folder, work / "startup-run", workers)
    start = time.perf_counter()  # the part of the launch that is Python importing torch & co.
    subprocess.run([sys.executable, "-c", "import deepcluster.train"], check=True)
    import_s = time.perf_counter() - start
    return {"files": len(images), "index_s": index_s, "rglob_s": rglob_s,
            "index_mib_per_1m": images.images.nbytes * per_million / 2**20,
            "labels_mib_per_1m": images.labels.nbytes * per_million / 2**20,
            "path_list_mib_per_1m": old_bytes * per_million / 2**20,
            "first_batch_s": seconds, "first_batch_line": line, "import_s": import_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--folder", type=Path, help="an ImageFolder tree (default: build one)")
    parser.add_argument("--images", type=int, default=600, help="photos to build and load")
    parser.add_argument("--cpu-images", type=int, default=200,
                        help="images per round of the one-thread CPU measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--listing-files", type=int, default=100_000,
                        help="files of the start-up folder (0: skip the start-up part)")
    parser.add_argument("--cores", type=int, default=16, help="cores of the extrapolation")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--make-folder", type=Path,
                        help="only build the photo folder (--images photos) here and stop")
    parser.add_argument("--model-passes", action="store_true",
                        help="on CUDA: also images/s of both passes of AlexNet (width 1, "
                             "k 1000, batch 256) fed by each pipeline")
    args = parser.parse_args()
    if args.make_folder:
        start = time.perf_counter()
        make_photo_folder(args.make_folder, args.images, workers=args.workers)
        print(f"built {args.images} photos in {args.make_folder} in "
              f"{time.perf_counter() - start:.0f} s")
        return

    with tempfile.TemporaryDirectory(prefix="data_bench_") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        folder = args.folder or make_photo_folder(work / "photos", args.images,
                                                  workers=args.workers)
        count = sum(1 for _ in folder.rglob("*.*"))
        print(f"folder {folder}: {count} files (built in {time.perf_counter() - start:.0f} s)"
              if args.folder is None else f"folder {folder}: {count} files", flush=True)
        runs = pipelines(folder)
        n = min(len(runs["ours features"][0]), args.images)
        torch.set_num_threads(1)
        ms = {name: float("inf") for name in runs}
        rate = {name: 0.0 for name in runs}
        for r in range(args.rounds):
            for name, (dataset, item) in runs.items():
                ms[name] = min(ms[name], cpu_ms_per_image(dataset, item,
                                                          min(n, args.cpu_images)))
                rate[name] = max(rate[name], images_per_second(dataset, item, n, args.workers,
                                                               args.batch_size))
            print(f"round {r + 1}/{args.rounds} done", flush=True)
        report: dict = {"machine_cpus": len(os.sched_getaffinity(0)), "workers": args.workers,
                        "images": n, "cpu_ms_per_image": ms, "images_per_s": rate}
        print(f"\nCPU ms per image (1 process, 1 thread, best of {args.rounds} rounds) and "
              f"images/s ({args.workers} workers, batch {args.batch_size}), {n} images:")
        print(f"{'pipeline':<24}{'ms/img':>9}{'img/s':>9}{'vs torchvision':>16}"
              f"{'1.28M on ' + str(args.cores) + ' cores':>20}")
        for name in runs:
            ref = name.replace("ours", "torchvision")
            ratio = f"{ms[name] / ms[ref]:.2f}x" if name != ref else ""
            minutes = IMAGENET * ms[name] / args.cores / 60000
            print(f"{name:<24}{ms[name]:>9.2f}{rate[name]:>9.0f}{ratio:>16}"
                  f"{minutes:>15.1f} min")
        report["ratio_features"] = ms["ours features"] / ms["torchvision features"]
        report["ratio_training"] = ms["ours training"] / ms["torchvision training"]
        if args.model_passes:
            from deepcluster.models import build_model

            model = build_model("alexnet", 1000, image_size=224, width=1.0).cuda()
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // 2))
            passes = {}
            for name, (dataset, item) in runs.items():
                train = "training" in name
                passes[name] = model_pass_rate(dataset, item, n, args.workers, 256, model,
                                               train, name.startswith("ours"))
                print(f"{name} pass on {torch.cuda.get_device_name()}: {passes[name]:.0f} "
                      f"img/s", flush=True)
            report["model_pass_images_per_s"] = passes
        if args.listing_files:
            print(f"\nstart-up on {args.listing_files} small files ...", flush=True)
            s = startup(args.listing_files, args.workers, work)
            report["startup"] = s
            scale = 1e5 / s["files"]
            print(f"listing into the index: {s['index_s'] * scale:.2f} s per 100k files "
                  f"(sorted(rglob): {s['rglob_s'] * scale:.2f} s)")
            print(f"index: {s['index_mib_per_1m']:.1f} MiB per 1M files (+ labels "
                  f"{s['labels_mib_per_1m']:.1f}); list of Path: "
                  f"{s['path_list_mib_per_1m']:.0f} MiB per 1M")
            print(f"launch -> first feature batch: {s['first_batch_s']:.1f} s for "
                  f"{s['files']} files ({s['first_batch_line']!r}); importing "
                  f"deepcluster.train alone (torch, torchvision, ...): {s['import_s']:.1f} s")
            print(f"1.28M files: listing about {s['index_s'] * IMAGENET / s['files']:.0f} s")
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
