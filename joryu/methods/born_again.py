"""Furlanello, Lipton, Tschannen, Itti & Anandkumar (2018), "Born-Again Neural Networks", ICML, arXiv:1805.04770.

Generations of one architecture, each a stage:

- generation 1 is trained on the labels: L = CE(y, q_1);
- generation k > 1 is the same architecture with a **fresh initialisation** and a **fresh optimizer**
  (each stage is its own engine run), trained from generation k-1, frozen in eval mode
  (``FrozenTeacher``: no gradients, dropout off, BatchNorm running statistics):

  ``variant="kd"``        L = T^2 KL(p_{k-1}^T || q_k^T)                    (BAN; T = 1 by default)
  ``variant="kd_labels"`` L = T^2 KL(p_{k-1}^T || q_k^T) + label_weight CE(y, q_k)        ("BAN+L")
  ``variant="cwtm"``      L = sum_s w_s CE(y_s, q_{k,s}),  w_s = max p_{k-1,s} / sum_u max p_{k-1,u}
  ``variant="dkpp"``      L = T^2 KL(pi(p_{k-1}^T) || q_k^T), pi keeps the argmax entry and permutes the
                          other classes' probabilities at random, per sample and per step

  (losses in ``joryu.losses.born_again``). The teacher sees the same (possibly augmented) batch as the
  student, so with augmentation the soft targets are computed on the augmented views.
- BANE, the ensemble of generations 1..k (mean of their softmax outputs), is reported by the last
  stage's evaluation as ``bane``, next to every generation (``gen1`` ...) and the headline
  ``student`` (the last generation, the deployable).

Deviations and best guesses:
- The fresh initialisation re-draws every parameter with the modules' ``reset_parameters`` (PyTorch's
  default initialisers) from a seed derived from the run (the starting student's initial weights and
  the generation number), so a resumed run rebuilds the same generations. A zoo model with a custom
  initialiser (the CIFAR ResNets) gets PyTorch's default scheme from generation 2 on.
- CWTM weights are normalised to sum to 1 over the batch (the printed formula has an extra 1/b), so
  equal confidences give exactly the mean cross-entropy.
- KL replaces the paper's cross-entropy to the teacher's output: same gradient (the teacher's
  entropy is a constant). ``label_weight`` (1) for BAN+L is a best guess; the paper gives none.
- ``generations`` counts all networks, generation 1 included. The student passed in becomes
  generation 1 and, like every generation but the last, is left frozen (eval mode, no gradients).

Pitfalls of public re-implementations avoided here: each generation gets a new optimizer (a new
engine stage), the teacher runs in eval mode under no_grad, nothing is selected on test data (each
generation is its final weights), the KL is batch-mean, and DKPP permutes classes within a sample,
not samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from joryu.distiller import Distiller
from joryu.losses import cwtm_loss, dkpp_loss, ensemble_logits, kd_loss
from joryu.methods.base import (
    DefaultsEvidence,
    Method,
    Params,
    Stage,
    StageContext,
    register_method,
)
from joryu.models.reinit import fresh_copy, seed_from
from joryu.outputs import forward
from joryu.teachers import FrozenTeacher, Teacher, prepare_for

VARIANTS = ("kd", "kd_labels", "cwtm", "dkpp")


def born_again_loss(variant: str, logits: torch.Tensor, teacher_logits: torch.Tensor | None,
                    target: torch.Tensor, temperature: float = 1.0, label_weight: float = 1.0) -> dict:
    """One generation's loss (see the module docstring); ``teacher_logits=None`` is generation 1 (CE)."""
    if teacher_logits is None:
        ce = F.cross_entropy(logits, target)
        return {"loss": ce, "ce": ce}
    if variant == "kd":
        kd = kd_loss(logits, teacher_logits, temperature)
        return {"loss": kd, "kd": kd}
    if variant == "kd_labels":
        kd = kd_loss(logits, teacher_logits, temperature)
        ce = F.cross_entropy(logits, target)
        return {"loss": kd + label_weight * ce, "kd": kd, "ce": ce}
    if variant == "cwtm":
        loss = cwtm_loss(logits, teacher_logits, target)
        return {"loss": loss, "cwtm": loss}
    if variant == "dkpp":
        loss = dkpp_loss(logits, teacher_logits, temperature)
        return {"loss": loss, "dkpp": loss}
    raise ValueError(f"unknown born-again variant {variant!r}; choose from {', '.join(VARIANTS)}")


class BornAgainDistiller(Distiller):
    """One generation: trains ``student`` from ``teacher`` (generation k-1), or from labels if None."""

    def __init__(self, student, teacher: Teacher | None, earlier: list[Teacher], variant: str,
                 temperature: float, label_weight: float, input_key: str = "input"):
        # every earlier generation is held as a frozen teacher (never trained, never in the optimizer)
        super().__init__(student, list(earlier), input_key)
        self.teacher = teacher
        self.earlier = list(earlier)
        self.variant = variant
        self.temperature = temperature
        self.label_weight = label_weight

    def training_step(self, batch):
        logits = forward(self.student, batch, self.input_key)
        t_logits = self.teacher(batch).logits if self.teacher is not None else None
        return born_again_loss(self.variant, logits, t_logits, batch["target"], self.temperature,
                               self.label_weight)

    @torch.no_grad()
    def eval_logits(self, batch):
        z = forward(self.student, batch, self.input_key)
        out = {"student": z}
        if self.earlier:
            gens = [t(batch).logits for t in self.earlier]
            out.update({f"gen{i + 1}": g for i, g in enumerate(gens)})
            out[f"gen{len(gens) + 1}"] = z
            out["bane"] = ensemble_logits([*gens, z])
        return out


@dataclass
class BornAgainState:
    """What a generation hands to the next: the seed later students are drawn from (read off the
    first student's weights) and the trained generations so far."""

    seed: int
    generations: list[nn.Module] = field(default_factory=list)


class BornAgainParams(Params):
    generations: int = Field(2, ge=1, description="networks trained in sequence, generation 1 included")
    variant: Literal["kd", "kd_labels", "cwtm", "dkpp"] = Field(
        "kd_labels", description="loss of generations 2..: KD only (BAN), KD + labels (BAN+L), CWTM or DKPP")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the KD/DKPP terms")
    label_weight: float = Field(1.0, ge=0, description="weight of the label CE in kd_labels")
    teacher_cache: bool = Field(True, description="reuse teacher outputs per (sample, augmentation draw)")
    fast_teacher: bool = Field(True, description="fold the teacher's BatchNorm, inference mode (re-folded on change)")


@register_method("born_again", paper="Furlanello et al. 2018, Born-Again Neural Networks (arXiv:1805.04770)")
class BornAgain(Method):
    Params = BornAgainParams
    needs_teacher = False
    defaults_evidence = DefaultsEvidence(
        hurts=True, source="results/defaults/born_again.md",
        regime="Mean gain over the student alone -0.18 points across five pairs (3 seeds, interval -1.55 .. "
               "+1.19): above it with the 2-D CNN students (mnist5k lenet5 +0.25, mnist100 convnet +0.53), "
               "below with the MLP students (digits -0.39, MNIST-1D -1.20, MNIST-5000 -0.08); every interval "
               "contains zero. Expect about the student alone, not a gain.")

    def new_state(self, ctx: StageContext) -> BornAgainState:
        return BornAgainState(seed=seed_from(ctx.student))

    def stages(self):
        p = self.params

        def first(ctx: StageContext[BornAgainState]):
            return BornAgainDistiller(ctx.student, None, (), p.variant, p.temperature, p.label_weight)

        def keep(ctx: StageContext[BornAgainState], distiller):
            ctx.state.generations.append(distiller.student)

        def later(k):
            def build(ctx: StageContext[BornAgainState]):
                # earlier generations as frozen teachers: eval mode, requires_grad off, never changed again
                gens = [FrozenTeacher(net) for net in ctx.state.generations]
                prev = gens[-1]
                student = fresh_copy(prev.model, ctx.state.seed + k)
                teacher = prepare_for(ctx, prev, fold=p.fast_teacher, cache=p.teacher_cache)
                return BornAgainDistiller(student, teacher, list(gens), p.variant, p.temperature, p.label_weight)

            return build

        stages = [Stage("gen1", first, after=keep)]
        stages += [Stage(f"gen{k}", later(k), after=keep) for k in range(2, p.generations + 1)]
        return stages
