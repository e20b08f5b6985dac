"""The Python entry point: ``joryu.distill(teacher, student, train_data, method="kd", **overrides)``."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from joryu.config import TrainConfig
from joryu.data import Augment, DataBundle, TensorData, split_validation
from joryu.errors import ConfigError


def as_tensor_data(data, num_classes: int | None = None) -> TensorData:
    if isinstance(data, TensorData):
        return data
    if isinstance(data, DataBundle):
        return data.train
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        x, y = data
        y = y.long()
        return TensorData({"input": x, "target": y}, num_classes or int(y.max()) + 1, "user")
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
        return as_tensor_data(tuple(data.tensors), num_classes)
    raise ConfigError("train_data must be a joryu TensorData, a DataBundle, a (inputs, targets) tuple of "
                      f"tensors or a 2-tensor TensorDataset, not {type(data).__name__}")


def distill(teacher: nn.Module | None, student: nn.Module, train_data, method: str = "kd", *,
            val_data=None, val_fraction: float = 0.1, seed: int = 0, run_dir: str | Path | None = None,
            augment: Augment | dict | None = None, progress: bool = True, resume: bool = False,
            **overrides):
    """Train ``student`` from ``teacher`` with ``method``; returns ``(student, metrics)``.

    ``overrides`` are training settings (``epochs``, ``lr``, ``optimizer``, ``batch_size``...,
    see ``joryu.config.TrainConfig``) or the method's parameters (``temperature``, ``alpha``...).
    ``metrics`` holds the per-epoch history and the final validation metrics of every stage.
    The teacher is frozen (eval mode, no gradients) and is not changed.
    """
    from joryu.experiment import run_stages
    from joryu.methods import get_method
    from joryu.teachers import as_teacher

    train_keys = set(TrainConfig.model_fields)
    train_cfg = TrainConfig(**{k: v for k, v in overrides.items() if k in train_keys})
    method_params = {k: v for k, v in overrides.items() if k not in train_keys}
    m = get_method(method, method_params)
    data = as_tensor_data(train_data)
    if val_data is not None:
        train, val = data, as_tensor_data(val_data, data.num_classes)
    else:
        train, val = split_validation(data, val_fraction, seed)
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
