"""A tiny fully convolutional segmenter: per-pixel logits ``[B, C, H, W]`` at the input size."""

from __future__ import annotations

from torch import nn

from joryu.models.registry import register


class TinySegmenter(nn.Module):
    """``depth`` 3x3 conv-BN-ReLU blocks of ``width`` channels (dilation 1, 2, 4... to widen the
    receptive field without pooling), then a 1x1 classifier."""

    def __init__(self, in_channels: int = 1, num_classes: int = 3, width: int = 16, depth: int = 3):
        super().__init__()
        layers, c = [], in_channels
        for i in range(depth):
            d = 2 ** i
            layers += [nn.Conv2d(c, width, 3, padding=d, dilation=d, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
            c = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(width, num_classes, 1)
        self.feature_layers = [f"body.{3 * i + 2}" for i in range(depth)]

    def forward(self, x):
        return self.head(self.body(x))


@register("tiny_segmenter")
def tiny_segmenter(num_classes: int = 3, input_shape=(1, 16, 16), width: int = 16, depth: int = 3):
    """Per-pixel classifier for small images (synthetic_shapes)."""
    return TinySegmenter(int(input_shape[0]), num_classes, width, depth)
