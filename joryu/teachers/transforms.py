"""Transform ensemble: one model run on several transforms of its input, averaged in the original frame.

    teacher = TransformEnsembleTeacher(model, shift_grid(2, step=2) + [hflip()])

Each ``Transform`` has ``apply`` (on the input) and ``invert`` (on the prediction, mapping it
back to the original frame). For classification the prediction does not move, so ``invert``
is the identity (the default). A dense-prediction user (heatmaps, segmentation) passes the
inverse transform, e.g. ``shift(2, 0, dense=True)`` or ``Transform("mine", f, f_inverse)``;
predictions are always inverse-transformed *before* they are averaged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from joryu.outputs import Outputs
from joryu.teachers.base import FrozenTeacher, Teacher


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass
class Transform:
    """A named input transform and the map of a prediction back to the original frame."""

    name: str
    apply: Callable[[Tensor], Tensor]
    invert: Callable[[Tensor], Tensor] = _identity


def _translate(x: Tensor, offsets: Sequence[int]) -> Tensor:
    """Shift the last ``len(offsets)`` axes of ``x`` by ``offsets`` with zero fill (no wrap-around)."""
    out = x
    for axis, d in zip(range(x.dim() - len(offsets), x.dim()), offsets):
        d = int(d)
        if d == 0:
            continue
        n = out.shape[axis]
        moved = torch.zeros_like(out)
        if abs(d) < n:
            src = out.narrow(axis, 0, n - d) if d > 0 else out.narrow(axis, -d, n + d)
            moved.narrow(axis, d if d > 0 else 0, n - abs(d)).copy_(src)
        out = moved
    return out


def identity() -> Transform:
    return Transform("identity", _identity)


def shift(*offsets: int, dense: bool = False) -> Transform:
    """Translate the last ``len(offsets)`` axes (e.g. ``shift(dy, dx)`` for images, ``shift(d)`` for
    signals). ``dense=True`` also shifts the prediction back by ``-offsets``."""
    offs = tuple(int(o) for o in offsets)
    inv = (lambda y: _translate(y, [-o for o in offs])) if dense else _identity
    return Transform(f"shift{offs}", lambda x: _translate(x, offs), inv)


def shift_grid(max_shift: int, step: int = 1, ndim: int = 2, dense: bool = False) -> list[Transform]:
    """Every translation in {-max_shift, ..., max_shift} (every ``step``) along ``ndim`` axes."""
    vals = list(range(-max_shift, max_shift + 1, step))
    if 0 not in vals:
        vals.append(0)
    grids = torch.cartesian_prod(*[torch.tensor(vals)] * ndim) if ndim > 1 else torch.tensor(vals)[:, None]
    return [shift(*[int(v) for v in row], dense=dense) for row in grids]


def hflip(dense: bool = False) -> Transform:
    """Mirror the last axis; ``dense=True`` mirrors the prediction back."""
    return Transform("hflip", lambda x: x.flip(-1), (lambda y: y.flip(-1)) if dense else _identity)


def _rescale(x: Tensor, factor: float) -> Tensor:
    """Resize the spatial axes (all after the channel axis) by ``factor``, then centre crop / zero pad
    back to the original size."""
    spatial = x.shape[2:]
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
    size = [max(1, round(s * factor)) for s in spatial]
    y = F.interpolate(x, size=size, mode=mode, align_corners=False)
    pads = []
    for s_new, s in zip(reversed(size), reversed(spatial)):
        lo = (s - s_new) // 2
        pads += [lo, s - s_new - lo]  # negative padding crops
    return F.pad(y, pads)


def scale(factor: float, dense: bool = False) -> Transform:
    """Zoom by ``factor`` about the centre, keeping the input size (inputs (B, C, *spatial));
    ``dense=True`` zooms the prediction back by ``1 / factor``."""
    inv = (lambda y: _rescale(y, 1.0 / factor)) if dense else _identity
    return Transform(f"scale{factor:g}", lambda x: _rescale(x, factor), inv)


class TransformEnsembleTeacher(Teacher):
    """One model on several transforms of the input; predictions are mapped back, then averaged.

    mode: ``"probs"`` (default) averages softmax probabilities over ``class_dim`` and returns their
    log (valid logits at T=1); ``"logits"`` averages raw outputs (e.g. regression heatmaps).
    """

    def __init__(self, teacher: Teacher | nn.Module, transforms: Sequence[Transform], mode: str = "probs",
                 input_key: str = "input", class_dim: int = -1):
        if mode not in ("probs", "logits"):
            raise ValueError(f"mode must be 'probs' or 'logits', got {mode!r}")
        if not transforms:
            raise ValueError("a transform ensemble needs at least one transform")
        self.teacher = teacher if isinstance(teacher, Teacher) else FrozenTeacher(teacher, input_key)
        self.transforms = list(transforms)
        self.mode = mode
        self.input_key = input_key
        self.class_dim = class_dim

    def models(self):
        return self.teacher.models()

    def predictions(self, batch: Mapping) -> Tensor:
        """Per-transform predictions in the original frame, stacked: (num_transforms, *pred_shape)."""
        outs = []
        with torch.no_grad():
            for t in self.transforms:
                view = dict(batch)
                view[self.input_key] = t.apply(batch[self.input_key])
                outs.append(t.invert(self.teacher(view).logits.float()))
        return torch.stack(outs)

    def _forward(self, batch):
        preds = self.predictions(batch)
        if self.mode == "logits":
            return Outputs(preds.mean(0))
        probs = F.softmax(preds, dim=self.class_dim if self.class_dim < 0 else self.class_dim + 1).mean(0)
        return Outputs(probs.clamp_min(1e-12).log())
