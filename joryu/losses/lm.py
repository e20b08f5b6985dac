r"""Divergences between teacher and student token distributions, for language models.

At every position that counts (``joryu.losses.positions``: not padding, not a prompt token, not
``-100``), with teacher distribution :math:`p = \mathrm{softmax}(v / T)` and student distribution
:math:`q = \mathrm{softmax}(z / T)` over the vocabulary:

- forward KL, :math:`\mathrm{KL}(p \| q) = \sum_v p_v (\log p_v - \log q_v)`: the student must put
  mass wherever the teacher does (mode covering); Hinton et al.'s soft-target loss per token.
- reverse KL, :math:`\mathrm{KL}(q \| p) = \sum_v q_v (\log q_v - \log p_v)`: the student is
  punished for mass where the teacher has little and may ignore some teacher modes (mode
  seeking); the objective MiniLLM (Gu et al., 2024) argues for in generative models.
- generalised Jensen-Shannon divergence of GKD (Agarwal et al., 2024), for :math:`0 < \beta < 1`
  and the mixture :math:`m = \beta p + (1 - \beta) q`:

  .. math:: \mathrm{JSD}_\beta(p \| q) = \beta\,\mathrm{KL}(p \| m) + (1 - \beta)\,\mathrm{KL}(q \| m)

  It is 0 iff p = q, symmetric in (p, q) at :math:`\beta = 1/2` (the ordinary JSD) and bounded
  by the binary entropy of :math:`\beta`, at most :math:`\log 2`. Near :math:`\beta = 0` it
  behaves like :math:`\beta` times the forward KL, near :math:`\beta = 1` like
  :math:`1 - \beta` times the reverse KL. Convention: :math:`\beta` weighs the *teacher* in the
  mixture, as in the GKD paper's :math:`D_{JSD(\beta)}(p_T \| p_S)`; some libraries swap the roles,
  which maps :math:`\beta` to :math:`1 - \beta`.

The loss is the mean over valid positions of the divergence, times :math:`T^2` (as in ``kd_loss``,
so the gradient scale does not shrink as T grows):

.. math:: L = \frac{T^2}{|V|} \sum_{i \in V} D(p_i, q_i)

This is on-sample distillation on the training sequences; GKD's on-policy part (training on
sequences the student generates) and MiniLLM's policy-gradient optimisation are not implemented.
The teacher logits are constants (detached).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from joryu.errors import ShapeError
from joryu.losses.positions import num_classes, rows

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd")


def _fp32(x: Tensor) -> Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def check_same_classes(student_logits: Tensor, teacher_logits: Tensor) -> None:
    if student_logits.shape == teacher_logits.shape:
        return
    if student_logits.dim() == teacher_logits.dim() and num_classes(student_logits) != num_classes(teacher_logits):
        raise ShapeError(f"student predicts {num_classes(student_logits)} classes (vocabulary) and the teacher "
                         f"{num_classes(teacher_logits)}: the two models must predict the same classes "
                         "(one vocabulary / class list)")
    raise ShapeError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                     f"{tuple(teacher_logits.shape)} differ: the two models must predict the same classes")


def forward_kl_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(p || q) per row, from log-probabilities (student ``log_q``, teacher ``log_p``)."""
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1)


def reverse_kl_rows(log_q: Tensor, log_p: Tensor) -> Tensor:
    """KL(q || p) per row."""
    return F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(-1)


def jsd_rows(log_q: Tensor, log_p: Tensor, beta: float = 0.5) -> Tensor:
    """beta KL(p || m) + (1 - beta) KL(q || m) per row, m = beta p + (1 - beta) q."""
    if not 0 < beta < 1:
        raise ValueError(f"jsd needs 0 < beta < 1 (got {beta}); use forward_kl or reverse_kl for the ends")
    log_m = torch.logsumexp(torch.stack([log_p + math.log(beta), log_q + math.log(1 - beta)]), dim=0)
    kl_p = F.kl_div(log_m, log_p, reduction="none", log_target=True).sum(-1)
    kl_q = F.kl_div(log_m, log_q, reduction="none", log_target=True).sum(-1)
    return beta * kl_p + (1 - beta) * kl_q


def token_divergence(student_logits: Tensor, teacher_logits: Tensor, divergence: str = "forward_kl",
                     temperature: float = 1.0, beta: float = 0.5, mask: Tensor | None = None,
                     target: Tensor | None = None) -> Tensor:
    """The mean divergence over valid positions, times T^2 (see the module docstring).

    ``mask`` (per sample ``[B]`` or per position) and ``target`` (``-100`` = ignore) select the
    positions; logits may be ``[B, C]``, ``[B, L, C]`` or ``[B, C, H, W]``. A batch without any
    valid position gives 0, still attached to the graph.
    """
    check_same_classes(student_logits, teacher_logits)
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    t = float(temperature)
    z, _, valid = rows(student_logits, target, mask)
    v = rows(teacher_logits)[0]
    log_q = F.log_softmax(_fp32(z) / t, dim=-1)
    log_p = F.log_softmax(_fp32(v.detach()) / t, dim=-1)
    if divergence == "forward_kl":
        per_row = forward_kl_rows(log_q, log_p)
    elif divergence == "reverse_kl":
        per_row = reverse_kl_rows(log_q, log_p)
    else:
        per_row = jsd_rows(log_q, log_p, beta)
    if bool(valid.all()):
        return per_row.mean() * (t * t)
    return (per_row * valid).sum() / valid.sum().clamp_min(1) * (t * t)


def forward_kl(student_logits, teacher_logits, temperature: float = 1.0, mask=None, target=None) -> Tensor:
    """T^2 * mean over valid positions of KL(p_teacher || q_student)."""
    return token_divergence(student_logits, teacher_logits, "forward_kl", temperature, mask=mask, target=target)


def reverse_kl(student_logits, teacher_logits, temperature: float = 1.0, mask=None, target=None) -> Tensor:
    """T^2 * mean over valid positions of KL(q_student || p_teacher)."""
    return token_divergence(student_logits, teacher_logits, "reverse_kl", temperature, mask=mask, target=target)


def generalized_jsd(student_logits, teacher_logits, beta: float = 0.5, temperature: float = 1.0, mask=None,
                    target=None) -> Tensor:
    """T^2 * mean over valid positions of JSD_beta(p_teacher || q_student)."""
    return token_divergence(student_logits, teacher_logits, "jsd", temperature, beta, mask, target)
