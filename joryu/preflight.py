"""The check before training: a dry run of every stage on one batch, so config mistakes come first.

A mistake the config already shows (a feature width that does not fit, a missing ``clean`` mask
or ``input_b`` tensor, a model that cannot take the data's shape) must not surface after the
teacher and the baseline have trained for minutes. ``dry_run`` builds each stage's Distiller
exactly as the run will (on deep copies of the student and the teacher), runs one training batch
through its training step (forward and backward, no optimizer step) and one evaluation, then
calls the stage's ``after`` hook so the next stage can be built on top of it. Nothing the caller
owns is touched: the networks are copies, and the torch, numpy and python RNG states are restored
afterwards, so a run with the check gives the same result as one without it.

Any exception from a stage becomes one ``ConfigError`` naming the stage; set ``JORYU_DEBUG=1`` to
see the original traceback.
"""

from __future__ import annotations

import contextlib
import copy
import os
import random
from collections.abc import Iterator

import numpy as np
import torch

from joryu.errors import ConfigError, JoryuError, one_line


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


class DryStepContext:
    """Stands in for ``engine.StepContext`` in a dry run: backward runs, steps only clear grads."""

    def __init__(self, optimizers):
        self.optimizers = optimizers
        self.accelerator = None
        self.engine = None

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self, optimizer) -> None:
        optimizer.zero_grad(set_to_none=True)


def _first_batch(data, batch_size: int, seed: int, augment, device) -> dict:
    from joryu.data.sources import make_loader

    loader = make_loader(data, batch_size, shuffle=True, seed=seed, augment=augment, device=device)
    for batch in loader.iterate(0):
        return batch
    raise ConfigError("the training data is empty")


def _train_step(distiller, cfg, batch) -> None:
    from joryu.engine.loop import optimizer_builder

    distiller.on_epoch_start(0, max(1, cfg.epochs))
    distiller.train()
    if distiller.automatic_optimization:
        losses = distiller(batch)
        if not isinstance(losses, dict) or "loss" not in losses:
            raise ConfigError(f"{type(distiller).__name__}.training_step must return a dict with 'loss'")
        loss = losses["loss"]
        if loss.requires_grad:
            loss.backward()
    else:
        optimizers = distiller.configure_optimizers(optimizer_builder(cfg))
        distiller.ctx = DryStepContext(optimizers)
        try:
            distiller.training_step(batch)
        finally:
            distiller.ctx = None
    distiller.zero_grad(set_to_none=True)


def _eval_step(distiller, batch) -> None:
    distiller.eval()
    with torch.no_grad():
        preds = distiller.eval_logits(batch)
    target = batch.get("target")
    for name, logits in preds.items():
        if target is not None and logits.shape[0] != target.shape[0]:
            raise ConfigError(f"prediction {name!r} has {logits.shape[0]} rows for a batch of "
                              f"{target.shape[0]} samples")
    distiller.train()


def dry_run(method, student, teacher, train_data, train_cfg, seed: int = 0, augment=None,
            num_classes: int | None = None, label: str | None = None) -> list[str]:
    """Dry-run every stage of ``method``; returns the names of the stages checked.

    Raises ``ConfigError`` (one line, naming the stage) if any stage fails to build or to run
    one batch. The caller's ``student`` and ``teacher`` are not touched (copies are used)."""
    from joryu.engine.loop import pick_device
    from joryu.methods import StageContext

    label = label or method.name
    checked = []
    with preserved_rng():
        device = pick_device(train_cfg)
        ctx = StageContext(student=copy.deepcopy(student), teacher=copy.deepcopy(teacher),
                           train_data=train_data,
                           num_classes=num_classes or getattr(train_data, "num_classes", 0),
                           train_cfg=train_cfg, seed=seed, augment=augment)
        stages = method.stages()
        for stage in stages:
            where = f"{label}:{stage.name}" if len(stages) > 1 else label
            try:
                cfg = train_cfg.model_copy(update=stage.train(ctx) if callable(stage.train) else stage.train)
                data = stage.data(ctx) if stage.data is not None else train_data
                distiller = stage.build(ctx)
                distiller.to(device)
                for t in distiller.teachers():
                    t.to(device)
                batch = _first_batch(data, cfg.batch_size, seed, augment, device)
                _train_step(distiller, cfg, batch)
            except JoryuError as e:
                if os.environ.get("JORYU_DEBUG"):
                    raise
                raise type(e)(f"check before training, stage {where}: {one_line(e)}") from None
            except Exception as e:
                if os.environ.get("JORYU_DEBUG"):
                    raise
                raise ConfigError(f"check before training, stage {where} failed on one batch: "
                                  f"{type(e).__name__}: {one_line(e)} (nothing was trained; set "
                                  "JORYU_DEBUG=1 for the traceback)") from None
            checked.append(where)
            # What comes after one step (evaluation, the stage's hand-over to the next) may
            # legitimately need a trained stage (e.g. posterior samples): a failure there ends the
            # check without an error, since the real run may well pass it.
            try:
                _eval_step(distiller, batch)
                ctx.results[stage.name] = {"distiller": distiller, "history": [], "val": {},
                                           "train_time_s": 0.0, "samples_per_s": 0.0}
                if stage.after is not None:
                    stage.after(ctx, distiller)
            except Exception:
                break
    return checked
