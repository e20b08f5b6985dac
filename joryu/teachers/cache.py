"""Teacher output cache: compute each sample's teacher output once, reuse it every epoch."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from joryu.outputs import Outputs
from joryu.teachers.base import Teacher


class CachedTeacher(Teacher):
    """Wraps a teacher and stores its outputs by sample index (and augmentation draw).

    A stored output is served only while three things are unchanged, else it is recomputed:
    the teacher's weights (cheap version counters, confirmed by a content hash), the dataset and
    augmentation settings (the batch's ``data_id``), and the augmentation itself: a batch with
    per-sample ``aug_key`` (fixed draws, ``Augment(draws=K)``) is stored under (sample, draw); a
    batch with a fresh random augmentation (``aug_id``) bypasses the cache. Batches need ``index``.

    draws: the number of fixed augmentation draws per sample (1 without augmentation).
    storage: ``"memory"`` (on the teacher's device) or ``"disk"`` (a memory-mapped file, CPU only,
        for caches larger than memory); ``max_bytes`` bounds the store, which otherwise refuses.

    ``hits``, ``misses`` and ``bypassed`` count samples served, computed and not cacheable.
    """

    def __init__(self, teacher: Teacher, num_samples: int, draws: int = 1, storage: str = "memory",
                 path: str | Path | None = None, max_bytes: int = 4 << 30):
        if storage not in ("memory", "disk"):
            raise ValueError(f"storage must be 'memory' or 'disk', got {storage!r}")
        if getattr(teacher, "stochastic", False):
            raise ValueError(f"{type(teacher).__name__} is stochastic (each call draws afresh): its outputs "
                             "must not be cached; use it without CachedTeacher")
        self.teacher = teacher
        self.input_key = teacher.input_key
        self.num_samples = int(num_samples)
        self.draws = max(1, int(draws))
        self.storage = storage
        self.path = Path(path) if path else None
        self.max_bytes = int(max_bytes)
        self.hits = self.misses = self.bypassed = 0
        self._tmpdir = None
        self._reset()
        self._tensors = [t for m in teacher.models() for t in list(m.parameters()) + list(m.buffers())]
        self._version = self._current_version()
        self._fingerprint = teacher.fingerprint()

    def _current_version(self) -> list:
        return [(t.data_ptr(), t._version) for t in self._tensors]  # a list comprehension: per batch

    @property
    def slots(self) -> int:
        return self.num_samples * self.draws

    def _reset(self):
        self._store: dict[str, torch.Tensor] = {}
        self._filled: torch.Tensor | None = None
        self._full = False  # every slot filled: a hit needs no look-up in _filled
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
        v = self._current_version()
        if v != self._version:
            self._version = v
            fp = self.teacher.fingerprint()
            if fp != self._fingerprint:
                self._fingerprint = fp
                self._reset()

    def _allocate(self, name: str, like: torch.Tensor) -> torch.Tensor:
        shape = (self.slots, *like.shape[1:])
        nbytes = int(np.prod(shape)) * like.element_size()
        if nbytes > self.max_bytes:
            raise MemoryError(f"teacher cache for {name!r} needs {nbytes / 2**30:.2f} GiB > max_bytes "
                              f"({self.max_bytes / 2**30:.2f} GiB): lower augment draws, raise max_bytes "
                              "or turn the cache off")
        if self.storage == "memory":
            return torch.zeros(shape, dtype=like.dtype, device=like.device)
        if like.device.type != "cpu":
            raise ValueError("storage='disk' keeps the cache on the CPU; use storage='memory' on a GPU")
        folder = self.path
        if folder is None:
            self._tmpdir = self._tmpdir or tempfile.TemporaryDirectory(prefix="joryu-cache-")
            folder = Path(self._tmpdir.name)
        folder.mkdir(parents=True, exist_ok=True)
        np_dtype = torch.empty((), dtype=like.dtype).numpy().dtype
        arr = np.lib.format.open_memmap(folder / f"{name.replace('/', '_')}.npy", mode="w+",
                                        dtype=np_dtype, shape=shape)
        return torch.from_numpy(arr)

    def _grow(self, needed: int) -> None:
        """Make room for slot ``needed - 1`` (a batch from more draws than the cache was sized for):
        the number of draws grows to fit, keeping what is stored (memory storage only)."""
        draws = -(-needed // self.num_samples)
        if draws <= self.draws:
            return
        extra = (draws - self.draws) * self.num_samples
        self._filled = torch.cat([self._filled, self._filled.new_zeros(extra)])
        for k, v in self._store.items():
            total = (draws * self.num_samples) * v[0].numel() * v.element_size()
            if total > self.max_bytes:
                raise MemoryError(f"teacher cache for {k!r} would need {total / 2**30:.2f} GiB > max_bytes: lower "
                                  "augment draws, raise max_bytes or turn the cache off")
            self._store[k] = torch.cat([v, v.new_zeros((extra, *v.shape[1:]))])
        self.draws = draws
        self._full = False

    def _slots_of(self, batch: Mapping) -> torch.Tensor | None:
        if batch.get("aug_key") is not None:
            return batch["aug_key"]
        if batch.get("aug_id") is not None or "index" not in batch:
            return None
        return batch["index"] * self.draws if self.draws > 1 else batch["index"]

    def _forward(self, batch: Mapping) -> Outputs:
        slots = self._slots_of(batch)
        if slots is None:
            out = self.teacher(batch)
            self.bypassed += len(out.logits)
            return out
        self._check_teacher()
        data_id = batch.get("data_id")
        if data_id != self._data_id:
            self._reset()
            self._data_id = data_id
        if self._full:  # the steady state: every slot is stored, serve without looking up _filled
            served = self._serve(slots)
            if served is not None:
                return served
        if self._filled is None:
            self._filled = torch.zeros(self.slots, dtype=torch.bool, device=slots.device)
        if len(slots) and int(slots.max()) >= self.slots and self.storage == "memory":
            self._grow(int(slots.max()) + 1)
        try:
            have = self._filled[slots]
        except IndexError:
            raise ValueError(f"teacher cache holds {self.num_samples} samples x {self.draws} draws; the batch "
                             f"asks for slot {int(slots.max())}: build it with the dataset's size and draws") from None
        if bool(have.all()):
            self.hits += len(slots)
            return self._gather(slots)
        n_have = int(have.sum())
        out = self.teacher(batch)
        tensors = {"logits": out.logits, **{f"feat/{k}": v for k, v in out.features.items()}}
        for k, v in tensors.items():
            if k not in self._store:
                self._store[k] = self._allocate(k, v)
            store = self._store[k]
            store[slots.to(store.device)] = v.to(store.device)
        self._filled[slots] = True
        self._full = bool(self._filled.all())
        self.misses += len(slots) - n_have
        self.hits += n_have
        return out

    def _gather(self, slots: torch.Tensor) -> Outputs:
        """The stored outputs of ``slots``, on the slots' device."""
        logits = self._store["logits"]
        feats = {k[5:]: v[slots.to(v.device)].to(slots.device) for k, v in self._store.items()
                 if k.startswith("feat/")} if len(self._store) > 1 else {}
        return Outputs(logits[slots.to(logits.device)].to(slots.device), feats)

    def _serve(self, slots: torch.Tensor) -> Outputs | None:
        """A full cache's outputs for ``slots``; None for a slot past its end (the caller then
        grows the cache or refuses, as for any batch)."""
        if self._store["logits"].device.type != "cpu" and len(slots) and int(slots.max()) >= self.slots:
            return None  # a GPU gather past the end would fail on the device, not raise IndexError
        try:
            out = self._gather(slots)
        except IndexError:
            return None
        self.hits += len(slots)
        return out

    def stats(self) -> dict:
        return {"cache_hits": self.hits, "cache_misses": self.misses, "cache_bypassed": self.bypassed}
