"""Yim, Joo, Bae & Kim (2017), "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning", CVPR 2017 (FSP).

Knowledge is the *flow of solution procedure*: for each section of the network, the Gram matrix
between its first and its last feature map (Eq. 1),

    G_ij = sum_{s,t} F1_{s,t,i} * F2_{s,t,j} / (h * w),        G in R^{m x n},

and the student learns to reproduce the teacher's matrices (Eq. 2):

    L_FSP = 1/N sum_x sum_i lambda_i || G_i^T(x) - G_i^S(x) ||_2^2,   lambda_i equal.

Two stages, run by the one engine:
1. ``fsp``: the student minimises L_FSP only (the paper's "initialisation" stage).
2. ``train``: ordinary cross-entropy training from those weights (the paper's main training,
   with a budget of one third of the teacher's iterations).

The section pairs are configuration (module paths): ``teacher_pairs`` / ``student_pairs`` list
``[first, last]`` per section. For a CIFAR ResNet of joryu's zoo the paper's three sections are
``[relu, layer1]``, ``[layer1, layer2]``, ``[layer2, layer3]`` (the stem's output is the input of
section 1). Maps of different spatial size are max-pooled to the smaller one (the paper).

Deviations and best guesses:
- Default pairs, when none are given: consecutive entries of the model's ``feature_layers``
  (for a CIFAR ResNet that drops the stem -> layer1 section); give pairs for the paper's layout.
- The loss is summed over matrix entries and averaged over the batch, as Eq. 2 (RepDistiller uses
  ``.mean()`` over entries, a different scale, and average pooling: ``pool="avg"``).
- Stage-1 length and learning rate are options (``fsp_epochs``, ``fsp_lr``); the paper used
  lr 1e-3 -> 1e-5 for about a third of the teacher's schedule on CIFAR-10.
- Stage 1 trains every student parameter; layers after the last tapped map get no gradient.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from joryu.distiller import Distiller
from joryu.errors import ConfigError
from joryu.losses import fsp_loss, fsp_matrix
from joryu.methods._features import tapped_teacher
from joryu.methods.base import DefaultsEvidence, Method, Params, Stage, register_method
from joryu.methods.supervised import SupervisedDistiller
from joryu.outputs import forward
from joryu.taps import Taps


def default_pairs(model) -> list[tuple[str, str]]:
    layers = getattr(model, "feature_layers", None)
    if not layers or len(layers) < 2:
        raise ConfigError(f"{type(model).__name__} lists fewer than two feature_layers: give the FSP section "
                          "pairs as module paths (teacher_pairs, student_pairs)")
    return [(a, b) for a, b in zip(layers, layers[1:])]


class FSPDistiller(Distiller):
    """Stage 1: minimise sum_i lambda_i ||G_i^T - G_i^S||^2 (batch mean), nothing else."""

    def __init__(self, student, teacher, student_pairs, teacher_pairs, weights, pool: str,
                 input_key: str = "input"):
        super().__init__(student, [teacher], input_key)
        if len(student_pairs) != len(teacher_pairs):
            raise ConfigError(f"{len(teacher_pairs)} teacher FSP pairs but {len(student_pairs)} student pairs")
        self.teacher = teacher
        self.pairs = len(student_pairs)
        paths = {}
        for i, (a, b) in enumerate(student_pairs):
            paths[f"{i}.first"], paths[f"{i}.last"] = a, b
        self.student_taps = Taps(student, paths)
        self.weights = weights
        self.pool = pool

    def matrices(self, feats):
        return [fsp_matrix(feats[f"{i}.first"], feats[f"{i}.last"], self.pool) for i in range(self.pairs)]

    def training_step(self, batch):
        forward(self.student, batch, self.input_key)
        gs = self.matrices(self.student_taps.pop())
        gt = self.matrices(self.teacher(batch).features)
        loss = fsp_loss(gt, gs, self.weights)
        return {"loss": loss, "fsp": loss}

    def release(self) -> None:
        self.student_taps.remove()
        if self.teacher.taps is not None:
            self.teacher.taps.remove()


class FSPParams(Params):
    teacher_pairs: list[tuple[str, str]] | None = Field(
        None, description="[first, last] module paths of each teacher section (default: consecutive feature_layers)")
    student_pairs: list[tuple[str, str]] | None = Field(
        None, description="[first, last] module paths of each student section, same count and channels")
    weights: list[float] | None = Field(None, description="lambda_i per pair (default: all 1)")
    pool: Literal["max", "avg"] = Field("max", description="pooling when a pair's spatial sizes differ")
    fsp_epochs: int | None = Field(None, ge=1, description="stage-1 epochs (default: the run's epochs)")
    fsp_lr: float | None = Field(None, gt=0, description="stage-1 learning rate (default: the run's lr)")


@register_method("fsp", paper="Yim et al. 2017, A Gift from Knowledge Distillation (FSP), CVPR")
class FSP(Method):
    Params = FSPParams
    defaults_evidence = DefaultsEvidence(
        hurts=False, ran=False, source="results/defaults/fsp.md",
        regime='Not checked: FSP needs 2-D feature maps (the MLP pairs have none) and sections whose channel '
               "counts match between teacher and student (the CNN pairs' students have 6/16 and 8/16 "
               "channels against the teacher's 16/32). It needs a student that shares the teacher's stage "
               'widths, as in its reproduction (results/fsp.md).')

    def stages(self):
        p = self.params

        def build_fsp(ctx):
            t_pairs = p.teacher_pairs or default_pairs(ctx.teacher.model)
            s_pairs = p.student_pairs or default_pairs(ctx.student)
            feats = {}
            for i, (a, b) in enumerate(t_pairs):
                feats[f"{i}.first"], feats[f"{i}.last"] = a, b
            teacher = tapped_teacher(ctx.teacher, feats)
            return FSPDistiller(ctx.student, teacher, s_pairs, t_pairs, p.weights, p.pool)

        def after_fsp(ctx, distiller):
            distiller.release()

        stage1 = {}
        if p.fsp_epochs is not None:
            stage1["epochs"] = p.fsp_epochs
        if p.fsp_lr is not None:
            stage1["lr"] = p.fsp_lr
        return [Stage("fsp", build_fsp, stage1, after=after_fsp),
                Stage("train", lambda ctx: SupervisedDistiller(ctx.student))]
