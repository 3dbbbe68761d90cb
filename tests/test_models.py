"""The networks' heads as in the original DeepCluster code (facebookresearch/deepcluster)."""

import pytest
import torch
from torch import nn

from deepcluster.models import build_model


@pytest.mark.parametrize("arch,size,head", [
    # AlexNet: Dropout before fc6 and fc7. VGG-16: fc6 straight from conv5, Dropout before fc7.
    ("alexnet", 224, (nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU)),
    ("vgg16", 224, (nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU)),
    ("vgg16", 32, (nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU)),
])
def test_classifier_heads_follow_the_original(arch, size, head):
    width = 0.0625
    model = build_model(arch, 5, sobel=True, in_channels=3, image_size=size, width=width)
    assert tuple(type(m) for m in model.classifier) == head
    fc6 = next(m for m in model.classifier if isinstance(m, nn.Linear))
    # The conv5 map into fc6: 6 x 6 (AlexNet) and 7 x 7 (VGG-16) at 224 px.
    side = {("alexnet", 224): 6, ("vgg16", 224): 7, ("vgg16", 32): 1}[(arch, size)]
    channels = {"alexnet": 256, "vgg16": 512}[arch] * width
    assert fc6.in_features == channels * side * side
    # In eval mode dropout is the identity: the embedding is fc7 before its ReLU.
    model.eval()
    x = torch.randn(2, 3, size, size)
    assert torch.equal(torch.relu(model.embed(x)), model.classifier(model.body(x)))
