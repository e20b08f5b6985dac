"""Experiment configuration: pydantic models; one YAML file is one experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from joryu.errors import ConfigError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class TrainConfig(Strict):
    """How one stage is trained."""

    epochs: int = Field(20, ge=0)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(1000, ge=1)
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    scheduler: Literal["constant", "cosine", "step", "onecycle"] = "cosine"
    milestones: list[float] = Field(default_factory=list, description="epochs at which 'step' multiplies lr by gamma")
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    grad_accum: int = Field(1, ge=1)
    clip_grad_norm: float | None = Field(None, gt=0)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = at each epoch end")
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int = Field(1, ge=1, description="epochs between validation passes")
    log_every: int = Field(50, ge=1)
    threads: int | None = Field(None, ge=1)
    compile: bool = Field(False, description="torch.compile the trained network (in place; off by default)")
    log_with: list[str] = Field(default_factory=list, description="Accelerate trackers: tensorboard, wandb, "
                                "mlflow, ... (the package must be installed; see joryu.tracking)")
    project: str | None = Field(None, description="tracker project name (default 'joryu')")
    run_name: str | None = Field(None, description="tracker run name (default: the experiment's name)")


class ModelConfig(Strict):
    """A network: a zoo name or 'module.path:factory', its keyword arguments, optional weights."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="safetensors (or torch) weights to load")
    input_key: str = "input"


class TeacherConfig(ModelConfig):
    train: TrainConfig | None = Field(None, description="how to train the teacher when no checkpoint is given")


class DataConfig(Strict):
    name: str = "mnist1d"
    path: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    split_seed: int = 0
    augment: dict[str, Any] | None = Field(None, description="override: {shift: int, flip: bool, noise: float}")
    teacher_augment: bool = Field(True, description="train the teacher with the dataset's augmentation")


class MethodConfig(Strict):
    name: str = "kd"
    params: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(Strict):
    name: str = "experiment"
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig
    student: ModelConfig
    method: MethodConfig = Field(default_factory=MethodConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    baseline: bool = Field(True, description="also train the student alone with the same budget")
    output_dir: str = "runs"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not v or any(c in v for c in "/\\"):
            raise ValueError("name must be non-empty and contain no path separators")
        return v


def format_validation_error(e: ValidationError, prefix: str = "") -> str:
    """One line per problem: the dotted key, what is wrong and what is allowed."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            model = _model_at(e.title, err["loc"][:-1])
            if model is not None:
                msg += f" (allowed: {', '.join(sorted(model.model_fields))})"
        elif "input" in err and err["type"] not in ("missing",):
            msg += f" (got {err['input']!r})"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)




def _model_at(title: str, loc) -> type[BaseModel] | None:
    model: Any = {"ExperimentConfig": ExperimentConfig, "TrainConfig": TrainConfig}.get(title)
    for key in loc:
        if model is None or not isinstance(key, str) or key not in getattr(model, "model_fields", {}):
            return None
        ann = model.model_fields[key].annotation
        args = getattr(ann, "__args__", ())
        candidates = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    return model


def parse_value(text: str) -> Any:
    """A command-line override value, read as YAML (numbers, bools, lists) with a string fallback."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=5)")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section")
            node = node.setdefault(p, {})
        node[parts[-1]] = parse_value(value)
    return raw


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path} must hold a mapping of keys (name, data, teacher, student, ...), "
                          f"not a {type(raw).__name__}")
    return raw


def build_config(raw: dict) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("config error: " + format_validation_error(e)) from None


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    return build_config(apply_overrides(load_yaml(path), list(overrides)))


def validate_params(model: type[BaseModel], params: dict, where: str) -> BaseModel:
    try:
        return model.model_validate(params)
    except ValidationError as e:
        raise ConfigError("config error: " + format_validation_error(e, prefix=f"{where}.")) from None
