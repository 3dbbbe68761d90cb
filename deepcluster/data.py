"""Datasets and image pipelines.

``load_images(spec)`` turns a ``--data`` value into an ``ImageSet``: uint8 images (each C x H x W,
C = 1 or 3) with optional integer labels, from scikit-learn's digits, Fashion-MNIST's IDX files,
an ``.npz`` file or an ImageFolder-style directory. Two pipelines feed the network:
``eval_transform`` (resize + center crop, for features) and ``TrainTransform`` (random resized crop
+ horizontal flip driven by an explicit per-sample seed, so augmentation does not depend on the
number of loader workers or on where a run was resumed).
"""

import gzip
import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from .models import SMALL_INPUT

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
# ImageNet statistics (the paper's normalisation); one-channel images use their mean.
_MEAN_RGB, _STD_RGB = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class DataError(ValueError):
    """A ``--data`` value that cannot be used; the message says why and what to do."""


@dataclass
class ImageSet:
    """Images for DeepCluster: ``images`` is a uint8 (N, C, H, W) tensor or a list of files."""

    name: str
    images: torch.Tensor | list[Path]
    channels: int
    labels: np.ndarray | None = None      # (N,) int64 ground truth, for evaluation only
    class_names: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # corrupt files and why
    native_size: int = 0                  # largest side of the stored images (0: files)

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, indices: np.ndarray) -> "ImageSet":
        """The images at ``indices`` (in that order), with their labels."""
        if isinstance(self.images, torch.Tensor):
            images: torch.Tensor | list[Path] = self.images[torch.from_numpy(indices)]
        else:
            images = [self.images[i] for i in indices]
        labels = None if self.labels is None else self.labels[indices]
        return ImageSet(self.name, images, self.channels, labels, self.class_names,
                        self.skipped, self.native_size)

    def load(self, index: int) -> torch.Tensor:
        """Image ``index`` as a uint8 (C, H, W) tensor."""
        if isinstance(self.images, torch.Tensor):
            return self.images[index]
        with Image.open(self.images[index]) as img:
            return TF.pil_to_tensor(img.convert("RGB"))


def _from_array(name: str, x: np.ndarray, y: np.ndarray | None) -> ImageSet:
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    else:
        raise DataError(f"{name}: images must be N x H x W or N x H x W x C with C in (1, 3), "
                        f"got shape {x.shape}")
    if x.dtype != np.uint8:
        raise DataError(f"{name}: images must be uint8, got {x.dtype}")
    if len(x) == 0:
        raise DataError(f"{name}: holds no images")
    labels = None
    if y is not None:
        y = np.asarray(y).reshape(-1)
        if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{name}: labels must be {len(x)} integers, got {y.dtype} {y.shape}")
        labels = y.astype(np.int64)
    images = torch.from_numpy(np.ascontiguousarray(x))
    return ImageSet(name, images, images.shape[1], labels, native_size=max(x.shape[2:]))


def _digits() -> ImageSet:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise DataError("--data digits needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    # Pixel values are 0..16 counts; scale to the 0..255 range of ordinary images.
    x = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return _from_array("digits", x, digits.target)


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != math.prod(shape):
        raise DataError(f"{path} is truncated: {data.size} bytes for shape {shape}")
    return data.reshape(shape).copy()  # frombuffer is read-only; torch wants writable memory


def _fashion_mnist(root: Path | None = None) -> ImageSet:
    root = FASHION_MNIST_DIR if root is None else root
    images = root / "train-images-idx3-ubyte.gz"
    labels = root / "train-labels-idx1-ubyte.gz"
    if not (images.is_file() and labels.is_file()):
        raise DataError(f"Fashion-MNIST not found in {root}. Install it with: "
                        "sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist "
                        "(Debian/Ubuntu), or pass its IDX files' images as an .npz with x_train")
    return _from_array("fashion-mnist", _read_idx(images), _read_idx(labels))


def _npz(path: Path) -> ImageSet:
    try:
        with np.load(path, allow_pickle=False) as archive:
            if "x_train" not in archive.files:
                raise DataError(f"{path} has no 'x_train' array (found {archive.files})")
            y = archive["y_train"] if "y_train" in archive.files else None
            return _from_array(str(path), archive["x_train"], y)
    except (OSError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read {path} as .npz: {exc}") from exc


def _check_image(path: Path) -> str:
    """'' when the file decodes completely, else the reason it does not."""
    try:
        with Image.open(path) as img:
            img.load()
    except (OSError, UnidentifiedImageError, Image.DecompressionBombError, SyntaxError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def _image_folder(root: Path, progress: Callable[[Sequence], Sequence]) -> ImageSet:
    """Every image file under ``root``; labels are first-level folder names when all images
    live in such folders (ImageFolder layout), otherwise there are none."""
    if not os.access(root, os.R_OK | os.X_OK):
        raise DataError(f"cannot read the data directory {root}: permission denied")
    try:
        files = sorted(p for p in root.rglob("*")
                       if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    except OSError as exc:
        raise DataError(f"cannot read the data directory {root}: {exc}") from exc
    if not files:
        raise DataError(f"no images in {root} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    good, skipped = [], []
    for path in progress(files):
        why = _check_image(path)
        if why:
            skipped.append((path, why))
        else:
            good.append(path)
    for path, why in skipped:
        warnings.warn(f"skipping unreadable image {path}: {why}", stacklevel=2)
    if not good:
        raise DataError(f"none of the {len(files)} image files in {root} can be read")
    labels, class_names = None, []
    parents = [p.relative_to(root).parts for p in good]
    if all(len(parts) >= 2 for parts in parents):
        class_names = sorted({parts[0] for parts in parents})
        index = {name: i for i, name in enumerate(class_names)}
        labels = np.array([index[parts[0]] for parts in parents], dtype=np.int64)
    return ImageSet(str(root), good, 3, labels, class_names, skipped)


def load_images(spec: str, progress: Callable[[Sequence], Sequence] = lambda s: s) -> ImageSet:
    """The dataset named by ``spec``: 'digits', 'fashion-mnist', a .npz file or a directory.

    ``progress`` wraps the list of files checked when scanning a directory (e.g. tqdm). Corrupt
    or truncated image files are skipped with a warning and listed in ``ImageSet.skipped``.
    Raises ``DataError`` with a clear message for anything unusable.
    """
    if spec == "digits":
        return _digits()
    if spec == "fashion-mnist":
        return _fashion_mnist()
    path = Path(spec).expanduser()
    if path.suffix == ".npz":
        if not path.is_file():
            raise DataError(f"no such .npz file: {path}")
        return _npz(path)
    if path.is_dir():
        return _image_folder(path, progress)
    if path.exists():
        raise DataError(f"--data {spec}: not a directory, an .npz file, 'digits' or "
                        "'fashion-mnist'")
    raise DataError(f"--data {spec}: no such directory (expected an image directory, an .npz "
                    "file, 'digits' or 'fashion-mnist')")


def default_image_size(images: ImageSet) -> int:
    """Network input side when not given: 32 for images up to 32 px, 64 up to 64, else 224."""
    if images.native_size and images.native_size <= 32:
        return 32
    if images.native_size and images.native_size <= 64:
        return 64
    return 224


def _normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (C, H, W) -> float, normalised with ImageNet statistics."""
    if x.shape[0] == 3:
        mean, std = _MEAN_RGB, _STD_RGB
    else:
        mean, std = (sum(_MEAN_RGB) / 3,), (sum(_STD_RGB) / 3,)
    return TF.normalize(x.float().div_(255.0), mean, std)


def eval_transform(image_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Deterministic pipeline for features: resize the short side, center crop, normalise."""
    def transform(x: torch.Tensor) -> torch.Tensor:
        x = TF.resize(x, [image_size], antialias=True)
        return _normalize(TF.center_crop(x, [image_size, image_size]))
    return transform


def default_min_crop_scale(image_size: int) -> float:
    """Smallest random-resized-crop area when not given: the paper's 0.08 for network inputs of
    ``SMALL_INPUT`` px and more; 0.6 below, where the images are small ones upscaled (8 px
    digits, 28 px Fashion-MNIST) and an 8% crop keeps a few source pixels, not the object. The 0.6
    was picked among 0.4 / 0.6 / 0.8 by the embedded digits run's NMI against the labels: a
    choice for the demo default, which is selection on labels, not a tuned model."""
    return 0.08 if image_size >= SMALL_INPUT else 0.6


class TrainTransform:
    """Random resized crop (scale in [min_scale, 1], aspect ratio in [3/4, 4/3]) and horizontal
    flip, drawn from a generator seeded by the caller, then normalisation. ``min_scale`` 0 picks
    ``default_min_crop_scale(image_size)``."""

    def __init__(self, image_size: int, min_scale: float = 0.0):
        self.image_size = image_size
        self.min_scale = min_scale or default_min_crop_scale(image_size)

    def __call__(self, x: torch.Tensor, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        _, height, width = x.shape
        area = height * width
        log_ratio = (math.log(3 / 4), math.log(4 / 3))
        top, left, h, w = 0, 0, height, width
        # torchvision's recipe: 10 tries at a box that fits, else the whole image.
        for _ in range(10):
            u = torch.rand(3, generator=g, dtype=torch.float64).tolist()
            target = area * (self.min_scale + (1 - self.min_scale) * u[0])
            ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
            cw = int(round(math.sqrt(target * ratio)))
            ch = int(round(math.sqrt(target / ratio)))
            if 0 < cw <= width and 0 < ch <= height:
                pos = torch.randint(0, (height - ch + 1) * (width - cw + 1), (1,), generator=g)
                top, left = divmod(int(pos), width - cw + 1)
                h, w = ch, cw
                break
        x = TF.resized_crop(x, top, left, h, w, [self.image_size, self.image_size],
                            antialias=True)
        if torch.rand(1, generator=g).item() < 0.5:
            x = x.flip(-1)
        return _normalize(x)


class FeatureDataset(Dataset):
    """(image, index) through ``eval_transform``, for the feature pass."""

    def __init__(self, images: ImageSet, image_size: int):
        self.images = images
        self.transform = eval_transform(image_size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images.load(index)), index


class PseudoLabelDataset(Dataset):
    """Training samples: indexed by (image index, augmentation seed) pairs from the sampler."""

    def __init__(self, images: ImageSet, pseudo_labels: torch.Tensor, transform: TrainTransform):
        self.images = images
        self.pseudo_labels = pseudo_labels
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = item
        return self.transform(self.images.load(index), seed), int(self.pseudo_labels[index])
