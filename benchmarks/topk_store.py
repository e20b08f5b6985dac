"""Top-k teacher store: bytes per position (dense vs top-k) and the KL error of the truncations
against the dense forward KL, on tiny random GPT-2s with an 8192-token vocabulary.

    JORYU_THREADS=1 PYTHONPATH=. python benchmarks/topk_store.py

Random GPT-2s are near uniform over the vocabulary; ``sharpen`` multiplies the teacher's final
LayerNorm weight (its logits) so that it is peaked, as a trained LM is. Figures, not tests."""

import sys
import tempfile

import torch

from joryu.data import TensorData, TensorLoader
from joryu.losses.lm import token_divergence
from joryu.losses.positions import next_token_targets
from joryu.losses.topk import topk_divergence
from joryu.models.hf import gpt2_lm
from joryu.outputs import forward
from joryu.teachers.store import build_store

V, L, N = 8192, 32, 64
INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}


def main():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (N, L), generator=g)
    am = torch.ones_like(ids)
    data = TensorData({"input_ids": ids, "attention_mask": am, "target": next_token_targets(ids, am)}, V, "rand")
    torch.manual_seed(0)
    student = gpt2_lm(vocab_size=V, hidden_size=32, layers=1, max_len=L)
    batch = TensorLoader(data, N, shuffle=False).batch(torch.arange(N))
    with torch.no_grad():
        z = forward(student, batch, INPUTS)
    print(f"vocabulary {V}: dense float32 {4 * V} B/position, dense float16 {2 * V} B/position")
    for sharpen in (1.0, 20.0):
        torch.manual_seed(1)
        teacher = gpt2_lm(vocab_size=V, hidden_size=64, layers=2, max_len=L)
        with torch.no_grad():
            teacher.transformer.ln_f.weight.mul_(sharpen)
            v = forward(teacher, batch, INPUTS)
        dense = float(token_divergence(z, v, target=batch["target"]))
        print(f"\nteacher logits x{sharpen:g}: dense forward KL(teacher || student) = {dense:.4f} nats/token")
        for k in (8, 32, 128):
            with tempfile.TemporaryDirectory() as d:
                store = build_store(teacher, data, f"{d}/s", k=k, inputs=INPUTS, batch_size=32, progress=False)
                on_disk = store.nbytes() / (N * L)
                t = store.get(torch.arange(N))
            row = [f"k={k:4d}: {on_disk:6.1f} B/position on disk ({4 * V / on_disk:5.0f}x less than float32)",
                   f"mean rest mass {float(t.rest[:, :-1].mean()):.3f}"]
            for trunc in ("bucket", "renormalize"):
                kl = float(topk_divergence(z, t.indices, t.logprobs, t.rest, "forward_kl", trunc,
                                           target=batch["target"]))
                row.append(f"{trunc} {kl:.4f} (error {kl - dense:+.4f}, {100 * (kl - dense) / dense:+.1f}%)")
            print("  " + "; ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
