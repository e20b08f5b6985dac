"""Methods are registered by name. A method turns its validated parameters into Stages."""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict

from joryu.config import TrainConfig, validate_params
from joryu.registry import Registry


class Params(BaseModel):
    """Base for a method's parameters: unknown keys are errors, and so are infinite or NaN numbers
    (a temperature or weight of ``.inf`` would only show up later as a non-finite loss)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), arbitrary_types_allowed=True,
                              allow_inf_nan=False)


@dataclass
class StageResult:
    """What one stage left, filled by the stage loop (``joryu.run.stages``): the trained Distiller,
    the engine's per-epoch history and last validation metrics, its timing and optimizer steps.
    A skipped stage (``Stage.skip``) has no distiller and ``skipped=True``; a step that trains
    nothing (``Stage.trains=False``) has its distiller and an empty history."""

    distiller: Any = None
    history: list[dict] = field(default_factory=list)
    val: dict = field(default_factory=dict)
    train_time_s: float = 0.0
    samples_per_s: float = 0.0
    steps: int = 0
    updates: int = 0  # optimizer updates (joryu.meter counts them; budgets are checked on them)
    skipped: bool = False

    def summary(self) -> dict:
        """Everything but the distiller, as plain data (a stage's ``done.json``, ``joryu.distill``'s
        metrics)."""
        return {"history": self.history, "val": self.val, "train_time_s": self.train_time_s,
                "samples_per_s": self.samples_per_s, "steps": self.steps, "updates": self.updates,
                "skipped": self.skipped}


S = TypeVar("S")


@dataclass
class StageContext(Generic[S]):
    """What a stage's builder receives: the student to train, the teacher, data, the results of
    earlier stages and the method's own ``state``: the typed values its stages hand to each other
    (trained teachers, a pseudo-labelled set, posterior samples...), made once per run by
    ``Method.new_state`` before the first stage."""

    student: Any
    teacher: Any
    train_data: Any
    num_classes: int
    train_cfg: TrainConfig
    results: dict[str, StageResult] = field(default_factory=dict)  # stage name -> what it left
    seed: int = 0  # the run's seed (for methods that draw their own randomness)
    augment: Any = None  # the run's batch augmentation (joryu.data.Augment or None)
    state: S | None = None  # the method's hand-offs between its stages (Method.new_state)


@dataclass
class Stage:
    """One engine run: a Distiller built from the context, trained with ``train`` overrides.

    ``skip(ctx)`` true: the stage builds and trains nothing (e.g. a teacher that was given), and
    its result is recorded as skipped. ``trains=False``: a step that only builds (e.g. choosing
    among networks the earlier stages trained): no engine run, its network is scored on the
    validation data, and it is what the run deploys when it comes last."""

    name: str
    build: Callable[[StageContext], Any]
    train: dict | Callable[[StageContext], dict] = field(default_factory=dict)  # TrainConfig overrides
    after: Callable[[StageContext, Any], None] | None = None  # e.g. keep the student, drop a regressor
    data: Callable[[StageContext], Any] | None = None  # this stage's training data (default: the run's)
    skip: Callable[[StageContext], bool] | None = None  # true: nothing to do in this run
    trains: bool = True  # False: a step that builds its network without training it


@dataclass
class Baseline:
    """A row that answers "did the method help?": a network trained (or taken) on the same data and
    budget without the method's idea. ``run(b)`` gets the experiment's ``BaselineContext`` (see
    ``joryu.run.experiment``: ``b.fresh_student()``, ``b.train(...)``, ``b.ctx`` with the method's
    stage results and state, ``b.deployed``) and returns the network to evaluate and report. Baselines run
    after the method, so they may reuse what it left (e.g. data distillation's stage-1 model)."""

    label: str
    run: Callable[[Any], Any]
    folder: str | None = None  # sub-folder of the run for anything it trains (default: from label)
    input_key: str | None = None  # batch key the network reads (default: the student's)


def student_alone(b) -> Any:
    """The default comparison: the configured student, same init, data and budget, labels only."""
    return b.train(b.fresh_student())


@dataclass(frozen=True)
class DefaultsEvidence:
    """What the defaults check (``joryu/reproduce/defaults.py``) measured for a method's defaults,
    declared once on the Method class; ``joryu methods`` and ``joryu methods NAME`` print it and
    the method's docs page cites the same sweep file.

    ``hurts``: the best defaults found still have a negative mean gain over the student alone
    across the check's pairs (the sweep file's ``hurts_on_average``); ``regime``: where the method
    helps and what to expect elsewhere, in a sentence or two; ``source``: the sweep file;
    ``ran``: False when the method could run on none of the check's pairs (the sweep file chose
    nothing), so its defaults are unchecked there and ``regime`` says what pair it needs."""

    hurts: bool
    regime: str
    source: str
    ran: bool = True

    @property
    def mark(self) -> str:
        if not self.ran:
            return "defaults not checked: runs on none of the check's pairs"
        return "defaults hurt on average" if self.hurts else ""


@dataclass
class MethodInfo:
    name: str
    cls: type
    paper: str
    status: str


def _discover() -> None:
    """Import every method module of this package (each registers itself)."""
    for mod in pkgutil.iter_modules([str(Path(__file__).parent)]):
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
    defaults_evidence: DefaultsEvidence | None = None  # what the defaults check measured (None: not checked)

    def __init__(self, params: Params):
        self.params = params

    def stages(self) -> list[Stage]:  # pragma: no cover - abstract
        raise NotImplementedError

    def new_state(self, ctx: StageContext) -> Any:
        """What the stages hand to each other, made once per run before the first stage and kept
        as ``ctx.state``: a method with more than one stage returns its own small dataclass (e.g.
        the teachers trained so far). By default a method has none."""
        return None

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
