"""Small models for the built-in data: an MLP, a 1-D CNN for MNIST-1D and a plain 2-D CNN."""

from __future__ import annotations

import math

from torch import nn

from joryu.models.registry import register


class MLP(nn.Module):
    """Fully connected ReLU network. Inputs of any shape are flattened."""

    def __init__(self, in_features: int, num_classes: int, hidden=(256, 256), dropout: float = 0.0,
                 input_dropout: float = 0.0, activation: str = "relu"):
        super().__init__()
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        layers: list[nn.Module] = [nn.Flatten()]
        if input_dropout > 0:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), acts[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(width, num_classes)
        self.feature_layers = [f"features.{i}" for i, m in enumerate(layers) if isinstance(m, nn.Linear)]

    def forward(self, x):
        return self.fc(self.features(x))


@register("mlp")
def mlp(num_classes: int = 10, in_features: int | None = None, input_shape=None, hidden=(256, 256),
        dropout: float = 0.0, input_dropout: float = 0.0, activation: str = "relu"):
    """Multilayer perceptron; `hidden` lists the widths."""
    if in_features is None:
        if input_shape is None:
            raise ValueError("mlp needs in_features or input_shape")
        in_features = int(math.prod(input_shape))
    return MLP(in_features, num_classes, tuple(hidden), dropout, input_dropout, activation)


class CNN1D(nn.Module):
    """A small 1-D CNN for MNIST-1D (signals of shape (1, L) or (L,))."""

    def __init__(self, num_classes: int = 10, width: int = 32, in_channels: int = 1,
                 length: int = 40, depth: int = 3):
        super().__init__()
        blocks = []
        c = in_channels
        for i in range(depth):
            out = width * (2 if i == depth - 1 else 1)
            blocks.append(nn.Sequential(
                nn.Conv1d(c, out, 5 if i == 0 else 3, stride=1 if i == 0 else 2, padding="same" if i == 0 else 1),
                nn.BatchNorm1d(out),
                nn.ReLU(inplace=True),
            ))
            c = out
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool1d(1)
        self.fc = nn.Linear(c, num_classes)
        self.feature_layers = [f"blocks.{i}" for i in range(depth)]

    def forward(self, x):
        if x.dim() == 2:
            x = x.unsqueeze(1)
        return self.fc(self.pool(self.blocks(x)).flatten(1))


@register("cnn1d")
def cnn1d(num_classes: int = 10, width: int = 32, in_channels: int | None = None, input_shape=None,
          depth: int = 3):
    """1-D CNN for MNIST-1D: conv-BN-ReLU stages, global average pool, linear head."""
    if in_channels is None:
        in_channels = 1 if input_shape is None or len(input_shape) == 1 else int(input_shape[0])
    return CNN1D(num_classes, width, in_channels, depth=depth)




class ConvNet(nn.Module):
    """Plain 2-D CNN: ``depth`` stages of [conv3x3-BN-ReLU] x ``convs`` then 2x2 max pooling, with
    widths width, 2·width, 4·width, ...; the last map is flattened into a linear head, so the
    head sees where in the image a feature is (two-digit numbers need left vs right)."""

    def __init__(self, num_classes: int = 10, input_shape=(1, 28, 28), width: int = 16,
                 depth: int = 3, convs: int = 1):
        super().__init__()
        c, h, w = (int(s) for s in input_shape)
        stages = []
        for i in range(depth):
            out, layers = width * 2 ** i, []
            for _ in range(convs):
                layers += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out),
                           nn.ReLU(inplace=True)]
                c = out
            stages.append(nn.Sequential(*layers, nn.MaxPool2d(2)))
            h, w = h // 2, w // 2
        if h < 1 or w < 1:
            raise ValueError(f"convnet: {depth} poolings leave nothing of a "
                             f"{tuple(input_shape)} input; lower depth")
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c * h * w, num_classes)
        self.feature_layers = [f"stages.{i}" for i in range(depth)]

    def forward(self, x):
        return self.fc(self.stages(x).flatten(1))


@register("convnet")
def convnet(num_classes: int = 10, input_shape=None, width: int = 16, depth: int = 3,
            convs: int = 1):
    """Plain CNN for any image size: conv-BN-ReLU stages with max pooling, widths `width`·2^i.

    `depth` stages of `convs` conv3x3-BN-ReLU layers each, then 2x2 max pooling; the last map is
    flattened into a linear head. `width` limits the capacity with normalisation kept."""
    shape = tuple(input_shape) if input_shape is not None else (1, 28, 28)
    if len(shape) != 3:
        raise ValueError(f"convnet needs input_shape (C, H, W), got {shape}")
    return ConvNet(num_classes, shape, int(width), int(depth), int(convs))
