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
from joryu.errors import ConfigError
from joryu.losses.positions import class_dim
from joryu.outputs import Outputs, forward, input_keys, inputs_of
from joryu.taps import Taps

TEACHER_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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


def teacher_dtype(dtype) -> torch.dtype | None:
    """``"float32" | "bfloat16" | "float16"`` (or the torch dtype, or None) as a torch dtype; a
    wrong name is one ConfigError line."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in TEACHER_DTYPES:
        raise ConfigError(f"teacher dtype {dtype!r} is not one of {', '.join(TEACHER_DTYPES)}")
    return TEACHER_DTYPES[dtype]


def teacher_device(device) -> torch.device | None:
    """None (the training device), ``"cpu"`` or ``"cuda:N"`` as a torch device; one ConfigError
    line for a malformed name or a GPU that is not there."""
    if device is None or isinstance(device, torch.device):
        return device
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"teacher device {device!r} is not a device: use cpu or cuda:N (or leave it "
                          "unset for the training device)") from None
    if d.type == "cuda" and (not torch.cuda.is_available()
                             or (d.index or 0) >= torch.cuda.device_count()):
        raise ConfigError(f"teacher device {device!r} is not visible here ({torch.cuda.device_count()} "
                          "CUDA devices): choose another, or cpu")
    return d


class FrozenTeacher(Teacher):
    """A trained model in eval mode with gradients off; optional feature taps by module path.

    Placement and precision (the one home of this policy; methods never place teachers):
    ``device`` None runs the teacher on the training device (the engine moves it there), ``"cpu"``
    or ``"cuda:N"`` pins it there; ``dtype`` (``float32``, ``bfloat16``, ``float16``) casts the
    model *in place* once. When either is set, each call sends the tensors the model reads to the
    teacher's device (floating inputs cast to its dtype), and its logits and features come back
    once per batch on the batch's device as float32. A teacher is never wrapped in DDP or FSDP:
    it is not an ``nn.Module`` and the engine only moves it.
    """

    def __init__(self, model: nn.Module, input_key: str = "input", features: Mapping[str, str] | None = None,
                 *, device=None, dtype=None):
        self.model = freeze(model)
        self.input_key = input_key
        self.device = teacher_device(device)
        self.dtype = teacher_dtype(dtype)
        if self.dtype is not None:
            self.model.to(self.dtype)
        if self.device is not None:
            self.model.to(self.device)
        self.taps = Taps(self.model, features, detach=True) if features else None

    @property
    def placed(self) -> bool:
        """Whether the teacher has its own device or dtype (outputs are then moved and cast)."""
        return self.device is not None or self.dtype is not None

    def to(self, device) -> Teacher:
        """Follow the training device unless pinned to its own."""
        self.model.to(self.device if self.device is not None else device)
        return self

    def _forward(self, batch):
        self.model.eval()  # guard: somebody may have called .train() on the model
        if not self.placed:
            logits = forward(self.model, batch, self.input_key)
            return Outputs(logits, self.taps.pop() if self.taps else {})
        return self._placed_forward(batch)

    def _placed_forward(self, batch):
        keys = input_keys(inputs_of(self.model, self.input_key))
        first = next((batch[k] for k in keys if isinstance(batch.get(k), torch.Tensor)), None)
        home = first.device if first is not None else None
        mine = next(iter(self.model.parameters()), None)
        device = mine.device if mine is not None else home
        moved = dict(batch)
        for k in keys:
            v = batch.get(k)
            if isinstance(v, torch.Tensor):
                v = v.to(device, non_blocking=True)
                if self.dtype is not None and v.is_floating_point():
                    v = v.to(self.dtype)
                moved[k] = v
        # the training step's autocast (if any) must not recast the teacher's own precision
        with torch.autocast(device_type=device.type if device is not None else "cpu", enabled=False):
            logits = forward(self.model, moved, self.input_key)
        feats = self.taps.pop() if self.taps else {}

        def back(t):
            return t.to(home if home is not None else t.device, torch.float32)

        return Outputs(back(logits), {k: back(v) for k, v in feats.items()})

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


def as_teacher(obj, input_key: str = "input", *, device=None, dtype=None) -> Teacher:
    """A Teacher from a Teacher, an nn.Module or a list of modules (an ensemble); ``device`` and
    ``dtype`` place each frozen model (see :class:`FrozenTeacher`)."""
    placement = {"device": device, "dtype": dtype}
    if isinstance(obj, Teacher):
        if device is not None or dtype is not None:
            if type(obj) is not FrozenTeacher:
                raise ConfigError(f"teacher device/dtype apply to a model or a FrozenTeacher, not a "
                                  f"{type(obj).__name__}: pass the model, or place it yourself")
            return FrozenTeacher(obj.model, obj.input_key, device=device, dtype=dtype)
        return obj
    if isinstance(obj, nn.Module):
        return FrozenTeacher(obj, input_key, **placement)
    if isinstance(obj, (list, tuple)):
        return EnsembleTeacher([as_teacher(o, input_key, **placement) if isinstance(o, nn.Module) else o
                                for o in obj], input_key=input_key)
    raise TypeError(f"cannot use {type(obj).__name__} as a teacher: pass an nn.Module or a Teacher")
