"""The Python entry point: ``joryu.distill(teacher, student, train_data, method="kd", **overrides)``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from joryu.config import TrainConfig
from joryu.data import Augment, as_source, build_transform, split_any
from joryu.data.sources import DatasetError
from joryu.errors import ConfigError, DataError


def as_tensor_data(data, num_classes: int | None = None):
    """``data`` as a joryu source: a TensorData (tensors, kept on the device) or a StreamData
    (a Dataset, IterableDataset, DataLoader or Hugging Face dataset, streamed)."""
    return as_source(data, num_classes)


def distill(teacher: nn.Module | None, student: nn.Module, train_data, method: str = "kd", *,
            val_data=None, val_fraction: float = 0.1, seed: int = 0, run_dir: str | Path | None = None,
            augment: Augment | dict | None = None, progress: bool = True, resume: bool = False,
            num_classes: int | None = None, transform=None, eval_transform=None, views=None,
            loader: dict | None = None, **overrides):
    """Train ``student`` from ``teacher`` with ``method``; returns ``(student, metrics)``.

    ``overrides`` are training settings (``epochs``, ``lr``, ``optimizer``, ``batch_size``...,
    see ``joryu.config.TrainConfig``) or the method's parameters (``temperature``, ``alpha``...).
    ``metrics`` holds the per-epoch history and the final validation metrics of every stage.
    The teacher is frozen (eval mode, no gradients) and is not changed.

    ``train_data`` (and ``val_data``) may be ``(inputs, targets)`` tensors, a joryu TensorData,
    a map-style or iterable torch Dataset, a DataLoader or a Hugging Face dataset (see
    ``joryu.data.sources``). For streamed data: ``transform`` / ``eval_transform`` (a transform
    list as in a config, or a callable), ``views`` (``{batch key: transform}``, e.g. a teacher's own
    preprocessing) and ``loader`` (``{num_workers, pin_memory, persistent_workers, ...}``).
    """
    from joryu.experiment import run_stages
    from joryu.methods import get_method
    from joryu.teachers import as_teacher

    train_keys = set(TrainConfig.model_fields)
    train_cfg = TrainConfig(**{k: v for k, v in overrides.items() if k in train_keys})
    method_params = {k: v for k, v in overrides.items() if k not in train_keys}
    m = get_method(method, method_params)
    stream_opts = {}
    if transform is not None or eval_transform is not None or views or loader:
        tf = build_transform(transform)
        etf = build_transform(eval_transform) if eval_transform is not None else (
            tf.deterministic() if tf is not None else None)
        stream_opts = dict(transform=tf, eval_transform=etf,
                           views={k: build_transform(v) for k, v in (views or {}).items()})
        if loader:
            from joryu.data import LoaderOptions

            stream_opts["loader"] = LoaderOptions.of(loader)
    try:
        data = as_source(train_data, num_classes, **stream_opts)
    except DataError as e:
        raise DatasetError(f"train_data: {e}") from None
    if stream_opts and not hasattr(data, "views"):
        raise ConfigError("transform, views and loader apply to streamed data (a Dataset or DataLoader); "
                          "for tensors use augment=")
    if val_data is not None:
        train = data
        val_opts = {k: v for k, v in stream_opts.items() if k == "loader"}
        if stream_opts:
            val_opts.update(transform=stream_opts["eval_transform"], eval_transform=stream_opts["eval_transform"])
        try:
            val = as_source(val_data, data.num_classes, **val_opts)
        except DataError as e:
            raise DatasetError(f"val_data: {e}") from None
        if hasattr(val, "for_eval"):
            val = val.for_eval()
    else:
        train, val = split_any(data, val_fraction, seed)
    if isinstance(augment, dict):
        augment = Augment(**augment)
    t = as_teacher(teacher) if teacher is not None else None
    if m.needs_teacher and t is None:
        raise ConfigError(f"method {method!r} needs a teacher")
    torch.manual_seed(seed)
    student, results = run_stages(m, student, t, train, val, train_cfg,
                                  Path(run_dir) if run_dir else None, seed, augment, progress, resume,
                                  num_classes=data.num_classes)
    metrics = {name: {k: v for k, v in r.items() if k != "distiller"} for name, r in results.items()}
    return student, metrics
