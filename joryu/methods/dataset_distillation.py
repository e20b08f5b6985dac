"""Wang, Zhu, Torralba & Efros (2018), "Dataset Distillation", arXiv:1811.10959.

Distils a training set into S synthetic batches x̃_s (``images_per_class`` images per class per
step, fixed labels ỹ_s) and T = S·E learned learning rates η̃_t = softplus(ρ_t) such that E epochs
of plain SGD over the synthetic batches, from θ_0, give a network that does well on real data:

    θ_{t+1} = θ_t − η̃_t ∇_θ CE(f(x̃_{t mod S}; θ_t), ỹ_{t mod S}),   t = 0..T−1
    min_{x̃, ρ}  E_{θ_0} CE(f(x_real; θ_T), y_real)                   (a real batch per outer step)

The engine's batches are the real batches of the outer loss; each ``training_step`` unrolls the T
inner steps functionally (``torch.func.functional_call`` + autograd with ``create_graph=True``)
and takes one outer optimizer step on (x̃, ρ). Two regimes:

- fixed init (``random_init=False``, the paper's ``known_init``): θ_0 is the student's initial
  weights, the same in every outer step and at evaluation;
- random init (``random_init=True``, the paper's default): θ_0 is re-drawn every outer step, and
  the distilled data is evaluated on fresh initialisations.

Defaults follow the reference code (``base_options.py``): x̃ ~ N(0, 1), ρ_0 = softplus⁻¹(0.02),
``distill_steps`` S = 10, ``distill_epochs`` E = 3, one image per class per step, Adam with
β = (0.5, 0.999) (the optimizer's lr comes from the run's ``train.lr``; the paper uses 0.01 with
StepLR ×0.5 every 40 of 400 epochs, and a real batch of 1024).

Deviations and best guesses:
- The reference code back-propagates with hand-written reverse-order Hessian-vector products;
  here autograd differentiates the unrolled loop (tested against finite differences). Memory
  grows as O(T·activations); ``checkpoint=True`` recomputes each inner step in the backward pass.
- ``init="xavier"`` (xavier-normal weights, zero biases, as the reference code's default
  ``init``) re-initialises the student before θ_0 is read; ``"default"`` keeps PyTorch's init.
- BatchNorm networks: running statistics updated by each inner step are carried to the next one
  and used by the final loss, which runs in eval mode (``final_eval``), as the reference code
  does; evaluation and ``train_on_distilled`` use them too. They start from θ_0's buffers at every
  outer step.
- Evaluation (``eval_logits`` / ``deployable``) trains the student from its stored θ_0 with
  exactly the learned steps and rates; with ``random_init`` that θ_0 is one fresh draw. The
  reproduction evaluates over many fresh initialisations.
- ``save_path``: the distilled set is written there (safetensors, see ``joryu.data.distilled``)
  with a PNG grid next to it, after training. ``joryu run`` with ``data: {name: distilled, path: ...}``
  trains any method on those images with the run's own optimizer; ``train_on_distilled`` replays
  the exact learned step sequence and rates (what the paper evaluates).
- ``checkpoint=True`` uses non-reentrant ``torch.utils.checkpoint`` per inner step; it gives the
  same gradients (tested) and stores only each step's inputs, at about twice the compute.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from joryu.data.distilled import DistilledSet, save_distilled, save_image_grid
from joryu.distiller import Distiller
from joryu.losses.dataset_distillation import (
    dataset_distillation_loss,
    functional_logits,
    model_state,
    softplus_inverse,
    unrolled_sgd_state,
)
from joryu.methods.base import (
    Baseline,
    DefaultsEvidence,
    Method,
    Params,
    Stage,
    StageContext,
    register_method,
)


def reinit(model: nn.Module, scheme: str = "xavier", generator: torch.Generator | None = None) -> nn.Module:
    """Fresh weights: ``"xavier"`` (xavier-normal weights of dim >= 2, zero biases and 1-d weights
    of norm layers reset) or ``"default"`` (each module's ``reset_parameters``)."""
    with torch.no_grad():
        for m in model.modules():
            if hasattr(m, "reset_parameters") and m is not model:
                m.reset_parameters()
        if scheme == "xavier":
            for name, p in model.named_parameters():
                if p.dim() >= 2:
                    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(p)
                    std = (2.0 / (fan_in + fan_out)) ** 0.5
                    p.copy_(torch.randn(p.shape, generator=generator, device=p.device) * std)
                elif name.endswith("bias"):
                    p.zero_()
        elif scheme != "default":
            raise ValueError(f"init must be 'xavier' or 'default', got {scheme!r}")
    return model


def train_on_distilled(model: nn.Module, d: DistilledSet, inplace: bool = True) -> nn.Module:
    """Train ``model`` from its current weights with exactly the distilled step sequence and rates
    (E epochs of SGD over the S synthetic batches, step t with lr ``d.lrs[t]``)."""
    model = model if inplace else copy.deepcopy(model)
    device = next(model.parameters()).device
    params, buffers = model_state(model)
    was = model.training
    model.train()
    final, final_buffers = unrolled_sgd_state(model, params, d.images.to(device), d.labels.to(device),
                                              d.lrs.to(device), d.epochs, buffers, create_graph=False)
    model.train(was)
    with torch.no_grad():
        for k, p in model.named_parameters():
            p.copy_(final[k])
        for k, b in model.named_buffers():
            b.copy_(final_buffers[k])
    return model


class DatasetDistiller(Distiller):
    """Owns the synthetic images and the raw learning rates; the student holds θ_0 (never trained)."""

    automatic_optimization = False

    def __init__(self, student: nn.Module, num_classes: int, input_shape, images_per_class: int,
                 steps: int, epochs: int, init_lr: float, random_init: bool, init: str,
                 checkpoint: bool, final_eval: bool, beta1: float, input_key: str = "input"):
        super().__init__(student, (), input_key)
        reinit(student, init)
        for p in student.parameters():
            p.requires_grad_(False)
        n = images_per_class * num_classes
        self.images = nn.Parameter(torch.randn(steps, n, *input_shape))
        labels = torch.arange(num_classes).repeat_interleave(images_per_class)
        self.register_buffer("labels", labels.repeat(steps, 1))
        self.raw_lrs = nn.Parameter(torch.full((steps * epochs,), softplus_inverse(init_lr)))
        self.epochs, self.random_init, self.init = epochs, random_init, init
        self.checkpoint, self.final_eval, self.beta1 = checkpoint, final_eval, beta1
        self.num_classes = num_classes
        self._cache = None

    def lrs(self) -> torch.Tensor:
        return F.softplus(self.raw_lrs)

    def configure_optimizers(self, build):
        opt = build([self.images, self.raw_lrs])
        for g in opt.param_groups:
            if "betas" in g:
                g["betas"] = (self.beta1, g["betas"][1])
        return [opt]

    def training_step(self, batch):
        if self.random_init:
            reinit(self.student, self.init)
        params, buffers = model_state(self.student)
        lrs = self.lrs()
        loss = dataset_distillation_loss(self.student, params, self.images, self.labels, lrs,
                                         batch[self.input_key], batch["target"], self.epochs, buffers,
                                         self.checkpoint, self.final_eval)
        opt = self.ctx.optimizers[0]
        self.ctx.backward(loss)
        self.ctx.step(opt)
        return {"loss": loss.detach(), "mean_lr": lrs.detach().mean()}

    def distilled(self) -> DistilledSet:
        return DistilledSet(self.images.detach().clone(), self.labels.clone(), self.lrs().detach().clone(),
                            self.epochs, self.num_classes)

    def trained_state(self):
        key = (self.images._version, self.raw_lrs._version,
               tuple(p._version for p in self.student.parameters()))
        if self._cache is None or self._cache[0] != key:
            params, buffers = model_state(self.student)
            was = self.student.training
            self.student.train()
            final, buffers = unrolled_sgd_state(self.student, params, self.images, self.labels, self.lrs(),
                                                self.epochs, buffers, create_graph=False)
            self.student.train(was)
            self._cache = (key, final, buffers)
        return self._cache[1], self._cache[2]

    @torch.no_grad()
    def eval_logits(self, batch):
        final, buffers = self.trained_state()
        was = self.student.training
        self.student.eval()
        out = functional_logits(self.student, final, buffers, batch[self.input_key])
        self.student.train(was)
        return {"student": out}

    def deployable(self) -> nn.Module:
        net = copy.deepcopy(self.student)
        final, _ = self.trained_state()
        with torch.no_grad():
            for k, p in net.named_parameters():
                p.copy_(final[k])
                p.requires_grad_(True)
        return net


@dataclass
class DatasetDistillationState:
    """What the run leaves for its baseline: the distilled set (images, labels, learned rates)."""

    distilled: DistilledSet | None = None


class DatasetDistillationParams(Params):
    images_per_class: int = Field(1, ge=1, description="synthetic images per class in each step")
    steps: int = Field(10, ge=1, description="S: synthetic batches (distill_steps)")
    epochs: int = Field(3, ge=1, description="E: passes over the S batches (distill_epochs); T = S*E lrs")
    init_lr: float = Field(0.02, gt=0, description="initial inner lr, softplus(rho_0)")
    random_init: bool = Field(False, description="re-draw theta_0 every outer step (the paper's default regime)")
    init: Literal["xavier", "default"] = Field("xavier", description="how theta_0 is drawn")
    checkpoint: bool = Field(False, description="gradient checkpointing of the inner steps")
    final_eval: bool = Field(True, description="the outer loss in eval mode (reference code)")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam beta1 for the outer optimizer (reference: 0.5)")
    save_path: str | None = Field(None, description="write the distilled set (safetensors) and a PNG grid here")


@register_method("dataset_distillation", paper="Wang, Zhu, Torralba & Efros 2018, Dataset Distillation (arXiv:1811.10959)")
class DatasetDistillation(Method):
    Params = DatasetDistillationParams
    defaults_evidence = DefaultsEvidence(
        hurts=True, source="results/defaults/dataset_distillation.md",
        regime="A student trained on the distilled images (100 at the defaults: 10 steps of one image per "
               "class) is 46.84 points below the student trained on the whole training set, across the four "
               "pairs it was run on (3 seeds, interval -50.14 .. -43.53). The method compresses a dataset into "
               "a few images, it does not make a better student: compare it with as many real images (its "
               "reproduction, where 100 distilled images beat 100 random real ones).")
    needs_teacher = False

    def new_state(self, ctx: StageContext) -> DatasetDistillationState:
        return DatasetDistillationState()

    def stages(self):
        p = self.params

        def build(ctx):
            data = ctx.train_data
            shape = tuple(data.input_shape) if hasattr(data, "input_shape") else tuple(data[0]["input"].shape)
            return DatasetDistiller(ctx.student, ctx.num_classes, shape, p.images_per_class, p.steps, p.epochs,
                                    p.init_lr, p.random_init, p.init, p.checkpoint, p.final_eval, p.beta1)

        def after(ctx: StageContext[DatasetDistillationState], distiller):
            d = distiller.distilled()
            ctx.state.distilled = d
            if p.save_path:
                d.source = getattr(ctx.train_data, "name", "").split("/")[0] or None
                path = save_distilled(p.save_path, d)
                save_image_grid(d, Path(path).with_suffix(".png"))

        return [Stage("distill", build, after=after)]

    def baselines(self):
        """Random real images instead of the distilled ones: as many per class and step as the
        synthetic set, drawn from the training data with the run's seed, trained from the same
        theta_0 with the same steps and the learned learning rates."""

        def random_real(b):
            d = b.ctx.state.distilled
            theta0 = b.ctx.results["distill"].distiller.student
            data = b.train_data
            per_class = d.images.shape[1] // d.num_classes
            gen = torch.Generator().manual_seed(b.seed)
            y = data.targets.cpu()
            steps = []
            for _ in range(d.steps):
                idx = [torch.nonzero(y == c).flatten() for c in range(d.num_classes)]
                pick = torch.cat([i[torch.randperm(len(i), generator=gen)[:per_class]] for i in idx])
                steps.append(data.prepare_input(data.tensors["input"][pick.to(data.tensors["input"].device)]).cpu())
            real = DistilledSet(torch.stack(steps), d.labels.clone(), d.lrs.clone(), d.epochs, d.num_classes)
            return train_on_distilled(copy.deepcopy(theta0), real)

        return [Baseline("random real images (same count and steps)", random_real)]
