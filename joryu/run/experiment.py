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
from joryu.outputs import forward, is_causal_lm
from joryu.report import write_run_report
from joryu.report.deploy import deployment_stats
from joryu.run.process import is_main, same_on_all_processes, wait_for_everyone
from joryu.run.rundir import dump_config, plan_run_dir
from joryu.run.stages import restored, run_stages
from joryu.teachers import FrozenTeacher


class _OneStage(Method):
    """An ad-hoc one-stage method for a baseline: ``build(ctx) -> Distiller``."""

    needs_teacher = False

    def __init__(self, build, name: str = "baseline"):
        self._build, self.name, self.params = build, name, None

    def stages(self):
        return [Stage("train", self._build)]


class BaselineContext:
    """What a method's ``Baseline.run`` gets: the run's config, data and seed, the method's stage
    context (``ctx.results``, ``ctx.extras``) and deployed network, and ways to train a comparison
    with the run's code and budget (``train``)."""

    def __init__(self, exp: Experiment, ctx: StageContext, deployed, train, val, bundle, augment):
        self.exp, self.cfg, self.ctx, self.deployed = exp, exp.cfg, ctx, deployed
        self.train_data, self.val, self.bundle, self.augment = train, val, bundle, augment
        self.seed = exp.cfg.seed
        self.num_classes = bundle.num_classes
        self.teacher = ctx.teacher
        self.histories: dict[str, list] = {}
        self.ce_runs: set[str] = set()
        self.label, self.folder = "baseline", "baseline"

    def fresh_student(self) -> torch.nn.Module:
        """The configured student, built with the run's seed: the method's own initial weights."""
        set_seed(self.cfg.seed)
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
        rd = self.exp.run_dir
        model, res = run_stages(method, student=model, train=data if data is not None else self.train_data,
                                val=self.val, train_cfg=cfg, run_dir=rd / self.folder if rd else None,
                                seed=self.cfg.seed, augment=self.augment, progress=self.exp.progress,
                                resume=self.exp.resume, label=self.label, num_classes=self.num_classes)
        self.histories[self.label] = res["train"]["history"]
        if build is None:
            self.ce_runs.add(self.label)  # its training loss is the label cross-entropy
        return model


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
            augment = Augment(**cfg.data.augment.model_dump())
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
        with restored(teacher_model):  # freezing it for the check must not freeze it for training
            dry_teacher = FrozenTeacher(teacher_model, cfg.teacher.input_key) if teacher_model is not None else None
            run_stages(self.method, student=student_proto, teacher=dry_teacher, train=train, train_cfg=train_cfg,
                       seed=cfg.seed, augment=augment, num_classes=bundle.num_classes,
                       label=f"student + {cfg.method.name}", dry=True)
        del dry_teacher, student_proto
        return Prepared(bundle, train, val, augment, train_cfg, teacher_model, tcfg, teacher_aug, sup_teacher)

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
        bundle, train, val, augment, train_cfg = p.bundle, p.train, p.val, p.augment, p.train_cfg
        teacher_model, tcfg, teacher_aug, sup_teacher = p.teacher_model, p.tcfg, p.teacher_aug, p.sup_teacher
        train_teacher = sup_teacher is not None

        # --- teacher
        teacher_result = None
        if train_teacher:
            teacher_model, res = run_stages(
                sup_teacher, student=teacher_model, train=train, val=val, train_cfg=tcfg,
                run_dir=rd / "teacher" if rd else None, seed=cfg.seed, augment=teacher_aug,
                progress=self.progress, resume=self.resume, label="teacher")
            teacher_result = res["train"]
        teacher = FrozenTeacher(teacher_model, cfg.teacher.input_key) if teacher_model is not None else None

        nets: dict[str, tuple] = {}  # label -> (network, input key)
        histories = {}
        ce_runs = {"teacher"}  # runs whose training loss is the label cross-entropy
        if teacher is not None:
            nets["teacher"] = (teacher_model, cfg.teacher.input_key)
            if teacher_result:
                histories["teacher"] = teacher_result["history"]

        # --- the method
        set_seed(cfg.seed)
        student = build_model(cfg.student, bundle.num_classes, bundle.input_shape, "student")
        label = f"student + {cfg.method.name}"
        ctx = StageContext(student=student, teacher=teacher, train_data=train, num_classes=bundle.num_classes,
                           train_cfg=train_cfg, seed=cfg.seed, augment=augment)
        student, res = run_stages(self.method, student=student, teacher=teacher, train=train, val=val,
                                  train_cfg=train_cfg, run_dir=rd / cfg.method.name if rd else None,
                                  seed=cfg.seed, augment=augment, progress=self.progress, resume=self.resume,
                                  label=label, num_classes=bundle.num_classes, context=ctx)
        method_histories = {(f"{label} ({stage_name})" if len(res) > 1 else label): r["history"]
                            for stage_name, r in res.items()}
        last = list(res.values())[-1]["distiller"]

        # --- what the method is compared with: the student alone on the same budget, or the
        # method's own natural comparison (Method.baselines)
        if self.compare:
            bctx = BaselineContext(self, ctx, student, train, val, bundle, augment)
            for b in self.method.baselines():
                bctx.label = b.label
                bctx.folder = b.folder or tracking.slug(b.label)
                set_seed(cfg.seed)
                net = b.run(bctx)
                nets[b.label] = (net, b.input_key or cfg.student.input_key)
            histories.update(bctx.histories)
            ce_runs |= bctx.ce_runs
        histories.update(method_histories)

        # --- the test split, read once per network, at the end
        rows = {}
        for name, (net, key) in nets.items():
            net.to(pick_device(train_cfg)).eval()
            rows[name] = self._row(net, lambda b, net=net, key=key: {"student": forward(net, b, key)},
                                   bundle, key, teacher_model if name != "teacher" else None)
        last.to(pick_device(train_cfg)).eval()
        rows[label] = self._row(student, last.eval_logits, bundle, cfg.student.input_key, teacher_model)

        summary = {"name": cfg.name, "run_dir": str(rd) if rd else None, "rows": rows,
                   "method": cfg.method.name, "data": bundle.name}
        if rd is not None and is_main():
            save_weights(student, rd / "student.safetensors")
            if teacher_model is not None:
                save_weights(teacher_model, rd / "teacher.safetensors")
            if self.method.labels_only:
                ce_runs |= set(method_histories)
            report = write_run_report(rd, cfg, rows, histories, ce_runs)
            tracking.log_report(cfg.model_copy(update={"train": train_cfg}), rd, rows, report)
        self.student = student
        self.summary = summary
        return summary

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
