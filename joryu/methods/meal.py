"""Shen, He & Xue (2019), "MEAL: Multi-Model Ensemble via Adversarial Learning", AAAI, arXiv:1812.02425.

k pre-trained teachers are compressed into one student. At every iteration one teacher T is
chosen uniformly at random (``joryu.teachers.RandomChoiceTeacher``). At each block j the student's
and the teacher's outputs are pooled to a fixed size, s_j and t_j, and

    L_student = Σ_j γ_j · CE(softmax(t_j), s_j)  +  Σ_j η_j · (−log D_j(s_j))
    L_D       = Σ_j [ −log D_j(t_j) − log(1 − D_j(s_j)) ]

with one binary discriminator D_j per block. The paper has no ground-truth label term
(``label_weight: 0, adversarial: true``); the defaults here are ``adversarial: false,
label_weight: 1``, chosen on validation by the defaults check (docs/methods/meal.md). The min-max is a true one: the discriminators have
their own optimizer and take their step on the student's outputs *detached*; the student's
optimizer then steps on L_student only, and the gradient that L_student leaves on the
discriminators is discarded (manual optimization through ``self.ctx``).

Deviations and pitfalls of the official code (AaronHeee/MEAL) that are fixed here:
- Teachers run in eval mode (the official ``--teacher_eval`` defaults to 0: BN/dropout in train mode).
- The official student and discriminators minimise the *same* d_loss in one optimizer (so without
  ``--grl`` the student helps D; ``--grl`` is parsed with ``type=bool`` and its legacy autograd
  Function fails in current PyTorch): here two optimizers and the non-saturating generator loss.
- The discriminator has hidden widths independent of the block size (``d_hidden``, default 64) and
  LeakyReLU, where the official one halves the width per layer (10-5-2-1 on 10-class logits, which
  collapses to a constant); its last layer is linear with one logit (``losses.meal.Discriminator``);
  its optimizer is Adam(d_lr = 1e-3, betas 0.5/0.999), scaled by the run's lr schedule.
- Blocks: the logits are always the last block (not pooled); ``student_layers`` / ``teacher_layers``
  add intermediate blocks by module path, pooled to ``pooled_dim`` (spatial mean, then adaptive average
  over channels). ``gammas`` / ``etas`` give one weight per block (default 1 each), intermediate first.
  The discriminators see the raw pooled outputs (logits for the last block).
- Teachers: the run's teacher (an ensemble contributes each member). When it has fewer than
  ``num_teachers`` members, the missing ones are trained first, as stages ``teacher2``, ...: copies of
  the first teacher's architecture, re-initialised with distinct seeds, trained with the run's
  training settings on the labels (best guess; the paper's teachers are independent pre-trained models).
  Stages for teachers that were given run for 0 epochs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from joryu.distiller import Distiller
from joryu.errors import ConfigError
from joryu.losses import Discriminator, discriminator_loss, generator_loss, pool_to, similarity_loss
from joryu.methods.base import (
    DefaultsEvidence,
    Method,
    Params,
    Stage,
    StageContext,
    register_method,
)
from joryu.methods.supervised import SupervisedDistiller
from joryu.taps import Taps
from joryu.teachers import EnsembleTeacher, FrozenTeacher, RandomChoiceTeacher, Teacher


class MEALDistiller(Distiller):
    automatic_optimization = False

    def __init__(self, student: nn.Module, teacher_models: list[nn.Module], num_classes: int,
                 student_layers, teacher_layers, pooled_dim: int, gammas, etas, adversarial: bool,
                 similarity: str, label_weight: float, d_lr: float, seed: int = 0,
                 input_key: str = "input", *, d_hidden: int):
        if len(student_layers) != len(teacher_layers):
            raise ConfigError(f"MEAL pairs blocks: {len(student_layers)} student layers, {len(teacher_layers)} teacher layers")
        feats = {f"block{j}": p for j, p in enumerate(teacher_layers)}
        chooser = RandomChoiceTeacher([FrozenTeacher(m, input_key, feats or None) for m in teacher_models],
                                      seed=seed, input_key=input_key)
        super().__init__(student, [chooser], input_key)
        self.chooser = chooser
        self.taps = Taps(student, {f"block{j}": p for j, p in enumerate(student_layers)}) if student_layers else None
        n = len(student_layers) + 1
        self.gammas = list(gammas) if gammas is not None else [1.0] * n
        self.etas = list(etas) if etas is not None else [1.0] * n
        if len(self.gammas) != n or len(self.etas) != n:
            raise ConfigError(f"MEAL has {n} blocks (the layers plus the logits): give {n} gammas and etas")
        self.pooled_dim = pooled_dim
        self.dims = [pooled_dim] * len(student_layers) + [num_classes]
        self.adversarial = adversarial
        self.discriminators = nn.ModuleList([Discriminator(d, d_hidden) for d in self.dims]) if adversarial else None
        self.similarity = similarity
        self.label_weight = label_weight
        self.d_lr = d_lr

    def configure_optimizers(self, build):
        opts = [build([p for p in self.student.parameters() if p.requires_grad])]
        if self.adversarial:
            opts.append(torch.optim.Adam(self.discriminators.parameters(), lr=self.d_lr, betas=(0.5, 0.999)))
        return opts

    def blocks(self, batch):
        """Pooled (student, teacher) outputs per block, the logits last; and the student's logits."""
        t_out = self.chooser(batch)
        if self.taps is not None:
            self.taps.clear()
        s_logits = self.student(batch[self.input_key])
        s_feats = self.taps.pop() if self.taps is not None else {}
        pairs = [(pool_to(s_feats[k], self.pooled_dim), pool_to(t_out.features[k], self.pooled_dim))
                 for k in sorted(s_feats, key=lambda k: int(k[5:]))]
        pairs.append((s_logits.float(), t_out.logits.float()))
        return pairs, s_logits

    def training_step(self, batch):
        pairs, s_logits = self.blocks(batch)
        out = {}
        opt_s = self.ctx.optimizers[0]
        if self.adversarial:
            opt_d = self.ctx.optimizers[1]
            d_loss = sum(discriminator_loss(D(t), D(s.detach())) for D, (s, t) in zip(self.discriminators, pairs))
            self.ctx.backward(d_loss)
            self.ctx.step(opt_d)
            out["d_loss"] = d_loss.detach()
        sim = sum(g * similarity_loss(s, t, self.similarity) for g, (s, t) in zip(self.gammas, pairs))
        loss = sim
        out["sim"] = sim.detach()
        if self.adversarial:
            adv = sum(e * generator_loss(D(s)) for e, D, (s, _) in zip(self.etas, self.discriminators, pairs))
            loss = loss + adv
            out["adv"] = adv.detach()
        if self.label_weight > 0:
            ce = F.cross_entropy(s_logits, batch["target"])
            loss = loss + self.label_weight * ce
            out["ce"] = ce.detach()
        self.ctx.backward(loss)
        self.ctx.step(opt_s)
        if self.adversarial:  # the student's loss must not move D: drop what it left on D's grads
            opt_d.zero_grad(set_to_none=True)
        out["loss"] = loss.detach()
        return out

    def extra_metrics(self):
        return self.chooser.stats()


def teacher_models(teacher) -> list[nn.Module]:
    if teacher is None:
        raise ConfigError("MEAL needs at least one teacher")
    if isinstance(teacher, (EnsembleTeacher, RandomChoiceTeacher)):
        return [m for t in teacher.teachers for m in t.models()]
    if isinstance(teacher, Teacher):
        return teacher.models()
    if isinstance(teacher, nn.Module):
        return [teacher]
    return [m for t in teacher for m in teacher_models(t)]


def reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A trainable copy of ``model`` with fresh weights drawn from ``seed``."""
    m = copy.deepcopy(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for mod in m.modules():
            if hasattr(mod, "reset_parameters"):
                mod.reset_parameters()
    for p in m.parameters():
        p.requires_grad_(True)
    return m.train()


@dataclass
class MEALState:
    """What MEAL's stages hand over: the teacher networks, the given ones first, then each one
    a teacher stage trains."""

    teachers: list[nn.Module]


class MEALParams(Params):
    num_teachers: int = Field(3, ge=1, description="teachers to choose from; missing ones are trained first")
    adversarial: bool = Field(False, description="add the per-block discriminators (min-max; the paper: on)")
    similarity: Literal["ce", "l1", "l2"] = "ce"
    student_layers: list[str] = Field(default_factory=list, description="student module paths of extra blocks")
    teacher_layers: list[str] = Field(default_factory=list, description="teacher module paths, paired in order")
    pooled_dim: int = Field(64, ge=1, description="size intermediate blocks are pooled to")
    gammas: list[float] | None = Field(None, description="similarity weight per block (layers first, logits last)")
    etas: list[float] | None = Field(None, description="adversarial weight per block")
    d_lr: float = Field(1e-3, gt=0, description="discriminators' Adam learning rate (official --d_lr)")
    d_hidden: int = Field(64, ge=1, description="discriminators' hidden width (independent of the block size)")
    label_weight: float = Field(1.0, ge=0, description="weight of a CE label term (the paper: 0, none)")

    @model_validator(mode="after")
    def _pairs(self):
        if len(self.student_layers) != len(self.teacher_layers):
            raise ValueError("student_layers and teacher_layers must pair up (same length)")
        return self


@register_method("meal", paper="Shen, He & Xue 2019, MEAL: Multi-Model Ensemble via Adversarial Learning (arXiv:1812.02425)")
class MEAL(Method):
    Params = MEALParams
    defaults_evidence = DefaultsEvidence(
        hurts=False, source="results/defaults/meal.md",
        regime="Mean gain over the student alone +0.35 points across five pairs (3 seeds, interval -0.14 .. "
               "+0.83): above it on MNIST-1D (+1.04), with lenet5 (+0.54) and on MNIST-5000 (+0.25), level on "
               "digits (+0.00) and mnist100 (-0.10). Expect about the student alone or a little better; the "
               "paper's label-free adversarial form did not beat the labels on mnist100 "
               "(results/meal_mnist100.md).")

    def new_state(self, ctx: StageContext) -> MEALState:
        return MEALState(teachers=teacher_models(ctx.teacher))

    def stages(self):
        p = self.params

        def teacher_stage(i: int) -> Stage:
            """Train teacher i + 1 (a re-initialised copy of the first) unless the run gave it."""

            def build(ctx: StageContext[MEALState]):
                return SupervisedDistiller(reinitialised(ctx.state.teachers[0], ctx.seed * 1000 + i))

            def keep(ctx: StageContext[MEALState], d):
                ctx.state.teachers.append(FrozenTeacher(d.student).model)

            return Stage(f"teacher{i + 1}", build, after=keep,
                         skip=lambda ctx: len(ctx.state.teachers) > i)

        def build(ctx: StageContext[MEALState]):
            return MEALDistiller(ctx.student, ctx.state.teachers[: p.num_teachers], ctx.num_classes,
                                 student_layers=p.student_layers, teacher_layers=p.teacher_layers,
                                 pooled_dim=p.pooled_dim, gammas=p.gammas, etas=p.etas,
                                 adversarial=p.adversarial, similarity=p.similarity,
                                 label_weight=p.label_weight, d_lr=p.d_lr, seed=ctx.seed,
                                 d_hidden=p.d_hidden)

        return [teacher_stage(i) for i in range(1, p.num_teachers)] + [Stage("distill", build)]
