"""Teacher output cache: compute each sample's teacher output once, reuse it every epoch."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from joryu.outputs import Outputs
from joryu.teachers.base import Teacher


class CachedTeacher(Teacher):
    """Wraps a teacher and stores its outputs by sample index.

    A stored output is served only while three things are unchanged, else it is recomputed:
    the teacher's weights (cheap version counters, confirmed by a content hash), the dataset
    (the batch's ``data_id`` fingerprint) and the augmentation (a batch with an ``aug_id`` is
    an augmented view and bypasses the cache). Batches need an ``index`` key.

    ``hits`` and ``misses`` count samples served from and computed into the cache.
    """

    def __init__(self, teacher: Teacher, num_samples: int):
        if getattr(teacher, "stochastic", False):
            raise ValueError(f"{type(teacher).__name__} is stochastic (each call draws afresh): its outputs "
                             "must not be cached; use it without CachedTeacher")
        self.teacher = teacher
        self.input_key = teacher.input_key
        self.num_samples = int(num_samples)
        self.hits = 0
        self.misses = 0
        self.bypassed = 0
        self._reset()
        self._version = teacher.version()
        self._fingerprint = teacher.fingerprint()

    def _reset(self):
        self._store: dict[str, torch.Tensor] = {}
        self._filled: torch.Tensor | None = None
        self._data_id = None

    def models(self):
        return self.teacher.models()

    def to(self, device):
        device = torch.device(device)
        if self._filled is not None and self._filled.device.type != device.type:
            self._reset()
        self.teacher.to(device)
        return self

    def _check_teacher(self):
        v = self.teacher.version()
        if v != self._version:
            self._version = v
            fp = self.teacher.fingerprint()
            if fp != self._fingerprint:
                self._fingerprint = fp
                self._reset()

    def _forward(self, batch: Mapping) -> Outputs:
        if batch.get("aug_id") is not None or "index" not in batch:
            out = self.teacher(batch)
            self.bypassed += len(out.logits)
            return out
        self._check_teacher()
        data_id = batch.get("data_id")
        if data_id != self._data_id:
            self._reset()
            self._data_id = data_id
        idx = batch["index"]
        if self._filled is None:
            self._filled = torch.zeros(self.num_samples, dtype=torch.bool, device=idx.device)
        have = self._filled[idx]
        if bool(have.all()):
            self.hits += len(idx)
            return Outputs(self._store["logits"][idx],
                           {k[5:]: v[idx] for k, v in self._store.items() if k.startswith("feat/")})
        out = self.teacher(batch)
        tensors = {"logits": out.logits, **{f"feat/{k}": v for k, v in out.features.items()}}
        for k, v in tensors.items():
            if k not in self._store:
                self._store[k] = torch.zeros((self.num_samples, *v.shape[1:]), dtype=v.dtype, device=v.device)
            self._store[k][idx] = v
        self._filled[idx] = True
        self.misses += int((~have).sum())
        self.hits += int(have.sum())
        return out

    def stats(self) -> dict:
        return {"cache_hits": self.hits, "cache_misses": self.misses, "cache_bypassed": self.bypassed}
