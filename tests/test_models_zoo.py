"""The CIFAR-style zoo and LeNet-5: shapes, feature layers, one training step, sizes."""

import pytest
import torch
from torch import nn

from joryu.models import available, count_parameters, create, describe

ZOO = [n for n in available() if n not in ("mlp", "cnn1d")]
NO_TRAIN_STEP = {"tiny_segmenter", "resnet110", "wrn_28_10"}  # the slowest on CPU: forward only


def _shape(name):
    return (1, 28, 28) if name == "lenet5" else (3, 32, 32)


def test_zoo_registered():
    expected = {
        "lenet5", "resnet8", "resnet14", "resnet20", "resnet32", "resnet44", "resnet56",
        "resnet110", "resnet8x4", "resnet32x4", "wrn", "wrn_16_1", "wrn_16_2", "wrn_40_1",
        "wrn_40_2", "wrn_28_10", "vgg8", "vgg11", "vgg13", "vgg16", "vgg19", "mobilenetv2",
        "shufflenetv2",
    }
    assert expected <= set(ZOO)
    docs = describe()
    assert all(docs[n] for n in ZOO)


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model(name):
    torch.manual_seed(0)
    shape = _shape(name)
    model = create(name, num_classes=7, input_shape=shape)
    x = torch.randn(2, *shape)
    model.eval()
    with torch.no_grad():
        out = model(x)
    per_pixel = name in ("tiny_segmenter",)  # a segmenter predicts [B, classes, H, W]
    assert out.shape == ((2, 7, *shape[1:]) if per_pixel else (2, 7))
    assert model.feature_layers
    for path in model.feature_layers:
        assert isinstance(model.get_submodule(path), nn.Module)
    if name in NO_TRAIN_STEP:
        return
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(x), torch.tensor([0, 6]))
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_feature_layers_capture_stage_outputs():
    model = create("resnet20", num_classes=3).eval()
    seen = {}
    hooks = [model.get_submodule(p).register_forward_hook(
        lambda m, i, o, p=p: seen.__setitem__(p, o.shape)) for p in model.feature_layers]
    with torch.no_grad():
        model(torch.randn(1, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert seen == {"layer1": (1, 16, 32, 32), "layer2": (1, 32, 16, 16),
                    "layer3": (1, 64, 8, 8)}


def test_one_channel_resnet():
    model = create("resnet20", input_shape=(1, 32, 32), num_classes=3).eval()
    assert model.conv1.in_channels == 1
    with torch.no_grad():
        assert model(torch.randn(2, 1, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("name,expected", [
    ("resnet20", 0.27e6), ("resnet56", 0.86e6), ("resnet8x4", 1.2e6), ("resnet32x4", 7.4e6),
])
def test_parameter_counts(name, expected):
    n = count_parameters(create(name, num_classes=100))
    assert abs(n - expected) <= 0.1 * expected, n


def test_lenet5_digits():
    model = create("lenet5", input_shape=(1, 8, 8), num_classes=10).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 10)


def test_lenet5_mnist_is_classic():
    model = create("lenet5", input_shape=(1, 28, 28))
    assert model.fc1[0].in_features == 16 * 5 * 5


def test_cifar_models_accept_other_sizes():
    with torch.no_grad():
        for name in ("resnet8", "vgg8", "wrn_16_1", "shufflenetv2"):
            model = create(name, input_shape=(1, 28, 28), num_classes=4).eval()
            assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)


def test_variant_options():
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        assert create("mobilenetv2", width_mult=0.5, num_classes=5).eval()(x).shape == (2, 5)
        assert create("shufflenetv2", net_size=0.5, num_classes=5).eval()(x).shape == (2, 5)
        assert create("wrn", depth=10, widen_factor=1, num_classes=5).eval()(x).shape == (2, 5)
    with pytest.raises(Exception, match="6n\\+2"):
        from joryu.models.cifar import CifarResNet

        CifarResNet(depth=21)
