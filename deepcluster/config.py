"""The run's configuration: a dataclass filled from defaults < a TOML/YAML file < the CLI.

The defaults run the embedded example (scikit-learn digits, a few minutes on a laptop CPU);
``--help`` shows each default and, where it differs, the paper's value.
"""

import argparse
import dataclasses
import math
import re
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml

from dc_kernels.backends import NAMES as BACKENDS

from .models import ARCHS, HEADS

DEVICES = ("auto", "cpu", "cuda")
LEVEL_RATIO = 4  # each coarser clustering of --k-levels has 4 times fewer clusters
FEATURES_ON = ("auto", "device", "host")
LR_SCHEDULES = ("constant", "cosine")
NO_OUT = "none"  # --out none: write nothing
SEED_LIMIT = 2**32  # NumPy's global seed must be below it
MAX_DIST_TIMEOUT = 525_600.0  # minutes: a year
# Exponent notation without a dot (1e-2): a float for TOML and Python, a string for YAML 1.1.
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the setting and the problem."""


@dataclass
class Config:
    data: str = "digits"
    max_images: int = 0
    image_size: int = 0
    arch: str = "alexnet"
    width: float = 0.25
    head: str = "none"
    pool2: bool = True
    dropout: float = 0.0
    sobel: bool | None = None
    k: int = 100
    k_levels: int = 3
    pca_dim: int = 64
    pca_power: float = -0.5
    kmeans_iters: int = 20
    kmeans_redo: int = 1
    kmeans_backend: str = "auto"
    reassign: int = 2
    epochs: int = 24
    batch_size: int = 32
    lr: float = 0.05
    lr_schedule: str = "constant"
    wd: float = 1e-5
    momentum: float = 0.9
    min_crop_scale: float = 0.0
    flip: bool = False
    jitter: float = 0.8
    workers: int = -1
    check_images: bool = False
    log_every: float = 10.0
    features_on: str = "auto"
    seed: int = 31
    amp: bool = False
    device: str = "auto"
    dist_timeout: float = 30.0
    out: str = ""
    resume: bool = False

    def validate(self) -> "Config":
        """Raise ``ConfigError`` for a value no run can use; return self."""
        def finite(x: float) -> bool:
            return isinstance(x, int | float) and math.isfinite(x)

        checks = [
            (self.arch in ARCHS, f"arch must be one of {ARCHS}, got {self.arch!r}"),
            (self.kmeans_backend in BACKENDS,
             f"kmeans_backend must be one of {BACKENDS}, got {self.kmeans_backend!r}"),
            (self.device in DEVICES or re.fullmatch(r"cuda:\d+", self.device) is not None,
             f"device must be one of {DEVICES} or cuda:N, got {self.device!r}"),
            (self.k >= 2, f"k must be at least 2, got {self.k}"),
            (self.k_levels >= 1, f"k_levels must be positive, got {self.k_levels}"),
            (self.pca_dim >= 1, f"pca_dim must be positive, got {self.pca_dim}"),
            (finite(self.pca_power) and -1 <= self.pca_power <= 1,
             f"pca_power must be in [-1, 1] (-0.5 whitens, 0 keeps the plain projection), "
             f"got {self.pca_power}"),
            (self.kmeans_iters >= 1, f"kmeans_iters must be positive, got {self.kmeans_iters}"),
            (self.kmeans_redo >= 1, f"kmeans_redo must be positive, got {self.kmeans_redo}"),
            (self.reassign >= 1, f"reassign must be positive, got {self.reassign}"),
            (self.epochs >= 1, f"epochs must be positive, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be positive, got {self.batch_size}"),
            (finite(self.lr) and self.lr > 0, f"lr must be a positive number, got {self.lr}"),
            (self.lr_schedule in LR_SCHEDULES,
             f"lr_schedule must be one of {LR_SCHEDULES}, got {self.lr_schedule!r}"),
            (finite(self.wd) and self.wd >= 0, f"wd must be a number >= 0, got {self.wd}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (0 <= self.min_crop_scale <= 1,
             f"min_crop_scale must be in [0, 1] (0: auto), got {self.min_crop_scale}"),
            (finite(self.width) and self.width > 0,
             f"width must be a positive number, got {self.width}"),
            (finite(self.dropout) and 0 <= self.dropout < 1,
             f"dropout must be in [0, 1), got {self.dropout}"),
            (self.head in HEADS, f"head must be one of {HEADS}, got {self.head!r}"),
            (not (self.head == "fc" and self.arch.startswith("resnet")),
             f"arch {self.arch} has no FC head: use --head none"),
            (self.pool2 or self.arch == "alexnet",
             f"--no-pool2 is for alexnet; {self.arch} keeps its own pools"),
            (self.dropout == 0 or self.head == "fc",
             f"dropout {self.dropout} needs the FC head (--head fc): --head none has no "
             "dropout layers"),
            (finite(self.jitter) and 0 <= self.jitter < 1,
             f"jitter must be in [0, 1), got {self.jitter}"),
            (self.max_images >= 0, f"max_images must be >= 0, got {self.max_images}"),
            (self.image_size == 0 or self.image_size >= 8,
             f"image_size must be 0 (auto) or at least 8, got {self.image_size}"),
            (self.workers >= -1, f"workers must be -1 (auto) or >= 0, got {self.workers}"),
            (0 <= self.seed < SEED_LIMIT,
             f"seed must be in [0, 2**32), got {self.seed}"),
            (finite(self.dist_timeout) and 0 < self.dist_timeout <= MAX_DIST_TIMEOUT,
             f"dist_timeout must be in (0, {MAX_DIST_TIMEOUT:g}] minutes, got "
             f"{self.dist_timeout}"),
            (self.features_on in FEATURES_ON,
             f"features_on must be one of {FEATURES_ON}, got {self.features_on!r}"),
            (finite(self.log_every) and self.log_every >= 0,
             f"log_every must be >= 0 seconds, got {self.log_every}"),
            (not (self.resume and self.out in ("", NO_OUT)),
             "--resume needs --out DIR (the directory of the run to continue)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self

    def sobel_for(self, grey: bool) -> bool:
        """--sobel as given, else automatic: on for colour images (the paper's reason for it: it
        takes the colour away), off for grey ones."""
        return self.sobel if self.sobel is not None else not grey

    def cluster_ks(self) -> list[int]:
        """The k of each clustering of an epoch: k, then k / 4, k / 16, ... (``k_levels`` of
        them, rounded; levels below 2 clusters are left out)."""
        coarser = [round(self.k / LEVEL_RATIO**i) for i in range(1, self.k_levels)]
        return [self.k, *(k for k in coarser if k >= 2)]

    def body_lr(self, epoch: int) -> float:
        """The body's learning rate in ``epoch`` (0-based) under ``lr_schedule``: cosine falls
        from ``lr`` at epoch 0 to ``lr * (1 + cos(pi * (epochs - 1) / epochs)) / 2`` at the
        last, one step per epoch (a resumed run with more ``epochs`` stretches what is left)."""
        if self.lr_schedule == "constant":
            return self.lr
        return self.lr * (1 + math.cos(math.pi * epoch / self.epochs)) / 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Settings a resumed run may change; every other one must match the checkpoint's.
RESUMABLE = frozenset({"epochs", "out", "resume", "workers", "device", "kmeans_backend",
                       "dist_timeout", "check_images", "log_every", "features_on"})

# (help, paper's value or None when the paper has none or the default is it)
_HELP: dict[str, tuple[str, str | None]] = {
    "data": ("'digits' (scikit-learn, embedded), 'fashion-mnist' (Debian package "
             "dataset-fashion-mnist), an .npz with x_train [y_train], or an image directory "
             "(ImageFolder layout gives evaluation labels)", "ImageNet"),
    "max_images": ("use a random subset of this many images (0: all)", None),
    "image_size": ("network input side in pixels (0: 32 for images up to 32 px, 64 up to "
                   "64, 96 up to 96, else 224)", "224"),
    "arch": (f"network: {', '.join(ARCHS)} (alexnet and vgg16 with BatchNorm)", None),
    "width": ("multiplies the conv/FC widths of alexnet and vgg16", "1.0"),
    "head": ("what the top layer reads: 'fc', the FC6-FC7 layers of alexnet and vgg16 (4096 "
             "wide times --width, clustered before the last ReLU), or 'none', the flattened last "
             "conv block (the only choice for the ResNets; measured better than fc on small "
             "data: README)", "fc"),
    "pool2": ("alexnet's max-pool after conv2 (off: conv3-conv5 work on a map twice as fine, "
              "at about 1.3x the training time of 32-px images; measured against on for small "
              "images: README); alexnet only", None),
    "dropout": ("dropout probability in the FC head of alexnet and vgg16 (0: none; the paper's "
                "0.5 made the narrow default network's features collapse on small data, "
                "README)", "0.5"),
    "sobel": ("fixed Sobel filtering in front of the network (auto: on for colour images, "
              "where it takes the colour away as in the paper; off for grey ones, which have no "
              "colour to lose and lose their brightness instead: measured better on small grey "
              "data, README)", "on"),
    "k": ("number of k-means clusters (pseudo-classes)", "10000"),
    "k_levels": ("clusterings per epoch, of k, k/4, k/16, ... clusters (at least 2 each) on the "
                 "same PCA features: one top layer each, the loss is their mean, images are "
                 "sampled uniformly over the k clusters (3 measured better than 1 on small "
                 "data: README)", "1"),
    "pca_dim": ("PCA-whitening output dimension before k-means (64 measured better than 256 "
                "on small data: README)", "256"),
    "pca_power": ("eigenvalue power of the PCA step: -0.5 whitens, 0 keeps the plain PCA "
                  "projection", None),
    "kmeans_iters": ("Lloyd iterations per clustering", None),
    "kmeans_redo": ("k-means runs from different random starts per clustering; the lowest "
                    "objective is kept (faiss's nredo)", None),
    "kmeans_backend": (f"dc_kernels backend: {', '.join(BACKENDS)}", None),
    "reassign": ("epochs between two clusterings; each clustering brings a new top layer "
                 "and a kNN monitor reading (2 measured better than 1 on small data: README)",
                 "1"),
    "epochs": ("training epochs (24 measured better than 12 on small data: README)", "500"),
    "batch_size": ("mini-batch size (small by default: an epoch is one pass over the data, "
                   "and a small dataset needs many steps per clustering)", "256"),
    "lr": ("learning rate of both SGDs (the body's follows --lr-schedule)", None),
    "lr_schedule": ("the body's learning rate over the epochs: constant, or cosine (from --lr "
                    "at the first epoch down towards 0 at the last; each fresh top layer "
                    "keeps --lr)", "constant"),
    "wd": ("weight decay of both SGDs", None),
    "momentum": ("momentum of the body's SGD (the top layer's has none)", None),
    "min_crop_scale": ("smallest area fraction of the random resized crop (0: auto, 0.08 for "
                       "network inputs of 128 px and more, 0.6 below, where an 8%% crop of an "
                       "upscaled small image keeps too few of its pixels)", "0.08"),
    "jitter": ("brightness and contrast jitter in training: each factor drawn in [1 - j, "
               "1 + j] (0: none; 0.8 measured better than 0 and 0.4: README)", "none"),
    "flip": ("random horizontal flips in training (off by default: flip invariance merges "
             "what mirroring changes, such as digits and letters; README)", "on"),
    "workers": ("data-loader worker processes, persistent across passes (-1: 0 for in-memory "
                "arrays, else the CPUs this process may use, shared among torchrun's local "
                "processes)", "4"),
    "features_on": ("where each pass's features are kept: device, host (float16, pinned when a "
                    "GPU trains; PCA and k-means stream them through it), or auto: the device "
                    "when they take at most a quarter of its free memory, else host", None),
    "check_images": ("decode every image file once at start-up, in parallel, and leave the "
                     "unreadable ones out (default: files that fail when loaded are replaced "
                     "by the next readable one, counted and listed in --out)", None),
    "log_every": ("seconds between progress lines when the output is not a terminal (0: a "
                  "line every step); a terminal gets a progress bar", None),
    "seed": ("seed of every random choice (k-means seeds derive from it and the epoch)", None),
    "amp": ("mixed precision for the network (bf16 on CPU, fp16 on CUDA)", None),
    "device": ("auto, cpu, cuda or cuda:N (under torchrun: each process takes the GPU of its "
               "LOCAL_RANK)", None),
    "dist_timeout": ("under torchrun: minutes a process waits for the others at a collective "
                     "before the job stops with an error (a rank died)", None),
    "out": ("directory for config, metrics.jsonl, checkpoint.pt, plots; 'none' writes nothing",
            None),
    "resume": ("continue the run in --out from its checkpoint.pt", None),
}


# How the defaults that stand for "automatic" or "nothing" read in --help.
_SHOWN = {"max_images": "all", "image_size": "auto", "workers": "auto", "sobel": "auto",
          "out": "a new runs/DATA-DATE-TIME",
          "min_crop_scale": "auto"}


# Field types given as --name / --no-name on the command line (None: decided from the data).
_SWITCHES = (bool, bool | None)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def build_parser() -> argparse.ArgumentParser:
    """The ``deepcluster-train`` argument parser; every option defaults to 'not given' so that
    a config file can sit between the dataclass defaults and the command line."""
    parser = argparse.ArgumentParser(
        prog="deepcluster-train",
        description="Train a convnet with DeepCluster (Caron et al., ECCV 2018). Without "
                    "arguments: the embedded example on scikit-learn's digits.",
        argument_default=argparse.SUPPRESS)
    parser.add_argument("--config", metavar="FILE",
                        help="TOML or YAML file of settings (keys as the long options, '-' or "
                             "'_'); command-line options override it")
    for f in fields(Config):
        text, paper = _HELP[f.name]
        shown = _SHOWN.get(f.name, f.default)
        text += f" (default: {shown}" + (f"; paper: {paper})" if paper else ")")
        if f.type in _SWITCHES:
            parser.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, help=text)
        else:
            choices = {"arch": ARCHS, "head": HEADS, "kmeans_backend": BACKENDS,
                       "features_on": FEATURES_ON, "lr_schedule": LR_SCHEDULES}.get(f.name)
            parser.add_argument(_flag(f.name), type=f.type, choices=choices, help=text,
                                metavar=f.name.upper() if choices is None else None)
    return parser


class _DuplicateKey(ValueError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice (plain YAML keeps the last, TOML
    refuses)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            line = key_node.start_mark.line + 1
            if isinstance(key, str | int | float | bool) and key in lines:
                raise _DuplicateKey(f"setting {key!r} is given twice (lines {lines[key]} and "
                                    f"{line})")
            lines[key] = line
        return super().construct_mapping(node, deep=deep)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    try:
        if path.suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            data = yaml.load(text, Loader=_UniqueKeyLoader) or {}
        else:
            raise ConfigError(f"config file {path} must end in .toml, .yaml or .yml")
    except _DuplicateKey as exc:
        raise ConfigError(f"config file {path}: {exc}") from None
    except (ValueError, yaml.YAMLError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config file {path} is not valid {path.suffix[1:]}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return data


def _coerce(name: str, value: Any, source: str) -> Any:
    """A config-file value checked against the field's type (ints accepted for floats, and
    strings in exponent notation such as 1e-2, which YAML 1.1 does not read as numbers)."""
    kind = {f.name: f.type for f in fields(Config)}[name]
    if kind is float and isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):
        return float(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        hint = " (write floats with a dot, e.g. 0.01, or in exponent notation, e.g. 1e-2)" \
            if kind is float else ""
        wanted = "bool" if kind in _SWITCHES else kind.__name__
        raise ConfigError(f"{source}: {name} must be {wanted}, got {value!r}{hint}")
    return value


def parse_config(argv: list[str] | None = None) -> Config:
    """Config from the command line (``argv``, default sys.argv[1:]) and an optional file."""
    args = vars(build_parser().parse_args(argv))
    values: dict[str, Any] = {}
    config_file = args.pop("config", None)
    if config_file:
        names = {f.name for f in fields(Config)}
        for key, value in _read_file(Path(config_file)).items():
            name = str(key).replace("-", "_")
            if name not in names:
                raise ConfigError(f"config file {config_file}: unknown setting {key!r}")
            values[name] = _coerce(name, value, f"config file {config_file}")
    values.update(args)
    return Config(**values).validate()


def resolve_device(name: str) -> torch.device:
    """'auto' -> the GPU when there is one; a named CUDA device must exist."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine")
    return device
