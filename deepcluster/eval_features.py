"""Frozen features of a DeepCluster network, from every conv layer and the clustered embedding.

One pass over the images fills every requested layer: forward hooks on the conv layers catch
their activations, which are average-pooled on the spot to a few thousand dimensions (as the
paper's Table 1 does before its linear probes; the full maps of 60,000 images would not fit),
while ``model.embed`` gives the clustered representation. Results stay on the device.
"""

import math
from collections.abc import Sequence

import torch
import torchvision.transforms.functional as TF
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader

from .data import ImageDataset, ImageSet, normalize
from .models import DeepClusterNet

__all__ = ["EMBED", "TOP_CONV_MAX", "conv_layers", "display_images", "extract_features",
           "pool_side"]

EMBED = "embed"                # model.embed: the representation DeepCluster clusters
TOP_CONV_MAX = "top_conv_max"  # spatial max of every channel of the last conv layer (Fig. 5)


def conv_layers(model: DeepClusterNet) -> list[tuple[str, nn.Module]]:
    """("conv1", module), ... : the modules whose outputs are the conv layers' activations.

    AlexNet/VGG bodies are flat Sequentials of conv-BN-ReLU: each ReLU ends a conv layer.
    ResNet bodies are stem (conv-BN-ReLU) then four residual stages (Sequentials): the stem's
    ReLU is conv1 and the stages are conv2..conv5, the usual way ResNets are probed per layer.
    """
    taps = [m for m in model.features.children() if isinstance(m, nn.ReLU | nn.Sequential)]
    return [(f"conv{i + 1}", m) for i, m in enumerate(taps)]


def pool_side(channels: int, height: int, width: int, pool_dim: int) -> int:
    """Side s of the s x s average pooling that keeps channels * s^2 at most ``pool_dim``.

    Never larger than the map, and at least 1 x 1 even when the channels alone exceed
    ``pool_dim``.
    """
    return max(1, min(height, width, math.isqrt(pool_dim // channels)))


def _match_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """Images with the channel count the network was built for (grayscale <-> RGB)."""
    if x.shape[1] == channels:
        return x
    if channels == 1:
        return x.mean(dim=1, keepdim=True)
    return x.expand(-1, channels, -1, -1)


@torch.inference_mode()
def extract_features(model: DeepClusterNet, images: ImageSet, *, image_size: int,
                     in_channels: int, layers: Sequence[str], device: torch.device,
                     pool_dim: int = 2048, batch_size: int = 256,
                     workers: int = 0) -> dict[str, torch.Tensor]:
    """{layer: (N, D) float32 features on ``device``} for each name in ``layers``.

    Names: ``EMBED``, "conv1".."convN" (pooled to at most ``pool_dim`` dims; 0 = unpooled,
    flattened), ``TOP_CONV_MAX``. Images go through the eval pipeline (resize, center crop,
    uint8), are normalised on ``device``, the model in eval mode.
    """
    taps = dict(conv_layers(model))
    unknown = sorted(set(layers) - set(taps) - {EMBED, TOP_CONV_MAX})
    if unknown:
        raise ValueError(f"unknown layer(s) {unknown}; choose from {[EMBED, *taps]}")
    model.eval().to(device)
    caught: dict[str, torch.Tensor] = {}
    wanted = {name for name in layers if name in taps}
    if TOP_CONV_MAX in layers:
        wanted.add(next(reversed(taps)))
    hooks = []
    for name in wanted:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor,
                 name: str = name) -> None:
            caught[name] = output
        hooks.append(taps[name].register_forward_hook(hook))
    loader = DataLoader(ImageDataset(images, image_size), batch_size=batch_size,
                        shuffle=False, num_workers=workers)
    out: dict[str, torch.Tensor] = {}
    try:
        for x, index, _ in loader:  # unreadable files come replaced by their next readable one
            x = _match_channels(normalize(x.to(device, non_blocking=True)), in_channels)
            batch = {EMBED: model.embed(x)} if EMBED in layers else {}
            if not batch:
                model.body(x)
            for name in set(layers) & set(taps):
                act = caught[name]
                if pool_dim > 0:
                    act = F.adaptive_avg_pool2d(act, pool_side(*act.shape[1:], pool_dim))
                batch[name] = act.flatten(1)
            if TOP_CONV_MAX in layers:
                batch[TOP_CONV_MAX] = caught[next(reversed(taps))].amax(dim=(2, 3))
            for name, value in batch.items():
                if name not in out:
                    out[name] = torch.empty(len(images), value.shape[1], device=device)
                out[name][index.to(device)] = value.float()
    finally:
        for h in hooks:
            h.remove()
    return out


def display_images(images: ImageSet, indices: Sequence[int], size: int) -> torch.Tensor:
    """uint8 (len(indices), C, size, size): the images as the network saw them, for pictures."""
    dataset, shown = ImageDataset(images, size), []
    for i in indices:
        x = TF.resize(dataset.load(int(i))[0], [size], antialias=True)
        shown.append(TF.center_crop(x, [size, size]))
    return torch.stack(shown)
