"""Runs an experiment: teacher, student alone, student distilled; evaluates once on the test split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import set_seed

from joryu import metrics, tracking
from joryu.config import ExperimentConfig, load_config
from joryu.data import Augment, load_data, split_any
from joryu.data.sources import align_labels
from joryu.engine import save_weights
from joryu.engine.loop import pick_device
from joryu.errors import ConfigError, warn
from joryu.evaluate import evaluate_predictions
from joryu.methods import Method, Stage, StageContext, get_method
from joryu.models.build import build_model, check_classes, input_shape_of
from joryu.models.lora import is_peft, parameter_counts, save_adapters
from joryu.outputs import forward, is_causal_lm
from joryu.report import write_run_report
from joryu.report.deploy import deployment_stats
from joryu.run import evidence
from joryu.run.process import is_main, same_on_all_processes, wait_for_everyone
from joryu.run.rundir import dump_config, plan_run_dir
from joryu.run.stages import restored, run_stages
from joryu.teachers import FrozenTeacher
from joryu.teachers.base import teacher_dtype


class _OneStage(Method):
    """An ad-hoc one-stage method for a baseline: ``build(ctx) -> Distiller``."""

    needs_teacher = False

    def __init__(self, build, name: str = "baseline"):
        self._build, self.name, self.params = build, name, None

    def stages(self):
        return [Stage("train", self._build)]


class BaselineContext:
    """What a method's ``Baseline.run`` gets: the run's config, data and seed, the method's stage
    context (``ctx.results``, ``ctx.state``) and deployed network, and ways to train a comparison
    with the run's code and budget (``train``)."""

    def __init__(self, exp: Experiment, ctx: StageContext, deployed, train, val, bundle, augment,
                 seed: int | None = None, root: Path | None = None):
        self.exp, self.cfg, self.ctx, self.deployed = exp, exp.cfg, ctx, deployed
        self.train_data, self.val, self.bundle, self.augment = train, val, bundle, augment
        self.seed = exp.cfg.seed if seed is None else seed
        self.root = exp.run_dir if root is None else root  # the folder this seed's arms write to
        self.num_classes = bundle.num_classes
        self.teacher = ctx.teacher
        self.histories: dict[str, list] = {}
        self.costs: dict[str, dict] = {}
        self.ce_runs: set[str] = set()
        self.label, self.folder = "baseline", "baseline"

    def fresh_student(self) -> torch.nn.Module:
        """The configured student, built with the seed: the method's own initial weights."""
        set_seed(self.seed)
        return build_model(self.cfg.student, self.num_classes, self.bundle.input_shape)

    def train(self, model, data=None, train: dict | None = None, input_key: str | None = None,
              build=None):
        """Train ``model`` with cross-entropy on ``data`` (default: the run's training data) under the
        run's ``train`` config updated by ``train``; ``build(ctx) -> Distiller`` replaces the
        supervised objective. Written to the run's ``folder``, resumable like every stage."""
        key = input_key or self.cfg.student.input_key
        method = (_OneStage(build) if build is not None
                  else get_method("supervised", {"input_key": key}))
        cfg = self.exp.train_cfg.model_copy(update=train or {})
        rd = self.root
        model, res = run_stages(method, student=model, train=data if data is not None else self.train_data,
                                val=self.val, train_cfg=cfg, run_dir=rd / self.folder if rd else None,
                                seed=self.seed, augment=self.augment, progress=self.exp.progress,
                                resume=self.exp.resume, label=self.label, num_classes=self.num_classes)
        self.histories[self.label] = res["train"].history
        self.costs[self.label] = cost_of(res)
        if build is None:
            self.ce_runs.add(self.label)  # its training loss is the label cross-entropy
        return model


def cost_of(results: dict) -> dict:
    """What a trained arm cost: batches stepped and training seconds, summed over its stages."""
    trained = [r for r in results.values() if not r.skipped]
    return {"batches": int(sum(r.steps or 0 for r in trained)),
            "updates": int(sum(getattr(r, "updates", 0) or 0 for r in trained)),
            "train_time_s": float(sum(r.train_time_s or 0.0 for r in trained)),
            "stages": len(trained)}


@dataclass
class Arms:
    """One seed's training: the distilled student and the rows it is compared with."""

    seed: int
    student: torch.nn.Module  # the deployed network
    last: object  # the last stage's Distiller (its eval_logits)
    label: str
    nets: dict  # comparison label -> (network, input key)
    histories: dict
    ce_runs: set
    costs: dict  # label -> cost_of(...)


@dataclass
class Prepared:
    """What ``Experiment.check`` leaves for the run: the splits, the augmentation, the training
    settings, the teacher network (built, maybe loaded) and how to train it when needed."""

    bundle: object
    train: object
    val: object
    augment: Augment | None
    train_cfg: object
    teacher_model: torch.nn.Module | None
    tcfg: object
    teacher_aug: Augment | None
    sup_teacher: Method | None  # the teacher's own training (None: it came with a checkpoint)


class Experiment:
    """One experiment from a config: ``Experiment.from_yaml(path).run()``.

    The run folder is planned here (``joryu.rundir.plan_run_dir``: refusals come at once) but
    created only in ``run``, after the data, the models and a dry run of every stage have passed.
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path | None = None, progress: bool = True,
                 resume: bool = False, overwrite: bool = False, write: bool = True):
        self.cfg = cfg
        self.seeds = cfg.seeds
        self.progress = progress
        self.resume = resume
        self.write = write
        self.method = get_method(cfg.method.name, cfg.method.params)
        self.uses_teacher = bool(self.method.needs_teacher)
        if self.uses_teacher and cfg.teacher is None:
            raise ConfigError(f"method {cfg.method.name!r} distills from a teacher: add a teacher "
                              "section (teacher: {name: ..., checkpoint: ...})")
        if not self.uses_teacher and cfg.teacher is not None:
            warn(f"the teacher section is ignored: method {cfg.method.name!r} trains without a teacher")
        if self.method.labels_only and "baseline" in cfg.model_fields_set and cfg.baseline:
            warn(f"baseline is ignored: method {cfg.method.name!r} is itself the student trained alone")
        self.compare = cfg.baseline and not self.method.labels_only
        self.plan = None
        self.run_dir = None
        if write:
            self.plan = same_on_all_processes(lambda: plan_run_dir(cfg, run_dir, overwrite, resume))
            self.run_dir = self.plan.path

    @property
    def finished(self) -> bool:
        """True when resuming a run that already completed (nothing is left to train)."""
        return self.plan is not None and self.plan.finished

    @classmethod
    def from_yaml(cls, path, overrides=(), **kw) -> Experiment:
        return cls(load_config(path, list(overrides)), **kw)

    def log(self, msg: str) -> None:
        if self.progress and is_main():
            print(msg, flush=True)

    def _commit(self) -> None:
        if self.plan is not None:
            planned = self.plan.path
            path = same_on_all_processes(lambda: self.plan.commit(dump_config(self.cfg), True))
            self.plan.path, self.plan.committed, self.run_dir = path, True, path
            if path != planned:
                self.log(f"run folder: {path} ({planned} was taken by a run started at the same time)")
            for note in self.plan.notes:
                warn(note)
            wait_for_everyone()

    def check(self) -> Prepared:
        """Everything before training: the data, every network built and probed on it, and the
        check before training of every stage (teacher, student alone, the method) through the
        stage loop's dry mode. Nothing is written; a mistake is one line."""
        prepared = self.prepare()
        self.check_method(prepared, self.method, f"student + {self.cfg.method.name}")
        return prepared

    def prepare(self) -> Prepared:
        """``check`` without the method's own stages: data, networks, the teacher's training and
        the student alone checked."""
        cfg = self.cfg
        rd = self.run_dir
        if self.finished:
            raise ConfigError(f"{rd} holds a finished run; nothing to resume (its report is "
                              f"{rd / 'report.md'})")
        tracking.check_trackers(cfg.train.log_with)
        if cfg.teacher is not None and cfg.teacher.train is not None:
            tracking.check_trackers(cfg.teacher.train.log_with, "teacher.train.log_with")
        train_cfg = cfg.train
        if train_cfg.log_with and not train_cfg.run_name:
            train_cfg = train_cfg.model_copy(update={"run_name": cfg.name})
        self.train_cfg = train_cfg
        bundle = load_data(cfg.data)
        if cfg.data.augment is not None:
            augment = cfg.data.augment
        else:  # transforms from the config replace the dataset's default batch augmentation
            augment = Augment() if cfg.data.transform is not None else bundle.augment
        if bundle.val is not None:
            train, val = bundle.train, bundle.val
        else:
            train, val = split_any(bundle.train, cfg.data.val_fraction, cfg.data.split_seed)
        size = len(train) if getattr(train, "sized", True) else "a stream of"
        self.log(f"data {bundle.name}: {size} train / {len(val) if val is not None else 0} val / "
                 f"{len(bundle.test)} test, input {bundle.input_shape}, {bundle.num_classes} classes")

        # --- build every network and check them on the data before anything is written or trained
        set_seed(cfg.seed)
        models, keys, names = {}, {}, {}
        teacher_model = None
        if self.uses_teacher:
            teacher_shape = input_shape_of(train, cfg.teacher.input_key, bundle.input_shape)
            teacher_model = build_model(cfg.teacher, bundle.num_classes, teacher_shape, "teacher")
            models["teacher"], keys["teacher"] = teacher_model, cfg.teacher.input_key
            names["teacher"] = f"teacher {cfg.teacher.name!r}"
        student_proto = build_model(cfg.student, bundle.num_classes, bundle.input_shape, "student")
        causal = is_causal_lm(student_proto)  # Hugging Face labels: shifted once for a causal LM
        bundle, train, val = align_labels(bundle, causal), align_labels(train, causal), align_labels(val, causal)
        models["student"], keys["student"] = student_proto, cfg.student.input_key
        names["student"] = f"student {cfg.student.name!r}"
        check_classes(models, train, bundle.num_classes, keys, names, bundle.input_shape)
        train_teacher = self.uses_teacher and not cfg.teacher.checkpoint
        tcfg = (cfg.teacher.train or train_cfg) if self.uses_teacher else None
        if tcfg is not None and not tcfg.log_with:  # the teacher's stage goes to the run's trackers too
            tcfg = tcfg.model_copy(update={k: getattr(train_cfg, k) for k in ("log_with", "project", "run_name")})
        teacher_aug = augment if cfg.data.teacher_augment else None
        sup_teacher = get_method("supervised", {"input_key": cfg.teacher.input_key}) if train_teacher else None
        # the check before training: every stage through the same loop, in its dry mode
        if train_teacher:
            run_stages(sup_teacher, student=teacher_model, train=train, train_cfg=tcfg, seed=cfg.seed,
                       augment=teacher_aug, label="teacher", dry=True)
        if self.compare:
            run_stages(get_method("supervised", {"input_key": cfg.student.input_key}), student=student_proto,
                       train=train, train_cfg=train_cfg, seed=cfg.seed, augment=augment,
                       label="student alone", dry=True)
        return Prepared(bundle, train, val, augment, train_cfg, teacher_model, tcfg, teacher_aug, sup_teacher)

    def check_method(self, p: Prepared, method, label: str) -> None:
        """The check before training of ``method``'s stages on the prepared data and teacher (the
        stage loop's dry mode); a mistake is one line naming the stage."""
        cfg = self.cfg
        set_seed(cfg.seed)
        student = build_model(cfg.student, p.bundle.num_classes, p.bundle.input_shape, "student")
        with restored(p.teacher_model):  # freezing it for the check must not freeze it for training
            # placed as in training (a missing device fails here); the cast to teacher.dtype waits
            # for the real run, so the teacher is not rounded before it is trained or scored
            teacher = None
            if p.teacher_model is not None and method.needs_teacher:
                teacher_dtype(cfg.teacher.dtype)
                teacher = FrozenTeacher(p.teacher_model, cfg.teacher.input_key, device=cfg.teacher.device)
            run_stages(method, student=student, teacher=teacher, train=p.train, train_cfg=p.train_cfg,
                       seed=cfg.seed, augment=p.augment, num_classes=p.bundle.num_classes, label=label,
                       dry=True)

    def run(self) -> dict:
        """Check, then train the teacher (unless given), the method and its comparison rows, and
        score every network once on the test split."""
        p = self.check()
        self._commit()
        ok = False
        try:  # --overwrite: the run this one replaces is deleted only when this one finishes
            summary = self._train(p)
            ok = True
            return summary
        finally:
            note = self.plan.finish(ok) if self.plan is not None else None
            if note:
                warn(note)

    def _train(self, p: Prepared) -> dict:
        cfg, rd = self.cfg, self.run_dir
        bundle, train_cfg = p.bundle, p.train_cfg

        # --- teacher
        teacher_model, teacher_result = self.train_teacher(p)
        teacher = None
        if teacher_model is not None:
            teacher = FrozenTeacher(teacher_model, cfg.teacher.input_key, device=cfg.teacher.device,
                                    dtype=None if cfg.teacher.dtype == "float32" else cfg.teacher.dtype)

        nets: dict[str, tuple] = {}  # label -> (network, input key)
        histories = {}
        ce_runs = {"teacher"}  # runs whose training loss is the label cross-entropy
        if teacher is not None:
            nets["teacher"] = (teacher_model, cfg.teacher.input_key)
            if teacher_result:
                histories["teacher"] = teacher_result.history

        arms = self._train_arms(p, teacher, cfg.seed, rd)
        student, last, label = arms.student, arms.last, arms.label
        nets.update(arms.nets)
        histories.update(arms.histories)
        ce_runs |= arms.ce_runs

        # --- the test split, read once per network, at the end (a teacher distilled from in 16 bits
        # is scored with its 16-bit weights, computed in float32 like every other network)
        if teacher_model is not None and cfg.teacher.dtype != "float32":
            teacher_model.float()
        rows = {}
        for name, (net, key) in nets.items():
            net.to(pick_device(train_cfg)).eval()
            rows[name] = self._row(net, lambda b, net=net, key=key: {"student": forward(net, b, key)},
                                   bundle, key, teacher_model if name != "teacher" else None)
        last.to(pick_device(train_cfg)).eval()
        rows[label] = self._row(student, last.eval_logits, bundle, cfg.student.input_key, teacher_model)
        rows[label]["trainable_params"] = parameter_counts(student)["trainable"]  # LoRA: the adapters

        summary = {"name": cfg.name, "run_dir": str(rd) if rd else None, "rows": rows,
                   "method": cfg.method.name, "data": bundle.name}
        if rd is not None and is_main():
            save_weights(student, rd / "student.safetensors")
            if is_peft(student):  # the adapters alone, for peft's PeftModel.from_pretrained
                save_adapters(student, rd / "adapter")
            if teacher_model is not None:
                save_weights(teacher_model, rd / "teacher.safetensors")
        found = self._evidence(p, teacher, teacher_model, arms, rows)
        trivial = evidence.majority_baseline(p.train, bundle.test)
        if trivial is not None:  # the floor every trained row must clear
            found = {**found, "trivial": trivial}
            below = [k for k, r in rows.items() if k != "teacher" and r["test_acc"] <= trivial["test_acc"]]
            if below:
                found["warnings"] = [*found.get("warnings", []),
                                     f"{' and '.join(below)} do(es) not beat the trivial baseline (always "
                                     f"class {trivial['class']}: {trivial['test_acc']:.2f}% on test)."]
        summary["evidence"] = found
        if rd is not None and is_main():
            report = write_run_report(rd, cfg, rows, histories, ce_runs, found)
            tracking.log_report(cfg.model_copy(update={"train": train_cfg}), rd, rows, report)
        self.student = student
        self.summary = summary
        return summary

    def train_teacher(self, p: Prepared):
        """(teacher network, its stage result or None): trained once, unless it came with a
        checkpoint; resumable."""
        if p.sup_teacher is None:
            return p.teacher_model, None
        rd = self.run_dir
        model, res = run_stages(p.sup_teacher, student=p.teacher_model, train=p.train, val=p.val,
                                train_cfg=p.tcfg, run_dir=rd / "teacher" if rd else None, seed=self.cfg.seed,
                                augment=p.teacher_aug, progress=self.progress, resume=self.resume,
                                label="teacher")
        return model, res["train"]

    def _train_arms(self, p: Prepared, teacher, seed: int, root: Path | None) -> Arms:
        """The method, then what it is compared with (the student alone on the same budget, or
        the method's own natural comparison, ``Method.baselines``), on one seed, written under
        ``root``; resumable stage by stage."""
        cfg = self.cfg
        set_seed(seed)
        student = build_model(cfg.student, p.bundle.num_classes, p.bundle.input_shape, "student")
        label = f"student + {cfg.method.name}"
        ctx = StageContext(student=student, teacher=teacher, train_data=p.train, num_classes=p.bundle.num_classes,
                           train_cfg=p.train_cfg, seed=seed, augment=p.augment)
        student, res = run_stages(self.method, student=student, teacher=teacher, train=p.train, val=p.val,
                                  train_cfg=p.train_cfg, run_dir=root / cfg.method.name if root else None,
                                  seed=seed, augment=p.augment, progress=self.progress, resume=self.resume,
                                  label=label, num_classes=p.bundle.num_classes, context=ctx)
        histories = {(f"{label} ({stage_name})" if len(res) > 1 else label): r.history
                     for stage_name, r in res.items() if not r.skipped}
        ce_runs = set(histories) if self.method.labels_only else set()
        costs = {label: cost_of(res)}
        nets = {}
        if self.compare:
            bctx = BaselineContext(self, ctx, student, p.train, p.val, p.bundle, p.augment, seed, root)
            for b in self.method.baselines():
                bctx.label = b.label
                bctx.folder = b.folder or tracking.slug(b.label)
                set_seed(seed)
                net = b.run(bctx)
                nets[b.label] = (net, b.input_key or cfg.student.input_key)
            histories = {**bctx.histories, **histories}
            ce_runs |= bctx.ce_runs
            costs.update(bctx.costs)
        last = [r.distiller for r in res.values() if r.distiller is not None][-1]
        return Arms(seed, student, last, label, nets, histories, ce_runs, costs)

    def _top1(self, predict, data) -> float:
        with torch.no_grad():
            r = evaluate_predictions(predict, data, None, "input", self.cfg.train.eval_batch_size,
                                     pick_device(self.cfg.train))
        first = next(iter(r.values()), None)
        return first["top1"] if first is not None and first["n"] > 0 else None  # None: nothing scored

    def _scores(self, arms: Arms, data) -> tuple[float, float | None]:
        """(method, first comparison) top-1 on ``data``."""
        device = pick_device(self.cfg.train)
        arms.last.to(device).eval()
        m = self._top1(arms.last.eval_logits, data)
        if not arms.nets:
            return m, None
        net, key = next(iter(arms.nets.values()))
        net.to(device).eval()
        return m, self._top1(lambda b: {"student": forward(net, b, key)}, data)

    def _evidence(self, p: Prepared, teacher, teacher_model, first: Arms, rows: dict) -> dict:
        """Did it help? The method against its first comparison row over ``seeds`` paired seeds
        (the first is the run's own), on validation and, once at the end, on the test split;
        with the warnings of ``joryu.run.evidence``."""
        cfg, rd = self.cfg, self.run_dir
        if not first.nets:
            return {}
        base_label = next(iter(first.nets))
        seeds = [cfg.seed + i for i in range(self.seeds)]
        all_arms = [first]
        for s in seeds[1:]:
            self.log(f"seed {s}: {first.label} and {base_label}")
            all_arms.append(self._train_arms(p, teacher, s, rd / "seeds" / f"seed-{s}" if rd else None))
        val, test = evidence.SeedValues(), evidence.SeedValues()
        for a in all_arms:
            if p.val is not None:
                mv, bv = self._scores(a, p.val)
                if mv is not None and bv is not None:  # a split without a scored label gives nothing
                    val.method.append(mv)
                    val.baseline.append(bv)
            if a is first:  # the rows already read the test split once
                test.method.append(rows[first.label]["test_acc"])
                test.baseline.append(rows[base_label]["test_acc"])
            else:
                mt, bt = self._scores(a, p.bundle.test)
                test.method.append(mt)
                test.baseline.append(bt)
        out = {"metric": "top-1 accuracy (%)", "seeds": seeds, "method": first.label,
               "baseline": base_label,
               "costs": {label: c for label, c in first.costs.items()}}
        if val.method and len(val.method) == len(seeds):
            out["val"] = evidence.judge(val)
        if all(v is not None for v in test.method + test.baseline):
            out["test"] = evidence.judge(test)
        teacher_val = alone_val = None
        if teacher_model is not None and p.val is not None:
            teacher_model.to(pick_device(cfg.train)).eval()
            key_t = cfg.teacher.input_key
            teacher_val = self._top1(lambda b: {"t": forward(teacher_model, b, key_t)}, p.val)
            alone_val = val.baseline[0] if val.baseline else None
        out["warnings"] = evidence.warnings_for(len(seeds), out.get("val"), teacher_val, alone_val,
                                                evidence.val_curve(first.histories.get(base_label, [])),
                                                base_label)
        if teacher_val is not None:
            out["teacher_val"] = teacher_val
        return out

    def _row(self, model, predict, bundle, input_key: str = "input", teacher=None) -> dict:
        """A report row from one pass over the test split (``joryu.evaluate``: top-1, top-5, NLL,
        ECE with its reliability bins, agreement and KL with the teacher, for every prediction of
        ``predict``; the first is the network's own) and the deployment numbers."""
        cfg = self.cfg
        key_t = cfg.teacher.input_key if cfg.teacher is not None else "input"
        if teacher is not None:
            teacher.eval()
        with torch.no_grad():
            results = evaluate_predictions(predict, bundle.test, teacher, key_t, cfg.train.eval_batch_size,
                                           pick_device(cfg.train))
        ev = next(iter(results.values()))
        dep = deployment_stats(model, bundle.test, input_key, precision=cfg.train.mixed_precision)
        return {"params": dep["params"],
                "latency_ms": dep["cpu_batch1"]["median_ms"],
                "test_acc": ev["top1"],
                **{f"test/{name}/{k}": v for name, r in results.items() for k, v in metrics.short(r).items()},
                "eval": {k: v for k, v in ev.items()}, "deploy": dep}
