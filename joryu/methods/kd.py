"""Hinton, Vinyals & Dean (2015), "Distilling the Knowledge in a Neural Network", arXiv:1503.02531.

Loss (Sec. 2 of the paper), with p^T = softmax(v/T) from the teacher and q^T = softmax(z/T):

    L = alpha * T^2 * KL(p^T || q^T) + (1 - alpha) * CE(y, softmax(z))

The T^2 factor keeps the soft term's gradient on the scale of the hard term as T changes.
The student is evaluated at T = 1.

Deviations and choices:
- The paper asks for a "considerably lower weight" on the hard term but gives no number;
  the default alpha = 0.9 follows common practice. alpha = 1 trains on soft targets alone.
- KL is used instead of the cross-entropy H(p^T, q^T); they differ by the teacher's entropy,
  a constant for the student, so gradients are identical.
- ``teacher_cache``: teacher outputs are computed once per sample and reused when the batch is
  not augmented (see ``joryu.teachers.CachedTeacher``); the results are identical.
"""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from joryu.distiller import Distiller
from joryu.losses import kd_loss
from joryu.methods.base import Method, Params, Stage, register_method
from joryu.outputs import forward
from joryu.teachers import CachedTeacher, Teacher


class KDDistiller(Distiller):
    def __init__(self, student, teacher: Teacher, temperature: float = 4.0, alpha: float = 0.9,
                 input_key: str = "input"):
        super().__init__(student, [teacher], input_key)
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha

    def training_step(self, batch):
        logits = forward(self.student, batch, self.input_key)
        t_logits = self.teacher(batch).logits
        soft = kd_loss(logits, t_logits, self.temperature)
        out = {"kd": soft}
        loss = self.alpha * soft
        if self.alpha < 1:
            hard = F.cross_entropy(logits, batch["target"])
            loss = loss + (1 - self.alpha) * hard
            out["ce"] = hard
        out["loss"] = loss
        return out


class KDParams(Params):
    temperature: float = Field(4.0, gt=0, description="softmax temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft term; 1 - alpha on the labels")
    teacher_cache: bool = Field(True, description="reuse teacher outputs for un-augmented batches")


@register_method("kd", paper="Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network (arXiv:1503.02531)")
class KD(Method):
    Params = KDParams

    def stages(self):
        p = self.params

        def build(ctx):
            teacher = ctx.teacher
            if p.teacher_cache and hasattr(ctx.train_data, "__len__"):
                teacher = CachedTeacher(teacher, len(ctx.train_data))
            return KDDistiller(ctx.student, teacher, p.temperature, p.alpha)

        return [Stage("distill", build)]
