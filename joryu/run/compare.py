"""``joryu compare``: which method gives the best small student on the user's own pair?

Every method runs on the same data, teacher, student architecture and training settings (the
config's ``train``: the same epochs and batch size, so the same number of student batches per
stage; a method with extra stages trains longer and its table row says how much), on N paired
seeds (for seed s every arm starts from the same initialisation and sees the same data order).
The teacher is trained or loaded once and shared. Each method is ranked against the student
alone by its paired difference on the validation split, with its t interval (``joryu.stats``).
Only the selected method (the best mean validation difference) is then scored on the test split,
once, against the student alone. A method that cannot run on the pair is listed with the one line
that says why, and the others go on. Each arm of each seed is its own resumable run folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate.utils import set_seed

from joryu.atomic import atomic_write_text
from joryu.config import ExperimentConfig, MethodConfig
from joryu.errors import ConfigError, JoryuError, one_line, warn
from joryu.methods import get_method
from joryu.models.build import build_model
from joryu.outputs import forward
from joryu.report.figures import plot_comparison
from joryu.report.tables import format_table, markdown_table
from joryu.run import evidence
from joryu.run.experiment import Experiment, cost_of
from joryu.run.stages import run_stages
from joryu.teachers import FrozenTeacher

ALONE = "student alone"


@dataclass
class Arm:
    """One method on one seed: its deployed network and how to score it."""

    predict: object  # batch -> {name: logits}; the first prediction is the network's own
    cost: dict


@dataclass
class Comparison:
    methods: list[str]
    seeds: list[int]
    refused: dict[str, str] = field(default_factory=dict)  # method -> one-line reason
    val: dict[str, dict] = field(default_factory=dict)  # method -> evidence.judge(...)
    costs: dict[str, dict] = field(default_factory=dict)  # arm -> cost of the first seed
    selected: str | None = None
    test: dict | None = None
    warnings: list[str] = field(default_factory=list)

    def ranking(self) -> list[str]:
        return sorted(self.val, key=lambda m: -self.val[m]["mean"])

    def as_dict(self) -> dict:
        return {"methods": self.methods, "seeds": self.seeds, "refused": self.refused, "val": self.val,
                "ranking": self.ranking(), "costs": self.costs, "selected": self.selected,
                "test": self.test, "warnings": self.warnings, "metric": "top-1 accuracy (%)"}


def _method_config(cfg: ExperimentConfig, name: str) -> MethodConfig:
    """The config's own parameters for its method; defaults (from the method's Params) for the
    others."""
    return cfg.method if name == cfg.method.name else MethodConfig(name=name, params={})


def run_comparison(cfg: ExperimentConfig, methods: list[str], run_dir=None, progress: bool = True,
                   resume: bool = False, overwrite: bool = False) -> Comparison:
    """Run ``methods`` against the student alone on ``cfg``'s pair over ``cfg.seeds`` paired seeds
    (see the module docstring); writes ``compare.md``, ``compare.json`` and ``compare.png`` into the
    run folder."""
    if not methods:
        raise ConfigError("compare needs at least one method: --methods kd,fitnets,...")
    dup = sorted({m for m in methods if methods.count(m) > 1})
    if dup:
        raise ConfigError(f"--methods names {', '.join(dup)} more than once")
    for m in methods:
        get_method(m, _method_config(cfg, m).params)  # an unknown name or a bad parameter: one line now
    needs = [m for m in methods if get_method(m, _method_config(cfg, m).params).needs_teacher]
    anchor = needs[0] if needs else methods[0]  # the method whose needs shape the shared check
    base = cfg.model_copy(update={"method": _method_config(cfg, anchor), "name": f"{cfg.name}-compare"})
    exp = Experiment(base, run_dir=run_dir, progress=progress, resume=resume, overwrite=overwrite)
    if exp.finished:
        raise ConfigError(f"{exp.run_dir} holds a finished comparison; its report is {exp.run_dir / 'compare.md'}")
    exp.compare = True  # the student alone is part of every comparison
    prepared = exp.prepare()
    out = Comparison(methods, [cfg.seed + i for i in range(cfg.seeds)])
    runnable = []
    for m in methods:
        method = get_method(m, _method_config(cfg, m).params)
        if method.needs_teacher and prepared.teacher_model is None:
            out.refused[m] = f"method {m!r} distills from a teacher: add a teacher section to the config"
            continue
        if method.labels_only:
            out.refused[m] = f"{m!r} is the student trained alone: it is the baseline of every row"
            continue
        try:
            exp.check_method(prepared, method, f"student + {m}")
        except JoryuError as e:
            out.refused[m] = one_line(e)
            continue
        runnable.append((m, method))
    exp._commit()
    ok = False
    try:  # --overwrite: the comparison this one replaces is deleted only when this one finishes
        _train_and_rank(exp, cfg, prepared, runnable, out, progress, resume)
        ok = True
    finally:
        note = exp.plan.finish(ok) if exp.plan is not None else None
        if note:
            warn(note)
    return out


def _train_and_rank(exp, cfg, prepared, runnable, out: Comparison, progress: bool, resume: bool) -> None:
    teacher_model, _ = exp.train_teacher(prepared)
    key_t = cfg.teacher.input_key if cfg.teacher is not None else "input"
    teacher = None
    if teacher_model is not None:  # placed and cast as in a run (teacher.device, teacher.dtype)
        teacher = FrozenTeacher(teacher_model, key_t, device=cfg.teacher.device,
                                dtype=None if cfg.teacher.dtype == "float32" else cfg.teacher.dtype)
    rd = exp.run_dir
    arms: dict[tuple[str, int], Arm] = {}
    alone_method = get_method("supervised", {"input_key": cfg.student.input_key})
    for s in out.seeds:
        root = rd / f"seed-{s}" if rd is not None else None
        for name, method in [(ALONE, alone_method), *runnable]:
            exp.log(f"seed {s}: {name}")
            set_seed(s)
            student = build_model(cfg.student, prepared.bundle.num_classes, prepared.bundle.input_shape)
            folder = "alone" if name == ALONE else name
            try:
                net, res = run_stages(method, student=student, teacher=teacher if method.needs_teacher else None,
                                      train=prepared.train, val=prepared.val, train_cfg=prepared.train_cfg,
                                      run_dir=root / folder if root is not None else None, seed=s,
                                      augment=prepared.augment, progress=progress, resume=resume,
                                      label=f"{name} (seed {s})", num_classes=prepared.bundle.num_classes)
            except JoryuError as e:  # a method that fails while training: listed, the others go on
                if name == ALONE:
                    raise
                out.refused[name] = f"failed while training on seed {s}: {one_line(e)}"
                runnable = [(n, mm) for n, mm in runnable if n != name]
                continue
            last = [r.distiller for r in res.values() if r.distiller is not None][-1]
            last.eval()
            arms[(name, s)] = Arm(last.eval_logits, cost_of(res))
            if s == out.seeds[0]:
                out.costs[name] = arms[(name, s)].cost
    names = [n for n, _ in runnable]
    device = prepared.train_cfg.device if prepared.train_cfg.device != "auto" else (
        "cuda" if torch.cuda.is_available() else "cpu")

    def top1(predict, data) -> float:
        return exp._top1(predict, data)

    split = prepared.val if prepared.val is not None else None
    if split is not None and any(top1(arms[(ALONE, s)].predict, split) is None for s in out.seeds[:1]):
        split = None  # a validation split without one scored label ranks nothing
    if split is None:
        out.warnings.append("No validation split with labels to score (data.val_fraction = 0, or no "
                            "labelled sample in it): nothing is ranked, since the test split is never "
                            "used for a choice.")
    else:
        alone_val = [top1(arms[(ALONE, s)].predict, split) for s in out.seeds]
        for n in names:
            vals = evidence.SeedValues([top1(arms[(n, s)].predict, split) for s in out.seeds], alone_val)
            out.val[n] = evidence.judge(vals)
        if out.val:
            out.selected = out.ranking()[0]
            sel = out.selected
            test = evidence.SeedValues([top1(arms[(sel, s)].predict, prepared.bundle.test) for s in out.seeds],
                                       [top1(arms[(ALONE, s)].predict, prepared.bundle.test) for s in out.seeds])
            out.test = evidence.judge(test)
        teacher_val = None
        if teacher_model is not None:
            teacher_model.float().to(device).eval()
            teacher_val = top1(lambda b: {"t": forward(teacher_model, b, key_t)}, split)
        first_val = out.val[out.selected] if out.selected else None
        out.warnings += evidence.warnings_for(len(out.seeds), first_val, teacher_val, alone_val[0], [], ALONE)
    if exp.run_dir is not None:
        write_comparison(exp.run_dir, cfg, out)


def table(out: Comparison) -> list[list[str]]:
    """One row per method, best first: the paired validation difference with its interval, the
    verdict, and the budget relative to the student alone."""
    alone = out.costs.get(ALONE, {})
    rows = [["method", "val diff vs alone (points)", "95% t interval", "verdict (val)", "batches",
             "train time"]]
    for m in out.ranking():
        j, c = out.val[m], out.costs.get(m, {})
        lo, hi = j["interval"]
        interval = f"{lo:+.2f} .. {hi:+.2f}" if lo is not None else "-"
        ratio = (f" ({c['batches'] / alone['batches']:.2f}x)" if alone.get("batches") and c.get("batches")
                 else "")
        t_ratio = (f" ({c['train_time_s'] / alone['train_time_s']:.2f}x)" if alone.get("train_time_s")
                   and c.get("train_time_s") else "")
        rows.append([m + (" (selected)" if m == out.selected else ""), f"{j['mean']:+.2f}", interval, j["verdict"],
                     f"{c.get('batches', 0)}{ratio}", f"{c.get('train_time_s', 0.0):.1f} s{t_ratio}"])
    return rows


def write_comparison(folder: Path, cfg, out: Comparison) -> Path:
    folder = Path(folder)
    png = plot_comparison(out.val, folder / "compare.png", selected=out.selected)
    md = [f"# Compare on {cfg.data.name}: student `{cfg.student.name}`"
          + (f", teacher `{cfg.teacher.name}`" if cfg.teacher is not None else ""), "",
          f"{len(out.seeds)} paired seeds {out.seeds}; the config's training settings for every arm. Ranked by "
          "the paired difference in validation top-1 against the student alone (95% t interval, joryu.stats: "
          "a verdict needs at least 5 seeds). The test split is read once, for the selected method.", ""]
    if out.val:
        md += [markdown_table(table(out)), ""]
    if out.test is not None:
        md += [f"Test split, {out.selected} vs the student alone: **{out.test['verdict']}**, {out.test['line']}.", ""]
    if out.refused:
        md += ["Not run on this pair:", ""] + [f"- {m}: {why}" for m, why in out.refused.items()] + [""]
    md += [f"- Note: {w}" for w in out.warnings]
    if png is not None:
        md += ["", f"![paired differences]({png.name})", ""]
    atomic_write_text(folder / "compare.md", "\n".join(md))
    atomic_write_text(folder / "compare.json", json.dumps(out.as_dict(), indent=1))
    atomic_write_text(folder / "results.json", json.dumps({"comparison": out.as_dict()}, indent=1))
    return folder / "compare.md"


def console(out: Comparison) -> str:
    lines = []
    if out.val:
        lines += [format_table(table(out)), ""]
    if out.test is not None:
        lines.append(f"test split, {out.selected} vs the student alone: {out.test['verdict']}, "
                     f"{out.test['line']}")
    for m, why in out.refused.items():
        lines.append(f"not run: {m}: {why}")
    lines += [f"note: {w}" for w in out.warnings]
    return "\n".join(lines)
