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
from joryu.data import Augment, TensorData, load_data, split_any
from joryu.engine import Engine, load_weights, save_weights
from joryu.errors import ConfigError
from joryu.methods import StageContext, get_method
from joryu.methods.supervised import SupervisedDistiller
from joryu.outputs import forward
from joryu.teachers import FrozenTeacher


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
        if not path.is_file():
            raise ConfigError(f"checkpoint {path} for model {cfg.name!r} not found")
        try:
            load_weights(model, path)
        except RuntimeError as e:
            raise ConfigError(f"checkpoint {path} does not fit model {cfg.name!r}: {str(e).splitlines()[0]}") from None
    return model


def output_classes(model: torch.nn.Module, data, input_key: str = "input") -> int:
    if isinstance(data, TensorData):
        sample = data.tensors[input_key][:2]
    elif hasattr(data, "sample"):  # a streamed source: its training pipeline gives every view
        sample = data.sample(0, train=True)[input_key].unsqueeze(0)
    else:
        sample = data[0][input_key].unsqueeze(0)
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
    if key != "input" and isinstance(key, str) and hasattr(data, "sample"):
        sample = data.sample(0, train=True)
        if key not in sample:
            raise ConfigError(f"the data has no {key!r} key (a sample has {sorted(sample)}); "
                              "fix the model's input_key or add it with data.views")
        return tuple(sample[key].shape)
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
                done.write_text(json.dumps(result, indent=1))
        ctx.results[stage.name] = {"distiller": distiller, **result}
        if stage.after is not None:
            stage.after(ctx, distiller)
    return distiller.deployable(), ctx.results


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
        cfg = self.cfg
        rd = self.run_dir
        if rd is not None and is_main():
            rd.mkdir(parents=True, exist_ok=True)
            (rd / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        bundle = load_data(cfg.data)
        if cfg.data.augment is not None:
            augment = Augment(**cfg.data.augment)
        else:  # transforms from the config replace the dataset's default batch augmentation
            augment = Augment() if cfg.data.transform is not None else bundle.augment
        if bundle.val is not None:
            train, val = bundle.train, bundle.val
        else:
            train, val = split_any(bundle.train, cfg.data.val_fraction, cfg.data.split_seed)
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
            tcfg = cfg.teacher.train or cfg.train
            sup = get_method("supervised", {"input_key": cfg.teacher.input_key})
            teacher_model, res = run_stages(
                sup, teacher_model, None, train, val, tcfg, rd / "teacher" if rd else None, cfg.seed,
                augment if cfg.data.teacher_augment else None, self.progress, self.resume, "teacher")
            teacher_result = res["train"]
        teacher = FrozenTeacher(teacher_model, cfg.teacher.input_key)

        rows = {}
        histories = {}
        engine = Engine(cfg.train, None, seed=cfg.seed, progress=False)
        if self.method.needs_teacher:
            t_eval = engine.evaluate(SupervisedDistiller(teacher_model, cfg.teacher.input_key), bundle.test, "test")
            rows["teacher"] = self._row(teacher_model, bundle, t_eval,
                                        input_shape_of(train, cfg.teacher.input_key, bundle.input_shape))
            if teacher_result:
                histories["teacher"] = teacher_result["history"]

        # --- student alone, same init and budget
        if cfg.baseline and cfg.method.name != "supervised":
            set_seed(cfg.seed)
            base_student = build_model(cfg.student, bundle.num_classes, bundle.input_shape)
            base_student, res = run_stages(
                self.method.baseline(cfg.student.input_key), base_student, None, train, val, cfg.train,
                rd / "baseline" if rd else None, cfg.seed, augment, self.progress, self.resume,
                "student alone")
            histories["student alone"] = res["train"]["history"]
            b_eval = engine.evaluate(list(res.values())[-1]["distiller"], bundle.test, "test")
            rows["student alone"] = self._row(base_student, bundle, b_eval)

        # --- the method
        set_seed(cfg.seed)
        student = build_model(cfg.student, bundle.num_classes, bundle.input_shape)
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
