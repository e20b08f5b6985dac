"""Romero et al. (2015), "FitNets: Hints for Thin Deep Nets", arXiv:1412.6550."""

from __future__ import annotations

import torch
from torch import Tensor

from joryu.errors import ShapeError
from joryu.losses._dtype import compute_dtype


def hint_loss(regressed: Tensor, hint: Tensor, mask: Tensor | None = None) -> Tensor:
    r"""The hint-based training objective of FitNets, Eq. (3):

    .. math::  L_{HT}(W_{Guided}, W_r) = \frac{1}{2} \| u_h(x; W_{Hint}) - r(v_g(x; W_{Guided}); W_r) \|^2

    summed over every element of one sample's hint and averaged over the batch (as the
    official ``HintCost``: 0.5 * sum of squares, batch mean). ``regressed`` is r(v_g(x)), the
    student's guided-layer output after the regressor; ``hint`` is u_h(x), the teacher's hint
    layer output, treated as a constant (detached). Computed in the inputs' dtype (half
    precision in float32).

    Token features ``[B, L, H]`` with a padding ``mask`` ``[B, L]`` (1 = real token, an
    attention mask): only real positions count, the sum runs over them and is still divided by B,
    so padding neither trains the student nor changes the loss.
    """
    if regressed.shape != hint.shape:
        raise ShapeError(f"regressor output {tuple(regressed.shape)} and hint {tuple(hint.shape)} differ")
    dt = compute_dtype(regressed, hint)
    diff = regressed.to(dt) - hint.detach().to(dt)
    sq = diff.pow(2)
    if mask is not None:
        if tuple(mask.shape) != tuple(diff.shape[:mask.dim()]):
            raise ShapeError(f"mask {tuple(mask.shape)} does not fit features {tuple(diff.shape)}")
        m = mask.to(device=sq.device, dtype=torch.bool).reshape(*mask.shape, *([1] * (sq.dim() - mask.dim())))
        sq = sq.masked_fill(~m, 0)
    return 0.5 * sq.sum() / max(1, diff.shape[0])


def feature_l2_loss(student: Tensor, teacher: Tensor) -> Tensor:
    r"""Squared Euclidean distance between feature maps, summed per sample, batch mean:

    .. math::  L = \frac{1}{B} \sum_b \| f_t(x_b) - \phi(g(x_b)) \|^2

    (Gupta et al. 2016, supervision transfer; also the local loss of blockwise distillation).
    The teacher side is detached; computed in the inputs' dtype (half precision in float32).
    """
    if student.shape != teacher.shape:
        raise ShapeError(f"student feature {tuple(student.shape)} and teacher feature {tuple(teacher.shape)} "
                         "differ: add an adapter")
    dt = compute_dtype(student, teacher)
    diff = student.to(dt) - teacher.detach().to(dt)
    return diff.pow(2).sum() / max(1, diff.shape[0])
