"""The one stage loop: a method's stages through the engine, for training and for the check
before training.

``run_stages(method, student=..., train=..., train_cfg=..., ...)`` (keyword arguments only) is
what ``Experiment``, ``joryu.distill``, the baselines and the reproductions call. Each stage gets
its training settings merged with the run's and validated (``stage_config``), its data, a
Distiller built from the shared ``StageContext``, and one ``Engine``; what it leaves goes into
``ctx.results`` (a ``StageResult``), and its ``after`` hook hands over to the next stage through
the method's typed ``ctx.state``. A stage whose ``skip(ctx)`` is true builds and trains nothing
and is recorded as skipped; a step with ``trains=False`` builds its network without the engine.

``dry=True`` is the check before training, the same loop in another mode: the same context, the
same stage builders and the same ``Engine`` set-up (device, loader, optimizers, schedules,
Accelerate), then one batch forward and backward with no optimizer update (``Engine.dry_step``),
one evaluation forward, and the stage's hand-over, so that a mistake the config already shows
surfaces before anything trains. Nothing is written. The networks are not copied: what a dry
step can change on them (buffers such as BatchNorm statistics, ``requires_grad`` flags, train /
eval modes, hooks left by a stage, a submodule a stage replaced) is recorded first and put back afterwards, with the torch,
numpy and python RNG states, so a run with the check gives the same result as one without it.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import set_seed

from joryu.atomic import atomic_write_text
from joryu.config import TrainConfig, validate_params
from joryu.data import Augment
from joryu.engine import Engine, load_weights, save_weights
from joryu.errors import ConfigError, JoryuError, one_line, reraise_as_user
from joryu.losses import positions
from joryu.methods import StageContext, StageResult
from joryu.models.build import probe_logits
from joryu.run.process import is_main


@contextlib.contextmanager
def preserved_rng() -> Iterator[None]:
    """Restore the torch (CPU and CUDA), numpy and python RNG states on exit."""
    state = (torch.get_rng_state(), np.random.get_state(), random.getstate(),
             torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None)
    try:
        yield
    finally:
        torch.set_rng_state(state[0])
        np.random.set_state(state[1])
        random.setstate(state[2])
        if state[3] is not None:
            torch.cuda.set_rng_state_all(state[3])


def _modules_of(obj) -> list[torch.nn.Module]:
    """The nn.Modules reachable from a student or a teacher (a module, a teacher wrapping one or
    several, a list of them)."""
    if obj is None:
        return []
    if isinstance(obj, torch.nn.Module):
        return [obj]
    if isinstance(obj, (list, tuple)):
        return [m for o in obj for m in _modules_of(o)]
    found = []
    for name in ("model", "models", "teachers"):
        v = getattr(obj, name, None)
        v = v() if callable(v) and not isinstance(v, torch.nn.Module) else v
        found += _modules_of(v)
    return found


@contextlib.contextmanager
def restored(*owners) -> Iterator[None]:
    """Put back, on exit, what a dry step may change on the modules of ``owners``: buffers,
    parameters (the objects and their values) and ``requires_grad`` flags, train/eval modes, hooks and submodules. Parameters are
    only copied when they require gradients (a frozen teacher's are never touched)."""
    seen, saved = set(), []
    for root in (m for o in owners for m in _modules_of(o)):
        for mod in root.modules():
            if id(mod) in seen:
                continue
            seen.add(id(mod))
            params = {n: (p, p.requires_grad, p.detach().clone() if p.requires_grad else None)
                      for n, p in mod.named_parameters(recurse=False)}
            buffers = {n: (b, b.detach().clone()) for n, b in mod.named_buffers(recurse=False)
                       if b is not None}
            hooks = {h: dict(getattr(mod, h)) for h in ("_forward_hooks", "_forward_pre_hooks",
                                                        "_backward_hooks", "_forward_hooks_with_kwargs")
                     if isinstance(getattr(mod, h, None), dict)}
            saved.append((mod, mod.training, params, buffers, hooks, dict(mod._modules)))
    try:
        yield
    finally:
        with torch.no_grad():
            for mod, training, params, buffers, hooks, children in saved:
                mod.training = training
                if mod._modules != children:  # a stage swapped a submodule (e.g. a new head)
                    mod._modules.clear()
                    mod._modules.update(children)
                for n, (p, rg, value) in params.items():
                    mod._parameters[n] = p  # a sharded dry step (train.fsdp) registers new ones
                    if value is not None:
                        p.copy_(value)
                    p.requires_grad_(rg)
                    p.grad = None
                for _, (b, value) in buffers.items():
                    b.copy_(value)
                for h, d in hooks.items():
                    live = getattr(mod, h)
                    live.clear()
                    live.update(d)


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


def stage_config(base: TrainConfig, overrides: dict, where: str) -> TrainConfig:
    """``base`` with a stage's training ``overrides`` merged in and validated like the top-level
    settings: a wrong key or value is one ConfigError naming ``where`` (the stage) and the key."""
    if not overrides:
        return base
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: training overrides must be a mapping, got {type(overrides).__name__}")
    merged = {**base.model_dump(), **overrides}
    return validate_params(TrainConfig, merged, where)


def stage_seed(seed: int, k: int) -> int:
    """The seed (torch, numpy, python) that what follows stage ``k - 1`` of a run with ``seed``
    starts from: the stage's hand-over and stage ``k``."""
    return (seed * 1_000_003 + 7_919 * k) % (2**31 - 1)


def _stage_label(label: str, stage_name: str, n_stages: int) -> str:
    return f"{label}:{stage_name}" if n_stages > 1 else label


def _dry_stage(engine: Engine, distiller, data, augment, where: str) -> None:
    with _named(f"check before training, stage {where}"):
        engine.dry_step(distiller, data, augment)


@contextlib.contextmanager
def _named(where: str, prefix: bool = True) -> Iterator[None]:
    """A user's mistake (a ``JoryuError``, or an exception in the user's own code: see
    ``joryu.errors``) comes out as one line, prefixed with ``where`` (for a ``JoryuError`` only
    with ``prefix``); a bug in joryu passes through unchanged, with its traceback (exit 1)."""
    try:
        yield
    except JoryuError as e:
        if not prefix or str(e).startswith(("check before training", "stage ")):
            raise
        raise type(e)(f"{where}: {one_line(e)}") from e
    except Exception as e:  # noqa: BLE001 - only the user's own code becomes one line
        reraise_as_user(e, where=f"{where}: ")


def run_stages(method, *, student, train, train_cfg: TrainConfig, teacher=None, val=None,
               run_dir: Path | None = None, seed: int = 0, augment: Augment | None = None,
               progress: bool = True, resume: bool = False, label: str | None = None,
               num_classes: int | None = None, context: StageContext | None = None,
               dry: bool = False):
    """Run ``method``'s stages; returns (deployable network, ``ctx.results``: stage name ->
    ``StageResult``).

    ``context``: the StageContext to use (and fill), when the caller needs it later (its
    ``state`` is made here by ``method.new_state`` unless it has one).
    ``dry``: the check before training (see the module docstring); returns (None, checked stage
    labels) and leaves ``student`` and ``teacher`` as they were."""
    ctx = context or StageContext(student=student, teacher=teacher, train_data=train,
                                  num_classes=num_classes or getattr(train, "num_classes", 0),
                                  train_cfg=train_cfg, seed=seed, augment=augment)
    check_method_fits(method, student, train)
    label = label or method.name
    if dry:
        with preserved_rng(), restored(student, teacher):
            if ctx.state is None:
                with _named(f"check before training, {label}"):
                    ctx.state = method.new_state(ctx)
            return None, _run(method, ctx, train, val, train_cfg, None, seed, augment, False, False,
                              label, dry=True)
    if ctx.state is None:
        with _named(label, prefix=False):
            ctx.state = method.new_state(ctx)
    return _run(method, ctx, train, val, train_cfg, run_dir, seed, augment, progress, resume, label)


def _run(method, ctx: StageContext, train, val, train_cfg, run_dir, seed, augment, progress, resume,
         label, dry: bool = False):
    stages = method.stages()
    distiller, checked = None, []
    for k, stage in enumerate(stages):
        name = _stage_label(label, stage.name, len(stages))
        if stage.skip is not None and stage.skip(ctx):
            ctx.results[stage.name] = StageResult(skipped=True)
            continue
        overrides = stage.train(ctx) if callable(stage.train) else stage.train
        cfg = stage_config(train_cfg, overrides, f"stage {name} train")
        sdir = (run_dir / stage.name if len(stages) > 1 else run_dir) if run_dir is not None else None
        if dry:
            with _named(f"check before training, stage {name}"):
                stage_train = stage.data(ctx) if stage.data is not None else train
                distiller = stage.build(ctx)
            if stage.trains and (cfg.epochs > 0 or cfg.max_steps is not None):
                engine = Engine(cfg.model_copy(update={"log_with": []}), None, seed=seed, stage=name,
                                progress=False)
                _dry_stage(engine, distiller, stage_train, augment, name)
            checked.append(name)
            # What follows one step (the stage's hand-over to the next) may legitimately need a
            # trained stage (e.g. posterior samples): a failure there ends the check quietly,
            # since the real run may well pass it.
            try:
                ctx.results[stage.name] = StageResult(distiller=distiller)
                if stage.after is not None:
                    stage.after(ctx, distiller)
            except Exception:  # noqa: BLE001
                break
            continue
        with _named(f"stage {name}", prefix=False):
            stage_train = stage.data(ctx) if stage.data is not None else train
            distiller = stage.build(ctx)
        if not stage.trains:  # a step: nothing to train, save or resume; scored like a stage
            engine = Engine(cfg, None, seed=seed, stage=name, progress=False)
            result = StageResult(distiller, val=engine.evaluate(distiller, val) if val is not None else {})
        else:
            with _named(f"stage {name}", prefix=False):
                result = _train_stage(distiller, stage_train, val, cfg, sdir, seed, name, augment,
                                      progress, resume)
        ctx.results[stage.name] = result
        # what follows a stage (its hand-over, the next stages) starts from its own seed, whether
        # the stage trained now or was read back on --resume: so resume stays exact
        set_seed(stage_seed(seed, k + 1))
        if stage.after is not None:
            stage.after(ctx, distiller)
    if dry:
        return checked
    return distiller.deployable(), ctx.results


def _train_stage(distiller, data, val, cfg, sdir, seed, name, augment, progress, resume) -> StageResult:
    """One stage through the engine, or its saved result when ``resume`` finds it done."""
    done = sdir / "done.json" if sdir is not None else None
    if resume and done is not None and done.is_file():
        full = sdir / "distiller.safetensors"  # older runs kept the Distiller in final.safetensors
        load_weights(distiller, full if full.is_file() else sdir / "final.safetensors")
        saved = json.loads(done.read_text())
        return StageResult(distiller, **{k: v for k, v in saved.items()
                                         if k in StageResult.__dataclass_fields__})
    engine = Engine(cfg, sdir, seed=seed, stage=name, progress=progress)
    fit = engine.fit(distiller, data, val, augment=augment, resume=resume)
    result = StageResult(distiller, history=fit.history, val=fit.val, train_time_s=fit.train_time_s,
                         samples_per_s=fit.samples_per_s, steps=fit.steps, updates=fit.updates)
    if sdir is not None and is_main():
        # final.safetensors: the deployable network's own state dict (loads into the plain
        # model); distiller.safetensors: everything the stage trained, for --resume.
        save_weights(distiller.deployable(), sdir / "final.safetensors")
        save_weights(distiller, sdir / "distiller.safetensors")
        atomic_write_text(done, json.dumps(result.summary(), indent=1))
    return result
