"""Runs an experiment: teacher, student alone, student distilled; evaluates once on the test split."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
from accelerate.state import PartialState
from accelerate.utils import set_seed

from joryu import models as zoo
from joryu.config import ExperimentConfig, ModelConfig, TrainConfig, load_config
from joryu.data import Augment, TensorData, load, split_validation
from joryu.engine import Engine, load_weights, save_weights
from joryu.errors import ConfigError, JoryuError, one_line, warn
from joryu.methods import StageContext, get_method
from joryu.methods.supervised import SupervisedDistiller
from joryu.outputs import forward
from joryu.preflight import dry_run
from joryu.rundir import atomic_write_text, dump_config, plan_run_dir
from joryu.teachers import FrozenTeacher


def process_state() -> PartialState:
    """Accelerate's process state, set up the way the engine sets it up (gloo on a CPU-only machine)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    return process_state().is_main_process


def new_run_dir(base: str | Path, name: str, overwrite: bool = False, resume: bool = False) -> Path:
    """Where a run of ``name`` under ``base`` goes (see ``joryu.rundir.plan_run_dir``); creates nothing."""
    from types import SimpleNamespace

    return plan_run_dir(SimpleNamespace(output_dir=str(base), name=name), None, overwrite, resume).path


def _same_on_all_processes(fn):
    """Run ``fn`` on the main process and hand its result to every process (one under torchrun)."""
    state = process_state()
    if state.num_processes == 1:
        return fn()
    import torch.distributed as dist

    box = [None]
    if state.is_main_process:
        try:
            box = [("ok", fn())]
        except JoryuError as e:  # every process stops with the same one-line error, none hangs
            box = [("error", e)]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


def build_model(cfg: ModelConfig, num_classes: int, input_shape, role: str = "model") -> torch.nn.Module:
    """A zoo model (``num_classes``/``input_shape`` filled in where the factory takes them) or an
    import-path factory's model, with ``cfg.checkpoint`` loaded; bad input raises one line."""
    kwargs = dict(cfg.kwargs)
    if ":" not in cfg.name:
        factory = zoo.registry.zoo_factory(cfg.name)
        if zoo.registry.accepts(factory, "num_classes"):
            kwargs.setdefault("num_classes", num_classes)
        if zoo.registry.accepts(factory, "input_shape"):
            kwargs.setdefault("input_shape", tuple(input_shape))
    model = zoo.create(cfg.name, **kwargs)
    if cfg.checkpoint:
        from joryu.engine.checkpoint import load_user_weights

        load_user_weights(model, cfg.checkpoint, f"{role} {cfg.name!r}")
    return model


def output_classes(model: torch.nn.Module, data, input_key: str = "input", name: str = "model",
                   data_shape=None) -> int:
    sample = data.tensors[input_key][:2] if isinstance(data, TensorData) else data[0][input_key].unsqueeze(0)
    if isinstance(data, TensorData):
        sample = data.prepare_input(sample)
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = forward(model, {input_key: sample}, input_key)
    except JoryuError:
        raise
    except Exception as e:
        shape = f", the dataset's input shape is {tuple(data_shape)}" if data_shape is not None else ""
        raise ConfigError(f"{name} cannot run on the data: given a batch of shape {tuple(sample.shape)}"
                          f"{shape}: {type(e).__name__}: {one_line(e)}. Fix the model's kwargs "
                          "(input_shape, in_channels...) or input_key") from None
    finally:
        model.train(was)
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        raise ConfigError(f"{name} returned {type(out).__name__} of shape "
                          f"{tuple(getattr(out, 'shape', ()))}; expected class logits [batch, classes]")
    return int(out.shape[-1])


def input_shape_of(data, key: str, default) -> tuple:
    """Per-sample shape of ``data``'s ``key`` tensor (``default`` for ``input`` or streamed data)."""
    if key != "input" and isinstance(data, TensorData):
        if key not in data.tensors:
            raise ConfigError(f"the data has no {key!r} tensor (it has {sorted(data.tensors)}); "
                              "fix the model's input_key")
        return tuple(data.tensors[key].shape[1:])
    return tuple(default)


def check_classes(models: dict[str, torch.nn.Module], data, num_classes: int,
                  input_keys: dict[str, str] | None = None, names: dict[str, str] | None = None,
                  data_shape=None) -> None:
    keys = input_keys or {}
    names = names or {}
    counts = {name: output_classes(m, data, keys.get(name, "input"), names.get(name, name), data_shape)
              for name, m in models.items()}
    bad = {k: v for k, v in counts.items() if v != num_classes}
    if bad:
        desc = ", ".join(f"{k} predicts {v}" for k, v in counts.items())
        raise ConfigError(f"class counts differ: the data has {num_classes} classes, {desc}. "
                          "Set num_classes in the model's kwargs (or fix the checkpoint) so all agree.")


@torch.no_grad()
def cpu_latency_ms(model: torch.nn.Module, input_shape, repeats: int = 30) -> float:
    """Median wall time of one single-sample forward pass on the CPU, in milliseconds."""
    import copy

    m = copy.deepcopy(model).cpu().eval()
    x = torch.randn(1, *input_shape)
    for _ in range(3):
        m(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        m(x)
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def run_stages(method, student, teacher, train, val, train_cfg: TrainConfig, run_dir: Path | None,
               seed: int, augment: Augment | None, progress: bool = True, resume: bool = False,
               label: str | None = None, num_classes: int | None = None):
    """Run a method's stages through the engine; returns (deployable network, stage results)."""
    ctx = StageContext(student=student, teacher=teacher, train_data=train,
                       num_classes=num_classes or getattr(train, "num_classes", 0), train_cfg=train_cfg,
                       seed=seed, augment=augment)
    stages = method.stages()
    distiller = None
    for stage in stages:
        cfg = train_cfg.model_copy(update=stage.train(ctx) if callable(stage.train) else stage.train)
        sdir = None
        if run_dir is not None:
            sdir = run_dir / stage.name if len(stages) > 1 else run_dir
        stage_train = stage.data(ctx) if stage.data is not None else train
        distiller = stage.build(ctx)
        done = sdir / "done.json" if sdir is not None else None
        name = f"{label or method.name}:{stage.name}" if len(stages) > 1 else (label or method.name)
        if resume and done is not None and done.is_file():
            load_weights(distiller, sdir / "final.safetensors")
            result = json.loads(done.read_text())
        else:
            engine = Engine(cfg, sdir, seed=seed, stage=name, progress=progress)
            fit = engine.fit(distiller, stage_train, val, augment=augment, resume=resume)
            result = {"history": fit.history, "val": fit.val, "train_time_s": fit.train_time_s,
                      "samples_per_s": fit.samples_per_s}
            if sdir is not None and is_main():
                save_weights(distiller, sdir / "final.safetensors")
                atomic_write_text(done, json.dumps(result, indent=1))
        ctx.results[stage.name] = {"distiller": distiller, **result}
        if stage.after is not None:
            stage.after(ctx, distiller)
    return distiller.deployable(), ctx.results


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
        if cfg.method.name == "supervised" and "baseline" in cfg.model_fields_set and cfg.baseline:
            warn("baseline is ignored: method 'supervised' is itself the student trained alone")
        self.plan = None
        self.run_dir = None
        if write:
            self.plan = _same_on_all_processes(lambda: plan_run_dir(cfg, run_dir, overwrite, resume))
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
            self.plan.commit(dump_config(self.cfg), is_main())
            state = process_state()
            if state.num_processes > 1:
                state.wait_for_everyone()

    def run(self) -> dict:
        cfg = self.cfg
        rd = self.run_dir
        if self.finished:
            raise ConfigError(f"{rd} holds a finished run; nothing to resume (its report is "
                              f"{rd / 'report.md'})")
        bundle = load(cfg.data.name, cfg.data.path, **cfg.data.kwargs)
        augment = (Augment(**cfg.data.augment.model_dump()) if cfg.data.augment is not None
                   else bundle.augment)
        if isinstance(bundle.train, TensorData):
            train, val = split_validation(bundle.train, cfg.data.val_fraction, cfg.data.split_seed)
        else:
            train, val = bundle.train, None
        self.log(f"data {bundle.name}: {len(train)} train / {len(val) if val is not None else 0} val / "
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
        models["student"], keys["student"] = student_proto, cfg.student.input_key
        names["student"] = f"student {cfg.student.name!r}"
        check_classes(models, train, bundle.num_classes, keys, names, bundle.input_shape)
        train_teacher = self.uses_teacher and not cfg.teacher.checkpoint
        tcfg = (cfg.teacher.train or cfg.train) if self.uses_teacher else None
        teacher_aug = augment if cfg.data.teacher_augment else None
        sup_teacher = get_method("supervised", {"input_key": cfg.teacher.input_key}) if train_teacher else None
        if train_teacher:
            dry_run(sup_teacher, teacher_model, None, train, tcfg, cfg.seed, teacher_aug, label="teacher")
        if cfg.baseline and cfg.method.name != "supervised":
            dry_run(get_method("supervised"), student_proto, None, train, cfg.train, cfg.seed, augment,
                    label="student alone")
        dry_teacher = FrozenTeacher(copy.deepcopy(teacher_model), cfg.teacher.input_key) \
            if teacher_model is not None else None
        dry_run(self.method, student_proto, dry_teacher, train, cfg.train, cfg.seed, augment,
                bundle.num_classes, label=f"student + {cfg.method.name}")
        del dry_teacher
        self._commit()

        # --- teacher
        teacher_result = None
        if train_teacher:
            teacher_model, res = run_stages(
                sup_teacher, teacher_model, None, train, val, tcfg, rd / "teacher" if rd else None, cfg.seed,
                teacher_aug, self.progress, self.resume, "teacher")
            teacher_result = res["train"]
        teacher = FrozenTeacher(teacher_model, cfg.teacher.input_key) if teacher_model is not None else None

        rows = {}
        histories = {}
        engine = Engine(cfg.train, None, seed=cfg.seed, progress=False)
        if teacher is not None:
            t_eval = engine.evaluate(SupervisedDistiller(teacher_model, cfg.teacher.input_key), bundle.test, "test")
            rows["teacher"] = self._row(teacher_model, bundle, t_eval,
                                        input_shape_of(train, cfg.teacher.input_key, bundle.input_shape))
            if teacher_result:
                histories["teacher"] = teacher_result["history"]

        # --- student alone, same init and budget
        if cfg.baseline and cfg.method.name != "supervised":
            set_seed(cfg.seed)
            base_student = build_model(cfg.student, bundle.num_classes, bundle.input_shape, "student")
            base_student, res = run_stages(
                get_method("supervised"), base_student, None, train, val, cfg.train,
                rd / "baseline" if rd else None, cfg.seed, augment, self.progress, self.resume,
                "student alone")
            histories["student alone"] = res["train"]["history"]
            b_eval = engine.evaluate(SupervisedDistiller(base_student, cfg.student.input_key), bundle.test, "test")
            rows["student alone"] = self._row(base_student, bundle, b_eval)

        # --- the method
        set_seed(cfg.seed)
        student = build_model(cfg.student, bundle.num_classes, bundle.input_shape, "student")
        label = f"student + {cfg.method.name}"
        student, res = run_stages(self.method, student, teacher, train, val, cfg.train,
                                  rd / cfg.method.name if rd else None, cfg.seed, augment,
                                  self.progress, self.resume, label, bundle.num_classes)
        for stage_name, r in res.items():
            histories[f"{label} ({stage_name})" if len(res) > 1 else label] = r["history"]
        last = list(res.values())[-1]["distiller"]
        s_eval = engine.evaluate(last, bundle.test, "test")
        rows[label] = self._row(student, bundle, s_eval)

        summary = {"name": cfg.name, "run_dir": str(rd) if rd else None, "rows": rows,
                   "method": cfg.method.name, "data": bundle.name}
        if rd is not None and is_main():
            from joryu.report import write_run_report

            save_weights(student, rd / "student.safetensors")
            write_run_report(rd, cfg, rows, histories)
        self.student = student
        self.summary = summary
        return summary

    def _row(self, model, bundle, evals: dict, input_shape=None) -> dict:
        return {"params": zoo.count_parameters(model),
                "latency_ms": cpu_latency_ms(model, input_shape or bundle.input_shape),
                "test_acc": evals["test/acc"],
                **{k: v for k, v in evals.items() if k.startswith("test/") and k.count("/") == 2}}
