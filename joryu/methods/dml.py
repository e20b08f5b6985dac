"""Zhang, Xiang, Hospedales & Lu (2018), "Deep Mutual Learning", CVPR, arXiv:1706.00384.

No pre-trained teacher: a cohort of K networks (any architectures) learns together. Network k
minimises (Eq. 10, T = 1)

    L_k = CE(y, p_k) + 1/(K-1) * sum_{l != k} KL(p_l || p_k)

with the peers' predictions p_l treated as constants (detached; see ``joryu.losses.dml_loss``).

Update order (Algorithm 1). ``update="sequential"`` (default, the paper's): compute p_1..p_K;
update network 1; recompute the predictions on the *same* batch, so network 2's targets include
network 1's post-update output; update network 2; and so on. ``update="simultaneous"`` is a
deviation offered for speed: every network's targets are the pre-update predictions of the batch,
so all K updates use the same snapshot (what most public re-implementations do).

The Distiller owns the whole cohort (``self.cohort``; network 1 is ``self.student``, the
deployable) and uses the engine's manual-optimization path: one optimizer per network, each built
from the run's config, stepped through ``self.ctx``. ``eval_logits`` reports every member
(``net1`` ... ``netK``; ``net1`` is the headline) and the cohort ``ensemble`` (mean softmax).

Deviations and best guesses:
- Peers (``peers``): a list of model specs ``{name, kwargs}`` builds networks 2..K from the model
  zoo; without it, ``cohort_size - 1`` copies of the student are made, each with a fresh
  initialisation (``reset_parameters`` with a seed derived from the run; PyTorch's default
  initialisers, which can differ from a zoo model's own initialisation).
- Recomputing is lazy: a network's prediction is recomputed (under no_grad, in train mode) only
  after it was updated. Networks not updated yet reuse the prediction of their own forward pass on
  the batch, which is what a recompute would return (up to dropout noise). In the sequential mode
  a recomputed forward updates BatchNorm running statistics a second time for that batch.
- ``temperature`` (1 in the paper) is an option; the KL is then scaled by T^2 as in KD.
- Pitfalls of public re-implementations avoided: peers are detached (``Variable(x)`` is no detach
  in PyTorch >= 0.4), and in the sequential mode a network never learns from a peer's stale,
  pre-update prediction.
- The paper's optimiser (SGD with Nesterov momentum, lr 0.1 / 10 every 60 epochs, 200 epochs,
  batch 64; from memory of the paper, unverified) is the experiment's ``train`` section, not fixed
  here.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn

from joryu import models as zoo
from joryu.distiller import Distiller
from joryu.losses import dml_loss, ensemble_logits
from joryu.methods.base import DefaultsEvidence, Method, Params, Stage, register_method
from joryu.models.reinit import fresh_copy, seed_from
from joryu.outputs import forward


class DMLDistiller(Distiller):
    """A cohort of networks trained by mutual learning; ``cohort[0]`` is the student."""

    automatic_optimization = False

    def __init__(self, networks: list[nn.Module], update: str, temperature: float,
                 input_key: str = "input"):
        if not networks:
            raise ValueError("a DML cohort needs at least one network")
        if update not in ("sequential", "simultaneous"):
            raise ValueError(f"update must be 'sequential' or 'simultaneous', got {update!r}")
        super().__init__(networks[0], (), input_key)
        self.cohort = nn.ModuleList(networks)
        self.update = update
        self.temperature = temperature
        self.last_targets: list[list[torch.Tensor]] = []  # peers' logits each network learned from (tests)

    def configure_optimizers(self, build):
        return [build([p for p in net.parameters() if p.requires_grad]) for net in self.cohort]

    def training_step(self, batch):
        nets, opts = list(self.cohort), self.ctx.optimizers
        target = batch["target"]
        logits = [forward(net, batch, self.input_key) for net in nets]  # own graphs, one per network
        current: list[torch.Tensor | None] = [z.detach() for z in logits]
        out: dict[str, torch.Tensor] = {}
        total = 0.0
        self.last_targets = []
        for k in range(len(nets)):
            peers = []
            for j in range(len(nets)):
                if j == k:
                    continue
                if current[j] is None:  # network j was updated on this batch: recompute its prediction
                    with torch.no_grad():
                        current[j] = forward(nets[j], batch, self.input_key).detach()
                peers.append(current[j])
            loss, ce, kl = dml_loss(logits[k], peers, target, self.temperature)
            self.ctx.backward(loss)
            self.ctx.step(opts[k])
            if self.update == "sequential":
                current[k] = None
            self.last_targets.append(peers)
            out[f"ce{k + 1}"] = ce.detach()
            out[f"kl{k + 1}"] = kl.detach()
            total = total + loss.detach()
        out["loss"] = total
        return out

    @torch.no_grad()
    def eval_logits(self, batch):
        logits = [forward(net, batch, self.input_key) for net in self.cohort]
        out = {f"net{k + 1}": z for k, z in enumerate(logits)}
        if len(logits) > 1:
            out["ensemble"] = ensemble_logits(logits)
        return out

    def deployable(self):
        return self.student


class PeerSpec(Params):
    name: str = Field(description="model zoo name or 'module:factory'")
    kwargs: dict[str, Any] = Field(default_factory=dict)


class DMLParams(Params):
    cohort_size: int = Field(2, ge=1, description="K when `peers` is not given: the student and K-1 fresh copies")
    peers: list[PeerSpec] | None = Field(None, description="networks 2..K as model specs (any architectures)")
    update: Literal["sequential", "simultaneous"] = Field(
        "sequential", description="paper's Alg. 1 (update one network, recompute, next) or one snapshot for all")
    temperature: float = Field(1.0, gt=0, description="softmax temperature of the mutual KL (1 in the paper)")


def _input_shape(data) -> tuple:
    shape = getattr(data, "input_shape", None)
    if shape is None:
        shape = tuple(data[0]["input"].shape)
    return tuple(shape)


def build_cohort(student: nn.Module, params: DMLParams, num_classes: int, input_shape) -> list[nn.Module]:
    """The cohort: the student first, then the peers (zoo specs, or fresh copies of the student)."""
    if params.peers is not None:
        peers = []
        for spec in params.peers:
            kw = dict(spec.kwargs)
            if ":" not in spec.name:
                kw.setdefault("num_classes", num_classes)
                kw.setdefault("input_shape", tuple(input_shape))
            peers.append(zoo.create(spec.name, **kw))
    else:
        base = seed_from(student)
        peers = [fresh_copy(student, base + k) for k in range(1, params.cohort_size)]
    return [student, *peers]


@register_method("dml", paper="Zhang, Xiang, Hospedales & Lu 2018, Deep Mutual Learning (arXiv:1706.00384)")
class DML(Method):
    Params = DMLParams
    needs_teacher = False
    defaults_evidence = DefaultsEvidence(
        hurts=False, source="results/defaults/dml.md",
        regime="Mean gain over the student alone +0.03 points across five pairs (3 seeds, interval -0.39 .. "
               "+0.45): slightly above it with the MLP students (digits +0.26, MNIST-1D +0.16, MNIST-5000 "
               "+0.29), slightly below with the 2-D CNN students (mnist5k lenet5 -0.25, mnist100 convnet "
               "-0.32); every interval contains zero, and T = 3 was no better (-0.31). Expect about the "
               "student alone; on mnist100 the paper's cohort claim did not reproduce (results/dml_mnist100.md).")

    def stages(self):
        p = self.params

        def build(ctx):
            nets = build_cohort(ctx.student, p, ctx.num_classes, _input_shape(ctx.train_data))
            return DMLDistiller(nets, p.update, p.temperature)

        return [Stage("mutual", build)]
