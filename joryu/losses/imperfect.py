"""Losses and targets for imperfect supervision.

- Gong et al. (2018), "Teaching Semi-Supervised Classifier via Generalized Distillation", IJCAI,
  in the generalized-distillation form of Lopez-Paz et al. (2016, arXiv:1511.03643).
- Li et al. (2017), "Learning from Noisy Labels with Distillation", ICCV (arXiv:1703.02391).
- ``masked_cross_entropy``: plain CE that skips rows without a known label.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from joryu.errors import ShapeError
from joryu.losses.kd import soft_cross_entropy
from joryu.losses.positions import rows

IGNORE_INDEX = -100


def _valid_rows(target: Tensor, mask: Tensor | None) -> Tensor:
    valid = target != IGNORE_INDEX
    if mask is not None:
        valid = valid & mask.to(valid.device).bool()
    return valid


def masked_cross_entropy(logits: Tensor, target: Tensor, mask: Tensor | None = None,
                         label_smoothing: float = 0.0) -> Tensor:
    r"""Cross-entropy averaged over the rows with a known label.

    .. math::  L = \frac{1}{\max(1, |V|)} \sum_{i \in V} -\log \mathrm{softmax}(z_i)_{y_i},
               \quad V = \{i : m_i \wedge y_i \ne -100\}

    A batch with no labelled row gives 0 (still attached to the graph), not NaN.
    Without a mask and hidden labels this is exactly ``F.cross_entropy``.
    """
    if logits.dim() > 2:  # per-position logits (tokens, pixels): one row per position

        logits, target, valid = rows(logits, target, mask)
        safe = torch.where(valid, target, torch.zeros_like(target))
        ce = F.cross_entropy(logits.float(), safe, reduction="none", label_smoothing=label_smoothing)
        return (ce * valid).sum() / valid.sum().clamp_min(1)
    if mask is None and not bool((target == IGNORE_INDEX).any()):
        return F.cross_entropy(logits, target, label_smoothing=label_smoothing)
    valid = _valid_rows(target, mask)
    safe = torch.where(valid, target, torch.zeros_like(target))
    ce = F.cross_entropy(logits.float(), safe, reduction="none", label_smoothing=label_smoothing)
    return (ce * valid).sum() / valid.sum().clamp_min(1)


def soft_labels(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """s = softmax(logits / T), detached: a teacher's soft labels."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return F.softmax(logits.detach().float() / float(temperature), dim=-1)


def _one_hot(target: Tensor, num_classes: int) -> Tensor:
    safe = torch.where(target == IGNORE_INDEX, torch.zeros_like(target), target)
    return F.one_hot(safe.long(), num_classes).float()


# --------------------------------------------------------------------------- Gong et al. 2018
def gd_targets(target: Tensor, soft: Tensor, labeled: Tensor | None, imitation: float) -> Tensor:
    r"""The auxiliary target matrix P of generalized distillation (Gong et al. 2018; Lopez-Paz 2016).

    .. math::  P_i = (1 - \lambda) Y_i + \lambda S_i \ \text{(labelled } i\text{)}, \qquad
               P_i = S_i \ \text{(unlabelled } i\text{)}

    ``soft`` is the teacher's S = softmax(f_t(x*)/T) (rows sum to 1), ``imitation`` is lambda.
    Every row of P sums to 1. ``labeled`` None means every row with a target != -100.
    """
    if not 0.0 <= imitation <= 1.0:
        raise ValueError(f"imitation (lambda) must be in [0, 1], got {imitation}")
    lab = _valid_rows(target, labeled)
    y = _one_hot(target, soft.shape[-1]).to(soft.dtype)
    mixed = (1.0 - imitation) * y + imitation * soft
    return torch.where(lab.unsqueeze(-1), mixed, soft)


def generalized_distillation_loss(student_logits: Tensor, teacher_logits: Tensor, target: Tensor,
                                  labeled: Tensor | None = None, imitation: float = 0.5,
                                  temperature: float = 1.0, unlabeled_weight: float = 1.0) -> Tensor:
    r"""Generalized distillation loss with unlabelled rows (Lopez-Paz et al. 2016, Gong et al. 2018).

    With s_i = softmax(f_t(x*_i)/T) from the privileged teacher and q_i = softmax(f(x_i)):

    .. math::  L = \frac{1}{N}\Big[\sum_{i \in \mathcal{L}} (1-\lambda)\,\ell(y_i, q_i) + \lambda\,\ell(s_i, q_i)
               + w_u \sum_{i \in \mathcal{U}} \ell(s_i, q_i)\Big]

    with the cross-entropy :math:`\ell(p, q) = -\sum_c p_c \log q_c`, which is linear in its
    target, so the labelled term equals :math:`\ell(P_i, q_i)` with P from :func:`gd_targets`.
    N counts the rows that take part (labelled rows, plus unlabelled rows when w_u > 0), so
    lambda = 0 with w_u = 0 is exactly ``masked_cross_entropy``; a batch of unlabelled rows
    with w_u = 0 gives 0, not NaN. The student is read at T = 1 (as in Lopez-Paz et al.).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ShapeError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ")
    lab = _valid_rows(target, labeled)
    p = gd_targets(target, soft_labels(teacher_logits, temperature), lab, imitation)
    log_q = F.log_softmax(student_logits.float(), dim=-1)
    per_row = -(p * log_q).sum(-1)
    w = torch.where(lab, torch.ones_like(per_row), torch.full_like(per_row, float(unlabeled_weight)))
    n = lab.sum() + (0 if unlabeled_weight == 0 else (~lab).sum())
    return (w * per_row).sum() / n.clamp_min(1)


# --------------------------------------------------------------------------- Li et al. 2017
def relation_graph(num_classes: int, groups=(), strength: float = 1.0) -> Tensor:
    r"""A label-relation matrix G: identity plus ``strength`` between classes of the same group.

    ``groups`` lists related classes (e.g. super-classes from a knowledge graph):
    :math:`G_{ij} = 1` if i = j, ``strength`` if i != j share a group, else 0.
    ``groups=()`` gives G = I (no relations).
    """
    g = torch.eye(num_classes)
    for group in groups:
        idx = torch.as_tensor(list(group), dtype=torch.long)
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= num_classes):
            raise ValueError(f"group {list(group)} names a class outside [0, {num_classes})")
        for i in idx:
            for j in idx:
                if i != j:
                    g[i, j] = max(float(g[i, j]), float(strength))
    return g


def propagate(probs: Tensor, graph: Tensor | None) -> Tensor:
    r"""Spread probability over related classes: :math:`s \propto G p`, renormalised to sum to 1.

    G = I (or None) returns ``probs`` unchanged.
    """
    if graph is None:
        return probs
    graph = graph.to(probs.device, probs.dtype)
    if graph.shape != (probs.shape[-1], probs.shape[-1]):
        raise ShapeError(f"relation graph has shape {tuple(graph.shape)}, expected "
                         f"({probs.shape[-1]}, {probs.shape[-1]})")
    s = probs @ graph.T
    return s / s.sum(-1, keepdim=True).clamp_min(1e-12)


def noisy_label_targets(target: Tensor, aux_logits: Tensor, lam: float = 0.5, temperature: float = 1.0,
                        clean: Tensor | None = None, graph: Tensor | None = None) -> Tensor:
    r"""Pseudo-labels of Li et al. (2017):

    .. math::  y^\lambda_i = \lambda\, y_i + (1 - \lambda)\, s_i, \qquad
               s_i = \frac{G\,\mathrm{softmax}(f_c(x_i)/T)}{\lVert G\,\mathrm{softmax}(f_c(x_i)/T) \rVert_1}

    where y_i is the (noisy) one-hot label and f_c the auxiliary model trained on the clean set.
    Rows marked ``clean`` keep their true one-hot label. Every row sums to 1. lambda = 1 gives
    the noisy labels themselves; lambda = 0 gives the auxiliary model's soft labels.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lambda must be in [0, 1], got {lam}")
    s = propagate(soft_labels(aux_logits, temperature), graph)
    y = _one_hot(target, s.shape[-1]).to(s.dtype)
    out = lam * y + (1.0 - lam) * s
    if clean is not None:
        out = torch.where(clean.to(out.device).bool().unsqueeze(-1), y, out)
    return out


def noisy_label_loss(student_logits: Tensor, aux_logits: Tensor, target: Tensor, lam: float = 0.5,
                     temperature: float = 1.0, clean: Tensor | None = None, graph: Tensor | None = None) -> Tensor:
    r""":math:`L = \frac{1}{B}\sum_i \ell(y^\lambda_i, \mathrm{softmax}(f(x_i)))` with the
    cross-entropy and the pseudo-labels of :func:`noisy_label_targets` (Li et al. 2017).
    lambda = 1 is exactly CE on the given labels."""
    return soft_cross_entropy(student_logits, noisy_label_targets(target, aux_logits, lam, temperature, clean, graph))
