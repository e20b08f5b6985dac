from collections import namedtuple

import pytest
import torch
from torch import nn

from joryu.errors import TapError
from joryu.models import create
from joryu.outputs import unwrap
from joryu.taps import Taps


class TupleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))

    def forward(self, x):
        z = self.body(x)
        return z, {"aux": z * 2}


def test_taps_record_named_features_without_editing_the_model():
    model = create("resnet8", num_classes=5)
    before = [n for n, _ in model.named_modules()]
    t = Taps(model, {"mid": "layer2", "conv": "layer1.0.conv1"})
    x = torch.randn(2, 3, 32, 32)
    model(x)
    assert t.features["mid"].shape == (2, 32, 16, 16)
    assert t.features["conv"].shape[0] == 2
    assert [n for n, _ in model.named_modules()] == before
    torch.testing.assert_close(t.features["mid"], model.layer2(model.layer1(torch.relu(model.bn1(model.conv1(x))))))
    t.remove()
    t.clear()
    model(x)
    assert t.features == {}


def test_wrong_path_lists_valid_paths():
    model = create("mlp", in_features=4, num_classes=2, hidden=(3,))
    with pytest.raises(TapError) as e:
        Taps(model, {"h": "features.7"})
    msg = str(e.value)
    assert "features.7" in msg and "features.1" in msg and "fc" in msg


def test_detached_taps_and_gradients():
    model = TupleNet()
    x = torch.randn(3, 4)
    t = Taps(model, {"h": "body.1"})
    out = unwrap(model(x))
    assert t.features["h"].requires_grad
    t2 = Taps(model, {"h": "body.1"}, detach=True)
    model(x)
    assert not t2.features["h"].requires_grad
    assert out.shape == (3, 3)


def test_unwrap_kinds():
    z = torch.randn(2, 3)
    HF = namedtuple("HF", ["loss", "logits"])
    assert unwrap(z) is z
    assert unwrap((z, 1)) is z
    assert unwrap({"logits": z}) is z
    assert unwrap(HF(None, z)) is z
    with pytest.raises(TypeError):
        unwrap({"nothing": z})
