"""How close a warm teacher cache can get to the student alone on the MNIST-1D workload.

Three contenders, alternating for 7 rounds of 240 steps (median): the hand-written student-only
loop, the same loop with the KD loss on teacher logits computed once before timing (the floor of any
cache: only the loss is left), and joryu's KD with a warm ``CachedTeacher``. Prints samples/s and
each as a ratio of student-only. Run alone on a quiet machine::

    python benchmarks/cache_floor.py
"""

from __future__ import annotations

import torch

from joryu import bench


def main() -> None:
    torch.set_num_threads(2)
    torch.set_flush_denormal(True)
    w = bench.make_workloads(12)[2]  # cnn1d -> mlp (MNIST-1D)
    contenders = {"student-only": bench.plain_kd(w, teacher_on=False),
                  "plain, precomputed teacher": bench.plain_kd(w, precomputed=True),
                  "joryu kd + warm cache": bench.joryu_kd(w, fast=True, cached=True)}
    med = bench.measure(contenders, 7)
    base = med["student-only"]
    print(w.name)
    for k, v in med.items():
        print(f"  {k:<28} {v:10.0f} samples/s   {v / base:.3f} x student-only")


if __name__ == "__main__":
    main()
