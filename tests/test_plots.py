"""Every picture of deepcluster.plots is written, non-empty, a valid PNG of the expected size."""

import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deepcluster import plots

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) read from the PNG header, after checking that PIL can decode the file."""
    data = Path(path).read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    with Image.open(path) as img:
        img.load()  # decodes every chunk: a truncated or corrupt file raises here
        assert img.size == (width, height)
    return width, height


def _not_blank(path: Path) -> None:
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.std() > 1.0, "the picture is a single flat colour"


RECORDS = [{"epoch": 0, "nmi_prev": None, "nmi_labels": 0.21},
           {"epoch": 1, "nmi_prev": 0.45, "nmi_labels": 0.30},
           {"epoch": 2, "nmi_prev": 0.62, "nmi_labels": 0.36},
           {"epoch": 3, "nmi_prev": 0.71, "nmi_labels": 0.39}]


@pytest.mark.parametrize("records", [RECORDS,
                                     [{"epoch": 0}, {"epoch": 1, "nmi_prev": 0.5}],
                                     []])
def test_nmi_curves(tmp_path: Path, records: list[dict]) -> None:
    out = plots.plot_nmi_curves(records, tmp_path / "sub" / "nmi.png")
    assert out == tmp_path / "sub" / "nmi.png"
    assert png_size(out) == plots.figure_pixels(plots.FIGSIZE_NMI)
    _not_blank(out)


@pytest.mark.parametrize("sizes", [np.array([0, 3, 10, 10, 12, 40, 7]),
                                   torch.tensor([5]), [100, 100, 100, 0]])
def test_cluster_sizes(tmp_path: Path, sizes) -> None:
    out = plots.plot_cluster_sizes(sizes, tmp_path / "sizes.png")
    assert png_size(out) == plots.figure_pixels(plots.FIGSIZE_SIZES)
    _not_blank(out)


def test_cluster_sizes_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="empty"):
        plots.plot_cluster_sizes(np.array([], dtype=int), tmp_path / "x.png")
    with pytest.raises(ValueError, match="non-negative"):
        plots.plot_cluster_sizes(np.array([3, -1]), tmp_path / "x.png")


@pytest.mark.parametrize("shape", [(96, 3, 11, 11), (64, 2, 5, 5), (16, 1, 3, 3), (1, 2, 3, 3)])
def test_conv1_filters(tmp_path: Path, shape: tuple[int, ...]) -> None:
    weight = torch.randn(shape)
    out = plots.plot_conv1_filters(weight, tmp_path / "conv1.png")
    assert png_size(out) == plots.figure_pixels(plots.FIGSIZE_FILTERS)
    _not_blank(out)


def test_sobel_filters_are_composed_with_the_sobel_kernels() -> None:
    # A filter that passes the x-gradient channel through unchanged (a 1x1 identity on channel
    # 0) must appear as the x-Sobel kernel itself.
    weight = np.zeros((1, 2, 1, 1))
    weight[0, 0, 0, 0] = 1.0
    eff = plots._effective_filters(weight, None)
    np.testing.assert_allclose(eff[0, :, :, 0], plots.SOBEL_KERNELS[0])
    # Against a direct check: correlating an image with the composed filter equals correlating
    # the Sobel outputs with the raw filter (what the network computes).
    rng = np.random.default_rng(0)
    w = rng.normal(size=(1, 2, 3, 3))
    image = torch.from_numpy(rng.normal(size=(1, 1, 12, 12)))
    sobel = torch.from_numpy(plots.SOBEL_KERNELS[:, None])
    through_net = torch.nn.functional.conv2d(torch.nn.functional.conv2d(image, sobel),
                                             torch.from_numpy(w))
    composed = torch.from_numpy(plots._effective_filters(w, None)[..., 0][:, None])
    direct = torch.nn.functional.conv2d(image, composed)
    torch.testing.assert_close(direct, through_net)


def test_conv1_filters_rejects_other_channel_counts(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="input channels"):
        plots.plot_conv1_filters(torch.randn(8, 4, 3, 3), tmp_path / "x.png")
    with pytest.raises(ValueError, match="out, in, kh, kw"):
        plots.plot_conv1_filters(torch.randn(8, 3, 3), tmp_path / "x.png")


@pytest.mark.parametrize("channels, groups, per_row", [(1, 3, 9), (3, 2, 9), (1, 1, 4)])
def test_top_images(tmp_path: Path, channels: int, groups: int, per_row: int) -> None:
    images = torch.rand(groups, per_row, channels, 28, 28)
    out = plots.plot_top_images(images, [f"cluster {g}" for g in range(groups)],
                                tmp_path / "top.png", title="top images")
    assert png_size(out) == plots.figure_pixels(plots.top_images_figsize(groups))
    _not_blank(out)


def test_top_images_rejects_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="titles"):
        plots.plot_top_images(torch.rand(2, 9, 1, 8, 8), ["a"], tmp_path / "x.png")
    with pytest.raises(ValueError, match="at most 9"):
        plots.plot_top_images(torch.rand(1, 10, 1, 8, 8), ["a"], tmp_path / "x.png")


def test_top_images_show_uint8_as_is_and_scale_floats(tmp_path: Path) -> None:
    # A dim uint8 image (values 0..40) stays dim; the same values as floats are stretched.
    dim = torch.linspace(0, 40, 28 * 28).reshape(1, 1, 1, 28, 28)
    mid_grey = {}
    for kind, images in (("uint8", dim.to(torch.uint8)), ("float", dim)):
        out = plots.plot_top_images(images, ["x"], tmp_path / f"{kind}.png")
        pixels = np.asarray(Image.open(out).convert("L"))
        mid_grey[kind] = int(((pixels > 80) & (pixels < 200)).sum())
    assert mid_grey["uint8"] < 100 < 1000 < mid_grey["float"]
