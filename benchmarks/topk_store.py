"""Top-k teacher store: bytes per position (dense vs top-k) and the KL error of the truncations
against the dense forward KL, on tiny random GPT-2s with an 8192-token vocabulary.

    JORYU_THREADS=1 PYTHONPATH=. python benchmarks/topk_store.py

Random GPT-2s are near uniform over the vocabulary; the teacher's logits are also measured
sharpened (x20, its final LayerNorm weight) so that it is peaked, as a trained LM is. The
measurement is ``joryu.bench_lm.truncation_errors``, which ``joryu bench --workload lm`` runs on
its larger pair too. Figures, not tests."""

import sys

import torch

from joryu.bench_lm import INPUTS, format_errors, truncation_errors
from joryu.data import TensorData
from joryu.losses.positions import next_token_targets
from joryu.models.hf import gpt2_lm
from joryu.outputs import declare_inputs

V, L, N = 8192, 32, 64


def main():
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, V, (N, L), generator=g)
    am = torch.ones_like(ids)
    data = TensorData({"input_ids": ids, "attention_mask": am, "target": next_token_targets(ids, am)}, V, "rand")
    torch.manual_seed(0)
    student = declare_inputs(gpt2_lm(vocab_size=V, hidden_size=32, layers=1, max_len=L), INPUTS)
    torch.manual_seed(1)
    teacher = declare_inputs(gpt2_lm(vocab_size=V, hidden_size=64, layers=2, max_len=L), INPUTS)
    print(f"vocabulary {V}: dense float32 {4 * V} B/position, dense float16 {2 * V} B/position")
    for line in format_errors(truncation_errors(teacher.eval(), student.eval(), data), V):
        print(line if line.startswith(" ") else "\n" + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
