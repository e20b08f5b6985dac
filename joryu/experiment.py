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
from joryu.data import Augment, TensorData, load_data, split_any
from joryu.data.sources import align_labels
from joryu.engine import Engine, load_weights, save_weights
from joryu.engine.loop import pick_device
from joryu.errors import ConfigError, JoryuError, one_line, warn
from joryu.losses import positions
from joryu.methods import Method, Stage, StageContext, get_method
from joryu.methods.supervised import SupervisedDistiller
from joryu.outputs import (
    call,
    declare_inputs,
    example_batch,
    forward,
    input_keys,
    is_causal_lm,
    normalize_inputs,
)
from joryu.preflight import dry_run
from joryu.rundir import atomic_write_text, dump_config, plan_run_dir
from joryu.teachers import FrozenTeacher
from joryu.tracking import slug as tracking_slug
from joryu.weights import load_into


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
    declare_inputs(model, cfg.inputs)
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if not path.exists():
            raise ConfigError(f"checkpoint {path} for model {cfg.name!r} not found")
        load_into(model, path, f"model {cfg.name!r}")
    return model


def probe_logits(model: torch.nn.Module, data, inputs="input") -> torch.Tensor:
    """The model's logits on the first two samples of ``data`` (eval mode, no gradients)."""
    batch = example_batch(data, 2)
    batch = {k: (v.to(_device_of(model)) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return forward(model, batch, inputs)
    finally:
        model.train(was)


def _device_of(model: torch.nn.Module):
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def output_classes(model: torch.nn.Module, data, input_key="input", name: str = "model",
                   data_shape=None) -> int:
    """Classes (vocabulary size for token logits) that ``model`` predicts on ``data``; a model
    that cannot run on the data is one ConfigError naming it and the shapes."""
    try:
        out = probe_logits(model, data, input_key)
    except JoryuError:
        raise
    except Exception as e:
        try:
            got = {k: tuple(v.shape) for k, v in example_batch(data, 2).items()
                   if isinstance(v, torch.Tensor) and k in input_keys(normalize_inputs(input_key))}
        except Exception:  # noqa: BLE001 - the description is best effort
            got = {}
        shape = f", the dataset's input shape is {tuple(data_shape)}" if data_shape is not None else ""
        got = f"a batch of shape {next(iter(got.values()))}" if len(got) == 1 else f"batch shapes {got}"
        raise ConfigError(f"{name} cannot run on the data: given {got}"
                          f"{shape}: {type(e).__name__}: {one_line(e)}. Fix the model's kwargs "
                          "(input_shape, in_channels...) or its inputs") from None
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        raise ConfigError(f"{name} returned {type(out).__name__} of shape "
                          f"{tuple(getattr(out, 'shape', ()))}; expected logits [batch, classes, ...]")
    return positions.num_classes(out)


def input_shape_of(data, key, default) -> tuple:
    """Per-sample shape of ``data``'s ``key`` tensor (``default`` for ``input`` or streamed data);
    with several inputs, the shape of the first."""
    key = input_keys(normalize_inputs(key))[0]
    if key != "input" and isinstance(data, TensorData):
        if key not in data.tensors:
            raise ConfigError(f"the data has no {key!r} tensor (it has {sorted(data.tensors)}); "
                              "fix the model's inputs")
        return tuple(data.tensors[key].shape[1:])
    if key != "input" and isinstance(key, str) and hasattr(data, "sample"):
        sample = data.sample(0, train=True)
        if key not in sample:
            raise ConfigError(f"the data has no {key!r} key (a sample has {sorted(sample)}); "
                              "fix the model's input_key or add it with data.views")
        return tuple(sample[key].shape)
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
        raise ConfigError(f"class counts differ (vocabulary sizes, for language models): the data has "
                          f"{num_classes} classes, {desc}. Set num_classes (or vocab_size) in the model's "
                          "kwargs (or fix the checkpoint) so all agree.")


def check_method_fits(method, model: torch.nn.Module, data) -> None:
    """A method that needs one label per sample refuses per-position (token, pixel) logits."""
    if getattr(method, "per_position_ok", False) or data is None:
        return
    try:
        logits = probe_logits(model, data)
    except Exception:  # noqa: BLE001 - only a pre-check; training reports its own error
        return
    if positions.per_position(logits):
        raise ConfigError(f"method {method.name!r} needs one label per sample, but the student predicts per "
                          f"position (logits {tuple(logits.shape)}); use kd or supervised for token and "
                          "pixel outputs")


@torch.no_grad()
def cpu_latency_ms(model: torch.nn.Module, input_shape=None, repeats: int = 30, batch=None,
                   inputs="input") -> float:
    """Median wall time of one single-sample forward pass on the CPU, in milliseconds.

    ``batch``: a real one-sample batch (its dtypes and keys, e.g. token ids and an attention
    mask); without it, a random float input of ``input_shape``."""
    import copy

    m = copy.deepcopy(model).cpu().eval()
    if batch is not None:
        b = {k: v[:1].cpu() for k, v in batch.items() if isinstance(v, torch.Tensor)}
    else:
        b = {"input": torch.randn(1, *input_shape)}
        inputs = "input"
        m.__dict__.pop("joryu_inputs", None)

    def run():
        call(m, b, inputs)

    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return 1000 * sorted(times)[len(times) // 2]


def run_stages(method, student, teacher, train, val, train_cfg: TrainConfig, run_dir: Path | None,
               seed: int, augment: Augment | None, progress: bool = True, resume: bool = False,
               label: str | None = None, num_classes: int | None = None, context: StageContext | None = None):
    """Run a method's stages through the engine; returns (deployable network, stage results).

    ``context``: the StageContext to use (and fill), when the caller needs its ``extras`` later."""
    ctx = context or StageContext(student=student, teacher=teacher, train_data=train,
                                  num_classes=num_classes or getattr(train, "num_classes", 0),
                                  train_cfg=train_cfg, seed=seed, augment=augment)
    check_method_fits(method, student, train)
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
            full = sdir / "distiller.safetensors"  # older runs kept the Distiller in final.safetensors
            load_weights(distiller, full if full.is_file() else sdir / "final.safetensors")
            result = json.loads(done.read_text())
        else:
            engine = Engine(cfg, sdir, seed=seed, stage=name, progress=progress)
            fit = engine.fit(distiller, stage_train, val, augment=augment, resume=resume)
            result = {"history": fit.history, "val": fit.val, "train_time_s": fit.train_time_s,
                      "samples_per_s": fit.samples_per_s}
            if sdir is not None and is_main():
                # final.safetensors: the deployable network's own state dict (loads into the plain
                # model); distiller.safetensors: everything the stage trained, for --resume.
                save_weights(distiller.deployable(), sdir / "final.safetensors")
                save_weights(distiller, sdir / "distiller.safetensors")
                atomic_write_text(done, json.dumps(result, indent=1))
        ctx.results[stage.name] = {"distiller": distiller, **result}
        if stage.after is not None:
            stage.after(ctx, distiller)
    return distiller.deployable(), ctx.results


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
        model, res = run_stages(method, model, None, data if data is not None else self.train_data, self.val,
                                cfg, rd / self.folder if rd else None, self.cfg.seed, self.augment,
                                self.exp.progress, self.exp.resume, self.label, self.num_classes)
        self.histories[self.label] = res["train"]["history"]
        if build is None:
            self.ce_runs.add(self.label)  # its training loss is the label cross-entropy
        return model


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
        from joryu import tracking

        cfg = self.cfg
        rd = self.run_dir
        if self.finished:
            raise ConfigError(f"{rd} holds a finished run; nothing to resume (its report is "
                              f"{rd / 'report.md'})")
        tracking.check_trackers(cfg.train.log_with)
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
        if train_teacher:
            dry_run(sup_teacher, teacher_model, None, train, tcfg, cfg.seed, teacher_aug, label="teacher")
        if cfg.baseline and cfg.method.name != "supervised":
            dry_run(get_method("supervised", {"input_key": cfg.student.input_key}), student_proto, None,
                    train, cfg.train, cfg.seed, augment, label="student alone")
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
        student, res = run_stages(self.method, student, teacher, train, val, train_cfg,
                                  rd / cfg.method.name if rd else None, cfg.seed, augment,
                                  self.progress, self.resume, label, bundle.num_classes, context=ctx)
        method_histories = {(f"{label} ({stage_name})" if len(res) > 1 else label): r["history"]
                            for stage_name, r in res.items()}
        last = list(res.values())[-1]["distiller"]

        # --- what the method is compared with: the student alone on the same budget, or the
        # method's own natural comparison (Method.baselines)
        if cfg.baseline and cfg.method.name != "supervised":
            bctx = BaselineContext(self, ctx, student, train, val, bundle, augment)
            for b in self.method.baselines():
                bctx.label = b.label
                bctx.folder = b.folder or tracking_slug(b.label)
                set_seed(cfg.seed)
                net = b.run(bctx)
                nets[b.label] = (net, b.input_key or cfg.student.input_key)
            histories.update(bctx.histories)
            ce_runs |= bctx.ce_runs
        histories.update(method_histories)

        rows = {}
        engine = Engine(cfg.train.model_copy(update={"log_with": []}), None, seed=cfg.seed, progress=False)
        for name, (net, key) in nets.items():
            evals = engine.evaluate(SupervisedDistiller(net, key), bundle.test, "test")
            rows[name] = self._row(net, bundle, evals, key, teacher_model if name != "teacher" else None)
        s_eval = engine.evaluate(last, bundle.test, "test")
        rows[label] = self._row(student, bundle, s_eval, cfg.student.input_key, teacher_model)

        summary = {"name": cfg.name, "run_dir": str(rd) if rd else None, "rows": rows,
                   "method": cfg.method.name, "data": bundle.name}
        if rd is not None and is_main():
            from joryu.report import write_run_report

            save_weights(student, rd / "student.safetensors")
            if teacher_model is not None:
                save_weights(teacher_model, rd / "teacher.safetensors")
            if cfg.method.name == "supervised":
                ce_runs |= set(method_histories)
            report = write_run_report(rd, cfg, rows, histories, ce_runs)
            tracking.log_report(cfg.model_copy(update={"train": train_cfg}), rd, rows, report)
        self.student = student
        self.summary = summary
        return summary

    def _row(self, model, bundle, evals: dict, input_key: str = "input", teacher=None) -> dict:
        """A report row: the engine's test metrics, joryu eval's metrics (top-5, NLL, ECE with its
        reliability bins, agreement and KL with the teacher) and the deployment numbers."""
        from joryu.evaluate import evaluate_model
        from joryu.report.deploy import deployment_stats

        cfg = self.cfg
        key_t = cfg.teacher.input_key if cfg.teacher is not None else "input"
        ev = evaluate_model(model, bundle.test, input_key, teacher, key_t, cfg.train.eval_batch_size,
                            pick_device(cfg.train))
        dep = deployment_stats(model, bundle.test, input_key, precision=cfg.train.mixed_precision)
        return {"params": dep["params"],
                "latency_ms": dep["cpu_batch1"]["median_ms"],
                "test_acc": evals["test/acc"],
                **{k: v for k, v in evals.items() if k.startswith("test/") and k.count("/") == 2},
                "eval": ev, "deploy": dep}
