"""Built-in paired two-modality data: each sample carries ``input`` (modality A) and ``input_b`` (B)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from joryu._optional import require
from joryu.data.core import TensorData
from joryu.data.registry import DataBundle, _stratified_split, register_dataset


def sobel_magnitude(x: torch.Tensor) -> torch.Tensor:
    """Gradient magnitude sqrt(gx^2 + gy^2) of (N, 1, H, W) images with 3x3 Sobel filters (zero padding)."""
    kx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    k = torch.stack([kx, kx.t()]).unsqueeze(1)
    g = F.conv2d(x, k, padding=1)
    return g.pow(2).sum(1, keepdim=True).sqrt()


@register_dataset("digits_edges")
def digits_edges(test_size: int = 500, seed: int = 0) -> DataBundle:
    """scikit-learn digits as two paired modalities: the 8x8 image (input) and its Sobel edge map (input_b)."""
    load_digits = require("sklearn.datasets", "the digits_edges dataset").load_digits

    d = load_digits()
    x = torch.as_tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    e = sobel_magnitude(x)
    tr, te = _stratified_split(d.target, test_size, seed)
    tr, te = torch.as_tensor(tr), torch.as_tensor(te)
    y = torch.as_tensor(d.target, dtype=torch.long)

    def norm(v):
        mean, std = float(v[tr].mean()), float(v[tr].std())
        return (v - mean) / std

    x, e = norm(x), norm(e)
    train = TensorData({"input": x[tr], "input_b": e[tr], "target": y[tr]}, 10, "digits_edges/train")
    test = TensorData({"input": x[te], "input_b": e[te], "target": y[te]}, 10, "digits_edges/test")
    return DataBundle("digits_edges", train, test, 10, (1, 8, 8))
