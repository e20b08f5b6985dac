"""Gupta, Hoffman & Malik (2016), "Cross Modal Distillation for Supervision Transfer", CVPR 2016
(arXiv:1507.00448).

Supervision transfer from a labelled modality to an unlabelled one through paired data. Each
batch carries two paired modalities: the frozen teacher f_t reads ``input`` (e.g. RGB), the
student g_d reads ``input_b`` (e.g. depth). Two stages, run by the one engine:

1. ``transfer`` (paired, *unlabelled* data): the student's mid-level layer i* learns to reproduce
   the teacher's,

       min_{W_d}  sum_i || f_t^{(i*)}(I_s^i) - phi( g_d^{(i*)}(I_d^i) ) ||^2

   with phi an optional adapter (identity when the architectures match). Only the student up to
   layer i* (and phi) is trained; the forward pass stops after i*. phi is dropped afterwards.
2. ``finetune`` (few labels of the new modality): cross-entropy on ``input_b``, the whole student.
   The labelled samples are those with ``labeled`` = 1 when the data has such a mask, else
   ``finetune_labels_per_class`` per class drawn with ``finetune_seed``, else every sample.

Deviations and best guesses:
- The paper's i* is pool5 of an AlexNet/VGG (its layer ablation found the last conv/pool layer
  best); joryu's default is the *last* entry of each model's ``feature_layers``; give module paths.
- The squared L2 is summed per sample and averaged over the batch (the paper's Caffe Euclidean
  loss divides by 2N; the factor only rescales the learning rate).
- The paper fine-tunes Fast R-CNN detectors on NYUD2; here the downstream task is classification.
- phi options: ``identity``, ``linear`` (vectors) / ``1x1`` (a 1x1 convolution for maps).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from joryu.distiller import Distiller
from joryu.errors import ConfigError
from joryu.losses import feature_l2_loss
from joryu.methods._features import (
    default_layer,
    on_device_of,
    parameters_up_to,
    run_until,
    sample_input,
    tapped_teacher,
)
from joryu.methods.base import Baseline, DefaultsEvidence, Method, Params, Stage, register_method
from joryu.methods.supervised import SupervisedDistiller
from joryu.taps import Taps, resolve


def few_labels(data, per_class: int | None, seed: int = 0):
    """The labelled part of ``data``: its ``labeled`` mask if it has one, else ``per_class`` samples
    of each class (a seeded draw), else all of it."""
    if "labeled" in data.tensors:
        idx = torch.nonzero(data.tensors["labeled"].bool()).flatten()
        return data.subset(idx, data.name + "/labeled")
    if per_class is None:
        return data
    g = torch.Generator().manual_seed(seed)
    y = data.targets.cpu()
    picks = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:per_class]])
    return data.subset(torch.cat(picks).sort().values, f"{data.name}/{per_class}-per-class")


def make_adapter(kind: str, student_shape, teacher_shape) -> nn.Module:
    if kind == "identity":
        if tuple(student_shape) != tuple(teacher_shape):
            raise ConfigError(f"student feature {tuple(student_shape)} and teacher feature {tuple(teacher_shape)} "
                              "differ: set adapter to 'linear' or '1x1'")
        return nn.Identity()
    if kind == "linear" or len(student_shape) == 1:
        if len(student_shape) != 1 or len(teacher_shape) != 1:
            raise ConfigError("a linear adapter maps vector features; use '1x1' for feature maps")
        return nn.Linear(student_shape[0], teacher_shape[0])
    if tuple(student_shape[1:]) != tuple(teacher_shape[1:]):
        raise ConfigError(f"a 1x1 adapter needs equal spatial sizes: student {tuple(student_shape)}, "
                          f"teacher {tuple(teacher_shape)}")
    conv = {2: nn.Conv1d, 3: nn.Conv2d, 4: nn.Conv3d}[len(student_shape)]
    return conv(student_shape[0], teacher_shape[0], 1)


class SupervisionTransferDistiller(Distiller):
    """Stage 1: || f_t(input) - phi(g_d(input_b)) ||^2 at a mid-level layer, no labels."""

    def __init__(self, student, teacher, student_layer: str, sample_a, sample_b, adapter: str,
                 input_key: str = "input_b"):
        super().__init__(student, [teacher], input_key)
        self.teacher = teacher
        self.layer = student_layer
        self.student_taps = Taps(student, {"f": student_layer})
        xb = on_device_of(student, sample_b)
        self.prefix = parameters_up_to(student, student_layer, xb)
        t_shape = teacher({teacher.input_key: on_device_of(teacher.model, sample_a)}).features["f"].shape[1:]
        was = student.training
        student.eval()
        with torch.no_grad():
            s_shape = self._features(xb).shape[1:]
        student.train(was)
        self.adapter = make_adapter(adapter, s_shape, t_shape)

    def _features(self, x):
        run_until(self.student, self.layer, x)
        return self.student_taps.pop()["f"]

    def trainable_parameters(self):
        return self.prefix + list(self.adapter.parameters())

    def training_step(self, batch):
        g = self.adapter(self._features(batch[self.input_key]))
        f = self.teacher(batch).features["f"]
        loss = feature_l2_loss(g, f)
        return {"loss": loss, "transfer": loss}

    def release(self) -> None:
        self.student_taps.remove()
        if self.teacher.taps is not None:
            self.teacher.taps.remove()
        del self.adapter
        self.adapter = None


class CrossModalParams(Params):
    teacher_layer: str | None = Field(None, description="teacher module path of i* (default: last feature layer)")
    student_layer: str | None = Field(None, description="student module path of i* (default: last feature layer)")
    student_key: str = Field("input_b", description="batch key of the student's modality")
    adapter: Literal["identity", "linear", "1x1"] = Field("identity", description="phi on the student feature")
    transfer_epochs: int | None = Field(None, ge=1, description="stage-1 epochs (default: the run's epochs)")
    transfer_lr: float | None = Field(None, gt=0, description="stage-1 learning rate (default: the run's lr)")
    finetune: bool = Field(True, description="run the fine-tuning stage on the labelled samples")
    finetune_labels_per_class: int | None = Field(
        None, ge=1, description="labels per class for fine-tuning when the data has no 'labeled' mask (None: all)")
    finetune_seed: int = Field(0, description="seed of the draw of labelled samples")
    finetune_epochs: int | None = Field(None, ge=1, description="fine-tuning epochs (default: the run's epochs)")


@register_method("cross_modal",
                 paper="Gupta, Hoffman & Malik 2016, Cross Modal Distillation for Supervision Transfer, CVPR")
class CrossModal(Method):
    Params = CrossModalParams
    defaults_evidence = DefaultsEvidence(
        hurts=False, ran=False, source="results/defaults/cross_modal.md",
        regime='Not checked: the method transfers from a teacher on one modality to a student on a second, '
               "paired modality (the data's input_b); none of the check's pairs has one. See its "
               'reproduction (results/cross_modal.md) for a paired-modality task.')

    def stages(self):
        p = self.params

        def build_transfer(ctx):
            t_layer = p.teacher_layer or default_layer(ctx.teacher.model, "last")
            s_layer = p.student_layer or default_layer(ctx.student, "last")
            resolve(ctx.student, s_layer)
            teacher = tapped_teacher(ctx.teacher, {"f": t_layer})
            xa = sample_input(ctx.train_data, teacher.input_key)
            xb = sample_input(ctx.train_data, p.student_key)
            return SupervisionTransferDistiller(ctx.student, teacher, s_layer, xa, xb, p.adapter, p.student_key)

        def after_transfer(ctx, distiller):
            distiller.release()

        def finetune_data(ctx):
            return few_labels(ctx.train_data, p.finetune_labels_per_class, p.finetune_seed)

        def build_finetune(ctx):
            return SupervisedDistiller(ctx.student, input_key=p.student_key)

        transfer = {}
        if p.transfer_epochs is not None:
            transfer["epochs"] = p.transfer_epochs
        if p.transfer_lr is not None:
            transfer["lr"] = p.transfer_lr
        stages = [Stage("transfer", build_transfer, transfer, after=after_transfer)]
        if p.finetune:
            ft = {"epochs": p.finetune_epochs} if p.finetune_epochs is not None else {}
            stages.append(Stage("finetune", build_finetune, ft, data=finetune_data))
        return stages

    def baselines(self):
        """The student alone: random init, trained on the same labelled samples of its own modality
        (``student_key``) with the fine-tuning stage's budget (the paper's "random init" arm)."""
        p = self.params

        def alone(b):
            data = few_labels(b.train_data, p.finetune_labels_per_class, p.finetune_seed)
            ft = {"epochs": p.finetune_epochs} if p.finetune_epochs is not None else {}
            return b.train(b.fresh_student(), data=data, train=ft, input_key=p.student_key)

        return [Baseline("student alone", alone, folder="baseline", input_key=p.student_key)]
