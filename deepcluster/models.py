"""The convnets DeepCluster trains: AlexNet-BN, VGG-16-BN, ResNet-18/50, optional Sobel front.

Every model is a ``DeepClusterNet``: ``sobel`` (fixed, optional) -> ``features`` (conv body) ->
flatten -> ``classifier`` (the FC part of the body) -> ``top_layer`` (Linear(feature_dim, k),
re-created every epoch by the trainer). ``embed(x)`` gives the vectors that are clustered:
the classifier's output *before* its last ReLU and without the top layer, as in the paper.
The classifier is the paper's FC6-FC7 (``head="fc"``) or empty (``head="none"``: the top layer
reads the flattened last conv block, as it always does for the ResNets).

Inputs smaller than ``SMALL_INPUT`` pixels get small stems (stride-2 5x5 AlexNet conv1 with 2x2
pools, a 3x3 stride-1 ResNet conv1 without max-pool), so 28-32 px images keep a spatial map.
"""

import math

import torch
import torchvision
from torch import nn

ARCHS = ("alexnet", "vgg16", "resnet18", "resnet50")
HEADS = ("fc", "none")  # the paper's FC6-FC7 of alexnet / vgg16, or no FC layers
SMALL_INPUT = 128  # below this side length, the small stems are used

# AlexNet-BN of the paper: conv widths 96-256-384-384-256, two 4096-d FC layers with dropout.
_ALEXNET_CONVS = (96, 256, 384, 384, 256)
_ALEXNET_FC = 4096
# VGG-16 configuration "D": channel counts, "M" = 2x2 max-pool.
_VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")
_VGG_FC = 4096


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class Sobel(nn.Module):
    """Fixed grayscale conversion then horizontal and vertical 3x3 Sobel filters: 2 channels out."""

    def __init__(self, in_channels: int):
        super().__init__()
        # 1/3 per channel as in the original code: the paper removes colour, not luminance models.
        self.grayscale = nn.Conv2d(in_channels, 1, kernel_size=1, bias=False)
        self.grayscale.weight.data.fill_(1.0 / in_channels)
        self.filters = nn.Conv2d(1, 2, kernel_size=3, padding=1, bias=False)
        sobel_x = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.filters.weight.data.copy_(torch.stack([sobel_x, sobel_x.T]).unsqueeze(1))
        for param in self.parameters():
            param.requires_grad = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.filters(self.grayscale(x))


class DeepClusterNet(nn.Module):
    """sobel? -> features -> flatten -> classifier -> top_layer (see the module docstring)."""

    def __init__(self, features: nn.Module, classifier: nn.Sequential, feature_dim: int,
                 num_clusters: int, sobel: Sobel | None):
        super().__init__()
        self.sobel = sobel
        self.features = features
        self.classifier = classifier
        self.feature_dim = feature_dim
        self.top_layer: nn.Linear | None = nn.Linear(feature_dim, num_clusters)

    def body(self, x: torch.Tensor) -> torch.Tensor:
        if self.sobel is not None:
            x = self.sobel(x)
        return torch.flatten(self.features(x), 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The clustered representation, without the top layer: the FC head's output before its
        last ReLU, or (head "none") the flattened last conv block."""
        x = self.body(x)
        layers = list(self.classifier)
        if layers and isinstance(layers[-1], nn.ReLU):
            layers = layers[:-1]
        for layer in layers:
            x = layer(x)
        return x

    @property
    def head(self) -> str:
        """"fc" when FC layers sit between the conv body and the top layer, else "none"."""
        return "fc" if len(self.classifier) else "none"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.classifier(self.body(x))
        return self.top_layer(x) if self.top_layer is not None else x

    @property
    def conv1(self) -> nn.Conv2d:
        """The first learned convolution (after Sobel), whose filters the paper shows in Fig. 3."""
        return next(m for m in self.features.modules() if isinstance(m, nn.Conv2d))


def _init_paper(module: nn.Module, linear_std: float = 0.01) -> None:
    """The original code's initialisation: He-normal convs, unit BN, N(0, 0.01) linears
    (``linear_std`` overrides the 0.01)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            m.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            if m.bias is not None:
                m.bias.data.zero_()
        elif isinstance(m, nn.BatchNorm2d):
            m.weight.data.fill_(1)
            m.bias.data.zero_()
        elif isinstance(m, nn.Linear):
            m.weight.data.normal_(0, linear_std)
            m.bias.data.zero_()


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int = 1,
                  padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding),
            nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


def _alexnet_features(in_channels: int, image_size: int, width: float,
                      pool2: bool) -> nn.Sequential:
    c1, c2, c3, c4, c5 = (_scaled(c, width) for c in _ALEXNET_CONVS)
    if image_size >= SMALL_INPUT:
        stem, pool = _conv_bn_relu(in_channels, c1, 11, stride=4, padding=2), (3, 2)
    else:
        stem, pool = _conv_bn_relu(in_channels, c1, 5, stride=2, padding=2), (2, 2)
    return nn.Sequential(
        *stem, nn.MaxPool2d(*pool),
        *_conv_bn_relu(c1, c2, 5, padding=2), *([nn.MaxPool2d(*pool)] if pool2 else []),
        *_conv_bn_relu(c2, c3, 3, padding=1),
        *_conv_bn_relu(c3, c4, 3, padding=1),
        *_conv_bn_relu(c4, c5, 3, padding=1), nn.MaxPool2d(*pool))


def _vgg16_features(in_channels: int, width: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    for item in _VGG16:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += _conv_bn_relu(channels, _scaled(item, width), 3, padding=1)
            channels = _scaled(item, width)
    return nn.Sequential(*layers)


def _fc_classifier(arch: str, d_in: int, width: float,
                   dropout: float) -> tuple[nn.Sequential, int]:
    """The original code's heads: AlexNet drops out before fc6 and fc7, VGG-16 before fc7 only
    (``dropout`` 0 leaves the Dropout layers out)."""
    hidden = _scaled(_ALEXNET_FC if arch == "alexnet" else _VGG_FC, width)
    def drop() -> list[nn.Module]:
        return [nn.Dropout(dropout)] if dropout > 0 else []
    first = drop() if arch == "alexnet" else []
    return nn.Sequential(*first, nn.Linear(d_in, hidden), nn.ReLU(inplace=True),
                         *drop(), nn.Linear(hidden, hidden), nn.ReLU(inplace=True)), hidden


def _flat_dim(features: nn.Module, in_channels: int, image_size: int, arch: str) -> int:
    # Eval mode: BatchNorm in training mode refuses a single 1x1 sample.
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, in_channels, image_size, image_size))
    except RuntimeError as exc:
        raise ValueError(f"image size {image_size} is too small for arch {arch!r}: "
                         f"{exc}") from exc
    finally:
        features.train()
    return out[0].numel()


def _resnet_features(arch: str, in_channels: int, image_size: int) -> tuple[nn.Sequential, int]:
    net = getattr(torchvision.models, arch)(weights=None)
    if image_size >= SMALL_INPUT:
        net.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
    else:
        net.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        net.maxpool = nn.Identity()
    nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
    feature_dim = net.fc.in_features
    features = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2,
                             net.layer3, net.layer4, net.avgpool)
    return features, feature_dim


def default_head(arch: str) -> str:
    """The arch's own head: the paper's FC6-FC7 for alexnet and vgg16, none for the ResNets."""
    return "none" if arch.startswith("resnet") else "fc"


def build_model(arch: str, num_clusters: int, *, sobel: bool = True, in_channels: int = 3,
                image_size: int = 224, width: float = 1.0, dropout: float = 0.5,
                head: str | None = None, pool2: bool = True) -> DeepClusterNet:
    """Build a randomly initialised DeepCluster network.

    arch: one of ``ARCHS``. num_clusters: outputs of the top layer (k). sobel: put the fixed
    Sobel front in (the network then sees 2 channels). in_channels: channels of the images (1
    or 3). image_size: side of the square network input; below ``SMALL_INPUT`` the small stems
    are used. width: multiplies every conv and FC width of alexnet/vgg16 (1.0 = paper); ResNets
    only accept 1.0. dropout: probability of the FC head's Dropout layers (0.5 = paper; ResNets
    and head "none" have none). head: "fc" (alexnet and vgg16: the paper's FC6-FC7) or "none"
    (the top layer reads the flattened last conv block); None: ``default_head(arch)``. pool2:
    alexnet's max-pool after conv2 (the paper's; False, alexnet only: conv3-conv5 work on a map
    twice as fine). Raises ``ValueError`` with the reason for a bad combination.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    if in_channels not in (1, 3):
        raise ValueError(f"in_channels must be 1 or 3, got {in_channels}")
    if num_clusters < 1:
        raise ValueError(f"num_clusters must be positive, got {num_clusters}")
    if not width > 0:
        raise ValueError(f"width must be positive, got {width}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    if head is None:
        head = default_head(arch)
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose one of {HEADS}")
    if head == "fc" and arch.startswith("resnet"):
        raise ValueError(f"arch {arch!r} has no FC head (its top layer reads the pooled last "
                         "block): use head 'none'")
    if not pool2 and arch != "alexnet":
        raise ValueError(f"pool2=False is for alexnet; {arch} keeps its own pools")
    front = Sobel(in_channels) if sobel else None
    net_in = 2 if sobel else in_channels
    if arch.startswith("resnet"):
        if width != 1.0:
            raise ValueError(f"width={width} is only supported for alexnet and vgg16")
        features, feature_dim = _resnet_features(arch, net_in, image_size)
        _flat_dim(features, net_in, image_size, arch)
        model = DeepClusterNet(features, nn.Sequential(), feature_dim, num_clusters, front)
        _init_paper(model.top_layer)
        return model
    if arch == "alexnet":
        features = _alexnet_features(net_in, image_size, width, pool2)
    else:
        if image_size < 32:
            raise ValueError(f"arch 'vgg16' needs images of at least 32 px (its 5 pools), "
                             f"got image size {image_size}")
        features = _vgg16_features(net_in, width)
    flat_dim = _flat_dim(features, net_in, image_size, arch)
    if head == "fc":
        classifier, feature_dim = _fc_classifier(arch, flat_dim, width, dropout)
    else:
        classifier, feature_dim = nn.Sequential(), flat_dim
    model = DeepClusterNet(features, classifier, feature_dim, num_clusters, front)
    _init_paper(model.features)
    # A linear layer's gain is std * sqrt(fan_in): scaling the std by 1/sqrt(width) keeps the
    # paper's gain for a narrower FC stack, whose output would otherwise shrink by sqrt(width)
    # per layer (at width 0.25 a quarter of the paper's scale over two layers) and leave the body
    # with almost no gradient in the few steps of a small-data epoch. Width 1.0: the paper's 0.01.
    _init_paper(model.classifier, linear_std=0.01 / math.sqrt(width))
    _init_paper(model.top_layer)
    return model
