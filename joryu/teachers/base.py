"""Teachers: callables ``teacher(batch) -> Outputs`` that are never trained by the student.

A teacher is deliberately *not* an ``nn.Module``: assigning one to a Distiller does not
register its parameters, so the student's optimizer, ``state_dict`` and DDP never see it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from joryu import meter
from joryu.losses.positions import class_dim
from joryu.outputs import Outputs, forward
from joryu.taps import Taps


def weights_fingerprint(model: nn.Module) -> str:
    """Content hash of a model's parameters and buffers."""
    h = hashlib.sha1()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


class Teacher:
    """Base class. Subclasses implement ``_forward(batch) -> Outputs``; calls run under no_grad."""

    input_key: str = "input"
    stochastic: bool = False  # True: two calls on the same batch may differ (never cache these)

    def __call__(self, batch: Mapping) -> Outputs:
        with torch.no_grad(), meter.teacher_call(batch_size(batch, self.input_key)):
            return self._forward(batch)

    def _forward(self, batch: Mapping) -> Outputs:  # pragma: no cover - abstract
        raise NotImplementedError

    def models(self) -> list[nn.Module]:
        return []

    def to(self, device) -> Teacher:
        for m in self.models():
            m.to(device)
        return self

    def fingerprint(self) -> str:
        return "+".join(weights_fingerprint(m) for m in self.models())

    def version(self) -> tuple:
        """Cheap change detector: in-place updates of any parameter bump its version counter."""
        return tuple((t.data_ptr(), t._version) for m in self.models()
                     for t in list(m.parameters()) + list(m.buffers()))


def batch_size(batch: Mapping, input_key="input") -> int:
    """Samples in ``batch`` (its ``index``, else the first dimension of its input), for the meter."""
    x = batch.get("index") if isinstance(batch, Mapping) else None
    if x is None and isinstance(batch, Mapping) and isinstance(input_key, str):
        x = batch.get(input_key)
    return int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 1


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class FrozenTeacher(Teacher):
    """A trained model in eval mode with gradients off; optional feature taps by module path."""

    def __init__(self, model: nn.Module, input_key: str = "input", features: Mapping[str, str] | None = None):
        self.model = freeze(model)
        self.input_key = input_key
        self.taps = Taps(self.model, features, detach=True) if features else None

    def _forward(self, batch):
        self.model.eval()  # guard: somebody may have called .train() on the model
        logits = forward(self.model, batch, self.input_key)
        return Outputs(logits, self.taps.pop() if self.taps else {})

    def models(self):
        return [self.model]


class EnsembleTeacher(Teacher):
    """Average of several teachers: ``mode="logits"`` (mean logits) or ``"probs"`` (mean softmax,
    returned as log-probabilities, which are valid logits for a softmax at T=1)."""

    def __init__(self, teachers: Sequence[Teacher | nn.Module], mode: str = "probs", input_key: str = "input"):
        if mode not in ("logits", "probs"):
            raise ValueError(f"ensemble mode must be 'logits' or 'probs', got {mode!r}")
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        self.teachers = [t if isinstance(t, Teacher) else FrozenTeacher(t, input_key) for t in teachers]
        self.mode = mode
        self.input_key = input_key

    def _forward(self, batch):
        outs = [t(batch).logits for t in self.teachers]
        stacked = torch.stack([o.float() for o in outs])
        if self.mode == "logits":
            return Outputs(stacked.mean(0))
        probs = F.softmax(stacked, dim=1 + class_dim(stacked[0])).mean(0)  # per pixel: classes on dim 1
        return Outputs(probs.clamp_min(1e-12).log())

    def models(self):
        return [m for t in self.teachers for m in t.models()]


def as_teacher(obj, input_key: str = "input") -> Teacher:
    """A Teacher from a Teacher, an nn.Module or a list of modules (an ensemble)."""
    if isinstance(obj, Teacher):
        return obj
    if isinstance(obj, nn.Module):
        return FrozenTeacher(obj, input_key)
    if isinstance(obj, (list, tuple)):
        return EnsembleTeacher(list(obj), input_key=input_key)
    raise TypeError(f"cannot use {type(obj).__name__} as a teacher: pass an nn.Module or a Teacher")
