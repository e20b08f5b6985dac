"""Zhang, Xiang, Hospedales & Lu (2018), "Deep Mutual Learning", arXiv:1706.00384."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from joryu.losses.kd import kd_loss


def mutual_kl(logits: Tensor, peer_logits: Sequence[Tensor], temperature: float = 1.0) -> Tensor:
    r"""Mean KL divergence from each peer to network k (Eq. 10 of the paper, without the CE term).

    .. math::  \frac{1}{K-1} \sum_{l \ne k} D_{KL}(p_l \,\|\, p_k),
               \qquad D_{KL}(p_l \| p_k) = \frac{1}{B}\sum_b \sum_c p_l^{bc} \log \frac{p_l^{bc}}{p_k^{bc}}

    Peers are constants: their logits are detached, so no gradient of network k's loss reaches
    them. Batch-mean reduction. With no peers (K = 1) the term is 0. ``temperature`` (1 in the
    paper) divides all logits and multiplies the result by T^2, as in ``kd_loss``.
    """
    if not peer_logits:
        return logits.new_zeros(())
    return torch.stack([kd_loss(logits, p.detach(), temperature) for p in peer_logits]).mean()


def dml_loss(logits: Tensor, peer_logits: Sequence[Tensor], target: Tensor,
             temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    r"""Network k's loss in a cohort of K (Eq. 10): L_k = CE(y, p_k) + 1/(K-1) sum_{l != k} KL(p_l || p_k).

    Returns ``(loss, ce, kl)``. K = 1 reduces to the cross-entropy.
    """
    ce = F.cross_entropy(logits, target)
    kl = mutual_kl(logits, peer_logits, temperature)
    return ce + kl, ce, kl


def ensemble_logits(logits: Sequence[Tensor]) -> Tensor:
    """Log of the mean softmax of several networks (a cohort or generation ensemble), usable as logits."""
    probs = torch.stack([F.softmax(z.float(), dim=-1) for z in logits]).mean(0)
    return probs.clamp_min(1e-12).log()
