"""A finished run folder read back: its config, its data and the networks it trained, for
``joryu eval``, ``joryu export`` and anything else that works on a run after the fact."""

from __future__ import annotations

from pathlib import Path

from joryu.config import ModelConfig, load_config, parse_value
from joryu.data import TensorData, load, split_validation
from joryu.data.assemble import load_data as load_run_data
from joryu.data.sources import align_labels
from joryu.errors import ConfigError
from joryu.methods import get_method
from joryu.models.build import build_model, input_shape_of, output_classes
from joryu.outputs import is_causal_lm
from joryu.weights import load_into


def parse_kv(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"{item!r} must look like key=value (e.g. hidden=[64,64])")
        k, v = item.split("=", 1)
        out[k.strip()] = parse_value(v)
    return out


def positive_int(text: str) -> int:
    """An argparse type: a whole number >= 1 (a batch size), else argparse's one-line error."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def parse_shape(text: str, option: str = "--input-shape") -> tuple[int, ...]:
    """``"1,40"`` -> ``(1, 40)``: positive whole numbers, else a one-line ConfigError."""
    try:
        shape = tuple(int(s) for s in text.split(","))
    except ValueError:
        shape = ()
    if not shape or min(shape) < 1:
        raise ConfigError(f"{option} {text!r} must be positive whole numbers separated by commas, "
                          "e.g. 1,40 or 3,32,32")
    return shape


def load_data(name: str, path: str | None = None, kwargs: dict | None = None):
    return load(name, path, **(kwargs or {}))


def split_of(bundle, split: str, cfg=None):
    """The ``test`` split, or ``train`` / ``val`` carved as the run carved them."""

    if split == "test":
        return bundle.test
    if getattr(bundle, "val", None) is not None and split in ("train", "val"):  # a dataset's own split
        return bundle.val if split == "val" else bundle.train
    if split not in ("train", "val"):
        raise ConfigError(f"--split must be test, val or train, not {split!r}")
    if not isinstance(bundle.train, TensorData):
        return bundle.train
    fraction = cfg.data.val_fraction if cfg is not None else 0.1
    seed = cfg.data.split_seed if cfg is not None else 0
    train, val = split_validation(bundle.train, fraction, seed)
    if split == "val" and val is None:
        raise ConfigError("--split val: the run used no validation split (data.val_fraction = 0)")
    return train if split == "train" else val


def build_with_weights(name: str, weights, kwargs: dict, bundle, what: str, input_key: str = "input"):
    """A zoo / import-path model with ``weights`` loaded (see joryu.weights for the layouts)."""

    cfg = ModelConfig(name=name, kwargs=kwargs or {}, checkpoint=str(weights) if weights else None)
    model = build_model(cfg, bundle.num_classes, input_shape_of(bundle.test, input_key, bundle.input_shape))
    return check_fits(model, bundle, what, input_key)


def check_fits(model, bundle, what: str, input_key: str = "input"):
    """``model`` reads the data's inputs and predicts its number of classes, else one ConfigError line."""

    try:
        classes = output_classes(model, bundle.test, input_key)
    except (RuntimeError, ValueError, TypeError) as e:
        raise ConfigError(f"{what} cannot read {bundle.name}'s inputs of shape {tuple(bundle.input_shape)} "
                          f"({str(e).strip().splitlines()[0]}); evaluate it on data shaped like its training "
                          "data") from None
    if classes != bundle.num_classes:
        raise ConfigError(f"{what} predicts {classes} classes but the data has {bundle.num_classes}; "
                          "evaluate it on data with its classes, or fix num_classes in its kwargs")
    return model.eval()


class RunFolder:
    """The networks of a joryu run folder: ``models`` maps a row label to (network, input key)."""

    def __init__(self, path, data: str | None = None, data_path: str | None = None,
                 data_kwargs: dict | None = None):

        self.path = path = Path(path)
        if not path.is_dir():
            raise ConfigError(f"{path} is not a folder; give a run folder written by joryu (e.g. runs/kd-mnist1d)"
                              " or --model NAME --weights FILE")
        if not (path / "config.yaml").is_file():
            raise ConfigError(f"{path} is not a joryu run folder (no config.yaml); give the folder a run wrote, "
                              "or --model NAME --weights FILE")
        student_file = path / "student.safetensors"
        if not student_file.is_file():
            raise ConfigError(f"run folder {path} has no student (student.safetensors is missing: the run did not "
                              "finish); finish it with `joryu run CONFIG --out FOLDER --resume`, or pass --model "
                              "and --weights")
        self.cfg = cfg = load_config(path / "config.yaml")
        if data is not None:
            self.bundle = load_data(data, data_path, data_kwargs)
        else:
            self.bundle = load_run_data(cfg.data)  # the run's data as the run loaded it (factories too)
        self.models: dict[str, tuple] = {}
        t_cfg = getattr(cfg, "teacher", None)
        teacher_file = None if t_cfg is None else next(
            (f for f in (path / "teacher.safetensors", t_cfg.checkpoint, path / "teacher" / "final.safetensors")
             if f and Path(f).exists()), None)
        if teacher_file is not None:
            self.models["teacher"] = (build_with_weights(cfg.teacher.name, teacher_file, cfg.teacher.kwargs,
                                                         self.bundle, "the teacher", cfg.teacher.input_key),
                                      cfg.teacher.input_key)
        alone = path / "baseline" / "final.safetensors"
        if alone.is_file():
            try:
                self.models["student alone"] = (build_with_weights(
                    cfg.student.name, alone, cfg.student.kwargs, self.bundle, "the student alone",
                    cfg.student.input_key), cfg.student.input_key)
            except ConfigError:
                pass  # e.g. a baseline of another architecture: reported by the run, skipped here
        student = self._deployed(cfg, student_file)
        self.label = f"student + {cfg.method.name}"
        self.models[self.label] = (student, cfg.student.input_key)

    def _deployed(self, cfg, weights):
        """The network the run deployed (``Method.deployed_network``) with its weights loaded."""

        b = self.bundle
        plain = cfg.student.model_copy(update={"checkpoint": None})
        student = build_model(plain, b.num_classes, input_shape_of(b.test, cfg.student.input_key, b.input_shape))
        b = self.bundle = align_labels(b, is_causal_lm(student))  # HF labels: shifted for a causal LM
        teacher = self.models.get("teacher", (None,))[0]
        if teacher is None and getattr(cfg, "teacher", None) is not None:
            teacher = build_model(cfg.teacher.model_copy(update={"checkpoint": None}), b.num_classes,
                                  input_shape_of(b.test, cfg.teacher.input_key, b.input_shape))
        net = get_method(cfg.method.name, cfg.method.params).deployed_network(student, teacher)
        try:
            load_into(net, weights, f"the network method {cfg.method.name!r} deploys ({type(net).__name__})")
        except ConfigError as e:
            raise ConfigError(f"{e}; or pass --model and --weights") from None
        return check_fits(net, b, f"the student ({cfg.student.name})", cfg.student.input_key)

    @property
    def student(self):
        return self.models[self.label]
