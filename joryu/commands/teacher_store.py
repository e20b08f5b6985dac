"""``joryu teacher-store CONFIG --k K --out DIR``: run a config's teacher (its checkpoint) once over
the config's training split and write an offline top-k store (``joryu.teachers.store``) that the
config's ``kd`` run then reads with ``method.params.teacher_store: DIR``."""

from __future__ import annotations

from joryu.config import load_config
from joryu.data import load_data, split_any
from joryu.data.sources import align_labels
from joryu.errors import ConfigError
from joryu.models.build import build_model, input_shape_of
from joryu.outputs import is_causal_lm
from joryu.teachers.store import build_store, bytes_per_position

HELP = "store a config's teacher outputs (top-k per position) once, for kd's teacher_store"


def configure(p) -> None:
    p.add_argument("config", help="an experiment config whose teacher has a checkpoint")
    p.add_argument("--k", type=int, required=True, help="classes (tokens) kept per position")
    p.add_argument("--out", required=True, help="the store's folder")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="T of the stored log-probabilities (bucket truncation needs the run's T; default 1)")
    p.add_argument("--value-dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu", help="where the teacher runs (cpu, cuda, cuda:N)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("overrides", nargs="*", help="key=value overrides of the config, e.g. data.kwargs.seed=1")


def training_split(cfg):
    """The split the config's run trains on (as ``Experiment.check`` carves it) and the bundle."""
    bundle = load_data(cfg.data)
    if bundle.val is not None:
        return bundle, bundle.train
    return bundle, split_any(bundle.train, cfg.data.val_fraction, cfg.data.split_seed)[0]


def run(args) -> int:
    cfg = load_config(args.config, args.overrides)
    if cfg.teacher is None or not cfg.teacher.checkpoint:
        raise ConfigError(f"{args.config}: the teacher store needs a trained teacher: set teacher.checkpoint "
                          "(e.g. runs/NAME/teacher.safetensors from an earlier run)")
    bundle, train = training_split(cfg)
    shape = input_shape_of(train, cfg.teacher.input_key, bundle.input_shape)
    teacher = build_model(cfg.teacher, bundle.num_classes, shape, "teacher")
    train = align_labels(train, is_causal_lm(teacher))
    store = build_store(teacher, train, args.out, args.k, temperature=args.temperature, inputs=cfg.teacher.inputs,
                        value_dtype=args.value_dtype, batch_size=args.batch_size, device=args.device,
                        overwrite=args.overwrite, progress=True)
    per = bytes_per_position(store.k, args.value_dtype)
    print(f"wrote {store.path}: {store.num_samples} samples, k = {store.k} of {store.num_classes} classes, "
          f"T = {store.temperature:g}, {store.nbytes() / 1e6:.2f} MB ({per} bytes per position vs "
          f"{4 * store.num_classes} dense float32)")
    print(f"use it with: method.params.teacher_store={store.path} (kd)")
    return 0
