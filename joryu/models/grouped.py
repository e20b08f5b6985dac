"""Structurally connected (block-diagonal) layers: one group per vertical of classes.

Used by Knowledge Concentration (Gao et al. 2017) to add capacity to a student at few parameters:
a block-diagonal layer with K groups has 1/K of the weights of the dense layer of the same width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


class GroupedLinear(nn.Module):
    """y = W x + b with W block-diagonal: block k maps input group k (``in_sizes[k]`` features) to
    output group k (``out_sizes[k]``). Only the blocks are parameters: Σ_k in_k·out_k + Σ_k out_k."""

    def __init__(self, in_sizes: Sequence[int], out_sizes: Sequence[int], bias: bool = True):
        super().__init__()
        if len(in_sizes) != len(out_sizes):
            raise ValueError("in_sizes and out_sizes need one entry per group")
        self.in_sizes, self.out_sizes = [int(s) for s in in_sizes], [int(s) for s in out_sizes]
        self.blocks = nn.ParameterList()
        for i, o in zip(self.in_sizes, self.out_sizes):
            w = torch.empty(o, i)
            nn.init.kaiming_uniform_(w, a=5 ** 0.5)
            self.blocks.append(nn.Parameter(w))
        self.bias = nn.Parameter(torch.zeros(sum(self.out_sizes))) if bias else None

    def weight(self) -> Tensor:
        """The full (out, in) weight: the blocks on the diagonal, zeros elsewhere."""
        return torch.block_diag(*self.blocks)

    def mask(self) -> Tensor:
        """(out, in) bool connectivity: True where an output is connected to an input."""
        return torch.block_diag(*[torch.ones(o, i, dtype=torch.bool)
                                  for i, o in zip(self.in_sizes, self.out_sizes)])

    def forward(self, x: Tensor) -> Tensor:
        y = x @ self.weight().t()
        return y + self.bias if self.bias is not None else y


class VerticalHead(nn.Module):
    """A student's classifier plus a structurally connected branch, one group per vertical:

        logits = fc(h) + scatter( G(relu(W h)) ),   G block-diagonal, group k -> the classes of vertical k

    ``fc`` is the student's original last layer (kept: the generalist path); W: d -> K·width is dense,
    G: K·width -> C has one ``width x |L_k|`` block per vertical, and its outputs are placed on the
    class ids of each vertical (verticals need not be contiguous).
    """

    def __init__(self, fc: nn.Linear, verticals: Sequence[Sequence[int]], width: int = 16):
        super().__init__()
        self.fc = fc
        k = len(verticals)
        self.expand = nn.Linear(fc.in_features, k * width)
        self.grouped = GroupedLinear([width] * k, [len(v) for v in verticals])
        order = torch.tensor([c for v in verticals for c in v])
        self.register_buffer("order", order, persistent=False)

    def forward(self, h: Tensor) -> Tensor:
        out = self.fc(h)
        extra = self.grouped(torch.relu(self.expand(h)))
        return out.index_add(1, self.order, extra)


def attach_vertical_head(model: nn.Module, verticals, width: int = 16, path: str = "fc") -> nn.Module:
    """Replace the linear layer at ``path`` of ``model`` by a ``VerticalHead`` around it (in place)."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    fc = getattr(parent, name, None)
    if not isinstance(fc, nn.Linear):
        raise ValueError(f"{type(model).__name__} has no nn.Linear at {path!r} to put a vertical head on")
    setattr(parent, name, VerticalHead(fc, verticals, width))
    return model
