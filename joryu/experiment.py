"""Runs an experiment: teacher, student alone, student distilled; evaluates once on the test split."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import yaml
from accelerate.state import PartialState
from accelerate.utils import set_seed

from joryu import models as zoo
from joryu.config import ExperimentConfig, ModelConfig, TrainConfig, load_config
from joryu.data import Augment, TensorData, load, split_validation
from joryu.engine import Engine, load_weights, save_weights
from joryu.engine.loop import pick_device
from joryu.errors import ConfigError
from joryu.methods import Method, Stage, StageContext, get_method
from joryu.methods.supervised import SupervisedDistiller
from joryu.outputs import forward
from joryu.teachers import FrozenTeacher
from joryu.tracking import slug as tracking_slug
from joryu.weights import load_into


def process_state() -> PartialState:
    """Accelerate's process state, set up the way the engine sets it up (gloo on a CPU-only machine)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    return process_state().is_main_process


def new_run_dir(base: str | Path, name: str, overwrite: bool = False, resume: bool = False) -> Path:
    """``base/name``; if it exists, ``base/name-2``, ``-3``... unless overwriting or resuming."""
    base = Path(base)
    path = base / name
    if resume:
        if not path.exists():
            raise ConfigError(f"--resume: no run folder {path} to resume; start it without --resume")
        return path
    if overwrite or not path.exists():
        if overwrite and path.exists() and is_main():
            import shutil

            shutil.rmtree(path)
        return path
    k = 2
    while (base / f"{name}-{k}").exists():
        k += 1
    return base / f"{name}-{k}"


def _same_on_all_processes(fn):
    """Run ``fn`` on the main process and hand its result to every process (one under torchrun)."""
    state = process_state()
    if state.num_processes == 1:
        return fn()
    import torch.distributed as dist

    box = [fn() if state.is_main_process else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def build_model(cfg: ModelConfig, num_classes: int, input_shape) -> torch.nn.Module:
    kwargs = dict(cfg.kwargs)
    if ":" not in cfg.name:
        kwargs.setdefault("num_classes", num_classes)
        kwargs.setdefault("input_shape", tuple(input_shape))
    model = zoo.create(cfg.name, **kwargs)
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if not path.exists():
            raise ConfigError(f"checkpoint {path} for model {cfg.name!r} not found")
        load_into(model, path, f"model {cfg.name!r}")
    return model


def output_classes(model: torch.nn.Module, data, input_key: str = "input") -> int:
    sample = data.tensors[input_key][:2] if isinstance(data, TensorData) else data[0][input_key].unsqueeze(0)
    if isinstance(data, TensorData):
        sample = data.prepare_input(sample)
    was = model.training
    model.eval()
    with torch.no_grad():
        out = forward(model, {input_key: sample}, input_key)
    model.train(was)
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
                  input_keys: dict[str, str] | None = None) -> None:
    keys = input_keys or {}
    counts = {name: output_classes(m, data, keys.get(name, "input")) for name, m in models.items()}
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
               label: str | None = None, num_classes: int | None = None, context: StageContext | None = None):
    """Run a method's stages through the engine; returns (deployable network, stage results).

    ``context``: the StageContext to use (and fill), when the caller needs its ``extras`` later."""
    ctx = context or StageContext(student=student, teacher=teacher, train_data=train,
                                  num_classes=num_classes or getattr(train, "num_classes", 0),
                                  train_cfg=train_cfg, seed=seed, augment=augment)
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
                done.write_text(json.dumps(result, indent=1))
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
    """One experiment from a config: ``Experiment.from_yaml(path).run()``."""

    def __init__(self, cfg: ExperimentConfig, run_dir: str | Path | None = None, progress: bool = True,
                 resume: bool = False, overwrite: bool = False, write: bool = True):
        self.cfg = cfg
        self.progress = progress
        self.resume = resume
        self.write = write
        if write:
            self.run_dir = Path(run_dir) if run_dir else _same_on_all_processes(
                lambda: new_run_dir(cfg.output_dir, cfg.name, overwrite, resume))
        else:
            self.run_dir = None
        self.method = get_method(cfg.method.name, cfg.method.params)

    @classmethod
    def from_yaml(cls, path, overrides=(), **kw) -> Experiment:
        return cls(load_config(path, list(overrides)), **kw)

    def log(self, msg: str) -> None:
        if self.progress and is_main():
            print(msg, flush=True)

    def run(self) -> dict:
        from joryu import tracking

        cfg = self.cfg
        rd = self.run_dir
        tracking.check_trackers(cfg.train.log_with)
        train_cfg = cfg.train
        if train_cfg.log_with and not train_cfg.run_name:
            train_cfg = train_cfg.model_copy(update={"run_name": cfg.name})
        self.train_cfg = train_cfg
        if rd is not None and is_main():
            rd.mkdir(parents=True, exist_ok=True)
            (rd / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        bundle = load(cfg.data.name, cfg.data.path, **cfg.data.kwargs)
        augment = Augment(**cfg.data.augment) if cfg.data.augment is not None else bundle.augment
        if isinstance(bundle.train, TensorData):
            train, val = split_validation(bundle.train, cfg.data.val_fraction, cfg.data.split_seed)
        else:
            train, val = bundle.train, None
        self.log(f"data {bundle.name}: {len(train)} train / {len(val) if val is not None else 0} val / "
                 f"{len(bundle.test)} test, input {bundle.input_shape}, {bundle.num_classes} classes")

        # --- teacher
        set_seed(cfg.seed)
        teacher_model = build_model(cfg.teacher, bundle.num_classes,
                                    input_shape_of(train, cfg.teacher.input_key, bundle.input_shape))
        student_proto = build_model(cfg.student, bundle.num_classes, bundle.input_shape)
        check_classes({"teacher": teacher_model, "student": student_proto}, train, bundle.num_classes,
                      {"teacher": cfg.teacher.input_key, "student": cfg.student.input_key})
        teacher_result = None
        if not cfg.teacher.checkpoint and self.method.needs_teacher:
            tcfg = cfg.teacher.train or train_cfg
            if not tcfg.log_with:  # the teacher's stage goes to the run's trackers too
                tcfg = tcfg.model_copy(update={k: getattr(train_cfg, k) for k in ("log_with", "project", "run_name")})
            sup = get_method("supervised", {"input_key": cfg.teacher.input_key})
            teacher_model, res = run_stages(
                sup, teacher_model, None, train, val, tcfg, rd / "teacher" if rd else None, cfg.seed,
                augment if cfg.data.teacher_augment else None, self.progress, self.resume, "teacher")
            teacher_result = res["train"]
        teacher = FrozenTeacher(teacher_model, cfg.teacher.input_key)

        models: dict[str, tuple] = {}  # label -> (network, input key)
        histories = {}
        ce_runs = {"teacher"}  # runs whose training loss is the label cross-entropy
        if self.method.needs_teacher:
            models["teacher"] = (teacher_model, cfg.teacher.input_key)
            if teacher_result:
                histories["teacher"] = teacher_result["history"]

        # --- the method
        set_seed(cfg.seed)
        student = build_model(cfg.student, bundle.num_classes, bundle.input_shape)
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
                models[b.label] = (net, b.input_key or cfg.student.input_key)
            histories.update(bctx.histories)
            ce_runs |= bctx.ce_runs
        histories.update(method_histories)

        rows = {}
        engine = Engine(cfg.train.model_copy(update={"log_with": []}), None, seed=cfg.seed, progress=False)
        t_net = teacher_model if self.method.needs_teacher else None
        for name, (net, key) in models.items():
            evals = engine.evaluate(SupervisedDistiller(net, key), bundle.test, "test")
            rows[name] = self._row(net, bundle, evals, key, t_net if name != "teacher" else None)
        s_eval = engine.evaluate(last, bundle.test, "test")
        rows[label] = self._row(student, bundle, s_eval, cfg.student.input_key, t_net)

        summary = {"name": cfg.name, "run_dir": str(rd) if rd else None, "rows": rows,
                   "method": cfg.method.name, "data": bundle.name}
        if rd is not None and is_main():
            from joryu import tracking
            from joryu.report import write_run_report

            save_weights(student, rd / "student.safetensors")
            if self.method.needs_teacher:
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
        key_t = cfg.teacher.input_key
        ev = evaluate_model(model, bundle.test, input_key, teacher, key_t, cfg.train.eval_batch_size,
                            pick_device(cfg.train))
        dep = deployment_stats(model, bundle.test, input_key, precision=cfg.train.mixed_precision)
        return {"params": dep["params"],
                "latency_ms": dep["cpu_batch1"]["median_ms"],
                "test_acc": evals["test/acc"],
                **{k: v for k, v in evals.items() if k.startswith("test/") and k.count("/") == 2},
                "eval": ev, "deploy": dep}
