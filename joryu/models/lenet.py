"""LeNet-5 for small grayscale images (MNIST 1x28x28, sklearn digits 1x8x8, ...)."""

from __future__ import annotations

import torch
from torch import nn

from joryu.models.registry import register


class LeNet5(nn.Module):
    """LeCun-style LeNet-5: conv5(6) -> pool -> conv5(16) -> pool -> fc120 -> fc84 -> fc.

    The first convolution is padded by 2 so 28x28 inputs keep their size (the classic 32x32
    layout). When the input is too small for an unpadded second convolution (e.g. 8x8 digits),
    that one is padded by 2 as well. The flattened size is found by running a dummy tensor.
    """

    def __init__(self, num_classes: int = 10, input_shape=(1, 28, 28), activation: str = "relu"):
        super().__init__()
        acts = {"relu": nn.ReLU, "tanh": nn.Tanh}
        if activation not in acts:
            raise ValueError(f"activation must be one of {sorted(acts)}, got {activation!r}")
        act = acts[activation]
        if len(input_shape) != 3:
            raise ValueError(f"lenet5 needs input_shape (C, H, W), got {tuple(input_shape)}")
        in_channels, h, w = (int(s) for s in input_shape)
        pooled = min(h, w) // 2  # spatial size entering the second convolution
        pad2 = 0 if pooled >= 6 else 2
        self.layer1 = nn.Sequential(
            nn.Conv2d(in_channels, 6, 5, padding=2), act(), nn.MaxPool2d(2)
        )
        self.layer2 = nn.Sequential(nn.Conv2d(6, 16, 5, padding=pad2), act(), nn.MaxPool2d(2))
        with torch.no_grad():
            n_flat = self.layer2(self.layer1(torch.zeros(1, in_channels, h, w))).numel()
        self.fc1 = nn.Sequential(nn.Linear(n_flat, 120), act())
        self.fc2 = nn.Sequential(nn.Linear(120, 84), act())
        self.fc = nn.Linear(84, num_classes)
        self.feature_layers = ["layer1", "layer2", "fc1", "fc2"]

    def forward(self, x):
        x = self.layer2(self.layer1(x)).flatten(1)
        return self.fc(self.fc2(self.fc1(x)))


@register("lenet5")
def lenet5(num_classes: int = 10, input_shape=None, in_channels: int | None = None,
           activation: str = "relu"):
    """LeNet-5 (conv5-pool-conv5-pool-fc120-fc84-fc) for 1x28x28 or 1x8x8 images."""
    shape = tuple(input_shape) if input_shape is not None else (1, 28, 28)
    if len(shape) == 2:
        shape = (1, *shape)
    if in_channels is not None:
        shape = (int(in_channels), *shape[1:])
    return LeNet5(num_classes, shape, activation)
