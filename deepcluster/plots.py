"""PNG pictures of a DeepCluster run: NMI curves, cluster sizes, conv1 filters, top images.

Figures are built on matplotlib's object API with the Agg canvas, never through pyplot, so
importing this module neither needs a display nor changes the process-wide backend of a user's
notebook. Every figure has a fixed size in pixels (``FIGSIZE_* x DPI``, no tight bounding box)
so that callers and tests know what they get.
"""

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from scipy.signal import convolve2d

__all__ = ["DPI", "SOBEL_KERNELS", "figure_pixels", "plot_cluster_sizes", "plot_conv1_filters",
           "plot_nmi_curves", "plot_top_images", "top_images_figsize"]

DPI = 100
FIGSIZE_NMI = (10.0, 4.0)
FIGSIZE_SIZES = (6.0, 4.0)
FIGSIZE_FILTERS = (6.0, 6.0)
TOP_IMAGES_PER_ROW = 9  # the paper's Figs. 4 and 5 show the 9 most activating images

# Horizontal and vertical Sobel kernels in the order of DeepCluster's Sobel layer (gradient
# along x, then along y), as cross-correlation kernels (what conv2d applies).
SOBEL_KERNELS = np.array([[[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]],
                          [[1.0, 2.0, 1.0], [0.0, 0.0, 0.0], [-1.0, -2.0, -1.0]]])


def figure_pixels(figsize: tuple[float, float]) -> tuple[int, int]:
    """(width, height) in pixels of a PNG written from a figure of ``figsize`` inches."""
    return round(figsize[0] * DPI), round(figsize[1] * DPI)


def _save(fig: Figure, path: str | Path) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(out, dpi=DPI, format="png")
    return out


def _numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        # Integer tensors keep their dtype (uint8 images are shown as they are); floats go to
        # float32, which NumPy has for every torch float (bfloat16 has no NumPy type).
        return (x.float() if x.is_floating_point() else x).numpy()
    return np.asarray(x)


def plot_nmi_curves(records: list[dict], path: str | Path) -> Path:
    """NMI against the true labels (Fig. 2a) and NMI(t-1, t) (Fig. 2b) across epochs.

    ``records`` are the trainer's metrics.jsonl rows: "epoch", and "nmi_labels" / "nmi_prev"
    which may be None or absent (no labels; no previous clustering at epoch 0). A panel whose
    values are all missing says so instead of drawing an empty axis.
    """
    fig = Figure(figsize=FIGSIZE_NMI)
    panels = (("nmi_labels", "NMI against true labels"),
              ("nmi_prev", "NMI between epochs t-1 and t"))
    for i, (key, title) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        points = [(r["epoch"], r[key]) for r in records if r.get(key) is not None]
        if points:
            epochs, values = zip(*points, strict=True)
            ax.plot(epochs, values, marker="o", markersize=3)
            ax.set_ylim(0.0, max(1.0, max(values)) * 1.02)
        else:
            ax.text(0.5, 0.5, "not available", ha="center", va="center",
                    transform=ax.transAxes)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("NMI")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_cluster_sizes(sizes: Any, path: str | Path) -> Path:
    """Histogram of cluster sizes (one value per cluster), empty clusters counted in the title."""
    s = _numpy(sizes).astype(np.int64).ravel()
    if s.size == 0:
        raise ValueError("sizes is empty: there must be at least one cluster")
    if (s < 0).any():
        raise ValueError("cluster sizes must be non-negative")
    fig = Figure(figsize=FIGSIZE_SIZES)
    ax = fig.add_subplot(1, 1, 1)
    # numpy's automatic bin count suits both 10 and 10,000 clusters; capped so bars stay visible.
    bins = min(50, len(np.histogram_bin_edges(s, bins="auto")) - 1)
    ax.hist(s, bins=bins, color="tab:blue", edgecolor="white")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("cluster size (images)")
    ax.set_ylabel("number of clusters")
    ax.set_title(f"{s.size} clusters, {(s == 0).sum()} empty; size min {s.min()}, "
                 f"median {int(np.median(s))}, max {s.max()}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def _effective_filters(w: np.ndarray, sobel_kernels: np.ndarray | None) -> np.ndarray:
    """Filters as images (out, H, W, 1 or 3).

    A network with a Sobel stem sees two gradient channels, so its conv1 weights are not an
    image. Composing each channel's weights with its Sobel kernel (a full 2-D convolution:
    correlating with w after correlating with s equals correlating with conv(w, s)) gives the
    filter the network effectively applies to the grayscale image, which is what Fig. 3 shows.
    """
    channels = w.shape[1]
    if channels == 2:
        kernels = SOBEL_KERNELS if sobel_kernels is None else _numpy(sobel_kernels)
        kernels = kernels.reshape(2, *kernels.shape[-2:])
        eff = np.stack([sum(convolve2d(f[c], kernels[c], mode="full") for c in range(2))
                        for f in w])
        return eff[..., None]
    if channels in (1, 3):
        return w.transpose(0, 2, 3, 1)
    raise ValueError(f"conv1 weight must have 1 (grayscale), 2 (Sobel) or 3 (RGB) input "
                     f"channels, got {channels}")


def _tile(images: np.ndarray, ncols: int, pad: int = 1) -> np.ndarray:
    """Images (n, H, W, C) in [0, 1] into one grid (white padding) of ncols columns."""
    n, h, w, c = images.shape
    nrows = math.ceil(n / ncols)
    grid = np.ones((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c))
    for i, img in enumerate(images):
        r, q = divmod(i, ncols)
        grid[pad + r * (h + pad):pad + r * (h + pad) + h,
             pad + q * (w + pad):pad + q * (w + pad) + w] = img
    return grid


def _minmax(images: np.ndarray) -> np.ndarray:
    """Each image scaled to [0, 1] on its own, so weak filters stay visible (as in Fig. 3)."""
    axes = tuple(range(1, images.ndim))
    lo = images.min(axis=axes, keepdims=True)
    hi = images.max(axis=axes, keepdims=True)
    return (images - lo) / np.where(hi > lo, hi - lo, 1.0)


def _show(ax: Any, grid: np.ndarray) -> None:
    if grid.shape[-1] == 1:
        ax.imshow(grid[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(grid, interpolation="nearest")
    ax.set_axis_off()


def plot_conv1_filters(weight: Any, path: str | Path, sobel_kernels: Any = None) -> Path:
    """conv1 weight (out, in, kh, kw) as a grid of filter images (the paper's Fig. 3).

    in = 3: RGB; in = 1: grayscale; in = 2 (Sobel stem): each filter composed with the Sobel
    kernels (``sobel_kernels`` (2, 3, 3) or (2, 1, 3, 3), default ``SOBEL_KERNELS``) into the
    grayscale filter it applies to the image, (kh + 2) x (kw + 2).
    """
    w = _numpy(weight).astype(np.float64)
    if w.ndim != 4:
        raise ValueError(f"conv1 weight must be (out, in, kh, kw), got shape {w.shape}")
    images = _minmax(_effective_filters(w, sobel_kernels))
    grid = _tile(images, ncols=math.ceil(math.sqrt(images.shape[0])))
    fig = Figure(figsize=FIGSIZE_FILTERS)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.9))
    _show(ax, grid)
    kind = {1: "grayscale", 2: "Sobel, composed", 3: "RGB"}[w.shape[1]]
    fig.suptitle(f"conv1: {w.shape[0]} filters {w.shape[2]}x{w.shape[3]} ({kind})", fontsize=10)
    return _save(fig, path)


def top_images_figsize(groups: int) -> tuple[float, float]:
    """Figure size of ``plot_top_images`` for ``groups`` rows."""
    return (TOP_IMAGES_PER_ROW * 1.0 + 1.5, groups * 1.0 + 0.5)


def plot_top_images(images: Any, titles: list[str], path: str | Path,
                    title: str = "") -> Path:
    """Rows of the images that activate a unit most (the paper's Figs. 4 and 5).

    images: (G, M, C, H, W) with M <= 9, C = 1 or 3, float (any range: each image is scaled to
    [0, 1] on its own) or uint8; one row per group (cluster or filter), ``titles[g]`` beside it.
    """
    x = _numpy(images)
    if x.ndim != 5 or x.shape[2] not in (1, 3):
        raise ValueError(f"images must be (groups, M, 1 or 3, H, W), got shape {x.shape}")
    if x.shape[1] > TOP_IMAGES_PER_ROW:
        raise ValueError(f"at most {TOP_IMAGES_PER_ROW} images per row, got {x.shape[1]}")
    if len(titles) != x.shape[0]:
        raise ValueError(f"{x.shape[0]} groups of images but {len(titles)} titles")
    groups = x.shape[0]
    fig = Figure(figsize=top_images_figsize(groups))
    left = 1.5 / fig.get_figwidth()
    top = 0.5 / fig.get_figheight()
    row_h = (1.0 - top) / groups
    for g in range(groups):
        row = x[g].astype(np.float64).transpose(0, 2, 3, 1)
        # uint8 images are shown as they are; other values have no fixed range to show.
        row = row / 255.0 if x.dtype == np.uint8 else _minmax(row)
        ax = fig.add_axes((left, 1.0 - top - (g + 1) * row_h, 1.0 - left, row_h))
        _show(ax, _tile(row, ncols=TOP_IMAGES_PER_ROW))
        fig.text(0.01, 1.0 - top - (g + 0.5) * row_h, titles[g], va="center", fontsize=8)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
