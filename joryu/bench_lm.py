"""The language-model workload of ``joryu bench`` (``--workload lm``): a GPT-2 teacher and student
built from transformers configs with random weights (nothing is downloaded), trained through
joryu's engine on random token sequences, the contenders alternating round by round
(``joryu.bench.measure``):

- **student alone**: the ``supervised`` method, next-token cross-entropy;
- **online KD**: the ``kd`` method with the teacher called on every batch (``teacher_cache`` off);
- **offline top-k KD**: the ``kd`` method reading a top-k teacher store (``teacher_store``,
  k = 32, bucket truncation) built once beforehand by ``joryu.teachers.store.build_store``;
- **on-policy GKD** (optional, ``gkd=True``; the GPU check runs it): the ``gkd`` method with its
  default ``lmbda`` > 0 (half the batches are the student's own continuations of 64-token prompts).

Besides tokens per second it reports what a store keeps per position (dense float32 logits against
top-k at k = 8, 32, 128) and how far the truncated divergences are from the dense KL
(``truncation_errors``, which ``benchmarks/topk_store.py`` prints for its tiny pair too).
"""

from __future__ import annotations

import copy
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from joryu.config import TrainConfig
from joryu.data import TensorData, TensorLoader
from joryu.engine import Engine
from joryu.losses.lm import token_divergence
from joryu.losses.positions import next_token_targets
from joryu.losses.topk import topk_divergence
from joryu.methods.gkd import GKDDistiller, GKDParams
from joryu.methods.kd import KDDistiller, KDParams, StoreKDDistiller
from joryu.methods.supervised import SupervisedDistiller
from joryu.models.hf import gpt2_lm
from joryu.outputs import declare_inputs, forward
from joryu.teachers import prepare
from joryu.teachers.store import TopKStore, build_store, bytes_per_position

INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
STORE_K = 32
STORAGE_KS = (8, 32, 128)
LM_TEMPERATURE = 1.0  # language models are distilled at T = 1 (GKD, MiniLLM); the store is built at it


@dataclass
class LMWorkload:
    """The GPT-2 pair and its data: ``vocab`` tokens, sequences of ``seq_len``, ``batch_size``
    sequences per step, ``steps`` steps per round."""

    vocab: int = 8192
    seq_len: int = 128
    batch_size: int = 8
    steps: int = 6
    teacher: dict = field(default_factory=lambda: {"hidden_size": 256, "layers": 4, "heads": 4})
    student: dict = field(default_factory=lambda: {"hidden_size": 128, "layers": 2, "heads": 2})

    @property
    def name(self) -> str:
        t, s = self.teacher, self.student
        return (f"GPT-2 {t['layers']}x{t['hidden_size']} -> {s['layers']}x{s['hidden_size']} (vocabulary "
                f"{self.vocab}, {self.seq_len} tokens, batch {self.batch_size})")


def lm_data(w: LMWorkload, num: int, seed: int = 0) -> TensorData:
    """``num`` random sequences (ids 3..V-1: 0, 1, 2 are the pad, bos and eos of ``gpt2_lm``) with
    next-token targets, and the first half of each marked as its prompt (``prompt_length``, for GKD)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, w.vocab, (num, w.seq_len), generator=g)
    mask = torch.ones_like(ids)
    prompt = torch.full((num,), w.seq_len // 2, dtype=torch.long)
    return TensorData({"input_ids": ids, "attention_mask": mask, "target": next_token_targets(ids, mask),
                       "prompt_length": prompt}, w.vocab, f"lm-bench/{num}x{w.seq_len}")


def lm_model(w: LMWorkload, which: str, seed: int):
    torch.manual_seed(seed)
    kw = w.teacher if which == "teacher" else w.student
    return declare_inputs(gpt2_lm(vocab_size=w.vocab, max_len=w.seq_len, **kw), INPUTS)


def _engine_run(distiller, data, w: LMWorkload, cfg: dict) -> Callable[[], float]:
    """One epoch of ``data`` through ``Engine.fit`` per call; returns tokens per second."""
    train = TrainConfig(epochs=1, batch_size=w.batch_size, optimizer="adamw", lr=1e-4, scheduler="constant",
                        log_every=10_000, **cfg)

    def run() -> float:
        return Engine(train, progress=False).fit(distiller, data).history[-1]["samples_per_s"] * w.seq_len

    return run


def lm_contenders(w: LMWorkload, data: TensorData, store_dir: str | Path, *, device: str = "cpu",
                  mixed_precision: str = "no", threads: int | None = None,
                  gkd: bool = False) -> dict[str, Callable[[], float]]:
    """The contenders of the LM workload (each returns tokens/s for one epoch of ``data``). The
    offline top-k store is built here, once, in ``store_dir``, and the build is not timed."""
    cfg = {"device": device, "mixed_precision": mixed_precision, "threads": threads}
    kd = KDParams(temperature=LM_TEMPERATURE)
    teacher = lm_model(w, "teacher", 1).to(device)
    # as the methods prepare it: kd's fast_teacher (inference mode), teacher_cache off so the
    # teacher runs on every batch; gkd never folds nor caches
    online = prepare(teacher, fold=kd.fast_teacher, cache=False)
    store = build_store(teacher, data, Path(store_dir) / f"k{STORE_K}", STORE_K, temperature=kd.temperature,
                        inputs=INPUTS, batch_size=w.batch_size, device=device, progress=False)
    out = {
        "student alone": _engine_run(SupervisedDistiller(lm_model(w, "student", 0)), data, w, cfg),
        "online KD": _engine_run(KDDistiller(lm_model(w, "student", 0), online, kd.temperature, kd.alpha,
                                             divergence=kd.divergence, beta=kd.beta), data, w, cfg),
        f"offline top-k KD (k={STORE_K})": _engine_run(
            StoreKDDistiller(lm_model(w, "student", 0), TopKStore(store.path), kd.temperature, kd.alpha,
                             divergence=kd.divergence, beta=kd.beta, topk=None, truncation=kd.truncation),
            data, w, cfg),
    }
    if gkd:
        g = GKDParams(max_new_tokens=w.seq_len // 2)
        out[f"on-policy GKD (lmbda={g.lmbda:g})"] = _engine_run(GKDDistiller(
            lm_model(w, "student", 0), prepare(teacher, fold=False, cache=False), lmbda=g.lmbda, beta=g.beta, seq_kd=g.seq_kd,
            temperature=g.temperature, generation_temperature=g.generation_temperature,
            max_new_tokens=g.max_new_tokens, eos_token_id=g.eos_token_id, pad_token_id=g.pad_token_id),
            data, w, cfg)
    return out


def storage_rows(vocab: int, ks=STORAGE_KS, value_dtype: str = "float16") -> list[tuple[str, int, float]]:
    """``(what, bytes per position, dense float32 / it)``: dense float32 logits against a store's
    top k (k int32 indices, k 16-bit log-probabilities, one float32 remaining mass)."""
    dense = 4 * vocab
    rows = [("dense float32 logits", dense, 1.0)]
    rows += [(f"top-k store, k={k}", bytes_per_position(k, value_dtype), dense / bytes_per_position(k, value_dtype))
             for k in ks]
    return rows


def truncation_errors(teacher, student, data: TensorData, ks=STORAGE_KS, sharpen=(1.0, 20.0),
                      inputs=INPUTS, batch_size: int = 32) -> list[dict]:
    """How far the top-k truncations are from the dense forward KL(teacher || student) at T = 1, on
    ``data``, for each k and each teacher sharpness: a random GPT-2 is near uniform over its
    vocabulary, so ``sharpen`` multiplies a copy of the teacher's final LayerNorm weight (its logits)
    to make it peaked, as a trained LM is. One dict per (sharpen, k): ``dense`` KL, the store's
    bytes per position on disk, the mean remaining mass and the bucket / renormalize KLs."""
    n, seq = len(data), data.tensors["input_ids"].shape[1]
    batch = TensorLoader(data, n, shuffle=False).batch(torch.arange(n))
    with torch.no_grad():
        z = forward(student, batch, inputs)
    out = []
    for s in sharpen:
        t = copy.deepcopy(teacher)
        with torch.no_grad():
            t.transformer.ln_f.weight.mul_(s)
            v = forward(t, batch, inputs)
        dense = float(token_divergence(z, v, target=batch["target"]))
        for k in ks:
            with tempfile.TemporaryDirectory(prefix="joryu-bench-store-") as d:
                store = build_store(t, data, f"{d}/s", k=k, inputs=inputs, batch_size=batch_size, progress=False)
                on_disk = store.nbytes() / (n * seq)
                e = store.get(torch.arange(n))
            row = {"sharpen": s, "k": k, "dense": dense, "bytes_on_disk": on_disk,
                   "rest": float(e.rest[:, :-1].mean())}
            for trunc in ("bucket", "renormalize"):
                row[trunc] = float(topk_divergence(z, e.indices, e.logprobs, e.rest, "forward_kl", trunc,
                                                   target=batch["target"]))
            out.append(row)
    return out


def format_errors(rows: list[dict], vocab: int) -> list[str]:
    """The lines ``benchmarks/topk_store.py`` and the LM workload print for ``truncation_errors``."""
    lines = []
    for r in rows:
        if r["k"] == rows[0]["k"]:
            lines.append(f"teacher logits x{r['sharpen']:g}: dense forward KL(teacher || student) = "
                         f"{r['dense']:.4f} nats/token")
        row = [f"k={r['k']:4d}: {r['bytes_on_disk']:6.1f} B/position on disk "
               f"({4 * vocab / r['bytes_on_disk']:5.0f}x less than float32)", f"mean rest mass {r['rest']:.3f}"]
        for trunc in ("bucket", "renormalize"):
            err = r[trunc] - r["dense"]
            row.append(f"{trunc} {r[trunc]:.4f} (error {err:+.4f}, {100 * err / r['dense']:+.1f}%)")
        lines.append("  " + "; ".join(row))
    return lines


def fidelity_pair(w: LMWorkload, num: int = 16) -> tuple:
    """``(teacher, student, data)`` for ``truncation_errors`` on the LM workload: its own pair on
    ``num`` other random sequences."""
    return lm_model(w, "teacher", 1).eval(), lm_model(w, "student", 0).eval(), lm_data(w, num, seed=1)

