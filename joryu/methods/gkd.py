"""Agarwal et al. (2024), "On-Policy Distillation of Language Models: Learning from Self-Generated
Mistakes" (GKD), ICLR 2024, arXiv:2306.13649.

A causal LM student is distilled token by token on sequences that are, batch by batch:

- with probability ``lmbda``, the student's own continuations of the batch's prompts (sampled at
  ``generation_temperature``, at most ``max_new_tokens``): on-policy, the states the student meets
  when it generates;
- otherwise the data's continuations (off-policy, supervised KD), or, with ``seq_kd``, the
  teacher's sampled continuations (sequence-level KD, Kim & Rush 2016).

Loss (the paper's Eq. 3 / Algorithm 1 with the generalised JSD), over the continuation positions
only (prompt tokens and positions after the first end-of-sequence token are masked):

    L = T^2 * mean_{t in continuation} D_beta( softmax(v_t / T) || softmax(z_t / T) )

with D_0 = KL(p_teacher || q_student) (forward), D_1 = KL(q || p) (reverse) and, for 0 < beta < 1,
JSD(beta) with the mixture beta p + (1 - beta) q (``joryu.losses.lm``; TRL's convention).

Options keep TRL's ``GKDConfig`` names (``lmbda``, ``beta``, ``seq_kd``, ``max_new_tokens``);
TRL's ``temperature`` (sampling) is ``generation_temperature`` here, because ``temperature`` is
joryu's distillation temperature T everywhere (docs/methods/gkd.md has the full mapping).

Prompts: each batch says where its prompt ends, per row, with ``prompt_length`` (an integer
column: the first ``prompt_length`` tokens are the prompt) or ``prompt_mask`` (1 on prompt tokens,
which must come first). The tokens after the prompt are the data's continuation.

Deviations and choices:
- Sampling uses the full distribution (Hugging Face ``generate`` with ``do_sample=True, top_k=0,
  top_p=1``); a model without ``generate`` is sampled by a plain loop (one forward per new token,
  no key-value cache). Rows with different prompt lengths are generated in groups of equal length,
  so no left padding (and no position-id shift) is ever needed. The student samples in eval mode
  (no dropout) under ``no_grad``; the loss is a fresh forward in train mode.
- The coin is drawn from torch's generator (seeded by the run), one draw per batch.
- The teacher is never cached here (the sequences change every step) and never folded; it runs
  frozen, in eval mode, under ``no_grad`` (``joryu.teachers.prepare``), with the run's
  ``teacher.device`` / ``teacher.dtype`` placement.
- No label term: as in the paper and TRL, the loss is the divergence alone.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from joryu.distiller import Distiller
from joryu.errors import ConfigError
from joryu.losses.lm import token_divergence
from joryu.losses.positions import IGNORE_INDEX
from joryu.methods.base import Method, Params, Stage, register_method
from joryu.outputs import forward, input_keys, inputs_of
from joryu.teachers import prepare_for


def gkd_divergence(student_logits: Tensor, teacher_logits: Tensor, target: Tensor, beta: float,
                   temperature: float = 1.0) -> Tensor:
    """T^2 * mean over positions with target != -100 of D_beta(p_teacher || q_student):
    forward KL at beta = 0, reverse KL at beta = 1, JSD(beta) between (TRL's ends)."""
    if beta == 0:
        return token_divergence(student_logits, teacher_logits, "forward_kl", temperature, target=target)
    if beta == 1:
        return token_divergence(student_logits, teacher_logits, "reverse_kl", temperature, target=target)
    return token_divergence(student_logits, teacher_logits, "jsd", temperature, beta, target=target)


def prompt_lengths(batch) -> Tensor:
    """Per row, how many leading tokens are the prompt: ``prompt_length`` or ``prompt_mask``'s sum."""
    if "prompt_length" in batch:
        return batch["prompt_length"].reshape(-1).long()
    if "prompt_mask" in batch:
        return batch["prompt_mask"].long().sum(-1)
    raise ConfigError("gkd needs to know where each prompt ends: give the data a prompt_length column "
                      "(prompt tokens per row) or a prompt_mask (1 on the leading prompt tokens)")


def mask_prompt(target: Tensor, lengths: Tensor) -> Tensor:
    """``target`` with -100 at every position whose next token is a prompt token (t < P - 1)."""
    t = torch.arange(target.shape[1], device=target.device)
    return target.masked_fill(t[None, :] < (lengths.to(target.device)[:, None] - 1), IGNORE_INDEX)


def continuation_target(ids: Tensor, lengths: Tensor, real: Tensor, eos: int | None) -> Tensor:
    """Next-token targets of ``ids`` ``[B, L]`` that count only continuation tokens: position t
    predicts ``ids[t + 1]``, kept when ``t + 1 >= P`` (not a prompt token), ``real[t + 1]`` (not
    padding) and no end-of-sequence token ``eos`` occurs in the continuation before ``t + 1``
    (the first ``eos`` itself is a target)."""
    nxt = torch.full_like(ids, IGNORE_INDEX)
    nxt[:, :-1] = ids[:, 1:]
    pos = torch.arange(ids.shape[1], device=ids.device)[None, :]
    keep = torch.zeros_like(ids, dtype=torch.bool)
    keep[:, :-1] = real[:, 1:].bool() & (pos[:, 1:] >= lengths[:, None])
    if eos is not None:
        is_eos = (ids == eos) & (pos >= lengths[:, None])
        after = (is_eos.long().cumsum(1) - is_eos.long()) > 0  # an eos earlier in the continuation
        keep[:, :-1] &= ~after[:, 1:]
    return nxt.masked_fill(~keep, IGNORE_INDEX)


def _ids_and_mask_keys(model, input_key) -> tuple[str, str | None]:
    spec = inputs_of(model, input_key)
    if isinstance(spec, dict):
        ids = spec.get("input_ids", next(iter(spec.values())))
        return ids, spec.get("attention_mask")
    keys = input_keys(spec)
    return keys[0], ("attention_mask" if "attention_mask" in keys[1:] else None)


def _model_token(model, name: str) -> int | None:
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        value = getattr(cfg, name, None)
        if isinstance(value, (list, tuple)):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return None


@torch.no_grad()
def sample_continuations(model, prompts: Tensor, max_new_tokens: int, temperature: float, *,
                         input_key="input", pad: int = 0, eos: int | None = None) -> Tensor:
    """``[B, P + n]``: ``prompts`` ``[B, P]`` (no padding) followed by ``n <= max_new_tokens``
    sampled tokens at ``temperature`` from the full distribution (eval mode, no gradients). A
    Hugging Face model samples with ``generate``; any other causal model by a forward per token."""
    was = model.training
    model.eval()
    home = prompts.device
    mine = next(iter(model.parameters()), None)
    seq = prompts.to(mine.device) if mine is not None else prompts  # a teacher on its own device
    try:
        if hasattr(model, "generate") and hasattr(model, "generation_config"):
            return model.generate(input_ids=seq, attention_mask=torch.ones_like(seq), do_sample=True,
                                  temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=max_new_tokens,
                                  pad_token_id=pad, eos_token_id=eos).to(home)
        ids_key, mask_key = _ids_and_mask_keys(model, input_key)
        for _ in range(max_new_tokens):
            batch = {ids_key: seq, **({mask_key: torch.ones_like(seq)} if mask_key else {})}
            logits = forward(model, batch, input_key)[:, -1].float()
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1)
            seq = torch.cat([seq, nxt.to(seq.dtype)], 1)
        return seq.to(home)
    finally:
        model.train(was)


def generated_batch(model, batch: dict, max_new_tokens: int, temperature: float, *, input_key="input",
                    pad: int = 0, eos: int | None = None) -> dict:
    """``batch`` with its continuations replaced by ``model``'s samples: per row the prompt, then the
    sampled tokens, right-padded with ``pad``; ``attention_mask`` 1 on real tokens and ``target``
    (``continuation_target``) counting only the sampled tokens up to the first ``eos``."""
    ids_key, mask_key = _ids_and_mask_keys(model, input_key)
    ids, lengths = batch[ids_key], prompt_lengths(batch).to(batch[ids_key].device)
    rows: list[Tensor | None] = [None] * ids.shape[0]
    for p in sorted(set(lengths.tolist())):
        if p < 1:
            raise ConfigError("gkd needs a prompt of at least one token in every row (prompt_length >= 1)")
        which = (lengths == p).nonzero().flatten()
        out = sample_continuations(model, ids[which, :p], max_new_tokens, temperature, input_key=input_key,
                                   pad=pad, eos=eos)
        for j, r in enumerate(which.tolist()):
            rows[r] = out[j]
    width = max(len(r) for r in rows)
    new_ids = ids.new_full((len(rows), width), pad)
    real = torch.zeros_like(new_ids)
    for r, seq in enumerate(rows):
        new_ids[r, :len(seq)] = seq
        real[r, :len(seq)] = 1
    out = {k: v for k, v in batch.items() if k not in ("target", "labels", ids_key, mask_key)}
    out[ids_key] = new_ids
    out[mask_key or "attention_mask"] = real
    out["target"] = continuation_target(new_ids, lengths, real, eos)
    return out


class GKDDistiller(Distiller):
    def __init__(self, student, teacher, *, lmbda: float, beta: float, seq_kd: bool, temperature: float,
                 generation_temperature: float, max_new_tokens: int, eos_token_id: int | None,
                 pad_token_id: int | None, input_key="input"):
        super().__init__(student, [teacher], input_key)
        self.teacher = teacher
        self.lmbda, self.beta, self.seq_kd = lmbda, beta, seq_kd
        self.temperature, self.generation_temperature = temperature, generation_temperature
        self.max_new_tokens = max_new_tokens
        self.eos = eos_token_id if eos_token_id is not None else _model_token(student, "eos_token_id")
        pad = pad_token_id if pad_token_id is not None else _model_token(student, "pad_token_id")
        self.pad = 0 if pad is None else pad

    def _generate(self, model, batch) -> dict:
        return generated_batch(model, batch, self.max_new_tokens, self.generation_temperature,
                               input_key=self.input_key, pad=self.pad, eos=self.eos)

    def _teacher_model(self):
        models = self.teacher.models()
        if len(models) != 1:
            raise ConfigError(f"seq_kd samples from one teacher model, this teacher has {len(models)}")
        return models[0]

    def training_step(self, batch):
        on_policy = bool(self.lmbda > 0 and torch.rand(()) < self.lmbda)
        if on_policy:
            batch = self._generate(self.student, batch)
        elif self.seq_kd:
            batch = self._generate(self._teacher_model(), batch)
        else:
            batch = dict(batch, target=mask_prompt(batch["target"], prompt_lengths(batch)))
        t_logits = self.teacher(batch).logits
        logits = forward(self.student, batch, self.input_key)
        loss = gkd_divergence(logits, t_logits, batch["target"], self.beta, self.temperature)
        return {"loss": loss, "on_policy": torch.tensor(float(on_policy), device=loss.device)}


class GKDParams(Params):
    lmbda: float = Field(0.5, ge=0, le=1, description="probability that a batch's continuations are sampled "
                                                      "from the student (on-policy); TRL's lmbda")
    beta: float = Field(0.5, ge=0, le=1, description="divergence: 0 forward KL(p||q), 1 reverse KL(q||p), "
                                                     "between them JSD(beta) (TRL's beta)")
    seq_kd: bool = Field(False, description="off-policy batches use the teacher's sampled continuations "
                                            "(sequence-level KD) instead of the data's")
    temperature: float = Field(1.0, gt=0, description="distillation temperature T of the loss (T^2 scaling); "
                                                      "TRL's loss runs at 1")
    generation_temperature: float = Field(1.0, gt=0, description="sampling temperature of the continuations "
                                                                 "(TRL's temperature, default 0.9 there)")
    max_new_tokens: int = Field(128, ge=1, description="most tokens sampled per continuation")
    eos_token_id: int | None = Field(None, description="end-of-sequence token: positions after it are masked "
                                                       "(default: the student's config, else none)")
    pad_token_id: int | None = Field(None, description="padding token of generated batches (default: the "
                                                       "student's config, else 0)")


@register_method("gkd", paper="Agarwal et al. 2024, On-Policy Distillation of Language Models: Learning from "
                              "Self-Generated Mistakes (ICLR 2024, arXiv:2306.13649)")
class GKD(Method):
    Params = GKDParams
    per_position_ok = True

    def stages(self):
        p = self.params

        def build(ctx):
            teacher = prepare_for(ctx, fold=False, cache=False)  # sequences change every step
            return GKDDistiller(ctx.student, teacher, lmbda=p.lmbda, beta=p.beta, seq_kd=p.seq_kd,
                                temperature=p.temperature, generation_temperature=p.generation_temperature,
                                max_new_tokens=p.max_new_tokens, eos_token_id=p.eos_token_id,
                                pad_token_id=p.pad_token_id)

        return [Stage("distill", build)]
