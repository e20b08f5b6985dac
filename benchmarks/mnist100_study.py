"""Choose a student and a teacher for mnist100 on the VALIDATION split (test is never read).

    python -m benchmarks.mnist100_study [--seeds 3] [--out results/mnist100/study.json]

Each candidate trains alone (cross-entropy, the dataset's default +-2 px shifts) with the same
budget on the 15000 training numbers, for ``--seeds`` seeds (seed s fixes the initialisation and
the batch order), on one CPU thread. Reported per candidate: validation accuracy mean and sd over
seeds, min and max, training accuracy (no augmentation) and wall time per run. The wanted student
underfits (well below the teacher, and below it on its own training set, so the limit is
capacity) yet is stable across seeds; the wanted teacher clearly beats it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from joryu import models
from joryu.data import load
from joryu.reproduce.common import accuracy, predict, seeded, train

BUDGET = dict(epochs=10, batch_size=128, optimizer="adam", lr=3e-3, scheduler="cosine", threads=1)
# (role, zoo name, kwargs): students limited through width (BatchNorm after every conv), and
# the zoo's CIFAR ResNets as teachers.
CANDIDATES = [
    ("student", "convnet", {"width": 4, "depth": 2}),
    ("student", "convnet", {"width": 8, "depth": 2}),
    ("teacher", "resnet8", {}),
    ("teacher", "resnet20", {}),
]
TEACHER_SEEDS = 2  # teachers are trained once per reproduction; two seeds show their level


def run(name: str, kwargs: dict, seed: int, data) -> dict:
    t0 = time.perf_counter()
    net = seeded(seed, models.create, name, num_classes=100, input_shape=data.input_shape, **kwargs)
    net = train("supervised", net, data.train, BUDGET, seed, augment=data.augment)
    wall = time.perf_counter() - t0
    return {"seed": seed, "val_acc": accuracy(predict(net, data.val), data.val.targets),
            "train_acc": accuracy(predict(net, data.train), data.train.targets), "wall_s": wall,
            "params": models.count_parameters(net)}


def summary(rows: list[dict], key: str) -> tuple[float, float]:
    vals = [r[key] for r in rows]
    return statistics.mean(vals), statistics.stdev(vals) if len(vals) > 1 else float("nan")


def table(results: list[dict]) -> str:
    lines = ["| role | model | params | seeds | val acc % (mean ± sd) | val min–max | "
             "train acc % (mean) | wall s per run (mean) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        runs = r["runs"]
        m, s = summary(runs, "val_acc")
        lo, hi = min(x["val_acc"] for x in runs), max(x["val_acc"] for x in runs)
        kw = ", ".join(f"{k}={v}" for k, v in r["kwargs"].items())
        train_acc, wall = summary(runs, "train_acc")[0], summary(runs, "wall_s")[0]
        lines.append(f"| {r['role']} | {r['name']}({kw}) | {runs[0]['params']} | {len(runs)} | "
                     f"{m:.2f} ± {s:.2f} | {lo:.2f}–{hi:.2f} | {train_acc:.2f} | {wall:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3, help="seeds per student candidate")
    ap.add_argument("--out", default="results/mnist100/study.json", help="per-run results (JSON)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    data = load("mnist100")
    results, t0 = [], time.perf_counter()
    for role, name, kwargs in CANDIDATES:
        seeds = range(args.seeds if role == "student" else min(args.seeds, TEACHER_SEEDS))
        runs = []
        for s in seeds:
            runs.append(run(name, kwargs, s, data))
            print(f"{role} {name} {kwargs} seed {s}: val {runs[-1]['val_acc']:.2f} train "
                  f"{runs[-1]['train_acc']:.2f} ({runs[-1]['wall_s']:.0f} s)", flush=True)
        results.append({"role": role, "name": name, "kwargs": kwargs, "runs": runs})
    meta = {"budget": BUDGET, "augment": data.augment.signature(),
            "total_s": time.perf_counter() - t0,
            "machine": f"{platform.machine()} {platform.system()}, torch {torch.__version__}, "
                       "1 thread",
            "split": "validation (2000 numbers from the validation digit pool); "
                     "the test split is never read"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print(table(results))
    print(f"\ntotal {meta['total_s']:.0f} s; budget {BUDGET}; augment {meta['augment']}; "
          f"per-run results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
