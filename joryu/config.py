"""Experiment configuration: pydantic models; one YAML file is one experiment."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from joryu.data.core import Augment
from joryu.data.registry import dataset_function
from joryu.data.sources import LoaderOptions
from joryu.errors import ConfigError
from joryu.models.registry import zoo_factory
from joryu.options import (  # noqa: F401 - validate_params: the methods' and stages' entry
    check_function_options,
    format_validation_error,
    signature_model,
    validate_params,
)


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class FsdpOptions(Strict):
    """Shard the trained network across processes with FSDP2 (torch ``fully_shard``, applied by
    Accelerate): each process keeps 1/N of the parameters, gradients and optimizer state."""

    wrap: list[str] = Field(default_factory=list, description="module class names that get their own shard "
                            "group besides the student (e.g. GPT2Block); each is gathered only around its forward")
    reshard_after_forward: bool = Field(True, description="free the gathered parameters after each forward "
                                        "(less memory, one more all-gather in backward)")
    cpu_offload: bool = Field(False, description="keep the shards and optimizer state in CPU memory")


class TrainConfig(Strict):
    """How one stage is trained."""

    epochs: int = Field(20, ge=0, description="passes over the training data; 0 trains nothing (evaluates only). "
                        "Ignored when max_steps is given")
    max_steps: int | None = Field(None, ge=1, description="optimizer updates for the whole stage (as the "
                                  "Hugging Face Trainer's max_steps): the stage stops after this many, "
                                  "mid-epoch if need be, and epochs is ignored; an epoch is then one pass, "
                                  "ended by the data's end (an endless stream: never) or steps_per_epoch. "
                                  "Needed, or steps_per_epoch, for a stream without a length")
    steps_per_epoch: int | None = Field(None, ge=1, description="batches per epoch at most: an epoch ends "
                                        "after this many or at the data's end (each epoch is a new pass over "
                                        "a stream). Gives a stream without a length (an IterableDataset "
                                        "with no __len__) its epochs")
    batch_size: int = Field(128, ge=1, description="samples per training batch (per process)")
    eval_batch_size: int = Field(1000, ge=1, description="samples per batch when evaluating")
    optimizer: Literal["sgd", "adam", "adamw", "rmsprop"] = Field("adam", description="the optimizer")
    lr: float = Field(1e-3, gt=0, allow_inf_nan=False, description="base learning rate (before warm-up and schedule)")
    momentum: float = Field(0.9, ge=0, lt=1, description="momentum of sgd and rmsprop")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd)")
    weight_decay: float = Field(0.0, ge=0, allow_inf_nan=False, description="L2 weight decay (decoupled for adamw)")
    scheduler: Literal["constant", "cosine", "step", "onecycle"] = Field("cosine", description="learning-rate schedule over the run, stepped once per optimizer update")
    milestones: list[float] = Field(default_factory=list, description="epochs at which 'step' multiplies lr by gamma")
    gamma: float = Field(0.1, gt=0, allow_inf_nan=False, description="the 'step' schedule's multiplier at each milestone")
    warmup_epochs: float = Field(0.0, ge=0, allow_inf_nan=False, description="linear warm-up of the learning rate, in epochs")
    grad_accum: int = Field(1, ge=1, description="batches whose gradients add up before one optimizer update")
    clip_grad_norm: float | None = Field(None, gt=0, allow_inf_nan=False, description="clip the gradient norm to this value (None: no clipping)")
    mixed_precision: Literal["no", "bf16", "fp16"] = Field("no", description="autocast precision: bf16 (GPU or CPU), fp16 (GPU only)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where to train; auto: CUDA when visible")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints; 0 = at each epoch end")
    keep_checkpoints: int = Field(2, ge=1, description="how many recent checkpoints a stage keeps")
    eval_every: int = Field(1, ge=1, description="epochs between validation passes")
    log_every: int = Field(50, ge=1, description="steps between progress updates and finiteness checks")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (None: torch's default)")
    compile: bool = Field(False, description="torch.compile the trained network (in place; off by default)")
    gradient_checkpointing: bool = Field(False, description="recompute the trained network's activations in "
                                         "backward instead of keeping them: less memory, ~1/3 more compute "
                                         "(Hugging Face models and the zoo's block networks)")
    fsdp: FsdpOptions | None = Field(None, description="shard the student across processes with FSDP2 "
                                     "(several processes only: torchrun or accelerate launch); None: DDP")
    log_with: list[str] = Field(default_factory=list, description="Accelerate trackers: tensorboard, wandb, "
                                "mlflow, ... (the package must be installed; see joryu.tracking)")
    project: str | None = Field(None, description="tracker project name (default 'joryu')")
    run_name: str | None = Field(None, description="tracker run name (default: the experiment's name)")


class LoraOptions(Strict):
    """LoRA adapters on a student (``joryu.models.lora``, needs ``pip install peft``)."""

    r: int = Field(8, ge=1, description="rank of each adapter")
    alpha: float = Field(16, gt=0, description="scale numerator: the update is (alpha / r) B A")
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the adapters' input")
    target_modules: list[str] | None = Field(None, description="layers to adapt (names or suffixes); default: "
                                             "peft's choice for a transformers model")


class ModelConfig(Strict):
    """A network: a zoo name or 'module.path:factory', its keyword arguments, optional weights."""

    name: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    checkpoint: str | None = Field(None, description="safetensors (or torch) weights to load")
    inputs: str | list[str] | dict[str, str] | None = Field(
        None, description="batch keys the model reads: a key, a list (positional arguments) or a mapping "
                          "{forward_argument: batch_key}, e.g. {input_ids: input_ids, attention_mask: "
                          "attention_mask}; default 'input'")
    input_key: str | list[str] | dict[str, str] = Field("input", description="older name of 'inputs'")
    lora: LoraOptions | None = Field(None, description="train LoRA adapters on the frozen network instead of "
                                     "all its weights (students only; pip install peft)")

    @model_validator(mode="after")
    def _resolve_inputs(self):
        """One resolved value: ``inputs`` and its alias ``input_key`` both hold it afterwards."""
        if self.inputs is None:
            self.inputs = self.input_key
        elif "input_key" in self.model_fields_set and self.input_key != self.inputs:
            raise ValueError(f"inputs {self.inputs!r} and its alias input_key {self.input_key!r} disagree; "
                             "set only inputs")
        self.input_key = self.inputs
        return self


class TeacherConfig(ModelConfig):
    train: TrainConfig | None = Field(None, description="how to train the teacher when no checkpoint is given")

    @model_validator(mode="after")
    def _no_lora(self):
        if self.lora is not None:
            raise ValueError("lora applies to the student (the teacher is frozen): move it to student.lora")
        return self
    device: str | None = Field(None, description="where the frozen teacher runs while the student trains: "
                               "cpu or cuda:N (default: the training device); outputs come back once per batch")
    dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32", description="the frozen teacher's precision while the student trains (its outputs are "
                               "cast to float32); bfloat16 halves its memory. The run's teacher.safetensors is "
                               "then the teacher distilled from: its 16-bit weights, stored as float32")


class DataConfig(Strict):
    name: str = Field("mnist1d", description="a registered dataset, or package.module:factory")
    path: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    test: str | None = Field(None, description="package.module:factory for the test split")
    val: str | None = Field(None, description="package.module:factory for an explicit validation split")
    test_kwargs: dict[str, Any] = Field(default_factory=dict)
    columns: dict[str, str] | None = Field(None, description="batch key -> sample key (dict samples)")
    transform: Any = Field(None, description="training transforms: a list of names / import paths")
    eval_transform: Any = Field(None, description="evaluation transforms (default: the training "
                                "transform without its random steps)")
    views: dict[str, Any] = Field(default_factory=dict, description="extra batch keys, each its own "
                                  "transform of the raw input (e.g. input_teacher for a teacher)")
    fields: dict[str, Any] = Field(default_factory=dict, description="per-sample fields: clean, "
                                   "labels_per_class, noise, privileged")
    loader: LoaderOptions = Field(default_factory=LoaderOptions, description="how streamed data is loaded")
    val_fraction: float = Field(0.1, ge=0, lt=1)
    split_seed: int = Field(0, ge=0, description="seed of the validation split")
    augment: Augment | None = Field(None, description="override the dataset's augmentation")
    teacher_augment: bool = Field(True, description="train the teacher with the dataset's augmentation")


class MethodConfig(Strict):
    name: str = "kd"
    params: dict[str, Any] = Field(default_factory=dict)


class ExperimentConfig(Strict):
    name: str = "experiment"
    seed: int = Field(0, ge=0, description="the run's seed: initialisation, data order, augmentation")
    seeds: int = Field(1, ge=1, description="paired seeds (seed, seed + 1, ...): the method and what it is "
                       "compared with are trained on each, and the paired differences judged; 5 or more "
                       "for a verdict (joryu.stats)")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig | None = Field(None, description="needed by methods that distill from a teacher")
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


def parse_value(text: str, key: str = "value") -> Any:
    """A command-line override value, read as YAML (numbers, bools, lists) with a string fallback.

    A value that starts like a YAML flow mapping or list must parse as one: ``{width:16}`` (no
    space after the colon, which YAML reads as the key ``'width:16'``) and ``{width: 16`` are
    errors, not strings or silently ignored keys."""
    stripped = text.strip()
    try:
        check_yaml_size(text, f"override {key}")
        value = yaml.safe_load(text)
    except yaml.YAMLError as e:
        if stripped[:1] in "{[":
            example = "{width: 16} (a space after each colon)" if stripped[0] == "{" else "[64, 64]"
            raise ConfigError(f"override {key}={text}: malformed inline "
                              f"{'mapping' if stripped[0] == '{' else 'list'} "
                              f"({getattr(e, 'problem', None) or 'YAML error'}); write e.g. "
                              f"{key}={example}") from None
        return text
    _check_flow(value, key, text)
    return value


def _check_flow(value: Any, key: str, text: str) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            if v is None and isinstance(k, str) and ":" in k:
                raise ConfigError(f"override {key}={text}: {k!r} reads as one key without a value; "
                                  "put a space after the colon, e.g. {width: 16}")
            _check_flow(v, key, text)
    elif isinstance(value, list):
        for v in value:
            _check_flow(v, key, text)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``key.sub=value`` overrides to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. train.epochs=5)")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(p.strip() for p in parts):
            raise ConfigError(f"override {item!r}: {key!r} is not a dotted key such as train.epochs")
        node = raw
        for i, p in enumerate(parts[:-1]):
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {key!r}: {'.'.join(parts[:i + 1])!r} is not a section "
                                  f"(it holds {nxt!r})")
            node = nxt
        node[parts[-1]] = parse_value(value, key.strip())
    return raw


# A config is a few hundred values; these bounds are far above any real one and far below what
# exhausts memory or the stack.
YAML_MAX_NODES = 200_000  # values after every alias is expanded
YAML_MAX_DEPTH = 100  # nested mappings and lists


def check_yaml_size(text: str, where: str) -> None:
    """Refuse, before anything is built, YAML that would expand past ``YAML_MAX_NODES`` values,
    nest deeper than ``YAML_MAX_DEPTH``, or refer to itself.

    It reads the parser's events, which never expand an alias: a collection counts 1 plus its
    items, a scalar 1, and an alias ``*a`` the size its anchor ``&a`` had when it closed. So an
    alias bomb ("billion laughs": nine lists of nine aliases of the list before) is measured,
    not built. An alias to a collection that is still open is a self-reference."""
    sizes: dict[str, int] = {}
    stack: list[list] = []  # [expanded size, anchor] of each open collection
    total = 0
    for ev in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(ev, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            stack.append([1, ev.anchor])
            total += 1
            if len(stack) > YAML_MAX_DEPTH:
                raise ConfigError(f"{where} nests mappings or lists more than {YAML_MAX_DEPTH} deep "
                                  f"(line {ev.start_mark.line + 1}); a config is a few levels deep")
            continue
        if isinstance(ev, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            n, anchor = stack.pop()
            if anchor:
                sizes[anchor] = n
        elif isinstance(ev, yaml.ScalarEvent):
            n = 1
            total += 1
            if ev.anchor:
                sizes[ev.anchor] = 1
        elif isinstance(ev, yaml.AliasEvent):
            if any(anchor == ev.anchor for _, anchor in stack):
                raise ConfigError(f"{where}: alias *{ev.anchor} (line {ev.start_mark.line + 1}) refers to "
                                  f"the value that contains it; a config cannot refer to itself")
            n = sizes.get(ev.anchor, 1)  # an unknown anchor is the composer's error
            total += n
        else:
            continue
        if total > YAML_MAX_NODES:
            raise ConfigError(f"{where} expands to more than {YAML_MAX_NODES} values (aliases "
                              f"counted in full, line {ev.start_mark.line + 1}); is it an alias bomb? "
                              "Write the values out, or use fewer aliases")
        if stack:
            stack[-1][0] += n


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "not found"
        raise ConfigError(f"config file {path} {what}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    try:
        check_yaml_size(text, str(path))
        raw = yaml.safe_load(text)
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
    """Validate a raw config: the schema, then the options of the named dataset and zoo models."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a config must be a mapping of keys, not a {type(raw).__name__}")
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError("config error: " + format_validation_error(e, model=ExperimentConfig)) from None
    check_options(cfg)
    return cfg


def load_config(path: str | Path, overrides: list[str] = ()) -> ExperimentConfig:
    return build_config(apply_overrides(load_yaml(path), list(overrides)))


def check_options(cfg: ExperimentConfig) -> None:
    """Dataset kwargs against the dataset function; zoo model kwargs against the factory."""
    if ":" not in cfg.data.name:  # a factory by import path is checked when it is called
        fn, needs_path = dataset_function(cfg.data.name)
        check_function_options(fn, cfg.data.kwargs, "data.kwargs", f"dataset {cfg.data.name!r}",
                               skip=("path",) if needs_path else ())
    for where, m in (("teacher", cfg.teacher), ("student", cfg.student)):
        if m is None or ":" in m.name:
            continue
        factory = zoo_factory(m.name)
        check_function_options(factory, m.kwargs, f"{where}.kwargs", f"model {m.name!r}")


def describe_fields(model: type[BaseModel]) -> list[tuple[str, str, str, str]]:
    """(name, type, default, description) of every field of a pydantic model."""
    rows = []
    for name, f in model.model_fields.items():
        ann = f.annotation
        tname = getattr(ann, "__name__", None) if isinstance(ann, type) else None
        tname = tname or str(ann).replace("typing.", "")
        if f.is_required():
            default = "(required)"
        elif f.default_factory is not None:
            default = repr(f.default_factory())
        else:
            default = repr(f.default)
        rows.append((name, tname, default, f.description or ""))
    return rows
