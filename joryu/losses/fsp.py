"""Yim, Joo, Bae & Kim (2017), "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning", CVPR 2017 (the FSP matrix)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from joryu.errors import ShapeError
from joryu.losses._dtype import compute_dtype


def _pool_to(x: Tensor, size: tuple[int, ...], mode: str) -> Tensor:
    spatial = x.dim() - 2
    if tuple(x.shape[2:]) == tuple(size):
        return x
    pools = {("max", 1): F.adaptive_max_pool1d, ("max", 2): F.adaptive_max_pool2d,
             ("max", 3): F.adaptive_max_pool3d, ("avg", 1): F.adaptive_avg_pool1d,
             ("avg", 2): F.adaptive_avg_pool2d, ("avg", 3): F.adaptive_avg_pool3d}
    if (mode, spatial) not in pools:
        raise ValueError(f"cannot pool a {x.dim()}-d feature map with mode {mode!r}")
    return pools[(mode, spatial)](x, size)


def fsp_matrix(first: Tensor, last: Tensor, pool: str = "max") -> Tensor:
    r"""The flow of solution procedure (FSP) matrix of Yim et al. (2017), Eq. (1):

    .. math::  G_{i,j}(x; W) = \sum_{s=1}^{h} \sum_{t=1}^{w} \frac{F^1_{s,t,i}(x; W) \times F^2_{s,t,j}(x; W)}{h \times w}

    with :math:`F^1 \in R^{h \times w \times m}` (the first feature map of a section) and
    :math:`F^2 \in R^{h \times w \times n}` (its last one). In PyTorch layout that is
    ``einsum('bihw,bjhw->bij', first, last) / (h * w)``, of shape (B, m, n). Maps of different
    spatial size are brought to the smaller size by max pooling (the paper; ``pool="avg"`` as
    RepDistiller). 1-d maps (B, C, L) and 3-d maps work the same way.
    """
    if first.dim() < 3 or last.dim() < 3 or first.dim() != last.dim():
        raise ShapeError(f"FSP needs two feature maps (B, C, *spatial) of the same rank, got "
                         f"{tuple(first.shape)} and {tuple(last.shape)}")
    s1, s2 = first.shape[2:], last.shape[2:]
    if tuple(s1) != tuple(s2):
        size = tuple(min(a, b) for a, b in zip(s1, s2))
        first, last = _pool_to(first, size, pool), _pool_to(last, size, pool)
    a, b = first.flatten(2), last.flatten(2)
    return torch.einsum("bis,bjs->bij", a, b) / a.shape[-1]


def fsp_loss(teacher: Sequence[Tensor], student: Sequence[Tensor], weights: Sequence[float] | None = None) -> Tensor:
    r"""The FSP loss of Yim et al. (2017), Eq. (2):

    .. math::  L_{FSP}(W_t, W_s) = \frac{1}{N} \sum_x \sum_{i=1}^{n} \lambda_i \, \| G_i^T(x; W_t) - G_i^S(x; W_s) \|_2^2

    ``teacher`` and ``student`` list the FSP matrices (B, m_i, n_i) of each section pair; the
    squared Frobenius norm is summed per sample and averaged over the batch; the weights
    :math:`\lambda_i` are equal (1) by default. The teacher's matrices are constants (detached).
    Computed in the matrices' dtype (float64 stays float64; half precision in float32).
    """
    if len(teacher) != len(student):
        raise ShapeError(f"{len(teacher)} teacher FSP matrices but {len(student)} student ones")
    weights = [1.0] * len(teacher) if weights is None else list(weights)
    if len(weights) != len(teacher):
        raise ShapeError(f"{len(weights)} weights for {len(teacher)} FSP matrices")
    total = 0.0
    for w, gt, gs in zip(weights, teacher, student):
        if gt.shape != gs.shape:
            raise ShapeError(f"teacher FSP matrix {tuple(gt.shape)} and student one {tuple(gs.shape)} differ: "
                             "FSP needs the same channel counts in each section pair")
        dt = compute_dtype(gs, gt)
        total = total + w * (gs.to(dt) - gt.detach().to(dt)).pow(2).flatten(1).sum(1).mean()
    return total
