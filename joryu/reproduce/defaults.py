"""Choosing a method's defaults on validation splits of five dataset/model pairs.

``python -m joryu.reproduce.defaults METHOD --set name=v1,v2 [--set ...] [--seeds 3]`` trains the
student alone and the student with METHOD at the method's current defaults and at every point of
the grid, on five pairs, and measures each on the pair's *validation* split (no test split is
read). It writes ``results/defaults/METHOD.md`` / ``.json``, which the method's docs page cites.

The five pairs (teacher -> student, of different families; each seeded, same initialisation and
data order for every arm of a seed):

- ``digits``: scikit-learn digits, MLP 256-256 teacher -> MLP 64 student;
- ``mnist1d``: MNIST-1D (4000 samples), cnn1d width 32 teacher -> MLP 128-128 student;
- ``mnist5k``: MNIST-5000, MLP 1200-1200 (dropout) teacher -> MLP 256-256 student (dropout 0.2);
- ``mnist5k_cnn``: MNIST-5000 as 1x28x28 images, resnet8 teacher -> lenet5 student (2-D CNNs),
  10 epochs, Adam 2e-3, cosine;
- ``mnist100``: the 100-class numbers 00-99 (docs/datasets/mnist100.md), resnet8 teacher ->
  convnet width 8 depth 2 student, the dataset's chosen budget (10 epochs, Adam 3e-3, cosine,
  batch 128, +-2 px shifts), scored on the dataset's own validation split.

The rule for a new default, stated here before any sweep: the grid point with the highest mean
gain over the student alone across the pairs (mean over seeds, then pairs); the current default
is kept unless another point beats it by more than 0.3 points on that mean.

Evidence (added with the two new pairs, before their sweeps were run; the rule above is
unchanged): every point is also judged by ``joryu.stats.compare_paired`` against the student
alone, per pair (the per-seed differences) and across the pairs (per seed, the difference
averaged over the pairs; the seeds are the independent units). Each gets its paired mean gain
and 95% t interval; a verdict ("helped", "hurt", "no evidence either way") needs at least 5
seeds, and with fewer the files give the mean and interval without one. A method whose chosen
point still has a negative mean gain across the pairs "hurts on average" (``hurts_on_average``).

Two changes of procedure, stated before the five-pair sweeps and why: (1) the teacher of a pair is
trained once (seed 0) and shared by every seed, as ``joryu compare`` does, instead of once per
seed: a ResNet teacher per seed would take most of the compute budget, and the comparison is of
students, all of whom see the same teacher; (2) the student alone's accuracy per (pair, seed,
data fields) is kept in ``alone-cache.json`` next to the results and reused by later methods'
sweeps: it is the same run (same seed, initialisation, data order and settings), measured once.
A method that cannot run on a pair is listed with its one-line reason, and the means are over
the pairs it ran on.

``--pair-params JSON`` (``sweep(pair_params=...)``) maps a pair's name to method parameters merged
into every grid point on that pair: the structural settings a method cannot default across
architectures (module paths of sensing points, sections or blocks). They are written into the
result JSON and, per pair, into the markdown's "Fixed parameters" lines, so the file says what
ran; the rule above is unchanged, and the student alone's cache key does not include them (the
student alone does not depend on method parameters). A pair whose parameters still do not build
the method is listed as not run, with the reason.

``--teacher-cache DIR`` keeps each pair's seed-0 teacher (keyed by pair, data fields and quick)
between methods' sweeps, written atomically; a later sweep loads the same network instead of
training it again. Without it every sweep trains its teachers.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import itertools
import json
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from joryu import models
from joryu.atomic import atomic_write_text
from joryu.data import load, split_validation
from joryu.data.fields import apply_fields
from joryu.errors import JoryuError, one_line
from joryu.methods import get_method
from joryu.reproduce.common import accuracy, predict, seeded, train
from joryu.stats import compare_paired
from joryu.teachers import FrozenTeacher

KEEP_MARGIN = 0.3  # points a grid point must beat the current default by, on the mean gain
PAIRS = ("digits", "mnist1d", "mnist5k", "mnist5k_cnn", "mnist100")
ALONE_CACHE = "alone-cache.json"


def _mlp(hidden, **kw):
    return lambda shape, classes: models.create("mlp", input_shape=shape, num_classes=classes, hidden=hidden, **kw)


def _zoo(name, **kw):
    return lambda shape, classes: models.create(name, input_shape=shape, num_classes=classes, **kw)


def _pairs(quick: bool) -> dict[str, dict]:
    """Each pair: ``data`` -> (bundle, train, val), teacher and student factories (shape, classes),
    training settings, and the augmentation of its training runs (None: none)."""
    ep = (lambda n: max(1, n // 10)) if quick else (lambda n: n)
    adam = dict(batch_size=128, optimizer="adam", lr=1e-3, scheduler="cosine")

    def carved(name, **kw):  # a validation split carved off the training split (20%, seed 0)
        def data():
            b = load(name, **kw)
            return (b, *split_validation(b.train, 0.2, seed=0))
        return data

    def own(name):  # the bundle's own validation split
        def data():
            b = load(name)
            return b, b.train, b.val
        return data

    return {
        "digits": dict(data=carved("digits"), teacher=_mlp((256, 256)), student=_mlp((64,)),
                       teacher_cfg=dict(adam, epochs=ep(40)), cfg=dict(adam, epochs=ep(40))),
        "mnist1d": dict(data=carved("mnist1d", num_samples=4000), teacher=_zoo("cnn1d", width=32),
                        student=_mlp((128, 128)),
                        teacher_cfg=dict(adam, epochs=ep(30), lr=3e-3), cfg=dict(adam, epochs=ep(40), lr=2e-3)),
        "mnist5k": dict(data=carved("mnist5k"), teacher=_mlp((1200, 1200), dropout=0.5, input_dropout=0.2),
                        student=_mlp((256, 256), dropout=0.2),
                        teacher_cfg=dict(adam, epochs=ep(20)), cfg=dict(adam, epochs=ep(20))),
        "mnist5k_cnn": dict(data=carved("mnist5k"), teacher=_zoo("resnet8"), student=_zoo("lenet5"),
                            teacher_cfg=dict(adam, epochs=ep(10), lr=2e-3), cfg=dict(adam, epochs=ep(10), lr=2e-3)),
        "mnist100": dict(data=own("mnist100"), teacher=_zoo("resnet8"), student=_zoo("convnet", width=8, depth=2),
                         teacher_cfg=dict(adam, epochs=ep(10), lr=3e-3), cfg=dict(adam, epochs=ep(10), lr=3e-3),
                         augment=True),
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


def point_params(fixed: dict | None, pair_params: dict | None, pair: str, point: dict) -> dict:
    """The method parameters of one grid point on one pair: the fixed ones, then the pair's
    structural ones (``--pair-params``), then the point's own axes (a point naming a key wins)."""
    return {**(fixed or {}), **((pair_params or {}).get(pair) or {}), **point}


def parse_pair_params(text: str) -> dict[str, dict]:
    """``--pair-params`` JSON: an object of pair name -> an object of method parameters."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--pair-params: not JSON: {e}") from None
    if not isinstance(value, dict) or not all(isinstance(v, dict) for v in value.values()):
        raise SystemExit('--pair-params: expected {"pair": {"param": value, ...}, ...}')
    unknown = sorted(set(value) - set(PAIRS))
    if unknown:
        raise SystemExit(f"--pair-params: unknown pair {unknown[0]!r}; known: {', '.join(PAIRS)}")
    return value


def _alone_key(pair: str, seed: int, fields: dict | None, quick: bool) -> str:
    return json.dumps({"pair": pair, "seed": seed, "fields": fields or {}, "quick": quick}, sort_keys=True)


def _teacher(p: dict, shape, classes, tr, augment, folder: Path | None, key: str):
    """The pair's teacher, trained with seed 0, or read back from ``folder`` where an earlier sweep
    kept it (written atomically; the file name is a hash of ``key``)."""
    net = seeded(0, p["teacher"], shape, classes)
    path = None
    if folder is not None:
        path = Path(folder) / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
        if path.exists():
            net.load_state_dict(torch.load(path, map_location="cpu"))
            return net
    net = train("supervised", net, tr, p["teacher_cfg"], 0, augment=augment)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save(net.state_dict(), tmp)
        os.replace(tmp, path)
    return net


def sweep(method: str, grid: list[dict], seeds: int = 3, quick: bool = False, fixed: dict | None = None,
          fields: dict | None = None, pairs: list[str] | None = None, progress: bool = True,
          cache: Path | None = None, teacher_cache: Path | None = None, pair_params: dict | None = None) -> dict:
    """Validation accuracy of the student alone and with ``method`` at each grid point, per pair and
    seed. ``cache``: a JSON file of the student alone's accuracies, read and extended.
    ``teacher_cache``: a folder keeping each pair's trained teacher (seed 0, keyed by pair, data
    fields and quick), so later methods' sweeps load the same teacher instead of training it again.
    ``pair_params``: pair name -> method parameters merged into every point on that pair
    (:func:`point_params`)."""
    out = {"method": method, "fixed": fixed or {}, "pair_params": pair_params or {}, "fields": fields or {},
           "grid": grid, "seeds": seeds, "pairs": {}, "refused": {}}
    if not pair_params:
        try:
            get_method(method, fixed or {})
        except JoryuError as e:  # e.g. a parameter without a default: no pair can run it as given
            out["unbuilt"] = one_line(e)
            if progress:
                print(f"{method}: not run on any pair: {out['unbuilt']}", file=sys.stderr)
            return out
    known = json.loads(cache.read_text()) if cache is not None and cache.exists() else {}
    for pname, p in _pairs(quick).items():
        if pairs and pname not in pairs:
            continue
        keys = [json.dumps(g, sort_keys=True) for g in grid]
        try:  # the pair's own parameters may be what makes the method buildable
            needs_teacher = getattr(get_method(method, point_params(fixed, pair_params, pname, {})),
                                    "needs_teacher", True)
        except JoryuError as e:
            out["refused"][pname] = {key: one_line(e) for key in keys}
            if progress:
                print(f"[{pname}] {method}: not run: {one_line(e)}", file=sys.stderr)
            continue
        bundle, tr, va = p["data"]()
        if fields:
            tr = apply_fields(tr, fields, bundle.num_classes)
        shape, classes = bundle.input_shape, bundle.num_classes
        augment = bundle.augment if p.get("augment") else None
        rows = {"alone": [], **{k: [] for k in keys}}
        seconds = {"alone": [], **{k: [] for k in keys}}
        refused: dict[str, str] = {}
        teacher, teacher_val = None, None
        if needs_teacher:  # trained once per pair and shared by every seed (see the module docstring)
            t0 = time.time()
            t = _teacher(p, shape, classes, tr, augment, teacher_cache, _alone_key(pname, 0, fields, quick))
            teacher, teacher_val = FrozenTeacher(t), accuracy(predict(t, va), va.targets)
            if progress:
                print(f"[{pname}] teacher: val {teacher_val:.2f} ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        for seed in range(seeds):
            init = seeded(seed, p["student"], shape, classes)
            ak = _alone_key(pname, seed, fields, quick)
            if ak in known:
                rows["alone"].append(known[ak])
                seconds["alone"].append(None)
            else:
                t0 = time.time()
                net = train("supervised", copy.deepcopy(init), tr, p["cfg"], seed, augment=augment)
                rows["alone"].append(accuracy(predict(net, va), va.targets))
                seconds["alone"].append(round(time.time() - t0, 1))
                known[ak] = rows["alone"][-1]
                if cache is not None:  # merged with what other sweeps wrote meanwhile
                    known = {**(json.loads(cache.read_text()) if cache.exists() else {}), **known}
                    atomic_write_text(cache, json.dumps(known, indent=1, sort_keys=True))
            for g, key in zip(grid, keys):
                if key in refused:
                    continue
                t0 = time.time()
                try:
                    s = train(method, copy.deepcopy(init), tr, p["cfg"], seed, teacher=teacher,
                              params=point_params(fixed, pair_params, pname, g), augment=augment)
                except (JoryuError, ValueError, RuntimeError) as e:  # cannot run on this pair: listed
                    refused[key] = one_line(e) if isinstance(e, JoryuError) else f"{type(e).__name__}: {e}"
                    if progress:
                        print(f"[{pname}] {method} {g or 'defaults'}: not run: {refused[key]}", file=sys.stderr)
                    continue
                acc = accuracy(predict(s, va), va.targets)
                rows[key].append(acc)
                seconds[key].append(round(time.time() - t0, 1))
                if progress:
                    print(f"[{pname} seed {seed}] {method} {g or 'defaults'}: val {acc:.2f} "
                          f"(alone {rows['alone'][-1]:.2f}, {time.time() - t0:.0f} s)", file=sys.stderr, flush=True)
        for key in refused:
            rows.pop(key)
        out["pairs"][pname] = {"val_size": len(va), "teacher_val": teacher_val, "rows": rows, "seconds": seconds}
        if refused:
            out["refused"][pname] = refused
    return out


def evidence(result: dict) -> dict[str, dict]:
    """Per grid point, the paired comparison with the student alone (``compare_paired``, as dicts):
    ``{"pairs": {pair: ...}, "across": ...}``; ``across`` judges, per seed, the difference averaged
    over the pairs the point ran on (None when it ran on none)."""
    out = {}
    for key in (json.dumps(g, sort_keys=True) for g in result["grid"]):
        ran = {n: p for n, p in result["pairs"].items() if key in p["rows"]}
        per = {n: compare_paired(p["rows"][key], p["rows"]["alone"]).as_dict() for n, p in ran.items()}
        across = None
        if ran:
            n = min(len(p["rows"]["alone"]) for p in ran.values())
            avg = [sum(p["rows"][key][s] - p["rows"]["alone"][s] for p in ran.values()) / len(ran)
                   for s in range(n)]
            across = compare_paired(avg, [0.0] * n).as_dict()
        out[key] = {"pairs": per, "across": across}
    return out


def choose(result: dict) -> tuple[str | None, dict[str, float]]:
    """Mean gain over the student alone per grid point, and the point the stated rule picks (None
    when no point ran on any pair)."""
    gains = {}
    for key in (json.dumps(g, sort_keys=True) for g in result["grid"]):
        per_pair = []
        for p in result["pairs"].values():
            if key not in p["rows"]:
                continue
            alone, vals = p["rows"]["alone"], p["rows"][key]
            per_pair.append(sum(v - a for v, a in zip(vals, alone)) / len(vals))
        if per_pair:
            gains[key] = sum(per_pair) / len(per_pair)
    current = json.dumps({}, sort_keys=True)
    if not gains:  # the method ran on none of the pairs: nothing to choose
        return None, gains
    best = max(gains, key=gains.get)
    pick = best if current not in gains or gains[best] > gains[current] + KEEP_MARGIN else current
    return pick, gains


def hurts_on_average(result: dict) -> bool:
    """The chosen point's mean gain across the pairs is below zero: the best defaults still hurt."""
    pick, gains = choose(result)
    return pick is not None and gains[pick] < 0


def _gain_cell(c: dict | None) -> str:
    if c is None:
        return "-"
    lo, hi = c["interval"]
    if lo is None:
        return f"{c['mean']:+.2f}"
    return f"{c['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


def markdown(result: dict, command: str) -> str:
    if result.get("unbuilt"):
        return "\n".join([f"# Defaults check: {result['method']}", "", f"Generated by `{command}`.", "",
                          f"Not run on any pair: the method cannot be built from its defaults: {result['unbuilt']}",
                          "", "Its defaults are not checked by this sweep: see its docs page for the pairs it needs.",
                          ""])
    pick, gains = choose(result)
    ev = evidence(result)
    n = result.get("seeds") or min(len(p["rows"]["alone"]) for p in result["pairs"].values())
    lines = [f"# Defaults check: {result['method']}", "",
             f"Generated by `{command}`. Validation accuracy (%), {n} paired seeds; no test split is read.",
             f"Fixed parameters: {result['fixed'] or 'none'}; data fields: {result['fields'] or 'none'}.",
             *[f"Fixed parameters on {pname} (--pair-params, merged into every point on that pair): "
               f"{json.dumps(params, sort_keys=True)}." for pname, params in result.get("pair_params", {}).items()],
             "",
             f"Rule (stated before the sweep, in `joryu/reproduce/defaults.py`): the grid point with the highest "
             f"mean gain over the student alone across the pairs; the current default stays unless another beats "
             f"it by more than {KEEP_MARGIN} points.", "",
             "Each cell: the student's validation accuracy with the method (mean over seeds), then its paired gain "
             "over the student alone with the 95% t interval (joryu.stats.compare_paired; the last column judges "
             "the per-seed gain averaged over the pairs). "
             + ("A verdict needs at least 5 seeds: with fewer, the mean and interval are given without one."
                if n < 5 else ""), ""]
    names = list(result["pairs"])
    head = ["setting", *[f"{nm} (val {result['pairs'][nm]['val_size']})" for nm in names],
            "mean gain across pairs [95% t interval]", "verdict"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def mean(vals):
        return f"{sum(vals) / len(vals):.2f}"

    tv = [result["pairs"][nm].get("teacher_val") for nm in names]
    if any(v is not None for v in tv):
        lines.append("| teacher (seed 0) | " + " | ".join(f"{v:.2f}" if v is not None else "-" for v in tv) + " | | |")
    lines.append("| student alone | " + " | ".join(mean(result["pairs"][nm]["rows"]["alone"]) for nm in names)
                 + " | | |")
    for key in gains:
        label = "current defaults" if key == "{}" else key
        cells = []
        for nm in names:
            rows = result["pairs"][nm]["rows"]
            cells.append(f"{mean(rows[key])}, {_gain_cell(ev[key]['pairs'][nm])}" if key in rows else "not run")
        across = ev[key]["across"]
        verdict = across["verdict"] if across and across["n"] >= 5 else f"none (n = {across['n'] if across else 0})"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {_gain_cell(across)} | {verdict} |")
    if pick is None:
        lines += ["", "Chosen: nothing. The method ran on none of the pairs at these settings; the reasons "
                  "follow. Its defaults are not checked by this sweep: see its docs page for the pairs it "
                  "needs.", ""]
    else:
        lines += ["", f"Chosen: {'current defaults' if pick == '{}' else pick} "
                  f"(mean gain {gains[pick]:+.2f} points across the pairs it ran on).", ""]
    if pick is not None and gains[pick] < 0:
        lines += ["**The best defaults found still hurt on average**: the student with the method is below the "
                  "student alone on the mean over the pairs.", ""]
    for pname, why in result.get("refused", {}).items():
        for key, reason in why.items():
            lines.append(f"- Not run on {pname} ({'current defaults' if key == '{}' else key}): {reason}")
    secs = {nm: result["pairs"][nm].get("seconds", {}) for nm in names}
    t = sum(x for s in secs.values() for v in s.values() for x in v if x is not None)
    lines += ["", f"Compute: {t / 60:.1f} minutes of training (one thread, shared two-core machine; cached "
              "student-alone runs not counted).", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m joryu.reproduce.defaults", description=__doc__.splitlines()[0])
    ap.add_argument("method")
    ap.add_argument("--set", action="append", default=[], help="a grid axis, name=v1,v2")
    ap.add_argument("--fixed", default="{}", help="JSON of parameters held fixed at every point")
    ap.add_argument("--fields", default="{}", help="JSON data.fields for the training split (e.g. label noise)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--pairs", default="", help=f"comma-separated subset of {','.join(PAIRS)}")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", default="results/defaults")
    ap.add_argument("--pair-params", default="{}",
                    help="JSON of pair name -> method parameters merged into every point on that pair")
    ap.add_argument("--teacher-cache", default="", help="a folder keeping each pair's trained teacher between sweeps")
    a = ap.parse_args(argv)
    torch.set_flush_denormal(True)
    if os.environ.get("JORYU_THREADS"):
        torch.set_num_threads(int(os.environ["JORYU_THREADS"]))
    grid = parse_grid(a.set)
    pairs = [p for p in a.pairs.split(",") if p] or None
    unknown = sorted(set(pairs or []) - set(PAIRS))
    if unknown:
        raise SystemExit(f"--pairs: unknown pair {unknown[0]!r}; known: {', '.join(PAIRS)}")
    pair_params = parse_pair_params(a.pair_params)
    out = Path(a.out) / ("quick" if a.quick else "")
    out.mkdir(parents=True, exist_ok=True)
    res = sweep(a.method, grid, a.seeds, a.quick, json.loads(a.fixed), json.loads(a.fields), pairs,
                cache=out / ALONE_CACHE, teacher_cache=Path(a.teacher_cache) if a.teacher_cache else None, pair_params=pair_params)
    command = "python -m joryu.reproduce.defaults " + shlex.join(sys.argv[1:] if argv is None else argv)
    md = markdown(res, command)
    atomic_write_text(out / f"{a.method}.md", md)
    res["chosen"], res["gains"] = choose(res)
    res["evidence"] = evidence(res)
    res["hurts_on_average"] = hurts_on_average(res)
    res["command"] = command
    atomic_write_text(out / f"{a.method}.json", json.dumps(res, indent=1))
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
