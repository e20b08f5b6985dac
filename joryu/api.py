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
    if isinstance(data, dict) and "target" in data and all(isinstance(t, torch.Tensor) for t in data.values()):
        y = data["target"].long()
        known = y[y != -100]
        k = num_classes or (int(known.max()) + 1 if known.numel() else 1)
        return TensorData({**data, "target": y}, k, "user")
    raise ConfigError("train_data must be a joryu TensorData, a DataBundle, a dict of tensors with 'target' "
                      "(plus the keys the models read), an (inputs, targets) tuple of tensors or a 2-tensor "
                      f"TensorDataset, not {type(data).__name__}")


def _check_same_classes(teacher, student, data) -> None:
    from joryu.experiment import probe_logits
    from joryu.losses.positions import num_classes

    if not isinstance(teacher, nn.Module):
        return
    k_t, k_s = num_classes(probe_logits(teacher, data)), num_classes(probe_logits(student, data))
    if k_t != k_s:
        raise ConfigError(f"the teacher predicts {k_t} classes (vocabulary size) and the student {k_s}: "
                          "build both with the same num_classes / vocab_size")


def distill(teacher: nn.Module | None, student: nn.Module, train_data, method: str = "kd", *,
            val_data=None, val_fraction: float = 0.1, seed: int = 0, run_dir: str | Path | None = None,
            augment: Augment | dict | None = None, progress: bool = True, resume: bool = False,
            inputs=None, teacher_inputs=None, **overrides):
    """Train ``student`` from ``teacher`` with ``method``; returns ``(student, metrics)``.

    ``overrides`` are training settings (``epochs``, ``lr``, ``optimizer``, ``batch_size``...,
    see ``joryu.config.TrainConfig``) or the method's parameters (``temperature``, ``alpha``...).
    ``metrics`` holds the per-epoch history and the final validation metrics of every stage.
    The teacher is frozen (eval mode, no gradients) and is not changed.

    ``inputs`` names the batch keys the student reads (a key, a list of keys for positional
    arguments, or ``{forward_argument: batch_key}``, e.g. ``{"input_ids": "input_ids",
    "attention_mask": "attention_mask"}``); ``teacher_inputs`` those of the teacher (default:
    the same as the student's). Integer tensors (token ids) are passed as they are.
    """
    from joryu.experiment import run_stages
    from joryu.methods import get_method
    from joryu.outputs import declare_inputs
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
    if inputs is not None:
        declare_inputs(student, inputs)
    t_inputs = teacher_inputs if teacher_inputs is not None else inputs
    if t_inputs is not None and isinstance(teacher, nn.Module):
        declare_inputs(teacher, t_inputs)
    _check_same_classes(teacher, student, train)
    t = as_teacher(teacher, t_inputs or "input") if teacher is not None else None
    if m.needs_teacher and t is None:
        raise ConfigError(f"method {method!r} needs a teacher")
    torch.manual_seed(seed)
    student, results = run_stages(m, student, t, train, val, train_cfg,
                                  Path(run_dir) if run_dir else None, seed, augment, progress, resume,
                                  num_classes=data.num_classes)
    metrics = {name: {k: v for k, v in r.items() if k != "distiller"} for name, r in results.items()}
    return student, metrics
