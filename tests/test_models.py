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


@pytest.mark.parametrize("arch", ["alexnet", "vgg16"])
def test_dropout_zero_leaves_the_dropout_layers_out(arch):
    model = build_model(arch, 5, in_channels=3, image_size=32, width=0.0625, dropout=0.0)
    assert tuple(type(m) for m in model.classifier) == (nn.Linear, nn.ReLU, nn.Linear, nn.ReLU)
    other = build_model(arch, 5, in_channels=3, image_size=32, width=0.0625, dropout=0.3)
    assert [m.p for m in other.classifier if isinstance(m, nn.Dropout)] == \
        ([0.3, 0.3] if arch == "alexnet" else [0.3])
    # The same weights whatever the dropout: Dropout layers hold no parameters.
    assert [tuple(t.shape) for t in model.state_dict().values()] == \
        [tuple(t.shape) for t in other.state_dict().values()]


@pytest.mark.parametrize("dropout", [-0.1, 1.0, float("nan")])
def test_dropout_outside_its_range_is_refused(dropout):
    with pytest.raises(ValueError, match="dropout must be in"):
        build_model("alexnet", 5, image_size=32, width=0.0625, dropout=dropout)


@pytest.mark.parametrize("arch,size", [("alexnet", 32), ("alexnet", 224), ("vgg16", 32)])
def test_head_none_puts_the_top_layer_on_the_last_conv_block(arch, size):
    model = build_model(arch, 5, in_channels=3, image_size=size, width=0.0625, dropout=0.0,
                        head="none").eval()
    assert len(model.classifier) == 0 and model.head == "none"
    x = torch.randn(2, 3, size, size)
    conv = torch.flatten(model.features(model.sobel(x)), 1)
    assert model.feature_dim == conv.shape[1] == model.top_layer.in_features
    assert torch.equal(model.embed(x), conv)
    assert model(x).shape == (2, 5)
    # The same conv body as with the FC head: only the layers after it differ.
    fc = build_model(arch, 5, in_channels=3, image_size=size, width=0.0625, dropout=0.0,
                     head="fc")
    assert fc.head == "fc"
    assert [n for n, _ in fc.features.named_parameters()] == \
        [n for n, _ in model.features.named_parameters()]


def test_head_defaults_to_the_archs_own_and_bad_heads_are_refused():
    # head=None (checkpoints from before the setting): FC for alexnet / vgg16, none for ResNets.
    assert build_model("alexnet", 3, image_size=32, width=0.0625).head == "fc"
    assert build_model("resnet18", 3, image_size=32).head == "none"
    with pytest.raises(ValueError, match="no FC head"):
        build_model("resnet18", 3, image_size=32, head="fc")
    with pytest.raises(ValueError, match="unknown head 'mlp'"):
        build_model("alexnet", 3, image_size=32, width=0.0625, head="mlp")


@pytest.mark.parametrize("size", [32, 224])
def test_alexnet_without_pool2_runs_conv3_to_conv5_on_a_map_twice_as_fine(size):
    def conv_sides(model):
        sides = []
        hooks = [m.register_forward_hook(lambda m, i, o: sides.append(o.shape[-1]))
                 for m in model.features if isinstance(m, nn.Conv2d)]
        model(torch.randn(1, 3, size, size))
        for hook in hooks:
            hook.remove()
        return sides

    spec = {"in_channels": 3, "image_size": size, "width": 0.0625, "dropout": 0.0,
            "head": "none"}
    paper = build_model("alexnet", 5, **spec).eval()
    fine = build_model("alexnet", 5, **spec, pool2=False).eval()
    sides, fine_sides = conv_sides(paper), conv_sides(fine)
    assert fine_sides[:2] == sides[:2]
    assert all(f in (2 * s, 2 * s + 1) for f, s in zip(fine_sides[2:], sides[2:], strict=True))
    # The same weights: a max-pool holds no parameters.
    assert [tuple(t.shape) for t in fine.features.state_dict().values()] == \
        [tuple(t.shape) for t in paper.features.state_dict().values()]
    assert fine.feature_dim > paper.feature_dim
    # The other archs keep their own pools.
    with pytest.raises(ValueError, match="pool2=False is for alexnet; vgg16"):
        build_model("vgg16", 5, in_channels=3, image_size=32, width=0.0625, pool2=False)
