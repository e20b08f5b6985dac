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
- The teacher is prepared by the one policy every method uses (``joryu.teachers.prepare``):
  ``teacher_cache`` stores its outputs per sample (per fixed augmentation draw, with
  ``Augment(draws=K)``) and reuses them; batches under fresh random augmentation bypass the cache.
  ``fast_teacher`` runs it with BatchNorm folded into its convolutions, under
  ``torch.inference_mode``; outputs match to ~1e-6, and both follow in-place changes of the
  teacher's weights.
- Token and pixel logits (``[B, L, C]``, ``[B, C, H, W]``) are distilled position by position,
  skipping targets of -100 (padding, prompt tokens); for language models ``divergence`` selects
  forward KL (the paper's loss per token), reverse KL or the generalised JSD(beta) of GKD
  (``joryu.losses.lm``). These go beyond the paper, which distils one prediction per sample.
- ``teacher_store: PATH`` reads the teacher's top-k log-probabilities per position from an offline
  store (``joryu.teachers.store.build_store``) by sample index instead of calling the teacher;
  ``topk`` uses the top K of them and ``truncation`` says how the rest of the vocabulary counts
  (``joryu.losses.topk``: ``bucket``, the remaining mass as one extra class, or ``renormalize``).
  The store is refused if it was built from other teacher weights or data, or (bucket) at another
  temperature. With K = V and float32 values the loss is the dense one.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field, model_validator

from joryu.distiller import Distiller
from joryu.errors import ConfigError
from joryu.losses import kd_loss, masked_cross_entropy
from joryu.losses.lm import token_divergence
from joryu.losses.topk import retemper, topk_divergence, topk_divergence_and_ce
from joryu.methods.base import DefaultsEvidence, Method, Params, Stage, register_method
from joryu.outputs import forward
from joryu.teachers import Teacher, prepare_for
from joryu.teachers.store import TopKStore


def kd_objective(logits, teacher_logits, target, temperature: float, alpha: float,
                 divergence: str = "forward_kl", beta: float = 0.5) -> dict:
    """The paper's mix: alpha * T^2 KL(p^T || q^T) + (1 - alpha) * CE(y, q), as named terms.

    Per-position logits (tokens, pixels) are distilled and scored only where the target is not
    -100 (padding, prompt tokens); ``divergence`` swaps the KL for reverse KL or JSD(beta)
    (``joryu.losses.lm``)."""
    if logits.dim() > 2 or divergence != "forward_kl":
        mask_by = target if logits.dim() > 2 else None
        soft = token_divergence(logits, teacher_logits, divergence, temperature, beta, target=mask_by)
    else:
        soft = kd_loss(logits, teacher_logits, temperature)
    return mix_hard_term(soft, logits, target, alpha)


def mix_hard_term(soft, logits, target, alpha: float, per_position: bool = False, hard=None) -> dict:
    """``{"kd": soft, "ce": hard, "loss": alpha * soft + (1 - alpha) * hard}`` (no ce at alpha = 1).
    ``per_position``: ``logits`` are rows of positions (``[N, C]``), the target -100 where one
    does not count. ``hard``: the label cross-entropy when the caller has it already."""
    out = {"kd": soft}
    loss = alpha * soft
    if alpha < 1:
        if hard is None:
            hard = (masked_cross_entropy(logits, target) if per_position or logits.dim() > 2
                    else F.cross_entropy(logits, target))
        loss = loss + (1 - alpha) * hard
        out["ce"] = hard
    out["loss"] = loss
    return out


class KDDistiller(Distiller):
    def __init__(self, student, teacher: Teacher, temperature: float, alpha: float,
                 input_key: str = "input", *, divergence: str, beta: float):
        super().__init__(student, [teacher], input_key)
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha
        self.divergence = divergence
        self.beta = beta

    def training_step(self, batch):
        # Teacher first: the student's activations, saved for backward, then stay warm in cache
        # (measured ~10% faster on CPU ResNets, benchmarks/RESULTS.md).
        t_logits = self.teacher(batch).logits
        logits = forward(self.student, batch, self.input_key)
        return kd_objective(logits, t_logits, batch["target"], self.temperature, self.alpha,
                            self.divergence, self.beta)


class StoreKDDistiller(Distiller):
    """KD from an offline top-k teacher store, read by the batch's ``index`` (no teacher call)."""

    def __init__(self, student, store: TopKStore, temperature: float, alpha: float, input_key: str = "input",
                 *, divergence: str, beta: float, topk: int | None, truncation: str):
        super().__init__(student, [], input_key)
        self.store = store
        self.temperature = temperature
        self.alpha = alpha
        self.divergence = divergence
        self.beta = beta
        self.topk = topk
        self.truncation = truncation

    def training_step(self, batch):
        logits = forward(self.student, batch, self.input_key)
        t = self.store.get(batch["index"], logits.device, self.topk)
        indices, logprobs, rest, target = t.indices, t.logprobs, t.rest, batch["target"]
        if self.temperature != self.store.temperature:  # renormalize only (checked when built)
            logprobs = retemper(logprobs, self.store.temperature, self.temperature)
        tokens = logits.dim() == 3
        if tokens:  # one [N, V] view for both terms: their gradients add into one buffer, in place,
            # instead of a third vocabulary-sized tensor summing two [B, L, V] views
            k = indices.shape[-1]
            logits, target = logits.reshape(-1, logits.shape[-1]), target.reshape(-1)
            indices, logprobs, rest = indices.reshape(-1, k), logprobs.reshape(-1, k), rest.reshape(-1)
        per_position = tokens or logits.dim() > 2
        if self.truncation == "bucket" and self.temperature == 1 and self.alpha < 1:
            # both terms from one pass over the classes (the label CE is at T = 1 too)
            soft, hard = topk_divergence_and_ce(logits, indices, logprobs, rest, target, self.divergence,
                                                self.beta, soft_positions=per_position)
            return mix_hard_term(soft, logits, target, self.alpha, hard=hard)
        soft = topk_divergence(logits, indices, logprobs, rest, self.divergence, self.truncation,
                               self.temperature, self.beta, target=target if per_position else None)
        return mix_hard_term(soft, logits, target, self.alpha, per_position=tokens)


def open_store_for(ctx, p) -> TopKStore:
    """The run's teacher store, refused (one ConfigError line) if it cannot serve this run."""
    store = TopKStore(p.teacher_store)
    store.check(ctx.teacher, ctx.train_data)
    if p.topk is not None and p.topk > store.k:
        raise ConfigError(f"method.params.topk = {p.topk} but teacher store {store.path} holds k = {store.k}: "
                          f"set topk <= {store.k} or rebuild the store with a larger k")
    if p.truncation == "bucket" and p.temperature != store.temperature:
        raise ConfigError(f"teacher store {store.path} holds masses at T = {store.temperature:g}, the run "
                          f"distils at temperature {p.temperature:g}: the bucket truncation needs the "
                          "same T (rebuild the store at this temperature) or use truncation: renormalize")
    if ctx.augment is not None and getattr(ctx.augment, "active", False):
        raise ConfigError("a teacher store holds the teacher's outputs on un-augmented inputs: turn the "
                          "run's augmentation off, or distil from the teacher online (no teacher_store)")
    return store


class KDParams(Params):
    temperature: float = Field(4.0, gt=0, description="softmax temperature T")
    alpha: float = Field(0.9, ge=0, le=1, description="weight of the soft term; 1 - alpha on the labels")
    teacher_cache: bool = Field(True, description="reuse teacher outputs (per sample, per fixed augmentation draw)")
    fast_teacher: bool = Field(True, description="fold the teacher's BatchNorm into its convolutions, run it in inference mode")
    divergence: Literal["forward_kl", "reverse_kl", "jsd"] = Field(
        "forward_kl", description="soft term: KL(p||q) (the paper), reverse KL(q||p), or JSD(beta) (joryu.losses.lm)")
    beta: float = Field(0.5, gt=0, lt=1, description="JSD(beta) mixture weight of the teacher (divergence: jsd)")
    teacher_store: str | None = Field(
        None, description="read the teacher's top-k outputs from this store (joryu.teachers.store.build_store) "
                          "instead of calling the teacher")
    topk: int | None = Field(None, ge=1, description="with teacher_store: use its top K classes (default: all it holds)")
    truncation: Literal["bucket", "renormalize"] = Field(
        "bucket", description="with teacher_store: the rest of the vocabulary as one extra class (bucket) or "
                              "both distributions renormalised over the top k (joryu.losses.topk)")

    @model_validator(mode="after")
    def _store_options_need_a_store(self):
        if self.teacher_store is None and self.topk is not None:
            raise ValueError("topk applies to a teacher store: set teacher_store too, or drop topk")
        return self


@register_method("kd", paper="Hinton, Vinyals & Dean 2015, Distilling the Knowledge in a Neural Network (arXiv:1503.02531)")
class KD(Method):
    Params = KDParams
    defaults_evidence = DefaultsEvidence(
        hurts=False, source="results/defaults/kd.md",
        regime="Mean gain over the student alone +0.33 points across five pairs (3 seeds, interval -0.98 .. "
               "+1.63), all of it from the one pair where the teacher is far ahead of the student alone "
               "(MNIST-1D: teacher 95.5, student alone 55.5, KD +4.26); where the student alone is within 1.5 "
               "to 5 points of its teacher KD is level or slightly below it (digits -1.42, MNIST-5000 -0.25, "
               "lenet5 -0.17, mnist100 convnet -0.80; every interval contains zero). Expect a gain when the "
               "teacher is much better than the student trained alone, not otherwise.")
    per_position_ok = True

    def stages(self):
        p = self.params

        def build(ctx):
            if p.teacher_store is not None:
                return StoreKDDistiller(ctx.student, open_store_for(ctx, p), p.temperature, p.alpha,
                                        divergence=p.divergence, beta=p.beta, topk=p.topk,
                                        truncation=p.truncation)
            teacher = prepare_for(ctx, fold=p.fast_teacher, cache=p.teacher_cache)
            return KDDistiller(ctx.student, teacher, p.temperature, p.alpha, divergence=p.divergence,
                               beta=p.beta)

        return [Stage("distill", build)]
