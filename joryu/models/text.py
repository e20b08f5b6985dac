"""Small causal language models in plain PyTorch (no transformers needed)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from joryu.models.registry import register


class CausalConvBlock(nn.Module):
    """Residual block: causal dilated conv (left padding only), GELU, 1x1 conv, layer norm."""

    def __init__(self, width: int, kernel: int, dilation: int):
        super().__init__()
        self.pad = (kernel - 1) * dilation
        self.conv = nn.Conv1d(width, width, kernel, dilation=dilation)
        self.mix = nn.Conv1d(width, width, 1)
        self.norm = nn.LayerNorm(width)

    def forward(self, h):  # h: [B, C, L]
        y = self.mix(F.gelu(self.conv(F.pad(h, (self.pad, 0)))))
        return self.norm((h + y).transpose(1, 2)).transpose(1, 2)


class ByteConvLM(nn.Module):
    """Embedding -> causal dilated convolutions (dilations 1, 2, 4, ...) -> linear: next-token logits
    ``[B, L, vocab]`` from ids ``[B, L]``. Position t sees tokens <= t only, so right padding never
    changes a real position's output. Receptive field: 1 + (kernel - 1) * (2**layers - 1) tokens."""

    def __init__(self, vocab_size: int = 257, width: int = 64, layers: int = 4, kernel: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width)
        self.blocks = nn.Sequential(*[CausalConvBlock(width, kernel, 2 ** i) for i in range(layers)])
        self.head = nn.Linear(width, vocab_size)
        self.feature_layers = [f"blocks.{i}" for i in range(layers)]

    def forward(self, input_ids):
        h = self.blocks(self.embed(input_ids).transpose(1, 2))
        return self.head(h.transpose(1, 2))


@register("byte_conv_lm")
def byte_conv_lm(num_classes: int = 257, input_shape=None, width: int = 64, layers: int = 4, kernel: int = 3):
    """Causal dilated-conv language model over bytes (token ids < num_classes); logits [B, L, num_classes]."""
    return ByteConvLM(num_classes, width, layers, kernel)
