"""Li, Yang, Song, Cao, Luo & Li (2017), "Learning from Noisy Labels with Distillation", ICCV
(arXiv:1703.02391).

Setting: a large training set D_n whose labels are noisy (often systematically: confusable
classes swapped) plus a small verified-clean set D_c. An auxiliary model f_c trained on D_c
"hedges the risk" of the noisy labels: every noisy sample is trained against the pseudo-label

    y^lambda_i = lambda * y_i + (1 - lambda) * s_i,    s_i = softmax(f_c(x_i) / T),

optionally with the auxiliary's probability spread over related classes by a label-relation
graph G built from a knowledge graph (s_i proportional to G softmax(f_c(x_i)/T)). The main
model is trained with cross-entropy against y^lambda on D_n and against the true labels on
D_c. lambda = 1 is plain training on the noisy labels, lambda = 0 is pure distillation from f_c;
the paper's bias-variance argument favours an intermediate lambda.

Stages (``joryu run`` with ``method: noisy_label_distillation``; the data must carry a boolean
``clean`` tensor, e.g. the built-in ``mnist1d_noisy`` or ``joryu.data.mark_clean(data, mask)``):

1. ``pretrain`` (only with ``pretrain_on_all``): the auxiliary network trained on all the data
   with its given (noisy) labels.
2. ``auxiliary``: the auxiliary network trained (or fine-tuned, after 1) on the clean rows only,
   for ``aux_epochs`` epochs of the clean subset.
3. ``distill``: the student trained on all rows against y^lambda (clean rows keep their labels).

The auxiliary network is a copy of the student's architecture and initialisation (in the paper
both are the same CNN). With ``use_teacher`` the experiment's teacher is used as the auxiliary
instead (e.g. a model the user already trained on clean data, given as ``teacher.checkpoint``).

Deviations and best guesses (PAPERS.md marks the equations **unverified**):

- The pseudo-label and G forms are as reported in PAPERS.md; T, the lambda of the paper's tables
  and the exact G construction were not retrieved. Defaults: ``lam = 0.5``, ``temperature = 1``.
- G: ``joryu.losses.relation_graph(C, groups, strength)`` gives I plus ``strength`` between classes
  of a group (e.g. super-classes); s = G p / |G p|_1. G = I is the plain method.
- ``pretrain_on_all`` defaults to False (the auxiliary is trained on D_c alone); PAPERS.md's
  calibration found the fine-tuned auxiliary much stronger on MNIST-1D, so it is a one-line switch.
- The clean rows are part of every epoch of the distillation stage, in the same batches as the
  noisy rows (no oversampling of D_c).
"""

from __future__ import annotations

import copy

import torch
from pydantic import Field

from joryu.distiller import Distiller
from joryu.errors import ConfigError
from joryu.losses import noisy_label_loss, relation_graph
from joryu.methods.base import Method, Params, Stage, register_method
from joryu.methods.supervised import SupervisedDistiller
from joryu.outputs import forward
from joryu.teachers import FrozenTeacher, Teacher, prepare_for


class NoisyLabelDistiller(Distiller):
    """CE against y^lambda = lambda y + (1 - lambda) G-softmax(f_aux(x)/T); clean rows keep y."""

    def __init__(self, student, auxiliary: Teacher, lam: float = 0.5, temperature: float = 1.0,
                 graph: torch.Tensor | None = None, input_key: str = "input"):
        super().__init__(student, [auxiliary], input_key)
        self.auxiliary = auxiliary
        self.lam = lam
        self.temperature = temperature
        self.graph = graph

    def training_step(self, batch):
        logits = forward(self.student, batch, self.input_key)
        aux = self.auxiliary(batch).logits
        loss = noisy_label_loss(logits, aux, batch["target"], self.lam, self.temperature,
                                batch.get("clean"), self.graph)
        agree = (aux.argmax(-1) == batch["target"]).float().mean()
        return {"loss": loss, "aux_agrees_with_label": agree.detach()}


def clean_subset(data):
    """The rows of ``data`` marked clean (a TensorData with a boolean ``clean`` tensor)."""
    tensors = getattr(data, "tensors", None)
    if tensors is None or "clean" not in tensors:
        keys = sorted(tensors) if tensors is not None else type(data).__name__
        raise ConfigError("noisy_label_distillation needs a boolean 'clean' tensor in the training data "
                          f"(it has {keys}); mark the trusted samples with joryu.data.mark_clean or use "
                          "the built-in mnist1d_noisy")
    idx = torch.nonzero(tensors["clean"].cpu().bool()).flatten()
    if len(idx) == 0:
        raise ConfigError("noisy_label_distillation: no training sample is marked clean")
    return data.subset(idx, data.name + "/clean")


class NoisyLabelParams(Params):
    lam: float = Field(0.5, ge=0, le=1, description="lambda: weight of the given (noisy) label in y^lambda")
    temperature: float = Field(1.0, gt=0, description="T in softmax(f_aux(x)/T)")
    pretrain_on_all: bool = Field(False, description="train the auxiliary on all data first, then fine-tune on the clean set")
    aux_epochs: int | None = Field(None, ge=1, description="epochs of the auxiliary on the clean subset (default: train.epochs)")
    pretrain_epochs: int | None = Field(None, ge=1, description="epochs of the pretraining on all data (default: train.epochs)")
    aux_lr: float | None = Field(None, gt=0, description="learning rate of the auxiliary on the clean subset (default: train.lr)")
    aux_batch_size: int | None = Field(None, ge=1, description="batch size on the clean subset (default: train.batch_size)")
    use_teacher: bool = Field(False, description="use the experiment's teacher as the auxiliary instead of training one")
    graph: list[list[float]] | None = Field(None, description="label-relation matrix G (C x C); None = identity")
    groups: list[list[int]] | None = Field(None, description="related classes; builds G = I + graph_strength within groups")
    graph_strength: float = Field(0.5, ge=0, description="off-diagonal weight of G between classes of a group")
    teacher_cache: bool = Field(True, description="compute the auxiliary's outputs once per sample")
    fast_teacher: bool = Field(True, description="fold the teacher's BatchNorm, inference mode (re-folded on change)")

    def relation(self, num_classes: int) -> torch.Tensor | None:
        if self.graph is not None and self.groups is not None:
            raise ConfigError("method.params: give either graph or groups, not both")
        if self.graph is not None:
            g = torch.as_tensor(self.graph, dtype=torch.float32)
            if g.shape != (num_classes, num_classes) or bool((g < 0).any()):
                raise ConfigError(f"method.params.graph must be a non-negative {num_classes} x {num_classes} matrix")
            return g
        if self.groups is not None:
            return relation_graph(num_classes, self.groups, self.graph_strength)
        return None


@register_method("noisy_label_distillation",
                 paper="Li, Yang, Song, Cao, Luo & Li 2017, Learning from Noisy Labels with Distillation, ICCV "
                       "(arXiv:1703.02391)")
class NoisyLabelDistillation(Method):
    Params = NoisyLabelParams

    @property
    def needs_teacher(self) -> bool:  # the auxiliary is trained here unless the user brings one
        return self.params.use_teacher

    def stages(self):
        p = self.params
        stages = []
        if not p.use_teacher:
            def aux_net(ctx):
                if "auxiliary" not in ctx.extras:
                    ctx.extras["auxiliary"] = copy.deepcopy(ctx.student)
                return ctx.extras["auxiliary"]

            if p.pretrain_on_all:
                stages.append(Stage("pretrain", lambda ctx: SupervisedDistiller(aux_net(ctx)),
                                    train={"epochs": p.pretrain_epochs} if p.pretrain_epochs else {}))
            aux_train = {}
            if p.aux_epochs:
                aux_train["epochs"] = p.aux_epochs
            if p.aux_lr:
                aux_train["lr"] = p.aux_lr
            if p.aux_batch_size:
                aux_train["batch_size"] = p.aux_batch_size
            stages.append(Stage("auxiliary", lambda ctx: SupervisedDistiller(aux_net(ctx)), train=aux_train,
                                data=lambda ctx: clean_subset(ctx.train_data)))

        def build(ctx):
            clean_subset(ctx.train_data)  # fail early if nothing is marked clean
            aux = ctx.teacher if p.use_teacher else FrozenTeacher(ctx.extras["auxiliary"])
            aux = prepare_for(ctx, aux, fold=p.fast_teacher, cache=p.teacher_cache)
            return NoisyLabelDistiller(ctx.student, aux, p.lam, p.temperature, p.relation(ctx.num_classes))

        stages.append(Stage("distill", build))
        return stages
