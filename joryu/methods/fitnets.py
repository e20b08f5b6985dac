"""Romero, Ballas, Kahou, Chassang, Gatta & Bengio (2015), "FitNets: Hints for Thin Deep Nets",
arXiv:1412.6550 (ICLR 2015).

Two stages, run by the one engine:

1. **Hint training.** The student up to its *guided* layer, followed by a regressor r, learns to
   reproduce the teacher's *hint* layer (Eq. 3):

       W_Guided*, W_r* = argmin  1/2 || u_h(x; W_Hint) - r(v_g(x; W_Guided); W_r) ||^2

   Only the layers that run up to (and including) the guided layer and the regressor are trained;
   the forward pass stops after the guided layer, so later layers get no gradient and their batch
   statistics do not move. The regressor is dropped when the stage ends.
2. **Knowledge distillation** of the whole student, initialised from stage 1 (Eq. 2):

       L = H(y, P_S) + lambda * H(P_T^tau, P_S^tau),   tau = 3,
       lambda annealed linearly, as the authors' configuration (below).

Defaults follow the official code (adri-romsor/FitNets, ``cifar10_fitnet19_all.yaml``): tau = 3, a
hint cost of 0.5 * sum of squares averaged over the batch, no tau^2 factor on the soft term
(``tau_squared=False``; set True for Hinton's scaling), and the lambda schedule of
``TeacherDecayOverEpoch(start=5, saturate=400, final=1)`` with lambda_teach = 4 over 288 epochs:
lambda is held at 4 for the first epochs, then falls by 3/396 per epoch, so at the last of the 288
epochs it is about 1.85 (it would reach 1 only at epoch 400). joryu scales the two epochs with the
run: ``lambda_hold`` = 5/288 and ``lambda_saturate`` = 400/288 of the KD stage's epochs (pylearn2's
monitor runs once before the first epoch, so epoch e uses the count e + 1).
``lambda_schedule="linear"`` gives the earlier joryu schedule, lambda_start at the first epoch to
lambda_end at the last.

Regressor (``regressor``):
- ``"paper"``: a convolution with kernel N_g - N_h + 1 per spatial dimension (no padding), so a
  guided map of size N_g becomes the hint's size N_h, with the hint's O_h output channels. Needs
  N_g >= N_h.
- ``"1x1"``: a 1x1 convolution (guided and hint maps must have the same spatial size).
- ``"token"``: transformer features ``[B, L, H]``, one linear map per token; padded positions
  (the attention mask's zeros) are left out of the hint loss, as the logit losses leave them out.
- Vector features (MLPs) get a linear regressor; features of different rank are flattened and
  mapped by a linear layer.
The regressor ends with the hint layer's non-linearity (``regressor_activation``).

Deviations and best guesses:
- ``regressor_activation="auto"`` (default) reads the hint layer's non-linearity from the teacher:
  the hint module's own type when it is (or ends in) a ReLU, Tanh or Sigmoid module; otherwise
  ReLU when the teacher's hints on a sample batch are all >= 0 (e.g. a block ending in a
  functional ReLU), and none when any is negative (a pre-activation Linear/conv output, as the
  default hint layers of the zoo's MLP), so the regressor can match negative hints. The paper's
  maxout teacher had maxout regressors, which joryu does not offer.
- Default hint/guided layers: the middle entry of each model's ``feature_layers`` list (the paper
  uses the middle layers); give module paths for anything else.
- Stage-1 length and learning rate are not given in the paper for every setting; they are the
  options ``hint_epochs`` / ``hint_lr`` (default: the run's epochs and lr).
- The soft term is computed as KL(P_T^tau || P_S^tau), which differs from H(P_T^tau, P_S^tau) by
  the teacher's entropy, a constant: the gradients are identical.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from joryu.data import example_batch
from joryu.distiller import Distiller
from joryu.errors import ConfigError
from joryu.losses import hint_loss, kd_loss
from joryu.methods._features import (
    StopForward,
    default_layer,
    on_device_of,
    parameters_up_to,
    run_until,
    tapped_teacher,
)
from joryu.methods.base import DefaultsEvidence, Method, Params, Stage, register_method
from joryu.outputs import attention_mask_of, forward
from joryu.taps import Taps, resolve
from joryu.teachers import prepare_for

ACTIVATIONS = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "none": nn.Identity}
_BY_TYPE = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}


def hint_activation(module: nn.Module, hint_sample) -> str:
    """The hint layer's non-linearity (see ``regressor_activation="auto"`` in the module docstring)."""
    last = module
    while len(list(last.children())) > 0:
        last = list(last.children())[-1]
    for m in (module, last):
        if type(m) in _BY_TYPE:
            return _BY_TYPE[type(m)]
    return "relu" if bool((hint_sample >= 0).all()) else "none"


class HintRegressor(nn.Module):
    """Maps a student guided-layer output of shape ``guided`` to the hint shape ``hint``
    (shapes without the batch axis), ending with the hint layer's non-linearity."""

    def __init__(self, guided: tuple[int, ...], hint: tuple[int, ...], kind: str = "paper",
                 activation: str = "relu"):
        super().__init__()
        self.hint_shape = tuple(hint)
        self.kind = kind
        self.reshape = False
        if kind == "token":  # transformer features (L, H): one linear map per token, shared
            if len(guided) != 2 or len(hint) != 2 or guided[0] != hint[0]:
                raise ConfigError(f"regressor='token' needs (tokens, hidden) features with equal token counts: "
                                  f"guided {guided}, hint {hint}")
            self.map = nn.Linear(guided[1], hint[1])
        elif len(guided) == len(hint) and len(guided) in (2, 3, 4):  # (C, *spatial)
            conv = {2: nn.Conv1d, 3: nn.Conv2d, 4: nn.Conv3d}[len(guided)]
            g_sp, h_sp = guided[1:], hint[1:]
            if kind == "paper":
                kernel = tuple(g - h + 1 for g, h in zip(g_sp, h_sp))
                if min(kernel) < 1:
                    raise ConfigError(f"the paper's regressor needs a guided map at least as large as the hint: "
                                      f"guided {guided}, hint {hint}; pick an earlier guided layer or a later hint")
            elif kind == "1x1":
                if tuple(g_sp) != tuple(h_sp):
                    raise ConfigError(f"a 1x1 regressor needs equal spatial sizes: guided {guided}, hint {hint}; "
                                      "use regressor='paper'")
                kernel = 1
            else:
                raise ConfigError(f"regressor must be 'paper' or '1x1', got {kind!r}")
            self.map = conv(guided[0], hint[0], kernel)
        elif len(guided) == 1 and len(hint) == 1:
            self.map = nn.Linear(guided[0], hint[0])
        else:
            self.map = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(guided), math.prod(hint)))
            self.reshape = True
        self.act = ACTIVATIONS[activation]()

    def forward(self, x):
        out = self.map(x)
        if self.reshape:
            out = out.view(len(out), *self.hint_shape)
        return self.act(out)


def token_mask(model, batch, inputs, features):
    """The batch's padding mask ``[B, L]`` for token features ``[B, L, H]`` (None when the batch
    has none or it does not fit): padded positions are left out of the hint loss."""
    mask = attention_mask_of(model, batch, inputs)
    if mask is None or mask.dim() != 2 or tuple(mask.shape) != tuple(features.shape[:2]):
        return None
    return mask


class HintDistiller(Distiller):
    """Stage 1: the student up to ``guided`` plus the regressor fit the teacher's hint layer."""

    def __init__(self, student, teacher, guided: str, sample, regressor: str, activation: str,
                 input_key: str = "input"):
        super().__init__(student, [teacher], input_key)
        self.teacher = teacher
        self.guided = guided
        self.student_taps = Taps(student, {"guided": guided})
        if not isinstance(sample, Mapping):  # one tensor: the input of both networks
            sample = {"input": sample, **({self.teacher.input_key: sample}
                                          if isinstance(self.teacher.input_key, str) else {})}
        self.prefix = parameters_up_to(student, guided, on_device_of(student, sample), input_key)
        hint_sample = self.teacher(on_device_of(teacher.model, sample)).features["hint"]
        if activation == "auto":
            activation = hint_activation(resolve(teacher.model, teacher.taps.paths["hint"]), hint_sample)
        self.activation = activation
        guided_shape = self._guided(on_device_of(student, sample), keep_state=True)
        self.regressor = HintRegressor(tuple(guided_shape.shape[1:]), tuple(hint_sample.shape[1:]), regressor,
                                       activation)

    def _guided(self, batch, keep_state: bool = False):
        import torch

        if keep_state:
            was = self.student.training
            self.student.eval()
            with torch.no_grad():
                run_until(self.student, self.guided, batch, self.input_key)
            self.student.train(was)
        else:
            run_until(self.student, self.guided, batch, self.input_key)
        return self.student_taps.pop()["guided"]

    def trainable_parameters(self):
        return self.prefix + list(self.regressor.parameters())

    def training_step(self, batch):
        v = self._guided(batch)
        u = self.teacher(batch).features["hint"]
        r = self.regressor(v)
        mask = token_mask(self.student, batch, self.input_key, r) if self.regressor.kind == "token" else None
        loss = hint_loss(r, u, mask)
        return {"loss": loss, "hint": loss}

    def drop_regressor(self) -> None:
        """Called when stage 1 ends: the regressor is not part of the student."""
        self.student_taps.remove()
        if self.teacher.taps is not None:
            self.teacher.taps.remove()
        del self.regressor
        self.regressor = None


class FitNetsKDDistiller(Distiller):
    """Stage 2: L = H(y, P_S) + lambda(epoch) * H(P_T^tau, P_S^tau), lambda from the schedule."""

    def __init__(self, student, teacher, temperature: float, lambda_start: float, lambda_end: float,
                 tau_squared: bool, input_key: str = "input", *, lambda_schedule: str,
                 lambda_hold: float, lambda_saturate: float):
        super().__init__(student, [teacher], input_key)
        self.teacher = teacher
        self.temperature = temperature
        self.lambda_start, self.lambda_end = lambda_start, lambda_end
        self.lambda_schedule, self.lambda_hold, self.lambda_saturate = lambda_schedule, lambda_hold, lambda_saturate
        self.tau_squared = tau_squared
        self.lam = lambda_start

    @staticmethod
    def schedule(epoch: int, num_epochs: int, start: float, end: float) -> float:
        """Linear from ``start`` at the first epoch to ``end`` at the last."""
        if num_epochs <= 1:
            return start
        return start + (end - start) * epoch / (num_epochs - 1)

    @staticmethod
    def official_schedule(epoch: int, num_epochs: int, start: float, end: float, hold: float = 5 / 288,
                          saturate: float = 400 / 288) -> float:
        """``TeacherDecayOverEpoch``: held at ``start`` until the count reaches ``hold * num_epochs``,
        then linear towards ``end``, reached at ``saturate * num_epochs``; count = epoch + 1."""
        count = epoch + 1
        first, last = hold * num_epochs, saturate * num_epochs
        if count < first:
            return start
        if count >= last:
            return end
        return max(0.0, start - (start - end) / (last - first + 1) * (count - first + 1))

    def on_epoch_start(self, epoch, num_epochs):
        if self.lambda_schedule == "linear":
            self.lam = self.schedule(epoch, num_epochs, self.lambda_start, self.lambda_end)
        else:
            self.lam = self.official_schedule(epoch, num_epochs, self.lambda_start, self.lambda_end,
                                              self.lambda_hold, self.lambda_saturate)

    def training_step(self, batch):
        logits = forward(self.student, batch, self.input_key)
        t_logits = self.teacher(batch).logits
        t2 = self.temperature ** 2
        soft = kd_loss(logits, t_logits, self.temperature) / (1.0 if self.tau_squared else t2)
        ce = F.cross_entropy(logits, batch["target"])
        return {"loss": ce + self.lam * soft, "ce": ce, "kd": soft}

    def extra_metrics(self):
        return {**super().extra_metrics(), "lambda": self.lam}


class FitNetsParams(Params):
    hint_layer: str | None = Field(None, description="teacher module path of the hint (default: middle feature layer)")
    guided_layer: str | None = Field(None, description="student module path of the guided layer (default: middle)")
    regressor: Literal["paper", "1x1", "token"] = Field(
        "paper", description="conv kernel N_g-N_h+1 (paper), 1x1, or token (a linear map per token, transformers)")
    regressor_activation: Literal["auto", "relu", "tanh", "sigmoid", "none"] = Field(
        "auto", description="the hint layer's non-linearity after the regressor (auto: read from the teacher)")
    hint_epochs: int | None = Field(None, ge=1, description="stage-1 epochs (default: the run's epochs)")
    hint_lr: float | None = Field(None, gt=0, description="stage-1 learning rate (default: the run's lr)")
    temperature: float = Field(3.0, gt=0, description="tau of the KD stage")
    lambda_start: float = Field(4.0, ge=0, description="weight of the soft term at the first KD epoch")
    lambda_end: float = Field(1.0, ge=0, description="weight the soft term decays towards")
    lambda_schedule: Literal["official", "linear"] = Field(
        "official", description="official: TeacherDecayOverEpoch (hold, then decay; ends ~1.85); linear: start->end")
    lambda_hold: float = Field(5 / 288, ge=0, description="fraction of the KD epochs lambda is held (official 5/288)")
    lambda_saturate: float = Field(400 / 288, gt=0,
                                   description="fraction of the KD epochs at which lambda reaches lambda_end (400/288)")
    tau_squared: bool = Field(False, description="multiply the soft term by tau^2 (the official code does not)")
    teacher_cache: bool = Field(True, description="reuse teacher logits per (sample, augmentation draw) in stage 2")
    fast_teacher: bool = Field(True, description="fold the teacher's BatchNorm, inference mode (re-folded on change)")


@register_method("fitnets", paper="Romero et al. 2015, FitNets: Hints for Thin Deep Nets (arXiv:1412.6550)")
class FitNets(Method):
    Params = FitNetsParams
    defaults_evidence = DefaultsEvidence(
        hurts=False, source="results/defaults/fitnets.md",
        regime="Mean gain over the student alone +0.98 points across the four pairs it ran on (3 seeds, "
               "interval -1.02 .. +2.98): +4.11 on MNIST-1D, where the teacher is far ahead of the student "
               "alone, and level elsewhere (digits -0.39, MNIST-5000 +0.04, mnist100 +0.15). Part of any gain "
               "is budget: the hint stage trains the student's lower layers for as many epochs again. On "
               "resnet8 -> lenet5 the default hint and guided layers do not fit (the guided map is smaller "
               "than the hint): name the layers for such a pair.")

    def stages(self):
        p = self.params

        def build_hint(ctx):
            key = "input"
            hint = p.hint_layer or default_layer(ctx.teacher.model)
            guided = p.guided_layer or default_layer(ctx.student)
            resolve(ctx.student, guided)
            teacher = tapped_teacher(ctx.teacher, {"hint": hint})
            sample = example_batch(ctx.train_data, 2)
            return HintDistiller(ctx.student, teacher, guided, sample, p.regressor, p.regressor_activation, key)

        def after_hint(ctx, distiller):
            distiller.drop_regressor()

        def build_kd(ctx):
            teacher = prepare_for(ctx, fold=p.fast_teacher, cache=p.teacher_cache)
            return FitNetsKDDistiller(ctx.student, teacher, p.temperature, p.lambda_start, p.lambda_end,
                                      p.tau_squared, lambda_schedule=p.lambda_schedule, lambda_hold=p.lambda_hold,
                                      lambda_saturate=p.lambda_saturate)

        hint_train = {}
        if p.hint_epochs is not None:
            hint_train["epochs"] = p.hint_epochs
        if p.hint_lr is not None:
            hint_train["lr"] = p.hint_lr
        return [Stage("hint", build_hint, hint_train, after=after_hint), Stage("kd", build_kd)]


__all__ = ["FitNets", "FitNetsKDDistiller", "HintDistiller", "HintRegressor", "StopForward"]
