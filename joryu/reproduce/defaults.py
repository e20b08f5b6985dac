"""Choosing a method's defaults on validation splits of three dataset/model pairs.

``python -m joryu.reproduce.defaults METHOD --set name=v1,v2 [--set ...] [--seeds 2]`` trains the
student alone and the student with METHOD at the method's current defaults and at every point of
the grid, on three pairs, and measures each on the pair's *validation* split (no test split is
read). It writes ``results/defaults/METHOD.md`` / ``.json``, which the method's docs page cites.

The three pairs (teacher -> student, each seeded, same initialisation for every arm of a seed):

- ``digits``: scikit-learn digits, MLP 256-256 teacher -> MLP 64 student;
- ``mnist1d``: MNIST-1D (4000 samples), cnn1d width 32 teacher -> MLP 128-128 student;
- ``mnist5k``: MNIST-5000, MLP 1200-1200 (dropout) teacher -> MLP 256-256 student (dropout 0.2).

The rule for a new default, stated here before any sweep: the grid point with the highest mean
gain over the student alone across the three pairs (mean over seeds, then pairs); the current
default is kept unless another point beats it by more than 0.3 points on that mean.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import time
from pathlib import Path

import torch

from joryu import models
from joryu.atomic import atomic_write_text
from joryu.data import load, split_validation
from joryu.data.fields import apply_fields
from joryu.methods import get_method
from joryu.reproduce.common import accuracy, predict, seeded, train
from joryu.teachers import FrozenTeacher

KEEP_MARGIN = 0.3  # points a grid point must beat the current default by, on the mean gain


def _pairs(quick: bool):
    ep = (lambda n: max(1, n // 10)) if quick else (lambda n: n)
    adam = dict(batch_size=128, optimizer="adam", lr=1e-3, scheduler="cosine")
    return {
        "digits": dict(data=lambda: load("digits"), val=0.2,
                       teacher=lambda shape: models.create("mlp", input_shape=shape, num_classes=10, hidden=(256, 256)),
                       student=lambda shape: models.create("mlp", input_shape=shape, num_classes=10, hidden=(64,)),
                       teacher_cfg=dict(adam, epochs=ep(40)), cfg=dict(adam, epochs=ep(40))),
        "mnist1d": dict(data=lambda: load("mnist1d", num_samples=4000), val=0.2,
                        teacher=lambda shape: models.create("cnn1d", input_shape=shape, num_classes=10, width=32),
                        student=lambda shape: models.create("mlp", input_shape=shape, num_classes=10,
                                                            hidden=(128, 128)),
                        teacher_cfg=dict(adam, epochs=ep(30), lr=3e-3), cfg=dict(adam, epochs=ep(40), lr=2e-3)),
        "mnist5k": dict(data=lambda: load("mnist5k"), val=0.2,
                        teacher=lambda shape: models.create("mlp", input_shape=shape, num_classes=10,
                                                            hidden=(1200, 1200), dropout=0.5, input_dropout=0.2),
                        student=lambda shape: models.create("mlp", input_shape=shape, num_classes=10,
                                                            hidden=(256, 256), dropout=0.2),
                        teacher_cfg=dict(adam, epochs=ep(20)), cfg=dict(adam, epochs=ep(20))),
    }


def _parse_value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def parse_grid(sets: list[str]) -> list[dict]:
    """``["temperature=1,4", "alpha=0.5"]`` -> every combination as a dict (the empty dict first:
    the method's current defaults)."""
    axes = []
    for s in sets:
        if "=" not in s:
            raise SystemExit(f"--set {s!r}: expected name=v1,v2")
        k, v = s.split("=", 1)
        axes.append([(k.strip(), _parse_value(x.strip())) for x in v.split(",") if x.strip()])
    points = [dict(c) for c in itertools.product(*axes)] if axes else []
    return [{}] + [p for p in points if p]


def sweep(method: str, grid: list[dict], seeds: int = 2, quick: bool = False, fixed: dict | None = None,
          fields: dict | None = None, pairs: list[str] | None = None, progress: bool = True) -> dict:
    """Validation accuracy of the student alone and with ``method`` at each grid point, per pair and seed."""
    needs_teacher = getattr(get_method(method, fixed or {}), "needs_teacher", True)
    out = {"method": method, "fixed": fixed or {}, "fields": fields or {}, "grid": grid, "pairs": {}}
    for pname, p in _pairs(quick).items():
        if pairs and pname not in pairs:
            continue
        bundle = p["data"]()
        tr, va = split_validation(bundle.train, p["val"], seed=0)
        if fields:
            tr = apply_fields(tr, fields, bundle.num_classes)
        shape = bundle.input_shape
        rows = {"alone": [], **{json.dumps(g, sort_keys=True): [] for g in grid}}
        for seed in range(seeds):
            teacher = None
            if needs_teacher:  # teacherless methods (born_again, dml, one) skip the teacher's training
                t = seeded(seed, p["teacher"], shape)
                teacher = FrozenTeacher(train("supervised", t, tr, p["teacher_cfg"], seed))
            init = seeded(seed, p["student"], shape)
            rows["alone"].append(accuracy(predict(train("supervised", copy.deepcopy(init), tr, p["cfg"], seed), va),
                                          va.targets))
            for g in grid:
                t0 = time.time()
                s = train(method, copy.deepcopy(init), tr, p["cfg"], seed, teacher=teacher, params={**(fixed or {}), **g})
                acc = accuracy(predict(s, va), va.targets)
                rows[json.dumps(g, sort_keys=True)].append(acc)
                if progress:
                    print(f"[{pname} seed {seed}] {method} {g or 'defaults'}: val {acc:.2f} "
                          f"(alone {rows['alone'][-1]:.2f}, {time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        out["pairs"][pname] = {"val_size": len(va), "rows": rows}
    return out


def choose(result: dict) -> tuple[str, dict[str, float]]:
    """Mean gain over the student alone per grid point, and the point the stated rule picks."""
    gains = {}
    for key in (json.dumps(g, sort_keys=True) for g in result["grid"]):
        per_pair = []
        for p in result["pairs"].values():
            alone, vals = p["rows"]["alone"], p["rows"][key]
            per_pair.append(sum(v - a for v, a in zip(vals, alone)) / len(vals))
        gains[key] = sum(per_pair) / len(per_pair)
    current = json.dumps({}, sort_keys=True)
    best = max(gains, key=gains.get)
    pick = best if gains[best] > gains[current] + KEEP_MARGIN else current
    return pick, gains


def markdown(result: dict, command: str) -> str:
    pick, gains = choose(result)
    lines = [f"# Defaults check: {result['method']}", "",
             f"Generated by `{command}`. Validation accuracy (%), mean over seeds; no test split is read.",
             f"Fixed parameters: {result['fixed'] or 'none'}; data fields: {result['fields'] or 'none'}.", "",
             f"Rule (stated before the sweep, in `joryu/reproduce/defaults.py`): the grid point with the highest "
             f"mean gain over the student alone across the pairs; the current default stays unless another beats "
             f"it by more than {KEEP_MARGIN} points.", ""]
    names = list(result["pairs"])
    head = ["setting", *[f"{n} (val {result['pairs'][n]['val_size']})" for n in names], "mean gain over alone"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(vals):
        return f"{sum(vals) / len(vals):.2f}"

    lines.append("| student alone | " + " | ".join(cell(result["pairs"][n]["rows"]["alone"]) for n in names) + " | |")
    for key, g in gains.items():
        label = "current defaults" if key == "{}" else key
        lines.append(f"| {label} | " + " | ".join(cell(result["pairs"][n]["rows"][key]) for n in names)
                     + f" | {g:+.2f} |")
    lines += ["", f"Chosen: {'current defaults' if pick == '{}' else pick}.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m joryu.reproduce.defaults", description=__doc__.splitlines()[0])
    ap.add_argument("method")
    ap.add_argument("--set", action="append", default=[], help="a grid axis, name=v1,v2")
    ap.add_argument("--fixed", default="{}", help="JSON of parameters held fixed at every point")
    ap.add_argument("--fields", default="{}", help="JSON data.fields for the training split (e.g. label noise)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--pairs", default="", help="comma-separated subset of digits,mnist1d,mnist5k")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="results/defaults")
    a = ap.parse_args(argv)
    torch.set_flush_denormal(True)
    grid = parse_grid(a.set)
    res = sweep(a.method, grid, a.seeds, a.quick, json.loads(a.fixed), json.loads(a.fields),
                [p for p in a.pairs.split(",") if p] or None)
    command = "python -m joryu.reproduce.defaults " + " ".join(sys.argv[1:] if argv is None else argv)

    out = Path(a.out) / ("quick" if a.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(res, command)
    atomic_write_text(out / f"{a.method}.md", md)
    res["chosen"], res["gains"] = choose(res)
    atomic_write_text(out / f"{a.method}.json", json.dumps(res, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
