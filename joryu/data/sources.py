"""Data sources: whatever a user has, turned into the batches the engine iterates.

``as_source(obj)`` accepts

* joryu's ``TensorData`` (kept on the device: the fast path for small data),
* ``(inputs, targets)`` tensors or a two-tensor ``TensorDataset`` (become a ``TensorData``),
* a map-style ``torch.utils.data.Dataset`` whose samples are ``(input, target)`` tuples or dicts,
* an ``IterableDataset``, with ``__len__`` (the samples per epoch) or without (a true stream,
  possibly endless: trained with ``train.max_steps`` or ``train.steps_per_epoch``; its
  ``num_classes`` must be given, and its validation data too),
* a ``DataLoader`` the user built (its dataset, batch size, shuffling, workers and collate are kept,
  and so is its own ``sampler`` or ``batch_sampler``: a ``WeightedRandomSampler``, a sampler that
  groups by length; see ``_UserBatches`` for when its resume is exact),
* a Hugging Face ``datasets.Dataset`` (optional dependency; columns ``label``/``labels`` and
  ``image``/``pixel_values`` are found by name, or named with ``columns``; columns a model's
  ``inputs`` name, such as ``input_ids`` and ``attention_mask``, are batch keys as they are),

and returns a ``TensorData`` or a ``StreamData``. A ``StreamData`` is iterated by ``StreamLoader``:
a ``torch.utils.data.DataLoader`` over a sampler whose batch order is a pure function of
(seed, epoch), sharded across processes by Accelerate's ``prepare_data_loader`` and resumed
mid-epoch by Accelerate's ``skip_first_batches``. Per-sample transforms run in the workers,
seeded by (seed, epoch, sample), so a resumed or re-sharded run sees the same inputs.

A batch is the same dict as ``TensorLoader``'s: ``input`` (when the data has one: a model may read
other keys instead), ``target``, ``index`` (the sample's position in this StreamData), any other
per-sample keys, ``data_id`` and ``aug_id``.

Hugging Face ``labels`` (the one rule, see ``joryu.losses.positions``): a ``labels`` key with no
``target`` becomes the target as it is, or shifted once (``shift_labels``) for a causal LM;
``align_labels(data, causal)`` sets which, and is called where the data meets its models.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, get_worker_info
from torch.utils.data._utils.collate import default_collate

from joryu.data.core import (
    Augment,
    TensorData,
    TensorLoader,
    _hash,
    apply_augment,
    epoch_batches,
    split_validation,
)
from joryu.data.registry import DataBundle
from joryu.data.transforms import Draws, to_tensor
from joryu.errors import (
    ConfigError,
    DataError,
    JoryuError,
    UserCodeError,
    at_sample,
    reraise_as_user,
)
from joryu.losses.positions import IGNORE_INDEX, shift_labels
from joryu.options import validate_params

__all__ = ["DatasetError", "LoaderOptions", "StreamData", "StreamLoader", "as_source", "split_any", "load_factory",
           "bundle_from", "align_labels", "check_labels"]

class DatasetError(DataError, ConfigError):
    """A dataset that does not fit (sample structure, shapes, splits): a DataError and, as the
    API promises for bad input, a ConfigError (exit code 2 from the CLI)."""


_INPUT_NAMES = ("input", "image", "img", "pixel_values", "x", "inputs", "features")
_TARGET_NAMES = ("target", "label", "labels", "y", "class", "targets")


class LoaderOptions(BaseModel):
    """How streamed data is loaded (ignored by in-memory tensor data); the one declaration of
    these options (a config's ``data.loader`` is this model)."""

    model_config = ConfigDict(extra="forbid")

    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0: in the main process)")
    pin_memory: bool = Field(False, description="page-locked batches, for faster copies to the GPU")
    persistent_workers: bool = Field(False, description="keep the workers alive between epochs")
    prefetch_factor: int | None = Field(None, ge=1, description="batches each worker loads ahead")
    non_blocking: bool = Field(True, description="copy pinned batches to the device asynchronously")

    @classmethod
    def of(cls, value) -> LoaderOptions:
        """``value`` (None, a LoaderOptions or a mapping) as validated LoaderOptions; a wrong key
        or value is one ConfigError."""
        if value is None:
            return cls()
        if isinstance(value, LoaderOptions):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"data.loader must be a mapping of {', '.join(cls.model_fields)}, "
                              f"got {type(value).__name__}")
        return validate_params(cls, dict(value), "data.loader")


def _is_hf(obj) -> bool:
    return type(obj).__module__.split(".")[0] == "datasets" and hasattr(obj, "column_names")


def _as_value(v, key: str):
    """A sample value as a tensor where it is numeric (PIL images and arrays are converted)."""
    if isinstance(v, Tensor):
        return v.float() if v.dtype == torch.float64 else v
    if hasattr(v, "convert") and hasattr(v, "mode"):  # PIL image

        return to_tensor(v)
    if isinstance(v, np.ndarray | np.generic):
        t = torch.from_numpy(np.ascontiguousarray(v))
        if t.dtype == torch.uint8 and t.dim() >= 2:
            return to_tensor(np.asarray(v))
        return t.float() if t.dtype == torch.float64 else t
    if isinstance(v, bool | int):
        return v  # the collate makes one tensor of a batch of them (cheaper than one per sample)
    if isinstance(v, float):
        return torch.tensor(v, dtype=torch.float32)
    if (isinstance(v, list | tuple) and v and
                                            not isinstance(v[0], str)):
        t = torch.as_tensor(v)
        return t.float() if t.dtype == torch.float64 else t
    return v


def to_sample(raw, columns: Mapping[str, str] | None = None, where: str = "sample",
              causal: bool = False) -> dict:
    """A sample (or a collated batch) as a dict with ``target`` (and ``input`` where it has one).

    Tuples and lists are ``(input, target)``; dicts keep their keys, with ``columns``
    (``{batch key: sample key}``) or the usual names (label/labels -> target, image/pixel_values
    -> input) mapped. A dict without an input-like key keeps its keys as they are (a model's
    ``inputs`` name them: ``input_ids``, ``attention_mask``...). A ``labels`` key becomes the target
    shifted once when ``causal`` (Hugging Face's causal-LM labels, see ``shift_labels``)."""
    if isinstance(raw, Mapping):
        out = dict(raw)
        if columns:
            for key, src in columns.items():
                if src not in raw:
                    raise DatasetError(f"{where} has no key {src!r} (data.columns maps {key!r} to it); "
                                       f"its keys are {sorted(raw)}")
                out[key] = raw[src]
                if src != key:
                    out.pop(src, None)
        if "input" not in out:
            src = next((n for n in _INPUT_NAMES if n in out), None)
            if src is not None:
                out["input"] = out.pop(src)
        if "target" not in out:
            src = next((n for n in _TARGET_NAMES if n in out), None)
            if src is None:
                raise DatasetError(f"{where} is a dict without 'target' (keys: {sorted(raw)}); name "
                                   "the target column with data.columns: {target: <key>}")
            y = out.pop(src)
            if src == "labels" and causal:
                y = shift_labels(_as_value(y, "labels"))
            out["target"] = y
        out.pop("index", None)
        return out
    if isinstance(raw, tuple | list):
        if len(raw) != 2:
            raise DatasetError(f"{where} is a {type(raw).__name__} of {len(raw)} items; samples must be "
                               "(input, target) pairs or dicts of tensors")
        return {"input": raw[0], "target": raw[1]}
    raise DatasetError(f"{where} is a {type(raw).__name__}; samples must be (input, target) tuples or "
                       "dicts of tensors (return one of those from __getitem__)")


_M64 = (1 << 64) - 1


def _mix(*xs: int) -> int:
    """A 64-bit seed from (seed, epoch, position), splitmix64-mixed after each part."""
    h = 0x243F6A8885A308D3
    for x in xs:
        h = (h ^ (int(x) & _M64)) * 0xBF58476D1CE4E5B9 & _M64
        h ^= h >> 31
    return h


def _unwrap_error(e: Exception) -> Exception:
    """A DataError raised in a DataLoader worker comes back wrapped: keep its one line."""
    import re

    msg = str(e)
    if isinstance(e, JoryuError) and "\n" not in msg:
        return e
    found = re.findall(r"\b(DatasetError|DataError|UserCodeError): (.*)", msg)
    if found:
        kind, line = found[-1]
        return {"DatasetError": DatasetError, "DataError": DataError, "UserCodeError": UserCodeError}[kind](
            line.strip())
    return e


@dataclass
class StreamData:
    """A dataset streamed through a DataLoader: a map-style or iterable ``dataset`` plus how to
    turn its samples into batch dicts (``columns``, ``transform``, ``views``), which of its samples
    belong here (``positions``: a subset, e.g. a validation split), per-sample ``fields`` added to
    every batch (``clean``, ``labeled``, a ``target`` override...), and loader options."""

    dataset: object
    num_classes: int | None = None
    name: str = "data"
    transform: Callable | None = None
    eval_transform: Callable | None = None
    views: dict[str, Callable] = field(default_factory=dict)
    eval_views: dict[str, Callable | None] | None = None  # default: each view's non-random steps
    columns: dict[str, str] | None = None
    loader: LoaderOptions = field(default_factory=LoaderOptions)
    positions: Tensor | None = None  # map-style: indices into ``dataset``; iterable: kept stream positions mask
    fields: dict[str, Tensor] = field(default_factory=dict)
    seed: int = 0
    collate: Callable | None = None  # a user DataLoader's collate_fn (gets raw samples)
    batch_size: int | None = None  # a user DataLoader's batch size (training only)
    shuffle: bool = True
    drop_last: bool = False
    length: int | None = None  # samples per epoch of an IterableDataset without __len__
    keep: tuple | None = None  # iterable split: (seed, fraction, take_val)
    causal: bool = False  # Hugging Face ``labels`` are shifted (a causal LM's data, see align_labels)
    sampler: object = None  # a user DataLoader's own sampler (batched by batch_size; training only)
    batch_sampler: object = None  # a user DataLoader's own batch sampler (training only)

    def __post_init__(self):
        self.iterable = isinstance(self.dataset, IterableDataset)
        self.loader = LoaderOptions.of(self.loader)
        if self.eval_transform is None and hasattr(self.transform, "deterministic"):
            self.eval_transform = self.transform.deterministic()  # the non-random steps
        if self.num_classes is None:
            ds = self.dataset
            declared = getattr(ds, "num_classes", None)
            if isinstance(declared, int):
                self.num_classes = declared
            elif getattr(ds, "classes", None) is not None:
                self.num_classes = len(ds.classes)
            elif not self.sized:
                raise DatasetError(f"{self.name} is a stream without a length, so its classes cannot be "
                                   "counted by reading it: give num_classes (joryu.distill(num_classes=...), "
                                   "or a num_classes attribute on the dataset)")
            else:
                self.num_classes = self._infer_classes()
        if not self.iterable and self.collate is None and len(self) > 0:
            to_sample(self._raw(0), self.columns, f"sample 0 of {self.name}", self.causal)

    # ------------------------------------------------------------------ size and targets
    @property
    def sized(self) -> bool:
        """False for a stream without a length (an IterableDataset with no ``__len__``)."""
        if not self.iterable or self.length is not None:
            return True
        try:
            len(self.dataset)
        except TypeError:
            return False
        return True

    def _base_len(self) -> int:
        if self.length is not None:
            return int(self.length)
        if not hasattr(type(self.dataset), "__len__"):
            raise DatasetError(f"{self.name} is a stream without a length ({type(self.dataset).__name__} "
                               "has no __len__): give the training budget in steps, train.max_steps "
                               "(optimizer updates) or train.steps_per_epoch (batches per epoch), or "
                               "define __len__ (samples per epoch)")
        try:
            return len(self.dataset)
        except Exception as e:  # noqa: BLE001 - the user's __len__ failed
            reraise_as_user(e, type(self.dataset).__len__)

    def _kept(self) -> Tensor:
        """Iterable split: which stream positions belong here (a pure function of the seed)."""
        n = self._base_len()
        if self.keep is None:
            return torch.ones(n, dtype=torch.bool)
        seed, fraction, take_val = self.keep
        in_val = (_hash(torch.arange(n), 7 + seed) % 100_000) < round(fraction * 100_000)
        return in_val if take_val else ~in_val

    def __len__(self) -> int:
        if self.positions is not None and not self.iterable:
            return len(self.positions)
        if self.iterable:
            return int(self._kept().sum())
        return self._base_len()

    @property
    def num_samples(self) -> int:
        return len(self)

    def _raw(self, pos: int):
        i = int(self.positions[pos]) if self.positions is not None else pos
        try:
            return self.dataset[i]
        except Exception as e:  # noqa: BLE001 - the user's __getitem__ failed: say which sample
            reraise_as_user(e, type(self.dataset).__getitem__, i)

    @property
    def targets(self) -> Tensor:
        """The target of every sample (read from ``dataset.targets``, a Hugging Face column,
        the ``target`` field, or a pass over the samples: give the dataset a ``targets`` attribute
        to avoid it)."""
        if "target" in self.fields:
            return self.fields["target"]
        t = getattr(self, "_targets", None)
        if t is None:
            t = self._base_targets()
            self._targets = t
        return t

    def _base_targets(self) -> Tensor:
        ds = self.dataset
        if self.iterable:
            ys = [to_sample(r, self.columns, causal=self.causal)["target"] for r in ds]
            t = self._as_indices(ys)[: self._base_len()]
            return t[self._kept()]
        full = None
        if _is_hf(ds):
            col = (self.columns or {}).get("target") or next(
                (n for n in _TARGET_NAMES if n in ds.column_names), None)
            if col is not None:
                try:
                    full = torch.as_tensor(ds[col])
                except (ValueError, TypeError):  # ragged per-token labels: read sample by sample
                    full = None
                if full is not None and col == "labels" and self.causal and "target" not in (self.columns or {}):
                    full = shift_labels(full)
        elif getattr(ds, "targets", None) is not None:
            try:
                full = torch.as_tensor(ds.targets)
            except (ValueError, TypeError, RuntimeError):  # names, ragged lists: one line says which
                full = self._as_indices(list(ds.targets))
        if full is not None:
            return full[self.positions] if self.positions is not None else full
        return self._scan_targets()

    def cheap_targets(self) -> Tensor | None:
        """The per-sample targets if known without reading every sample (else None; also for
        per-token targets, which do not stratify a split)."""
        if "target" in self.fields or getattr(self, "_targets", None) is not None:
            return self.targets
        ds = self.dataset
        if self.iterable or not (_is_hf(ds) or getattr(ds, "targets", None) is not None):
            return None
        try:
            t = self.targets
        except (ValueError, TypeError):
            return None
        return t if t.dim() == 1 else None

    def _scan_targets(self) -> Tensor:
        if self.collate is not None:  # the collator may make the target (HF's LM collators do)
            ys = []
            for lo in range(0, len(self), 64):
                raw = self.collate([self._raw(i) for i in range(lo, min(len(self), lo + 64))])
                ys.extend(_as_value(to_sample(raw, self.columns, causal=self.causal)["target"], "target"))
        else:
            ys = [_as_value(to_sample(self._raw(i), self.columns, causal=self.causal)["target"], "target")
                  for i in range(len(self))]
        if ys and isinstance(ys[0], Tensor) and ys[0].dim() > 0:  # per-token / per-pixel targets
            try:
                return torch.stack(ys)
            except RuntimeError:  # ragged sequences: every position, flattened (classes only)
                return torch.cat([y.reshape(-1) for y in ys])
        return self._as_indices(ys)

    def _as_indices(self, ys) -> Tensor:
        for i, y in enumerate(ys):
            whole = isinstance(y, int) or (isinstance(y, Tensor) and y.numel() == 1 and
                                           not y.is_floating_point()) or (
                isinstance(y, float | Tensor) and float(y) == int(float(y)))
            if not whole:
                raise DatasetError(f"sample {i} of {self.name} has target {y!r} ({type(y).__name__}), not a "
                                   "class index; targets are integer classes 0..K-1 (map class names to "
                                   "indices, e.g. classes.index(name))")
        return torch.as_tensor([int(y) for y in ys])

    def _infer_classes(self) -> int:
        ds = self.dataset
        for holder in (ds, getattr(ds, "dataset", None)):
            if holder is not None and getattr(holder, "classes", None) is not None:
                return len(holder.classes)
            if holder is not None and isinstance(getattr(holder, "num_classes", None), int):
                return holder.num_classes
        if _is_hf(ds):
            feats = getattr(ds, "features", {}) or {}
            col = (self.columns or {}).get("target") or next((n for n in _TARGET_NAMES if n in feats), None)
            if col is not None and getattr(feats[col], "num_classes", None):
                return int(feats[col].num_classes)
        t = self.targets
        known = t[t != IGNORE_INDEX]
        return int(known.max()) + 1 if known.numel() else 0

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape of ``input``, or of the first other tensor (``input_ids``...)."""
        s = self.sample(0, train=False)
        key = "input" if "input" in s else next(
            (k for k, v in s.items() if k != "target" and isinstance(v, Tensor)), "input")
        if key not in s:
            raise DatasetError(f"{self.name} has no input tensor (sample keys: {sorted(s)})")
        return tuple(s[key].shape)

    # ------------------------------------------------------------------ samples
    def process(self, raw, pos: int, epoch: int, train: bool = True, seed: int | None = None) -> dict:
        """One raw sample as a dict of tensors: columns mapped, views and transform applied.

        Random transforms draw from a generator seeded by (seed, epoch, pos)."""
        s = to_sample(raw, self.columns, f"sample {pos} of {self.name}", self.causal)
        x = s.get("input")
        tf = self.transform if train else (self.eval_transform or None)
        random = train and (any(getattr(v, "random", True) for v in self.views.values() if v is not None)
                            or (tf is not None and getattr(tf, "random", True)))
        gen = Draws(_mix(self.seed if seed is None else seed, epoch, pos)) if random else None
        views = self.views if train else self._eval_views()
        try:
            for key, view in views.items():
                s[key] = _as_value(x if view is None else view(x, gen), key)
            if tf is not None and x is not None:
                x = tf(x, gen) if hasattr(tf, "steps") else tf(x)
        except UserCodeError as e:  # a user's transform: name the sample it failed on
            i = int(self.positions[pos]) if self.positions is not None and not self.iterable else pos
            raise at_sample(e, i) from e.__cause__
        if "input" in s:
            s["input"] = x
        return {k: _as_value(v, k) for k, v in s.items()}

    def __getitem__(self, pos: int) -> dict:
        """Sample ``pos`` as the evaluation pipeline gives it (``input`` is a tensor)."""
        return self.sample(pos, train=False)

    def sample(self, pos: int, epoch: int = 0, train: bool = False) -> dict:
        if self.iterable:
            for k, (p, raw) in enumerate(self._stream()):
                if k == pos:
                    out = self.process(raw, p, epoch, train)
                    break
            else:
                raise IndexError(pos)
        else:
            if not 0 <= pos < len(self):
                raise IndexError(pos)
            out = self.process(self._raw(pos), pos, epoch, train)
        for k, v in self.fields.items():
            out[k] = v[pos]
        return out

    def _stream(self) -> Iterator[tuple[int, object]]:
        kept = self._kept() if self.keep is not None else None
        n = self._base_len() if self.sized else None  # None: until the stream ends (maybe never)
        it, p = iter(self.dataset), 0
        while n is None or p < n:
            try:
                raw = next(it)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 - the user's __iter__ failed at stream position p
                reraise_as_user(e, type(self.dataset).__iter__, p)
            if kept is None or bool(kept[p]):
                yield p, raw
            p += 1

    # ------------------------------------------------------------------ variants
    def subset(self, idx, name: str | None = None) -> StreamData:
        own = self.sampler if self.sampler is not None else self.batch_sampler
        if own is not None:
            raise DatasetError(f"{self.name} comes with its own sampler ({type(own).__name__}), which draws "
                               "from the whole dataset: a validation split cannot be carved from under it; "
                               "give the validation data (val_data=..., data.val) or set the validation "
                               "fraction to 0 (val_fraction=0, data.val_fraction: 0)")
        if self.iterable:
            raise DatasetError(f"{self.name} is an IterableDataset and cannot be indexed; split it "
                               "with data.val_fraction (a seeded split by stream position)")
        idx = torch.as_tensor(idx, dtype=torch.long)
        base = self.positions[idx] if self.positions is not None else idx
        out = replace(self, positions=base, name=name or self.name,
                      fields={k: v[idx] for k, v in self.fields.items()})
        if getattr(self, "_targets", None) is not None:
            out._targets = self._targets[idx]
        return out

    def with_tensors(self, **tensors: Tensor) -> StreamData:
        """Per-sample tensors added to (or replacing keys of) every batch."""
        for k, v in tensors.items():
            if len(v) != len(self):
                raise DatasetError(f"field {k!r} has {len(v)} rows, {self.name} has {len(self)} samples")
        out = replace(self, fields={**self.fields, **{k: torch.as_tensor(v) for k, v in tensors.items()}})
        if getattr(self, "_targets", None) is not None and "target" not in tensors:
            out._targets = self._targets
        return out

    def _eval_views(self) -> dict:
        if self.eval_views is not None:
            return self.eval_views
        return {k: (v.deterministic() if hasattr(v, "deterministic") else v) for k, v in self.views.items()}

    def for_eval(self) -> StreamData:
        """The same samples under the evaluation transform and views (no random steps)."""
        ev = self._eval_views()
        return replace(self, transform=self.eval_transform, views=ev, eval_views=ev, fields=dict(self.fields))

    def fingerprint(self) -> str:
        h = hashlib.sha1()
        ds = self.dataset
        h.update(f"{type(ds).__module__}.{type(ds).__name__}:{getattr(ds, 'root', '')}".encode())
        h.update(str(self._base_len() if not self.iterable or self.length else
                     len(self) if self.sized else "unsized").encode())
        h.update(repr(getattr(self.transform, "spec", self.transform)).encode())
        h.update(repr(sorted(self.views)).encode())
        h.update(repr(self.keep).encode())
        if self.positions is not None:
            h.update(self.positions.numpy().tobytes())
        for k in sorted(self.fields):
            h.update(k.encode())
            h.update(self.fields[k].detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    # ------------------------------------------------------------------ batching
    def collate_batch(self, items, index_as_list: bool = False) -> dict:
        """``[(pos, sample)]`` -> one batch dict (runs in the loader's workers). With
        ``index_as_list`` the positions stay a list: every tensor a worker returns is shared with
        the main process through a file descriptor (~1 ms each on CPU), a list travels in the pickle."""
        index = [p for p, _ in items]
        if not index_as_list:
            index = torch.as_tensor(index, dtype=torch.long)
        samples = [s for _, s in items]
        if self.collate is not None:
            try:
                raw = self.collate(samples)
            except Exception as e:  # noqa: BLE001 - the user's collate_fn failed
                reraise_as_user(e, self.collate)
            batch = to_sample(raw, self.columns, f"a batch of {self.name}", self.causal)
            batch = {k: _as_value(v, k) for k, v in batch.items()}
        else:
            try:
                batch = default_collate(samples)
            except RuntimeError as e:
                raise DatasetError(self._shape_problem(items) or str(e).splitlines()[0]) from None
        batch["index"] = index
        return batch

    def _shape_problem(self, items) -> str | None:
        for key in items[0][1]:
            shapes = [tuple(s[key].shape) if isinstance(s[key], Tensor) else None for _, s in items]
            if len(set(shapes)) > 1:
                first = shapes[0]
                where = "data.transform / data.eval_transform" if key == "input" else f"data.views.{key}"
                pos = next(p for (p, _), sh in zip(items, shapes) if sh != first)
                return (f"{self._where(pos)} has {key!r} of shape {shapes[[p for p, _ in items].index(pos)]} "
                        f"but {self._where(items[0][0])} has {first}; add a resize "
                        f"({where}: [{{resize: [H, W]}}, ...]) so every sample has one shape")
        return None

    def _where(self, pos: int) -> str:
        ds, i = self.dataset, pos
        if self.positions is not None and not self.iterable:
            i = int(self.positions[pos])
        while isinstance(ds, torch.utils.data.Subset):
            ds, i = ds.dataset, int(ds.indices[i])
        samples = getattr(ds, "samples", None)
        if isinstance(samples, list) and i < len(samples) and isinstance(samples[i], tuple):
            return f"image {samples[i][0]}"
        return f"sample {pos} of {self.name}"


class _MapView(Dataset):
    """``dataset[(epoch, pos)] -> (pos, processed sample)``: the epoch reaches the workers."""

    def __init__(self, data: StreamData, train: bool, seed: int = 0):
        self.data, self.train, self.seed = data, train, seed

    def __len__(self):
        return len(self.data)

    def __getitem__(self, key):
        epoch, pos = key
        d = self.data
        raw = d._raw(pos)
        if d.collate is not None:
            return pos, raw
        return pos, d.process(raw, pos, epoch, self.train, self.seed)


class _IterView(IterableDataset):
    """The stream's kept samples, dealt round-robin to the loader's workers (and processes)."""

    def __init__(self, data: StreamData, train: bool, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.data, self.train, self.rank, self.world_size, self.seed = data, train, rank, world_size, seed
        self.epoch = 0

    def __iter__(self):
        info = get_worker_info()
        workers, w = (info.num_workers, info.id) if info is not None else (1, 0)
        shards, shard = workers * self.world_size, self.rank * workers + w
        d = self.data
        if hasattr(d.dataset, "set_epoch"):  # each epoch a new pass: the stream may reshuffle by epoch
            d.dataset.set_epoch(self.epoch)
        for k, (p, raw) in enumerate(d._stream()):
            if k % shards == shard:
                yield k, (raw if d.collate is not None else d.process(raw, p, self.epoch, self.train))


class _EpochBatches(torch.utils.data.Sampler):
    """Batches of ``(epoch, position)`` keys; the order is a pure function of (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, seed: int, shuffle: bool, drop_last: bool):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        e = self.epoch
        for b in epoch_batches(self.n, self.batch_size, self.seed, e, self.shuffle, self.drop_last):
            yield [(e, int(i)) for i in b]

    def __len__(self):
        return len(epoch_batches(self.n, self.batch_size, self.seed, 0, False, self.drop_last))


def _generator_of(source) -> torch.Generator | None:
    for holder in (source, getattr(source, "sampler", None)):
        gen = getattr(holder, "generator", None)
        if isinstance(gen, torch.Generator):
            return gen
    return None


class _UserBatches(torch.utils.data.Sampler):
    """A user's ``batch_sampler``, or ``sampler`` batched by ``batch_size``, as batches of
    ``(epoch, position)`` keys: it trains as the user built it.

    The order is made a pure function of the epoch where the sampler allows it, so a resume
    mid-epoch (which skips the batches already trained on) is exact: a sampler with its own
    ``torch.Generator`` has it re-seeded at each epoch from (its initial seed, epoch); one with
    ``set_epoch`` (as ``DistributedSampler``) is told the epoch. A sampler that draws from the
    global generator is not (``exact`` False): the engine says so in one line on resume."""

    def __init__(self, sampler, batch_sampler, batch_size: int, drop_last: bool):
        from torch.utils.data import BatchSampler

        self.source = batch_sampler if batch_sampler is not None else sampler
        self.inner = batch_sampler if batch_sampler is not None else BatchSampler(sampler, batch_size, drop_last)
        gen = _generator_of(self.source)
        self.base = gen.initial_seed() if gen is not None else None
        self.exact = gen is not None or hasattr(self.source, "set_epoch") or (
            hasattr(self.source, "sampler") and hasattr(self.source.sampler, "set_epoch"))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        for holder in (self.source, getattr(self.source, "sampler", None)):
            if hasattr(holder, "set_epoch"):
                holder.set_epoch(epoch)
        gen = _generator_of(self.source)
        if gen is not None:
            gen.manual_seed(_mix(self.base, epoch) & ((1 << 63) - 1))

    def __iter__(self):
        e = self.epoch
        for b in self.inner:
            yield [(e, int(i)) for i in b]

    def __len__(self):
        return len(self.inner)


class StreamLoader:
    """Iterates a ``StreamData`` (or any dataset ``as_source`` accepts) in deterministic batches.

    One DataLoader is built and kept (so ``persistent_workers`` persist across epochs); with
    several processes it goes through ``accelerate.data_loader.prepare_data_loader``, which
    gives each process its share of every epoch's batches; ``iterate(epoch, start)`` skips the
    first ``start`` batches with ``accelerate.skip_first_batches`` (exact mid-epoch resume).
    """

    def __init__(self, data, batch_size: int, shuffle: bool = True, seed: int = 0,
                 augment: Augment | None = None, drop_last: bool = False, device="cpu",
                 rank: int = 0, world_size: int = 1, num_workers: int | None = None):
        data = as_source(data)
        if isinstance(data, TensorData):
            raise TypeError("use TensorLoader for TensorData")
        self.train = shuffle
        self.data = data if shuffle else data.for_eval()
        self.batch_size = (data.batch_size or batch_size) if shuffle else batch_size
        self.shuffle = shuffle and data.shuffle and not data.iterable
        self.seed, self.drop_last = seed, drop_last or (shuffle and data.drop_last)
        self.augment = augment if augment is not None and augment.active else None
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        opts = data.loader
        self.num_workers = opts.num_workers if num_workers is None else num_workers
        self.pin = bool(opts.pin_memory) and self.device.type == "cuda"
        self.non_blocking = bool(opts.non_blocking) and self.pin
        self.persistent = bool(opts.persistent_workers) and self.num_workers > 0
        self.prefetch = opts.prefetch_factor if self.num_workers > 0 else None
        self.random_transform = self.train and (any(getattr(v, "random", True) for v in self.data.views.values()
                                                    if v is not None) or (
            self.data.transform is not None and getattr(self.data.transform, "random", True)))
        self.data_id = "stream:" + self.data.fingerprint() + (
            f"|{self.augment.signature()}" if self.augment else "")
        self._loader = None
        self._view = None

    @property
    def num_samples(self) -> int | None:
        """Samples per epoch (None: a stream without a length)."""
        return len(self.data) if self.data.sized else None

    @property
    def exact_resume(self) -> bool:
        """False when a resume mid-epoch cannot repeat the epoch's order (a user's sampler that
        draws from the global random generator)."""
        return getattr(self.loader.batch_sampler, "exact", getattr(self._sampler, "exact", True)) \
            if not self.data.iterable else True

    def batches_per_epoch(self) -> int | None:
        """``len(self)``, or None for a stream without a length (it ends when the stream does)."""
        return len(self) if self.data.sized else None

    def _build(self) -> DataLoader:
        kw = dict(num_workers=self.num_workers, pin_memory=self.pin, persistent_workers=self.persistent,
                  collate_fn=functools.partial(self.data.collate_batch, index_as_list=True))
        if self.prefetch:
            kw["prefetch_factor"] = self.prefetch
        if self.data.iterable:
            self._view = _IterView(self.data, self.train, self.rank, self.world_size, self.seed)
            return DataLoader(self._view, batch_size=self.batch_size, drop_last=self.drop_last, **kw)
        own = self.data.sampler is not None or self.data.batch_sampler is not None
        if self.train and own:
            self._sampler = _UserBatches(self.data.sampler, self.data.batch_sampler, self.batch_size,
                                         self.drop_last)
        else:
            self._sampler = _EpochBatches(len(self.data), self.batch_size, self.seed, self.shuffle,
                                          self.drop_last)
        loader = DataLoader(_MapView(self.data, self.train, self.seed), batch_sampler=self._sampler, **kw)
        if self.world_size > 1:
            from accelerate.data_loader import prepare_data_loader

            loader = prepare_data_loader(loader, num_processes=self.world_size, process_index=self.rank,
                                         put_on_device=False, even_batches=self.train)
        return loader

    @property
    def loader(self) -> DataLoader:
        if self._loader is None:
            self._loader = self._build()
        return self._loader

    def __len__(self) -> int:
        if not self.data.iterable:
            return len(self.loader)
        # each (process, worker) shard batches its own share of the stream; in training every
        # process runs the same number of steps (the smallest share), as DDP needs
        n = len(self.data)
        workers = max(1, self.num_workers)
        shards = workers * self.world_size

        def batches(rank: int) -> int:
            total = 0
            for s in range(rank * workers, (rank + 1) * workers):
                m = n // shards + (1 if s < n % shards else 0)
                total += m // self.batch_size if self.drop_last else -(-m // self.batch_size)
            return total

        if self.train and self.world_size > 1:
            return min(batches(r) for r in range(self.world_size))
        return batches(self.rank)

    def iterate(self, epoch: int = 0, start: int = 0) -> Iterator[dict]:
        loader = self.loader
        if self.data.iterable:
            self._view.epoch = epoch
        else:
            self._sampler.set_epoch(epoch)
        steps = self.batches_per_epoch()  # None: until the stream ends
        if start:
            from accelerate import skip_first_batches

            loader = skip_first_batches(loader, start)
        it = iter(loader)
        i = start - 1
        while steps is None or i + 1 < steps:
            i += 1
            try:
                raw = next(it)
            except StopIteration:
                if self.data.iterable and self.world_size > 1 and steps is not None:
                    raise DatasetError(f"{self.data.name}: a process ran out of streamed samples; make the "
                                       "stream's length divisible by processes x workers x batch size") from None
                return
            except Exception as e:  # a DataError from a worker arrives wrapped in a traceback
                err = _unwrap_error(e)
                if err is e:
                    raise
                raise err from e  # the worker's traceback stays behind it (JORYU_DEBUG=1 shows it)
            yield self._finish(raw, epoch, i)

    def _finish(self, raw: dict, epoch: int, i: int) -> dict:
        nb = self.non_blocking
        idx = raw["index"]
        if isinstance(idx, list):  # see collate_batch
            idx = raw["index"] = torch.as_tensor(idx, dtype=torch.long)
        for k, v in self.data.fields.items():
            raw[k] = v[idx]
        out = {k: (v.to(self.device, non_blocking=nb) if isinstance(v, Tensor) else v) for k, v in raw.items()}
        aug_id = None
        if self.augment is not None and self.shuffle:
            aug_id = (self.seed * 7919 + epoch) * 100_003 + i
            out["input"] = apply_augment(out["input"], self.augment, aug_id)
        elif self.random_transform:
            aug_id = (self.seed * 7919 + epoch) * 100_003 + i
        out["data_id"] = self.data_id
        out["aug_id"] = aug_id
        return out

    def __iter__(self):
        return self.iterate(0)


# ---------------------------------------------------------------------- adapters
def _from_loader(dl: DataLoader, **kw) -> StreamData:
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    iterable = isinstance(dl.dataset, IterableDataset)
    plain_batches = type(dl.batch_sampler) is BatchSampler
    own = {}
    if not iterable and not (plain_batches and isinstance(dl.sampler, RandomSampler | SequentialSampler)):
        # the user's own sampler (weighted, grouped...) is kept: it trains as given
        own = {"sampler": dl.sampler} if plain_batches else {"batch_sampler": dl.batch_sampler}
    collate = None if dl.collate_fn is default_collate else dl.collate_fn
    loader = LoaderOptions(num_workers=dl.num_workers, pin_memory=dl.pin_memory,
                           persistent_workers=dl.persistent_workers,
                           prefetch_factor=dl.prefetch_factor if dl.num_workers else None)
    kw.setdefault("loader", loader)
    return StreamData(dl.dataset, batch_size=dl.batch_size, shuffle=isinstance(dl.sampler, RandomSampler),
                      drop_last=dl.drop_last, collate=collate, **own, **kw)


def as_source(data, num_classes: int | None = None, name: str | None = None, **kw):
    """``data`` as a ``TensorData`` or a ``StreamData`` (see the module docstring)."""
    if isinstance(data, TensorData | StreamData):
        if kw and isinstance(data, StreamData):
            return replace(data, **kw)
        return data
    if isinstance(data, DataBundle):
        return as_source(data.train, num_classes, name, **kw)
    if isinstance(data, tuple | list) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if len(x) != len(y):
            raise ConfigError(f"inputs have {len(x)} rows but targets have {len(y)}; give one target per input")
        if len(y) == 0:
            raise DatasetError(f"{name or 'the data'} has no samples (0 rows); give at least one")
        y = _class_indices(y, name or "the data")
        return TensorData({"input": x, "target": y}, num_classes or int(y.max()) + 1, name or "user")
    if isinstance(data, dict) and ("target" in data or "labels" in data) and all(
            isinstance(t, Tensor) for t in data.values()):
        hf = "target" not in data  # Hugging Face labels: the target until align_labels says otherwise
        y = _class_indices(data["labels"] if hf else data["target"], name or "the data")  # input_ids, attention_mask, ... and target
        known = y[y != IGNORE_INDEX]
        k = num_classes or (int(known.max()) + 1 if known.numel() else 1)
        return TensorData({**data, "target": y}, k, name or "user", hf_labels=hf)
    if isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2 and not kw:
        return as_source(tuple(data.tensors), num_classes, name)
    name = name or type(data).__name__
    if isinstance(data, DataLoader):
        return _from_loader(data, num_classes=num_classes, name=name, **kw)
    if isinstance(data, Dataset | IterableDataset) or _is_hf(data) or (
            hasattr(data, "__getitem__") and hasattr(data, "__len__") and not isinstance(data, str | bytes | dict)):
        return StreamData(data, num_classes=num_classes, name=name, **kw)
    raise ConfigError(f"train_data cannot be a {type(data).__name__}: give a torch Dataset, IterableDataset, "
                      "DataLoader, Hugging Face dataset, (inputs, targets) tensors, a dict of tensors with "
                      "'target' or a joryu TensorData")


def _class_indices(y: Tensor, name: str) -> Tensor:
    """Targets as class indices (int64); floats must hold whole numbers (``2.0``, not ``0.5``)."""
    if y.is_floating_point():
        bad = ~torch.isfinite(y) | (y != y.round())
        if bool(bad.any()):
            i = int(torch.nonzero(bad.reshape(len(y), -1).any(1))[0])
            raise DatasetError(f"{name}: target of sample {i} is {y[i].tolist()!r}, not a class index; "
                               "targets are integer classes 0..K-1 (soft or regression targets are "
                               "not supported)")
    if y.dtype == torch.bool or y.is_complex():
        raise DatasetError(f"{name}: targets are {y.dtype}; give integer class indices 0..K-1")
    return y.long()


def known_targets(data) -> Tensor | None:
    """``data``'s targets where they are known without reading every sample (tensor data, a
    ``targets`` attribute, a Hugging Face column, a ``target`` field); None otherwise."""
    if isinstance(data, TensorData):
        return data.targets
    ds = data.dataset
    if data.iterable or not ("target" in data.fields or getattr(data, "_targets", None) is not None
                             or _is_hf(ds) or getattr(ds, "targets", None) is not None):
        return None
    try:
        return data.targets
    except (ValueError, TypeError, RuntimeError):
        return None


def check_labels(data, num_classes: int, split: str) -> None:
    """Refuse, in one line and before training, a split that cannot be trained on or scored: one
    without samples, or whose labels fall outside ``[0, num_classes)`` (``IGNORE_INDEX``, -100,
    marks a position without a label). Labels are checked where they are known without a pass
    over the samples (see ``known_targets``); streamed ones are checked batch by batch."""
    if data is None:
        return
    name = getattr(data, "name", split)
    try:
        n = len(data)
    except DatasetError:
        n = None  # an endless stream: its length is its budget's business
    if n == 0:
        raise DatasetError(f"the {split} split ({name}) has no samples; give it at least one "
                           "(check the factory, the files or data.val_fraction)")
    t = known_targets(data)
    if t is None or t.numel() == 0:
        return
    if t.is_floating_point():
        t = _class_indices(t, f"the {split} split ({name})")
    flat = t.reshape(len(t), -1)
    bad = ((flat < 0) & (flat != IGNORE_INDEX)) | (flat >= num_classes)
    if bool(bad.any()):
        i = int(torch.nonzero(bad.any(1))[0])
        value = int(flat[i][bad[i]][0])
        raise DatasetError(f"the {split} split ({name}) has label {value} (sample {i}), outside the "
                           f"{num_classes} classes 0..{num_classes - 1} the data has; fix its labels, "
                           "or set num_classes to cover them")


def align_labels(data, causal: bool):
    """``data`` (a TensorData, StreamData or DataBundle; None passes) whose Hugging Face ``labels``
    make the target for a causal LM (``causal``: shifted once) or any other model (as they are).
    Always made from ``labels``, so calling it again never shifts twice; data whose target is
    ``target`` is returned as it is."""
    if data is None:
        return None
    if isinstance(data, DataBundle):
        return replace(data, train=align_labels(data.train, causal), test=align_labels(data.test, causal),
                       val=align_labels(data.val, causal))
    if isinstance(data, TensorData):
        if not data.hf_labels:
            return data
        labels = data.tensors["labels"].long()
        target = shift_labels(labels) if causal else labels
        return TensorData({**data.tensors, "target": target}, data.num_classes, data.name, data.mean, data.std,
                          hf_labels=True)
    if isinstance(data, StreamData) and data.causal != bool(causal):
        return replace(data, causal=bool(causal))
    return data


def split_any(data, fraction: float, seed: int = 0):
    """A seeded validation split of any source (stratified by class where targets are known)."""
    if isinstance(data, TensorData):
        return split_validation(data, fraction, seed)
    if fraction <= 0:
        return data, None
    if not 0 < fraction < 1:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    if not data.sized:
        raise ConfigError(f"{data.name} is a stream without a length: a validation split cannot be carved "
                          "from it; give the validation data (val_data=..., data.val) or set the validation "
                          "fraction to 0 (val_fraction=0, data.val_fraction: 0)")
    if data.iterable:
        return (replace(data, keep=(seed, fraction, False), name=data.name + "/train"),
                replace(data, keep=(seed, fraction, True), name=data.name + "/val").for_eval())
    targets = data.cheap_targets()  # None: a plain seeded split (no pass over the samples)
    gen = torch.Generator().manual_seed(seed)
    if targets is not None and len(targets) == len(data):
        val = []
        for c in torch.unique(targets):
            idx = torch.nonzero(targets == c).flatten()
            idx = idx[torch.randperm(len(idx), generator=gen)]
            val.append(idx[: int(round(len(idx) * fraction))])
        val_idx = torch.cat(val).sort().values
    else:
        perm = torch.randperm(len(data), generator=gen)
        val_idx = perm[: int(round(len(data) * fraction))].sort().values
    mask = torch.ones(len(data), dtype=torch.bool)
    mask[val_idx] = False
    return (data.subset(torch.nonzero(mask).flatten(), data.name + "/train"),
            data.subset(val_idx, data.name + "/val").for_eval())


def load_factory(spec: str, **kwargs):
    """Call ``package.module:factory(**kwargs)`` and return what it gives."""
    mod, _, attr = spec.partition(":")
    if not mod or not attr:
        raise ConfigError(f"data factory {spec!r} must look like package.module:function")
    try:
        fn = importlib.import_module(mod)
        for part in attr.split("."):
            fn = getattr(fn, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"data factory {spec!r} cannot be imported ({e}); check the path and "
                          "that the module is importable (PYTHONPATH)") from None
    if not callable(fn):
        raise ConfigError(f"data factory {spec!r} is not callable; name a function that returns a dataset")
    import inspect

    try:
        inspect.signature(fn).bind(**kwargs)
    except TypeError as e:
        raise ConfigError(f"data factory {spec!r} rejected its options {sorted(kwargs)}: {e}") from None
    except ValueError:  # no signature to read (a builtin): the call says
        pass
    try:
        return fn(**kwargs)
    except Exception as e:  # noqa: BLE001 - the user's factory failed
        reraise_as_user(e, fn)


def _is_dataset(obj) -> bool:
    return isinstance(obj, TensorData | StreamData | Dataset | IterableDataset | DataLoader) or _is_hf(obj) or (
        isinstance(obj, tuple | list) and len(obj) == 2 and all(isinstance(t, Tensor) for t in obj))


def bundle_from(result, name: str, test=None, val=None, options: dict | None = None):
    """A ``DataBundle`` from what a factory returned: a DataBundle, a dict with ``train`` (and
    ``test``, ``val``), a ``(train, test)`` pair, or one dataset (then ``test`` must be given)."""
    opts = options or {}
    what = f"data factory {name!r}"
    if isinstance(result, DataBundle):
        train, test = result.train, test if test is not None else result.test
        augment, num_classes = result.augment, result.num_classes
        val = val if val is not None else getattr(result, "val", None)
    else:
        augment, num_classes = Augment(), None
        if isinstance(result, Mapping):
            if "train" not in result:
                raise ConfigError(f"{what} returned a dict without 'train' (keys: {sorted(result)}); "
                                  "return {'train': ..., 'test': ...}")
            train = result["train"]
            test = test if test is not None else result.get("test")
            val = val if val is not None else result.get("val", result.get("validation"))
            num_classes = result.get("num_classes")
        elif isinstance(result, tuple | list) and len(result) == 2 and all(
                _is_dataset(r) for r in result) and not all(isinstance(t, Tensor) for t in result):
            train, test = result[0], test if test is not None else result[1]
        elif _is_dataset(result):
            train = result
        else:
            raise ConfigError(f"{what} returned a {type(result).__name__}, not a dataset; return a torch "
                              "Dataset, DataLoader, Hugging Face dataset, (inputs, targets) tensors, a "
                              "DataBundle or {'train': ..., 'test': ...}")
    if test is None:
        raise ConfigError(f"{what} gave no test split; return {{'train': ..., 'test': ...}} or set "
                          "data.test to a factory for the test split")
    src = as_source(train, num_classes, f"{name}/train", **opts.get("train", {}))
    num_classes = num_classes or src.num_classes
    test = as_source(test, num_classes, f"{name}/test", **opts.get("test", {}))
    if isinstance(test, StreamData):
        test = test.for_eval()
    if val is not None:
        val = as_source(val, num_classes, f"{name}/val", **opts.get("test", {}))
        val = val.for_eval() if isinstance(val, StreamData) else val
    shape = src.input_shape
    for split, other in (("test", test), ("val", val)):
        if other is None or getattr(src, "collate", None) is not None:
            continue
        if tuple(other.input_shape) != tuple(shape):
            raise DatasetError(f"{what}: training inputs have shape {tuple(shape)} but {split} inputs have "
                               f"{tuple(other.input_shape)}; give both the same shape (e.g. a resize in "
                               "data.transform and data.eval_transform)")
    for split, data in (("train", src), ("test", test), ("val", val)):
        check_labels(data, int(num_classes), split)
    return DataBundle(name, src, test, int(num_classes), tuple(shape), augment, val)


def make_loader(data, batch_size: int, shuffle: bool = False, seed: int = 0, augment: Augment | None = None,
                drop_last: bool = False, device="cpu", rank: int = 0, world_size: int = 1):
    """The loader for any data joryu takes: a ``TensorLoader`` for tensors on the device, a
    ``StreamLoader`` for everything streamed. The one place that makes this choice (the engine, the
    pre-flight check and ``joryu eval`` all call it)."""
    data = as_source(data)
    kw = dict(batch_size=batch_size, shuffle=shuffle, seed=seed, augment=augment, drop_last=drop_last,
              device=device, rank=rank, world_size=world_size)
    if isinstance(data, TensorData):
        return TensorLoader(data, **kw)
    return StreamLoader(data, **kw)


def example_batch(data, n: int = 2) -> dict:
    """The first ``n`` samples of ``data`` as a batch, prepared as the loaders prepare it
    (real dtypes and shapes: for sizing adapters, counting classes, timing a forward pass)."""
    if isinstance(data, TensorData):
        n = max(1, min(n, len(data)))
        return TensorLoader(data, n, shuffle=False).batch(torch.arange(n))
    if getattr(data, "collate", None) is not None and not data.iterable:  # the user's collate_fn batches
        idx = range(max(1, min(n, len(data))))
        return data.collate_batch([(i, data._raw(i)) for i in idx])
    if hasattr(data, "sample"):  # a streamed source (joryu.data.sources.StreamData)
        items = []
        for i in range(max(1, n)):
            try:
                items.append((i, data.sample(i, train=True)))
            except IndexError:
                break
        if hasattr(data, "collate_batch"):  # its own collation: one-line errors on mixed shapes
            return data.collate_batch(items)
        samples = [s for _, s in items]
    else:
        samples = [data[i] for i in range(max(1, min(n, len(data))))]
    return dict(torch.utils.data.default_collate(samples))
