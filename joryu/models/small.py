"""Small models for the built-in data: an MLP and a 1-D CNN for MNIST-1D."""

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


