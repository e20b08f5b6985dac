"""The Python entry point: ``joryu.distill(teacher, student, train_data, method="kd", **overrides)``."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path

import torch
from torch import nn

from joryu.config import TrainConfig, validate_params
from joryu.data import (
    Augment,
    LoaderOptions,
    TensorData,
    as_source,
    build_transform,
    example_batch,
    split_any,
)
from joryu.data.sources import align_labels, check_labels
from joryu.engine.loop import pick_device
from joryu.errors import ConfigError, DataError, one_line
from joryu.evaluate import evaluate_model
from joryu.losses.positions import num_classes
from joryu.methods import get_method, method_info
from joryu.models.build import output_classes, probe_logits
from joryu.models.reinit import fresh_copy
from joryu.outputs import declare_inputs, is_causal_lm
from joryu.run.evidence import SeedValues, judge, warnings_for
from joryu.run.stages import run_stages
from joryu.teachers import FrozenTeacher, as_teacher
from joryu.teachers.base import teacher_dtype as teacher_dtype_of


def as_tensor_data(data, num_classes: int | None = None):
    """``data`` as a joryu source: a TensorData (tensors, kept on the device) or a StreamData
    (a Dataset, IterableDataset, DataLoader or Hugging Face dataset, streamed)."""
    if isinstance(data, dict) and "target" in data and all(isinstance(v, torch.Tensor) for v in data.values()):
        y = data["target"].long()
        known = y[y != -100]
        k = num_classes or (int(known.max()) + 1 if known.numel() else 1)
        return TensorData({**data, "target": y}, k, "user")
    return as_source(data, num_classes)


def _split_overrides(method: str, overrides: dict):
    """Training settings and method parameters from ``distill``'s keyword arguments; an unknown
    key is one ConfigError naming both sets and the closest spelling."""
    params_cls = method_info(method).cls.Params  # unknown method: one line with suggestions
    train_keys, method_keys = set(TrainConfig.model_fields), set(params_cls.model_fields)
    unknown = [k for k in overrides if k not in train_keys | method_keys]
    if unknown:
        parts = []
        for k in unknown:
            close_t = difflib.get_close_matches(k, sorted(train_keys), n=1)
            close_m = difflib.get_close_matches(k, sorted(method_keys), n=1)
            if close_t and (not close_m or difflib.SequenceMatcher(None, k, close_t[0]).ratio()
                            >= difflib.SequenceMatcher(None, k, close_m[0]).ratio()):
                parts.append(f"unknown training setting {k!r}; did you mean {close_t[0]!r}?")
            elif close_m:
                parts.append(f"unknown parameter {k!r} of method {method!r}; did you mean {close_m[0]!r}?")
            else:
                parts.append(f"{k!r} is neither a training setting (see joryu.config.TrainConfig: "
                             f"epochs, lr, batch_size, ...) nor a parameter of method {method!r} "
                             f"({', '.join(sorted(method_keys)) or 'none'})")
        raise ConfigError("; ".join(parts))
    train_cfg = validate_params(TrainConfig, {k: v for k, v in overrides.items() if k in train_keys}, "train")
    method_params = {k: v for k, v in overrides.items() if k in method_keys}
    return train_cfg, get_method(method, method_params)


def _check_shapes(teacher, student, train) -> None:
    """Each network runs on two training samples, or one ConfigError names it and the shapes."""
    shape = train.input_shape if isinstance(train, TensorData) else None  # first input if no 'input' key
    nets = [("student", student)] + ([("teacher", teacher)] if isinstance(teacher, nn.Module) else [])
    for role, net in nets:
        output_classes(net, train, "input",
                       f"{role} {type(net).__name__}", shape)


def _teacher_modules(teacher) -> list[nn.Module]:
    if isinstance(teacher, nn.Module):
        return [teacher]
    if isinstance(teacher, (list, tuple)):
        return [m for t in teacher for m in _teacher_modules(t)]
    models = getattr(teacher, "models", None)
    return list(models()) if callable(models) else []


def _cast_copy(teacher, dtype):
    """The caller's teacher module(s), copied when ``dtype`` would change them (the cast is in place)."""
    want = teacher_dtype_of(dtype)
    if want is None or want == torch.float32:
        return teacher
    if isinstance(teacher, nn.Module):
        return copy.deepcopy(teacher)
    if isinstance(teacher, (list, tuple)):
        return [_cast_copy(t, dtype) for t in teacher]
    if isinstance(teacher, FrozenTeacher):
        return FrozenTeacher(copy.deepcopy(teacher.model), teacher.input_key)
    return teacher  # as_teacher refuses it with one line


def _check_same_classes(teacher, student, data) -> None:
    if not isinstance(teacher, nn.Module):
        return
    k_t, k_s = num_classes(probe_logits(teacher, data)), num_classes(probe_logits(student, data))
    if k_t != k_s:
        raise ConfigError(f"the teacher predicts {k_t} classes (vocabulary size) and the student {k_s}: "
                          "build both with the same num_classes / vocab_size")


def _top1(model, data, batch_size: int, device) -> float:
    return evaluate_model(model, data, batch_size=batch_size, device=device)["top1"]


def _paired_seeds(m, initial, trained, teacher, train, val, train_cfg, augment, seed: int, seeds: int,
                  num_classes: int, run_dir, progress: bool, resume: bool) -> dict:
    """``distill(seeds=N)``: the student alone against the method on N paired seeds (seed i: both
    arms from the same initialisation, the same data order); the first seed's method arm is the
    run itself, from the user's own initial weights. Judged on the validation split by
    ``joryu.stats`` (see ``joryu.run.evidence``)."""
    if val is None:
        raise ConfigError("seeds= compares arms on the validation split: give val_data or val_fraction > 0")
    device = pick_device(train_cfg)
    alone = get_method("supervised", {})
    values = SeedValues()
    for i in range(seeds):
        s = seed + i
        init = initial if i == 0 else fresh_copy(initial, s)
        sub = run_dir / "seeds" / f"seed-{s}" if run_dir is not None else None
        if i == 0:
            method_net = trained
        else:
            torch.manual_seed(s)
            method_net, _ = run_stages(m, student=copy.deepcopy(init), teacher=teacher, train=train, val=val,
                                       train_cfg=train_cfg, seed=s, augment=augment, num_classes=num_classes,
                                       run_dir=sub / m.name if sub else None, progress=progress, resume=resume)
        torch.manual_seed(s)
        alone_net, _ = run_stages(alone, student=copy.deepcopy(init), train=train, val=val, train_cfg=train_cfg,
                                  seed=s, augment=augment, num_classes=num_classes,
                                  run_dir=sub / "alone" if sub else None, progress=progress, resume=resume,
                                  label="student alone")
        values.method.append(_top1(method_net, val, train_cfg.eval_batch_size, device))
        values.baseline.append(_top1(alone_net, val, train_cfg.eval_batch_size, device))
    judged = judge(values)
    return {"metric": "validation top-1 accuracy (%)", "seeds": [seed + i for i in range(seeds)],
            "val": judged, "verdict": judged["verdict"],
            "warnings": warnings_for(seeds, judged, None, None, [])}


def distill(teacher: nn.Module | None, student: nn.Module, train_data, method: str = "kd", *,
            val_data=None, val_fraction: float = 0.1, seed: int = 0, run_dir: str | Path | None = None,
            augment: Augment | dict | None = None, progress: bool = True, resume: bool = False,
            num_classes: int | None = None, transform=None, eval_transform=None, views=None,
            loader: dict | None = None, inputs=None, teacher_inputs=None, columns: dict | None = None,
            seeds: int | None = None, teacher_device=None, teacher_dtype=None, **overrides):
    """Train ``student`` from ``teacher`` with ``method``; returns ``(student, metrics)``.

    ``overrides`` are training settings (``epochs``, ``lr``, ``optimizer``, ``batch_size``...,
    see ``joryu.config.TrainConfig``) or the method's parameters (``temperature``, ``alpha``...);
    a misspelled one is a ``ConfigError`` that says which kind it looks like. Before training,
    every stage is dry-run on one batch (``joryu.run.stages``, ``dry=True``), so a mistake is a one-line
    ``ConfigError`` before any time is spent.
    ``metrics`` holds the per-epoch history and the final validation metrics of every stage.

    ``train_data`` (and ``val_data``) may be ``(inputs, targets)`` tensors, a joryu TensorData,
    a map-style or iterable torch Dataset, a DataLoader or a Hugging Face dataset (see
    ``joryu.data.sources``). For streamed data: ``transform`` / ``eval_transform`` (a transform
    list as in a config, or a callable), ``views`` (``{batch key: transform}``, e.g. a teacher's own
    preprocessing) and ``loader`` (``{num_workers, pin_memory, persistent_workers, ...}``).

    The caller's teacher is not changed: it is used frozen (eval mode, no gradients) during the
    call, and its ``requires_grad`` flags and train/eval modes are restored when ``distill``
    returns (or raises). Its weights are never updated.

    ``seeds``: also train the student alone, and both arms on ``seeds`` paired seeds (same
    initialisation and data order per seed); ``metrics["evidence"]`` then holds the per-seed
    validation accuracies, the paired difference with its t interval and the verdict ("helped",
    "no evidence either way", "hurt"; at least 5 seeds for one, see ``joryu.stats``).

    ``inputs`` names the batch keys the student reads (a key, a list of keys for positional
    arguments, or ``{forward_argument: batch_key}``, e.g. ``{"input_ids": "input_ids",
    "attention_mask": "attention_mask"}``); ``teacher_inputs`` those of the teacher (default:
    the same as the student's). Integer tensors (token ids) are passed as they are.

    ``teacher_device`` (``"cpu"``, ``"cuda:N"``; default the training device) and ``teacher_dtype``
    (``"float32"``, ``"bfloat16"``, ``"float16"``) place the frozen teacher
    (``joryu.teachers.FrozenTeacher``): its outputs come back on the training device as float32
    once per batch. A 16-bit teacher is a cast copy of the caller's; the caller's keeps its dtype.

    ``columns`` (``{batch key: column}``) renames a dataset's columns; a Hugging Face dataset whose
    columns are the names ``inputs`` reads (``input_ids``, ``attention_mask``, ``labels``) needs none.
    Hugging Face ``labels`` follow HF's convention: for a causal LM (``joryu.outputs.is_causal_lm``)
    they are shifted once to the next-token target, for other models taken as they are; a
    ``target`` is never shifted (see ``joryu.losses.positions``).
    """
    if seeds is not None and (isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1):
        raise ConfigError(f"seeds must be a whole number >= 1, got {seeds!r}")
    train_cfg, m = _split_overrides(method, overrides)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a whole number >= 0, got {seed!r}")
    stream_opts = {"columns": dict(columns)} if columns else {}
    if transform is not None or eval_transform is not None or views or loader:
        tf = build_transform(transform)
        etf = build_transform(eval_transform) if eval_transform is not None else (
            tf.deterministic() if tf is not None else None)
        stream_opts.update(transform=tf, eval_transform=etf,
                           views={k: build_transform(v) for k, v in (views or {}).items()})
        if loader:
            stream_opts["loader"] = LoaderOptions.of(loader)
    try:  # a bad sample is reported against the argument
        data = as_source(train_data, num_classes, **stream_opts)
        if not isinstance(data, TensorData):
            example_batch(data, 1)
        check_labels(data, data.num_classes, "train_data")
    except DataError as e:
        raise ConfigError(f"train_data: {one_line(e)}") from None
    if stream_opts and not hasattr(data, "views"):
        raise ConfigError("transform, views, columns and loader apply to streamed data (a Dataset or "
                          "DataLoader); for tensors use augment= and name the tensors as the model's inputs")
    if val_data is not None:
        train = data
        val_opts = {k: v for k, v in stream_opts.items() if k in ("loader", "columns")}
        if "eval_transform" in stream_opts:
            val_opts.update(transform=stream_opts["eval_transform"], eval_transform=stream_opts["eval_transform"])
        try:
            val = as_source(val_data, data.num_classes, **val_opts)
        except DataError as e:
            raise ConfigError(f"val_data: {one_line(e)}") from None
        if hasattr(val, "for_eval"):
            val = val.for_eval()
        check_labels(val, data.num_classes, "val_data")
    else:
        if not 0 <= val_fraction < 1:
            raise ConfigError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
        train, val = split_any(data, val_fraction, seed)
    if isinstance(augment, dict):
        augment = validate_params(Augment, augment, "augment")
    causal = is_causal_lm(student)  # Hugging Face labels: shifted once for a causal LM
    train, val = align_labels(train, causal), align_labels(val, causal)
    if inputs is not None:
        declare_inputs(student, inputs)
    t_inputs = teacher_inputs if teacher_inputs is not None else inputs
    if t_inputs is not None and isinstance(teacher, nn.Module):
        declare_inputs(teacher, t_inputs)
    if m.needs_teacher and teacher is None:
        raise ConfigError(f"method {method!r} needs a teacher")
    modules = _teacher_modules(teacher) if teacher is not None else []
    saved = [(mod, [(mm, mm.training) for mm in mod.modules()],
              [(p, p.requires_grad) for p in mod.parameters()]) for mod in modules]
    try:
        try:
            t = None
            if teacher is not None:
                t = as_teacher(_cast_copy(teacher, teacher_dtype), t_inputs or "input",
                               device=teacher_device, dtype=teacher_dtype)
        except TypeError as e:
            raise ConfigError(str(e)) from None
        _check_shapes(teacher, student, train)
        _check_same_classes(teacher, student, train)
        plan = dict(student=student, teacher=t, train=train, train_cfg=train_cfg, seed=seed, augment=augment,
                    num_classes=data.num_classes)
        run_stages(m, **plan, dry=True)  # the check before training: the same loop, one dry batch
        initial = copy.deepcopy(student) if seeds is not None else None  # the alone arm's init
        torch.manual_seed(seed)
        student, results = run_stages(m, **plan, val=val, run_dir=Path(run_dir) if run_dir else None,
                                      progress=progress, resume=resume)
        if seeds is not None:
            evidence = _paired_seeds(m, initial, student, t, train, val, train_cfg, augment, seed, seeds,
                                     data.num_classes, Path(run_dir) if run_dir else None, progress, resume)
    finally:
        for _, modes, grads in saved:
            for mm, was in modes:
                mm.train(was)
            for p, rg in grads:
                p.requires_grad_(rg)
    metrics = {name: r.summary() for name, r in results.items()}
    if seeds is not None:
        metrics["evidence"] = evidence
    return student, metrics
