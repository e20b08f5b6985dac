"""Specialist teachers: k models, each responsible for a subset of the classes (a "vertical").

Each sample is routed to the specialist of its vertical (by its label, or by a ``vertical``
key in the batch), and that specialist's logits are written into the full label space: the
columns of its classes hold its logits, every other column holds ``fill`` (a large negative
number, so a softmax puts no mass there). The student sees one target per sample.

``Outputs.features`` carries ``vertical`` (B,) and ``mask`` (B, C): which columns are real.

A specialist may predict
- its own classes only (``len(vertical)`` logits, in the order the vertical lists them),
- its classes plus one "everything else" class last (``len(vertical) + 1``; the extra one is dropped),
- the full label space (``num_classes`` logits; only its vertical's columns are used).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from joryu.outputs import Outputs
from joryu.teachers.base import FrozenTeacher, Teacher


def vertical_index(verticals: Sequence[Sequence[int]], num_classes: int) -> Tensor:
    """A (num_classes,) tensor: the vertical of each class. Verticals must partition the classes."""
    owner = torch.full((num_classes,), -1, dtype=torch.long)
    for k, classes in enumerate(verticals):
        for c in classes:
            if not 0 <= int(c) < num_classes:
                raise ValueError(f"class {c} of vertical {k} is outside 0..{num_classes - 1}")
            if owner[int(c)] >= 0:
                raise ValueError(f"class {c} is in verticals {int(owner[int(c)])} and {k}: they must be disjoint")
            owner[int(c)] = k
    missing = torch.nonzero(owner < 0).flatten().tolist()
    if missing:
        raise ValueError(f"classes {missing[:10]} belong to no vertical: the verticals must cover every class")
    return owner


def contiguous_verticals(num_classes: int, num_verticals: int) -> list[list[int]]:
    """Split 0..C-1 into ``num_verticals`` contiguous groups of (nearly) equal size."""
    if not 1 <= num_verticals <= num_classes:
        raise ValueError(f"need 1 <= num_verticals <= num_classes, got {num_verticals} for {num_classes} classes")
    bounds = [round(i * num_classes / num_verticals) for i in range(num_verticals + 1)]
    return [list(range(bounds[i], bounds[i + 1])) for i in range(num_verticals)]


class SpecialistTeacher(Teacher):
    """Specialists over verticals, mapped into the full label space (see the module docstring).

    route_key: the batch key that names each sample's class (default ``"target"``); a batch with
    a ``"vertical"`` key is routed by it instead (e.g. unlabelled data routed by a classifier).
    """

    def __init__(self, specialists: Sequence[Teacher | nn.Module], verticals: Sequence[Sequence[int]],
                 num_classes: int, input_key: str = "input", route_key: str = "target", fill: float = -1e4):
        if len(specialists) != len(verticals):
            raise ValueError(f"{len(specialists)} specialists for {len(verticals)} verticals")
        self.specialists = [s if isinstance(s, Teacher) else FrozenTeacher(s, input_key) for s in specialists]
        self.verticals = [[int(c) for c in v] for v in verticals]
        self.num_classes = int(num_classes)
        self.owner = vertical_index(self.verticals, self.num_classes)
        self.input_key = input_key
        self.route_key = route_key
        self.fill = float(fill)

    def models(self):
        return [m for s in self.specialists for m in s.models()]

    def route(self, batch: Mapping) -> Tensor:
        """Each sample's vertical, (B,)."""
        if "vertical" in batch:
            return batch["vertical"].long()
        if self.route_key not in batch:
            raise KeyError(f"specialists route samples by {self.route_key!r} or 'vertical'; the batch has "
                           f"neither (keys: {sorted(batch)})")
        return self.owner.to(batch[self.route_key].device)[batch[self.route_key]]

    def mask(self, vertical: Tensor) -> Tensor:
        """(B, C) bool: True on the classes of each sample's vertical."""
        owner = self.owner.to(vertical.device)
        return owner[None, :] == vertical[:, None]

    def _classes_of(self, logits: Tensor, k: int) -> Tensor:
        classes = self.verticals[k]
        n = logits.shape[-1]
        if n == self.num_classes:
            return logits[:, classes]
        if n in (len(classes), len(classes) + 1):
            return logits[:, : len(classes)]
        raise ValueError(f"specialist {k} predicts {n} classes; its vertical has {len(classes)} "
                         f"(allowed: {len(classes)}, {len(classes) + 1} with an 'other' class, or {self.num_classes})")

    def _forward(self, batch):
        v = self.route(batch)
        x = batch[self.input_key]
        out = None
        for k, spec in enumerate(self.specialists):
            idx = torch.nonzero(v == k).flatten()
            if len(idx) == 0:
                continue
            sub = {key: (val[idx] if isinstance(val, Tensor) and val.shape[:1] == v.shape else val)
                   for key, val in batch.items()}
            logits = self._classes_of(spec(sub).logits.float(), k)
            if out is None:
                out = torch.full((len(v), self.num_classes), self.fill, dtype=logits.dtype, device=x.device)
            cols = torch.tensor(self.verticals[k], device=x.device)
            out[idx[:, None], cols[None, :]] = logits
        if out is None:
            out = torch.full((len(v), self.num_classes), self.fill, device=x.device)
        return Outputs(out, {"vertical": v, "mask": self.mask(v)})
