"""Lee, Kim & Song (2018), "Self-supervised Knowledge Distillation Using Singular Value
Decomposition", ECCV 2018 (arXiv:1807.06819), KD-SVD.

Knowledge: at each sensing point (block outputs of teacher and student, equal widths), the top
right singular vectors of the feature map reshaped to X in R^{HW x C}; the student learns the
teacher's *relations between consecutive points*, an RBF of the aligned, singular-value-scaled
vectors (see :func:`joryu.losses.svd_kd_loss`):

    L_svd = sum_l 1/2 || R^S_l - sg(R^T_l) ||^2 * sqrt(k),   R_{a,b,j} = exp(-(v^l_{a,j} - v^{l+1}_{b,j})^2 / 8)

Training is "multi-task" with the cross-entropy, with the official code's gradient clipping per
variable (``clip="official"``):

    g = grad CE + clip_by_norm( sigmoid(epoch - 2) * grad L_svd,  ||grad CE|| )

(``clip="scaled_norm"``: clip_by_norm(grad L_svd, ||grad CE|| * sigmoid(epoch - shift)), the
reading in the issue text; ``clip="none"``: plain sum). The SVD runs in float64 and non-finite
entries of the vectors, the RBF difference and the SVD gradient are zeroed.

Defaults (official SSKD_SVD): k = ``num_DFV`` = 1, the student decomposed to k + 1 candidates, the
teacher's vectors sign-flipped to match (``flip="teacher"``), sigmoid shift 2 with 0-based epochs.

Deviations and best guesses:
- The loss is averaged over the batch (the official ``tf.nn.l2_loss`` sums over it); with the
  clipping above only its direction matters once it is clipped.
- The official custom SVD backward keeps only the top 5 components and crops NaNs; joryu uses
  PyTorch's SVD backward in float64 and zeroes non-finite gradient entries.
- Sensing points are configuration (``student_points`` / ``teacher_points`` module paths; default:
  each model's ``feature_layers``). Widths must be equal at every point (no adapter, as the paper).
- fp16 mixed precision is not supported with clipping (the two gradients are taken with
  ``torch.autograd.grad``, outside the grad scaler); bf16 and fp32 are.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from joryu.distiller import Distiller
from joryu.errors import ConfigError
from joryu.losses import svd_kd_loss
from joryu.methods._features import tapped_teacher
from joryu.methods.base import Method, Params, Stage, register_method
from joryu.outputs import forward
from joryu.taps import Taps


def clip_by_norm(g: torch.Tensor, max_norm: float | torch.Tensor) -> torch.Tensor:
    """``g`` scaled down to norm ``max_norm`` if it is longer (TensorFlow's clip_by_norm)."""
    n = g.norm()
    return g * torch.clamp(max_norm / n.clamp_min(1e-12), max=1.0)


def combine_gradients(g_ce, g_svd, epoch: int, mode: str = "official", shift: float = 2.0):
    """Per variable: grad CE + the clipped SVD gradient (see the module docstring)."""
    s = 1.0 / (1.0 + math.exp(-(epoch - shift)))
    out = []
    for gc, gs in zip(g_ce, g_svd):
        if gs is None:
            out.append(gc)
            continue
        gs = torch.nan_to_num(gs, nan=0.0, posinf=0.0, neginf=0.0)
        if gc is None:
            gc = torch.zeros_like(gs)
        if mode == "official":
            gs = clip_by_norm(s * gs, gc.norm())
        elif mode == "scaled_norm":
            gs = clip_by_norm(gs, gc.norm() * s)
        elif mode != "none":
            raise ValueError(f"clip must be 'official', 'scaled_norm' or 'none', got {mode!r}")
        out.append(gc + gs)
    return out


class SVDKDDistiller(Distiller):
    automatic_optimization = False

    def __init__(self, student, teacher, student_points, k: int = 1, student_extra: int = 1,
                 flip: str = "teacher", clip: str = "official", sigmoid_shift: float = 2.0, weight: float = 1.0,
                 input_key: str = "input"):
        super().__init__(student, [teacher], input_key)
        self.teacher = teacher
        self.n = len(student_points)
        self.student_taps = Taps(student, {str(i): p for i, p in enumerate(student_points)})
        self.k, self.extra, self.flip = k, student_extra, flip
        self.clip, self.shift, self.weight = clip, sigmoid_shift, weight
        self.epoch = 0

    def on_epoch_start(self, epoch, num_epochs):
        self.epoch = epoch

    def losses(self, batch):
        logits = forward(self.student, batch, self.input_key)
        fs = self.student_taps.pop()
        ft = self.teacher(batch).features
        ce = F.cross_entropy(logits, batch["target"])
        svd = self.weight * svd_kd_loss([fs[str(i)] for i in range(self.n)], [ft[str(i)] for i in range(self.n)],
                                        self.k, self.extra, self.flip)
        return ce, svd

    def training_step(self, batch):
        ce, svd = self.losses(batch)
        params = self.trainable_parameters()
        g_ce = torch.autograd.grad(ce, params, retain_graph=True, allow_unused=True)
        g_svd = torch.autograd.grad(svd, params, allow_unused=True) if svd.requires_grad else [None] * len(params)
        for p, g in zip(params, combine_gradients(g_ce, g_svd, self.epoch, self.clip, self.shift)):
            p.grad = g
        for opt in self.ctx.optimizers:
            self.ctx.step(opt)
        return {"loss": (ce + svd).detach(), "ce": ce.detach(), "svd": svd.detach()}

    def release(self) -> None:
        self.student_taps.remove()
        if self.teacher.taps is not None:
            self.teacher.taps.remove()


class SVDKDParams(Params):
    student_points: list[str] | None = Field(None, description="student sensing points (default: feature_layers)")
    teacher_points: list[str] | None = Field(None, description="teacher sensing points, same count and widths")
    k: int = Field(1, ge=1, description="singular vectors kept from the teacher (num_DFV)")
    student_extra: int = Field(1, ge=0, description="extra student candidates for the alignment (official: 1)")
    flip: Literal["teacher", "student"] = Field("teacher", description="which side's sign is flipped to align")
    clip: Literal["official", "scaled_norm", "none"] = Field("official", description="gradient combination rule")
    sigmoid_shift: float = Field(2.0, description="sigmoid(epoch - shift) ramps the SVD gradient in")
    weight: float = Field(1.0, ge=0, description="multiplier on the SVD loss")


@register_method("svd_kd", paper="Lee, Kim & Song 2018, Self-supervised Knowledge Distillation using SVD, ECCV")
class SVDKD(Method):
    Params = SVDKDParams

    def stages(self):
        p = self.params

        def build(ctx):
            s_points = p.student_points or list(getattr(ctx.student, "feature_layers", []) or [])
            t_points = p.teacher_points or list(getattr(ctx.teacher.model, "feature_layers", []) or [])
            if len(s_points) < 2 or len(s_points) != len(t_points):
                raise ConfigError(f"KD-SVD needs the same number (>= 2) of student and teacher sensing points, got "
                                  f"{s_points} and {t_points}; set student_points and teacher_points")
            teacher = tapped_teacher(ctx.teacher, {str(i): t for i, t in enumerate(t_points)})
            return SVDKDDistiller(ctx.student, teacher, s_points, p.k, p.student_extra, p.flip, p.clip,
                                  p.sigmoid_shift, p.weight)

        return [Stage("distill", build, after=lambda ctx, d: d.release())]
