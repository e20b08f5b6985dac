r"""Soft losses against a truncated teacher: only its top k classes per position are known.

An offline teacher store (``joryu.teachers.store``) keeps, per position, the teacher's k most
probable classes :math:`S` (indices), their log-probabilities :math:`\log p_i, i \in S` at the
distillation temperature T, and the remaining mass :math:`r = 1 - \sum_{i \in S} p_i`. With the
student's :math:`q = \mathrm{softmax}(z / T)` over the whole vocabulary and its mass outside the
teacher's top k, :math:`\rho = \sum_{j \notin S} q_j`, two truncations define the divergences
D (forward KL, reverse KL, JSD(beta), as in ``joryu.losses.lm``):

(a) ``"renormalize"``: both distributions conditioned on S,
    :math:`\hat p_i = p_i / (1 - r)`, :math:`\hat q_i = q_i / (1 - \rho)`, and
    :math:`D(\hat p, \hat q)` over k classes. Only the shape inside S counts: how much mass the
    student puts outside S is invisible to it. Needs only the k values (any per-row shift of
    them), so a store built at one temperature serves any T (``retemper``).
(b) ``"bucket"``: the complement of S as one extra class, :math:`D(p_c, q_c)` with
    :math:`p_c = (p_S, r)` and :math:`q_c = (q_S, \rho)` over k + 1 classes (DistillKit's and
    MaxText's "remaining mass" idea). Needs r at the distillation temperature.

With k = V (r = rho = 0) both equal the dense divergence. The loss is, as in ``token_divergence``,
:math:`T^2` times the mean over valid positions.

How far they are from the dense divergence. Write :math:`a = p_{\cdot|R}`, :math:`b = q_{\cdot|R}`
for the two distributions inside the complement R of S. The chain rule of KL gives exactly

.. math::

    \mathrm{KL}(p \| q) = \mathrm{KL}(p_c \| q_c) + r\,\mathrm{KL}(a \| b), \qquad
    \mathrm{KL}(p_c \| q_c) = (1 - r)\,\mathrm{KL}(\hat p \| \hat q) + \mathrm{kl}(r \| \rho)

(kl of two Bernoullis), and the same with p and q swapped for the reverse KL. So

- bucket never exceeds dense (for JSD too: coarse-graining cannot raise an f-divergence);
- forward KL: :math:`0 \le \mathrm{KL} - \mathrm{KL}_{bucket} = r\,\mathrm{KL}(a \| b) \le
  r\,(\log \rho - \min_{j \in R} \log q_j) \le r\,(\log V + (\max z - \min z)/T)`, since
  :math:`\mathrm{KL}(a\|b) \le -\sum_j a_j \log b_j`; linear in the remaining mass r;
- reverse KL: :math:`0 \le \mathrm{KL}(q\|p) - \mathrm{bucket} \le
  \rho\,(\log V + (\max v - \min v)/T)` with the teacher's logits v: linear in the student's
  mass outside S, with a factor the store does not keep;
- JSD(beta): with :math:`m = \beta p + (1 - \beta) q` and :math:`m_j \ge \beta p_j`,
  :math:`m_j \ge (1-\beta) q_j`, :math:`0 \le \mathrm{JSD} - \mathrm{JSD}_{bucket} \le
  s\,h(\beta r / s) \le s \log 2` with :math:`s = \beta r + (1 - \beta)\rho` and h the binary
  entropy in nats; no logit range needed;
- renormalize has no such bound in r alone: :math:`\mathrm{kl}(r \| \rho)` grows without limit
  as the student moves mass out of S while keeping its shape inside (the blind spot of (a)).

``tests/test_topk.py`` checks each identity and bound. Teacher values are constants (detached);
gradients reach the student's logits only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from joryu.errors import ShapeError
from joryu.losses.lm import DIVERGENCES, _fp32, forward_kl_rows, jsd_rows, reverse_kl_rows
from joryu.losses.positions import rows

TRUNCATIONS = ("renormalize", "bucket")
LOG_FLOOR = -1e4  # log of a zero mass: exp() underflows to exactly 0, arithmetic stays finite


def topk_from_logits(teacher_logits: Tensor, k: int, temperature: float = 1.0):
    """``(indices [N, k], log-probs [N, k], rest [N])`` of rows of logits ``[N, V]`` at temperature T:
    the k most probable classes, sorted by probability (descending), their
    :math:`\\log \\mathrm{softmax}(v / T)`, and the mass outside them, summed over the complement
    (exactly 0 when k = V)."""
    lp = F.log_softmax(_fp32(teacher_logits.detach()) / temperature, dim=-1)
    values, indices = lp.topk(k, dim=-1)
    rest = lp.scatter(-1, indices, float("-inf")).logsumexp(-1).exp()
    return indices, values, rest


def retemper(logprobs: Tensor, from_temperature: float, to_temperature: float) -> Tensor:
    """Top-k log-probabilities at ``from_temperature`` -> log-probabilities renormalised over the
    top k at ``to_temperature``: :math:`\\log\\mathrm{softmax}_S(T_s \\log p_S / T)`, which is
    :math:`\\log\\mathrm{softmax}_S(v_S / T)` since :math:`T_s \\log p_i = v_i - \\mathrm{const}`.
    Valid for the renormalised truncation only (the rest mass at T is not known)."""
    return F.log_softmax(_fp32(logprobs) * (from_temperature / to_temperature), dim=-1)


class _StudentBucket(torch.autograd.Function):
    r"""The student's side of the bucket truncation, ``[N, k + 1]``: :math:`\log q_i, i \in S` and
    :math:`\log \rho` from logits ``[N, V]`` at temperature T, in few passes over the vocabulary
    (they dominate the step of a language model: V is 10^4 to 10^5 per position).

    Forward: :math:`e = \exp(z/T - \max)`, its total and its sum outside S (exact: the outside
    terms are summed, never 1 minus the inside); a row whose outside sum falls below
    ``_TINY_OUTSIDE`` of its largest term is summed afresh from the outside's own maximum.
    Backward in closed form, :math:`\partial/\partial s_j = [j \in S]\,g_j + [j \notin S]\,
    g_\rho\, e_j / \Sigma_{out} - q_j \sum g` (``s = z / T``), instead of autograd through two
    log-sum-exps, a scatter and a gather. With k = V, :math:`\log\rho` is the constant ``LOG_FLOOR``.

    With ``label`` ``[N]`` (classes, in range) a last column :math:`\log q_y` is added from the same
    pass, its gradient :math:`[j = y] - q_j` folded into the same buffer: at T = 1 that is the label
    cross-entropy's log-probability, so KD's hard term costs no second softmax over the vocabulary."""

    @staticmethod
    def forward(ctx, z: Tensor, idx: Tensor, temperature: float, label: Tensor | None = None) -> Tensor:
        m = z.amax(-1, keepdim=True)
        e = z - m  # the one new [N, V] tensor of the forward (s - max s, s = z / T); kept for the backward
        if temperature != 1:
            e.div_(temperature)
            m = m / temperature
        log_q_s = e.gather(-1, idx)  # minus log(total) below
        log_q_y = None if label is None else e.gather(-1, label.unsqueeze(-1))
        e_s = log_q_s.exp()
        e.exp_()
        full = idx.shape[-1] == z.shape[-1]  # nothing outside S
        small = None
        if full:
            out = total = e.sum(-1, keepdim=True)
            log_rho = torch.full_like(total, LOG_FLOOR)
        else:
            out = e.scatter_(-1, idx, 0.0).sum(-1, keepdim=True)  # e now holds the outside terms only
            total = out + e_s.sum(-1, keepdim=True)
            log_rho = out.log() - total.log()
            small = (out.squeeze(-1) < _TINY_OUTSIDE).nonzero().squeeze(-1)
            if len(small):  # summed from the outside's own maximum: no underflow, no flushed terms
                outside = (z[small] / temperature).scatter(-1, idx[small], float("-inf"))
                lse_out = outside.logsumexp(-1, keepdim=True)
                log_rho[small] = lse_out - m[small] - total[small].log()
                small = (small, torch.nan_to_num((outside - lse_out).exp(), nan=0.0))
            else:
                small = None
        log_total = total.log()
        log_q_s = log_q_s - log_total
        ctx.save_for_backward(e, e_s, total, out, idx, label)
        ctx.small, ctx.full, ctx.temperature = small, full, temperature
        parts = [log_q_s, log_rho] + ([] if label is None else [log_q_y - log_total])
        return torch.cat(parts, -1)

    @staticmethod
    @once_differentiable  # a second derivative (create_graph) is refused, not silently wrong
    def backward(ctx, g: Tensor):
        e, e_s, total, out, idx, label = ctx.saved_tensors
        k = idx.shape[-1]
        g_s, g_rho = g[:, :k], g[:, k:k + 1]
        g_all = g.sum(-1, keepdim=True)
        if ctx.full:  # log rho is a constant there
            g_all = g_all - g_rho
        per_q = g_all / total  # the -q_j * sum(g) term, as e_j * per_q
        coef = -per_q if ctx.full else g_rho / out - per_q
        grad = e * coef  # e is 0 on S (except at k = V): S is set below
        if ctx.small is not None:
            rows, w = ctx.small
            grad[rows] = g_rho[rows] * w - e[rows] * per_q[rows]
        grad.scatter_(-1, idx, g_s - e_s * per_q)
        if label is not None:  # d log q_y / d s_j = [j = y] - q_j: the second part is in per_q
            grad.scatter_add_(-1, label.unsqueeze(-1), g[:, k + 1:])
        if ctx.temperature != 1:
            grad = grad.div_(ctx.temperature)
        return grad, None, None, None


_TINY_OUTSIDE = 1e-20  # outside sums below this (the largest term being 1) are re-summed exactly


def _teacher_bucket(teacher_logprobs: Tensor, rest: Tensor | None, dtype) -> Tensor:
    """The teacher's k + 1 log-masses of the bucket truncation, ``(log p_S, log r)`` renormalised."""
    if rest is None:
        raise ValueError("the bucket truncation needs the teacher's remaining mass (rest)")
    lp = _fp32(teacher_logprobs.detach()).to(dtype)
    log_r = rest.detach().to(dtype).clamp_min(0).log().clamp_min(LOG_FLOOR).unsqueeze(-1)
    log_p = torch.cat([lp, log_r], -1)
    # 16-bit values make p_S + r miss 1 by ~1e-3: renormalise the k + 1 masses of the teacher
    return log_p - log_p.logsumexp(-1, keepdim=True)


def _student_bucket(masses: Tensor, k: int) -> Tensor:
    """The student's k + 1 log-masses from ``_StudentBucket``'s columns (``log rho`` floored)."""
    return torch.cat([masses[:, :k], masses[:, k:k + 1].clamp_min(LOG_FLOOR)], -1)


def _log_masses(student_rows: Tensor, index: Tensor, teacher_logprobs: Tensor, rest: Tensor | None,
                truncation: str, temperature: float):
    """Per-row log-probabilities of the two truncated distributions, ``(log_q, log_p)``."""
    idx = index.long()
    z = _fp32(student_rows)
    if truncation == "renormalize":
        lp = _fp32(teacher_logprobs.detach()).to(z.dtype)
        return F.log_softmax(z.gather(-1, idx) / temperature, dim=-1), F.log_softmax(lp, dim=-1)
    log_p = _teacher_bucket(teacher_logprobs, rest, z.dtype)
    return _student_bucket(_StudentBucket.apply(z, idx, float(temperature)), idx.shape[-1]), log_p


def _check(student_rows: Tensor, index: Tensor, teacher_logprobs: Tensor, divergence: str,
           truncation: str, temperature: float) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if truncation not in TRUNCATIONS:
        raise ValueError(f"unknown truncation {truncation!r}; choose one of {', '.join(TRUNCATIONS)}")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if index.shape != teacher_logprobs.shape or index.shape[:-1] != student_rows.shape[:-1]:
        raise ShapeError(f"top-k indices {tuple(index.shape)} and values {tuple(teacher_logprobs.shape)} "
                         f"do not fit student rows {tuple(student_rows.shape)}")
    if index.shape[-1] > student_rows.shape[-1]:
        raise ShapeError(f"k = {index.shape[-1]} exceeds the student's {student_rows.shape[-1]} classes")


def _divergence(log_q: Tensor, log_p: Tensor, divergence: str, beta: float) -> Tensor:
    if divergence == "forward_kl":
        return forward_kl_rows(log_q, log_p)
    if divergence == "reverse_kl":
        return reverse_kl_rows(log_q, log_p)
    return jsd_rows(log_q, log_p, beta)


def _mean_over(per_row: Tensor, valid: Tensor) -> Tensor:
    if bool(valid.all()):
        return per_row.mean()
    return (per_row * valid).sum() / valid.sum().clamp_min(1)


def topk_divergence_rows(student_rows: Tensor, index: Tensor, teacher_logprobs: Tensor,
                         rest: Tensor | None = None, divergence: str = "forward_kl",
                         truncation: str = "bucket", temperature: float = 1.0,
                         beta: float = 0.5) -> Tensor:
    """D between the truncated teacher and student per row (no T^2, no mean): ``student_rows``
    ``[N, V]`` logits, ``index`` ``[N, k]`` integer classes, ``teacher_logprobs`` ``[N, k]`` the
    teacher's log-probabilities there at temperature T, ``rest`` ``[N]`` its remaining mass."""
    _check(student_rows, index, teacher_logprobs, divergence, truncation, temperature)
    log_q, log_p = _log_masses(student_rows, index, teacher_logprobs, rest, truncation, temperature)
    return _divergence(log_q, log_p, divergence, beta)


def topk_divergence(student_logits: Tensor, index: Tensor, teacher_logprobs: Tensor,
                    rest: Tensor | None = None, divergence: str = "forward_kl",
                    truncation: str = "bucket", temperature: float = 1.0, beta: float = 0.5,
                    mask: Tensor | None = None, target: Tensor | None = None) -> Tensor:
    """:math:`T^2` times the mean over valid positions of the truncated divergence (see the module
    docstring). ``student_logits`` is ``[B, C]``, ``[B, L, V]`` or ``[B, C, H, W]``; the teacher
    tensors have one row per position: ``[..., k]`` in the positions' order (``[B, k]``,
    ``[B, L, k]``, ``[B, H, W, k]``), ``rest`` ``[...]``. ``mask`` and ``target`` (``-100``)
    select positions as in ``joryu.losses.positions.rows``."""
    z, _, valid = rows(student_logits, target, mask)
    k = index.shape[-1]
    per_row = topk_divergence_rows(z, index.reshape(-1, k), teacher_logprobs.reshape(-1, k),
                                   None if rest is None else rest.reshape(-1), divergence, truncation,
                                   temperature, beta)
    return _mean_over(per_row, valid) * float(temperature) ** 2


def topk_divergence_and_ce(student_logits: Tensor, index: Tensor, teacher_logprobs: Tensor, rest: Tensor,
                           target: Tensor, divergence: str = "forward_kl", beta: float = 0.5,
                           soft_positions: bool = True) -> tuple[Tensor, Tensor]:
    r"""``(soft, hard)``: KD's two terms at T = 1 with the bucket truncation, from one pass over the
    student's classes (a language model's step is dominated by such passes over the vocabulary).
    ``soft`` is ``topk_divergence(..., "bucket", 1.0, target=target)`` (``target=None`` when
    ``soft_positions`` is False: every row counts, as for a classifier) and ``hard`` is
    ``joryu.losses.imperfect.masked_cross_entropy(student_logits, target)``: the mean of
    :math:`-\log q_y` over rows whose target is not -100 (0 with none). Both equal the two
    computed apart, values and gradients (``tests/test_topk.py``)."""
    z, flat_target, valid = rows(student_logits, target)
    k = index.shape[-1]
    index, teacher_logprobs = index.reshape(-1, k), teacher_logprobs.reshape(-1, k)
    _check(z, index, teacher_logprobs, divergence, "bucket", 1.0)
    zf = _fp32(z)
    label = torch.where(valid, flat_target, torch.zeros_like(flat_target)).long()
    masses = _StudentBucket.apply(zf, index.long(), 1.0, label)
    log_p = _teacher_bucket(teacher_logprobs, rest.reshape(-1), zf.dtype)
    per_row = _divergence(_student_bucket(masses, k), log_p, divergence, beta)
    soft = _mean_over(per_row, valid if soft_positions else torch.ones_like(valid))
    hard = -(masses[:, k + 1] * valid).sum() / valid.sum().clamp_min(1)
    return soft, hard


def binary_kl(a: Tensor, b: Tensor) -> Tensor:
    """:math:`\\mathrm{kl}(a \\| b) = a \\log(a/b) + (1-a) \\log((1-a)/(1-b))` for masses in [0, 1]."""
    return torch.xlogy(a, a) - torch.xlogy(a, b) + torch.xlogy(1 - a, 1 - a) - torch.xlogy(1 - a, 1 - b)


def forward_kl_bucket_bound(student_rows: Tensor, rest: Tensor, temperature: float = 1.0) -> Tensor:
    """Upper bound per row on KL(p || q) - KL_bucket: :math:`r\\,(\\log V + (\\max z - \\min z)/T)`."""
    z = student_rows.detach().float()
    spread = (z.amax(-1) - z.amin(-1)) / temperature
    return rest.float() * (math.log(z.shape[-1]) + spread)


def jsd_bucket_bound(rest: Tensor, student_rest: Tensor, beta: float = 0.5) -> Tensor:
    """Upper bound per row on JSD - JSD_bucket: :math:`s\\,h(\\beta r / s)`, :math:`s = \\beta r + (1-\\beta)\\rho`."""
    a, b = beta * rest.float(), (1 - beta) * student_rest.float()
    s = a + b
    return -torch.xlogy(a, a / s.clamp_min(1e-30)) - torch.xlogy(b, b / s.clamp_min(1e-30))


__all__ = ["TRUNCATIONS", "binary_kl", "forward_kl_bucket_bound", "jsd_bucket_bound", "retemper",
           "topk_divergence", "topk_divergence_and_ce", "topk_divergence_rows", "topk_from_logits"]
