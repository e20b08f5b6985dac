"""Radosavovic et al. (2018), "Data Distillation: Towards Omni-Supervised Learning" (arXiv:1712.04440).

The pieces are not losses but the two rules that make the auto-labelled data: which predictions
become hard labels, and how a mini-batch mixes real and auto-labelled samples.
"""

from __future__ import annotations

import torch
from torch import Tensor


def confident_pseudo_labels(probs: Tensor, keep_fraction: float) -> tuple[Tensor, Tensor, float]:
    r"""Hard labels for the most confident predictions.

    With confidence :math:`c_i = \max_y \bar p_i(y)` of the ensembled prediction, the threshold
    :math:`\tau` is chosen so that the kept count is exactly :math:`\mathrm{round}(q \cdot n)` for the
    target kept fraction :math:`q` (the classification analogue of the paper's rule "as many
    instances per unlabelled image as per labelled image"); ties at :math:`\tau` are broken by index.

    Returns ``(keep, labels, tau)``: a bool mask (n,), the argmax labels (n,) (hard, i.e. one-hot
    targets given as class indices) and the threshold.
    """
    if not 0 < keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in (0, 1], got {keep_fraction}")
    conf, labels = probs.max(-1)
    n = len(conf)
    k = max(1, round(keep_fraction * n)) if n else 0
    keep = torch.zeros(n, dtype=torch.bool, device=probs.device)
    if k == 0:
        return keep, labels, float("inf")
    top = torch.topk(conf, k, sorted=True)
    keep[top.indices] = True
    return keep, labels, float(top.values[-1])


def mix_counts(batch_size: int, real_fraction: float) -> tuple[int, int]:
    """(real, auto-labelled) samples in a mini-batch of ``batch_size`` with a fixed real share."""
    if not 0 < real_fraction < 1:
        raise ValueError(f"real_fraction must be in (0, 1), got {real_fraction}")
    n_real = min(batch_size - 1, max(1, round(batch_size * real_fraction)))
    return n_real, batch_size - n_real
