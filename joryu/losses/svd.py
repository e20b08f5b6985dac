"""Lee, Kim & Song (2018), "Self-supervised Knowledge Distillation Using Singular Value
Decomposition", ECCV 2018 (arXiv:1807.06819): KD-SVD."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from joryu.errors import ShapeError


def channel_matrix(feat: Tensor) -> Tensor:
    """A feature map (B, C, *spatial) as the matrix X in R^{HW x C} per sample, shape (B, HW, C).

    This is the channel-space layout of the paper (TensorFlow's NHWC reshape to [B, H*W, C]);
    a reshape to (B, C*H, W), as some PyTorch ports do, decomposes over the width axis instead.
    Vectors (B, D) become (B, 1, D).
    """
    if feat.dim() == 2:
        return feat.unsqueeze(1)
    return feat.flatten(2).transpose(1, 2)


def truncated_svd(feat: Tensor, k: int) -> tuple[Tensor, Tensor]:
    r"""Top-``k`` singular values and right singular vectors of each sample's
    :math:`X \in R^{HW \times C}` (in float64): ``(S (B, r), V (B, C, r))`` with r = min(k, HW, C)."""
    x = channel_matrix(feat).double()
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    r = min(k, s.shape[-1])
    return s[:, :r], vh[:, :r].transpose(1, 2)


def _finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def align_singular_vectors(v_s: Tensor, v_t: Tensor, s_t: Tensor, flip: str = "teacher") -> tuple[Tensor, Tensor]:
    r"""Pair, scale and sign-align singular vectors (the paper's Sec. 3.2 / official ``Align_rsv``).

    ``v_s`` (B, C, k_s) holds the student's candidates (k_s >= k), ``v_t`` (B, C, k) the teacher's
    vectors and ``s_t`` (B, k) its singular values. Each teacher vector picks the student vector of
    largest |cosine|; both are scaled by the teacher's singular values normalised to unit norm
    (a constant); then the sign of one side (``flip``: the teacher, as the official code, or the
    student) is flipped so that every pair has a non-negative cosine.
    """
    if v_s.shape[1] != v_t.shape[1]:
        raise ShapeError(f"student and teacher features have {v_s.shape[1]} and {v_t.shape[1]} channels: KD-SVD "
                         "needs equal widths at every sensing point")
    cos = v_s.transpose(1, 2) @ v_t  # (B, k_s, k)
    idx = cos.abs().argmax(1)  # (B, k)
    v_s = torch.gather(v_s, 2, idx.unsqueeze(1).expand(-1, v_s.shape[1], -1))
    scale = (s_t / s_t.norm(dim=1, keepdim=True).clamp_min(1e-30)).detach().unsqueeze(1)
    v_s, v_t = v_s * scale, v_t * scale
    sign = torch.where((v_s * v_t).sum(1, keepdim=True) >= 0, 1.0, -1.0).to(v_s.dtype).detach()
    if flip == "teacher":
        v_t = v_t * sign
    elif flip == "student":
        v_s = v_s * sign
    else:
        raise ValueError(f"flip must be 'teacher' or 'student', got {flip!r}")
    return v_s, v_t


def rbf(v_a: Tensor, v_b: Tensor) -> Tensor:
    r"""Radial basis function between the vectors of two consecutive sensing points:

    .. math::  R_{a,b,j} = \exp\left(-\frac{(v^l_{a,j} - v^{l+1}_{b,j})^2}{8}\right), \quad R \in R^{C_l \times C_{l+1} \times k}

    for v_a (B, C_l, k) and v_b (B, C_{l+1}, k); returns (B, C_l, C_{l+1}, k).
    """
    return torch.exp(-(v_a.unsqueeze(2) - v_b.unsqueeze(1)).pow(2) / 8)


def svd_kd_loss(student: Sequence[Tensor], teacher: Sequence[Tensor], k: int = 1, student_extra: int = 1,
                flip: str = "teacher", reduction: str = "sum") -> Tensor:
    r"""The KD-SVD distillation loss (Lee et al. 2018, Sec. 3; official ``RAS``).

    For each sensing point l: truncated SVD of X_l in R^{HW x C_l} (float64), teacher k vectors,
    student k + ``student_extra`` candidates; alignment and scaling (:func:`align_singular_vectors`);
    non-finite entries zeroed. For each pair of consecutive points, with the RBF of :func:`rbf`,

    .. math::  L = \sum_l \frac{1}{2} \| R^S_l - \mathrm{sg}(R^T_l) \|^2 \cdot \sqrt{k}

    summed over (C_l, C_{l+1}, k) and, with ``reduction="sum"`` (default), over the batch, as the
    authors' ``tf.nn.l2_loss`` does (``"mean"`` divides by the batch size). The teacher side gets no
    gradient.

    What holds exactly (the tests check each):
    - L = 0 when F_s equals F_t up to a positive scale, a sign and a common permutation of the
      spatial positions (X^T X, hence V, is unchanged by a row permutation).
    - The SVD returns each singular vector with an arbitrary sign; the alignment overwrites the
      sign of the ``flip`` side only. So L does not depend on the signs the SVD picks for the
      flipped side, and is exactly invariant to a spatial permutation of that side's features
      alone (``flip="teacher"``: the teacher's; ``"student"``: the student's).
    - It *does* depend on the arbitrary signs of the other side's vectors, because the RBF
      compares vectors of consecutive points: a spatial permutation of that side alone (or of
      both) moves L by a few percent (measured 0.3-10% on random features). It is invariant to
      flipping every vector of that side at once.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    if len(student) != len(teacher):
        raise ShapeError(f"{len(student)} student sensing points but {len(teacher)} teacher ones")
    if len(student) < 2:
        raise ShapeError("KD-SVD needs at least two sensing points (the RBF links consecutive ones)")
    vs, vt = [], []
    for fs, ft in zip(student, teacher):
        s_t, v_t = truncated_svd(ft.detach(), k)
        _, v_s = truncated_svd(fs, k + student_extra)
        a, b = align_singular_vectors(v_s, v_t, s_t, flip)
        vs.append(_finite(a))
        vt.append(_finite(b).detach())
    total = torch.zeros((), dtype=torch.float64, device=vs[0].device)
    batch = vs[0].shape[0] if reduction == "mean" else 1
    for i in range(len(vs) - 1):
        n = min(vs[i].shape[2], vs[i + 1].shape[2])
        r_s = rbf(vs[i][..., :n], vs[i + 1][..., :n])
        r_t = rbf(vt[i][..., :n], vt[i + 1][..., :n])
        total = total + 0.5 * _finite(r_s - r_t).pow(2).sum() / batch * math.sqrt(n)
    return total.to(student[0].dtype if student[0].is_floating_point() else torch.float32)
