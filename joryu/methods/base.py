"""Methods are registered by name. A method turns its validated parameters into Stages."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ConfigDict

from joryu.config import TrainConfig, validate_params
from joryu.registry import Registry


class Params(BaseModel):
    """Base for a method's parameters: unknown keys are errors, and so are infinite or NaN numbers
    (a temperature or weight of ``.inf`` would only show up later as a non-finite loss)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True,
                              allow_inf_nan=False)


@dataclass
class StageContext:
    """What a stage's builder receives: the student to train, the teacher, data and earlier results."""

    student: Any
    teacher: Any
    train_data: Any
    num_classes: int
    train_cfg: TrainConfig
    results: dict = field(default_factory=dict)  # stage name -> whatever the stage left
    extras: dict = field(default_factory=dict)
    seed: int = 0  # the run's seed (for methods that draw their own randomness)
    augment: Any = None  # the run's batch augmentation (joryu.data.Augment or None)


@dataclass
class Stage:
    """One engine run: a Distiller built from the context, trained with ``train`` overrides."""

    name: str
    build: Callable[[StageContext], Any]
    train: dict | Callable[[StageContext], dict] = field(default_factory=dict)  # TrainConfig overrides
    after: Callable[[StageContext, Any], None] | None = None  # e.g. keep the student, drop a regressor
    data: Callable[[StageContext], Any] | None = None  # this stage's training data (default: the run's)


@dataclass
class Baseline:
    """A row that answers "did the method help?": a network trained (or taken) on the same data and
    budget without the method's idea. ``run(b)`` gets the experiment's ``BaselineContext`` (see
    ``joryu.run.experiment``: ``b.fresh_student()``, ``b.train(...)``, ``b.ctx`` with the method's
    stage results, ``b.deployed``) and returns the network to evaluate and report. Baselines run
    after the method, so they may reuse what it left (e.g. data distillation's stage-1 model)."""

    label: str
    run: Callable[[Any], Any]
    folder: str | None = None  # sub-folder of the run for anything it trains (default: from label)
    input_key: str | None = None  # batch key the network reads (default: the student's)


def student_alone(b) -> Any:
    """The default comparison: the configured student, same init, data and budget, labels only."""
    return b.train(b.fresh_student())


@dataclass
class MethodInfo:
    name: str
    cls: type
    paper: str
    status: str


def _discover() -> None:
    import joryu.methods as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        if mod.name != "base" and not mod.name.startswith("_"):
            importlib.import_module(f"joryu.methods.{mod.name}")


METHODS: Registry[MethodInfo] = Registry("method", _discover)


def register_method(name: str, paper: str, status: str = "implemented"):
    """Class decorator: register a Method subclass under ``name``."""

    def wrap(cls):
        METHODS.register(name, MethodInfo(name, cls, paper, status))
        cls.name = name
        return cls

    return wrap


def available() -> list[str]:
    return METHODS.names()


def listing() -> list[tuple[str, str, str]]:
    """(name, paper, status) for every registered method."""
    return [(m.name, m.paper, m.status) for _, m in METHODS.items()]


def method_info(name: str) -> MethodInfo:
    return METHODS.get(name)


def get_method(name: str, params: dict | None = None):
    """An instance of the method ``name`` with validated ``params``."""
    cls = METHODS.get(name).cls
    p = validate_params(cls.Params, params or {}, "method.params")
    return cls(p)


class Method:
    """A paper's training recipe: ``stages()`` lists the engine runs, in order."""

    name = "method"
    Params = Params
    needs_teacher = True
    labels_only = False  # True: the method is itself the student trained on the labels alone
    per_position_ok = False  # True: handles [B, L, C] / [B, C, H, W] logits (tokens, pixels)

    def __init__(self, params: Params):
        self.params = params

    def stages(self) -> list[Stage]:  # pragma: no cover - abstract
        raise NotImplementedError

    def deployed_network(self, student, teacher):
        """An untrained network of the architecture ``deployable()`` returns, built from the run's
        configured ``student`` and ``teacher`` networks, so that the weights of a finished run
        (``student.safetensors``) can be loaded back (``joryu eval`` / ``joryu export``). By
        default the deployed network is the configured student."""
        return student

    def baselines(self) -> list[Baseline]:
        """The rows a run compares this method against (run when the config's ``baseline`` is on):
        by default the student alone on the same data and budget. A method where "alone" has no
        meaning overrides this with its natural comparison."""
        return [Baseline("student alone", student_alone, folder="baseline")]
