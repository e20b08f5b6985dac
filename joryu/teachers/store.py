"""An offline top-k teacher store: the teacher runs once over a dataset, its k most probable
classes per position are kept on disk, and training reads them back by sample index.

``build_store(teacher, data, path, k)`` runs the teacher over ``data`` in index order (no shuffling,
no augmentation) and writes ``path/``:

- ``shard-00000.safetensors``, ...: for the samples ``[start, stop)`` of each shard,
  ``indices`` ``[n, *positions, k]`` int32 (the top-k classes, most probable first; int16 would not
  hold a 50k vocabulary), ``logprobs`` ``[n, *positions, k]`` in 16 bits (float16 by default) and
  ``rest`` ``[n, *positions]`` float32 (the teacher's probability mass outside the top k);
- ``manifest.json``, written last (a folder without it is an unfinished build): k, the number of
  classes V, the positions per sample (``[]`` for classification, ``[L]`` for tokens, ``[H, W]`` for
  pixels), the temperature T the log-probabilities are at, the shards, and a fingerprint of the
  teacher's weights and of the data, so that a stale store is refused (``TopKStore.check``).

Per position it stores ``6k + 4`` bytes against ``4V`` for dense float32 logits.

``TopKStore(path).get(index)`` returns the entries of the samples ``index`` (a batch's ``index``
tensor): the store is keyed by sample index, so it stays in step with the data under shuffling,
DataLoader workers, several processes and resume. Shards are memory-mapped (the safetensors layout
is read directly: an 8-byte header length, a JSON header, then the raw arrays), so a read touches only
the rows asked for and nothing is loaded up front; a store pickles without its maps (workers reopen
them). The losses over these entries are in ``joryu.losses.topk``.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from joryu.data.sources import as_source, make_loader
from joryu.errors import ConfigError
from joryu.losses.positions import class_dim
from joryu.losses.topk import topk_from_logits
from joryu.teachers.base import as_teacher

MANIFEST = "manifest.json"
KIND = "joryu-topk-teacher-store"
FORMAT = 1
VALUE_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# safetensors dtype name -> (numpy dtype read from the file, torch dtype it is viewed as)
_ST_DTYPES = {"F16": (np.float16, None), "BF16": (np.uint16, torch.bfloat16), "F32": (np.float32, None),
              "I32": (np.int32, None)}


@dataclass
class TopK:
    """A batch's teacher entries: ``indices`` ``[B, *positions, k]`` (int64), ``logprobs`` (same
    shape, 16-bit as stored) at the store's temperature, ``rest`` ``[B, *positions]``."""

    indices: Tensor
    logprobs: Tensor
    rest: Tensor


def bytes_per_position(k: int, value_dtype: str = "float16") -> int:
    """Bytes stored per position: k indices (int32), k values, one float32 remaining mass."""
    return k * (4 + VALUE_DTYPES[value_dtype].itemsize) + 4


def data_fingerprint(data) -> str | None:
    fp = getattr(data, "fingerprint", None)
    return fp() if callable(fp) else None


def _rows_of(logits: Tensor) -> Tensor:
    """``[B, *positions, C]``: the class axis last (it is axis 1 for pixel logits)."""
    return logits.movedim(class_dim(logits), -1) if logits.dim() >= 4 else logits


def _mmap_safetensors(file: Path) -> dict[str, Tensor]:
    """The tensors of a safetensors file as zero-copy views of a read-only memory map."""
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        np_dtype, view = _ST_DTYPES[info["dtype"]]
        start, _ = info["data_offsets"]
        shape = tuple(info["shape"])
        if math.prod(shape) == 0:
            arr = np.zeros(shape, dtype=np_dtype)
        else:
            arr = np.memmap(file, dtype=np_dtype, mode="r", offset=8 + n + start, shape=shape)
        out[name] = (arr, view)
    return out


class TopKStore:
    """Reads a store written by ``build_store`` (see the module docstring)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        file = self.path / MANIFEST
        if not file.is_file():
            what = "an unfinished build (no manifest.json)" if self.path.is_dir() else "missing"
            raise ConfigError(f"teacher store {self.path} is {what}: build it with "
                              "joryu.teachers.store.build_store(teacher, data, path, k)")
        m = json.loads(file.read_text())
        if m.get("kind") != KIND or m.get("format") != FORMAT:
            raise ConfigError(f"{file} is not a joryu top-k teacher store of format {FORMAT}: rebuild it "
                              "with build_store")
        self.manifest = m
        self.k = int(m["k"])
        self.num_classes = int(m["num_classes"])
        self.num_samples = int(m["num_samples"])
        self.positions = tuple(m["positions"])
        self.temperature = float(m["temperature"])
        self.samples_per_shard = int(m["samples_per_shard"])
        self._maps: dict[int, dict] = {}

    def __len__(self) -> int:
        return self.num_samples

    def __getstate__(self):
        return {**self.__dict__, "_maps": {}}

    def check(self, teacher=None, data=None) -> None:
        """Refuse, in one ``ConfigError`` line, a store built from other teacher weights or data."""
        fp = self.manifest["fingerprint"]
        if teacher is not None:
            now = as_teacher(teacher).fingerprint()
            if fp.get("teacher") and now != fp["teacher"]:
                raise ConfigError(f"teacher store {self.path} was built from other teacher weights "
                                  f"(fingerprint {fp['teacher']}, the run's teacher {now}): rebuild it "
                                  "with build_store on this teacher")
        now = data_fingerprint(data) if data is not None else None
        if now is not None and fp.get("data") and now != fp["data"]:
            raise ConfigError(f"teacher store {self.path} was built on other data (fingerprint {fp['data']}, "
                              f"the run's training data {now}): build it on the exact training split "
                              "the run trains on (with joryu.distill, pass val_data or val_fraction=0)")
        if data is not None and hasattr(data, "__len__") and len(data) != self.num_samples:
            raise ConfigError(f"teacher store {self.path} holds {self.num_samples} samples, the training "
                              f"data has {len(data)}: build it on the training split the run uses")

    def _shard(self, s: int) -> dict:
        if s not in self._maps:
            self._maps[s] = _mmap_safetensors(self.path / self.manifest["shards"][s]["file"])
        return self._maps[s]

    def get(self, index: Tensor, device=None, k: int | None = None) -> TopK:
        """The entries of the samples ``index`` (any device), on ``device`` (default: index's).
        ``k`` < the stored k keeps the top k of them and adds the rest to the remaining mass
        (exact at the store's temperature)."""
        device = index.device if device is None else device
        idx = index.detach().to("cpu", torch.int64).numpy().reshape(-1)
        if len(idx) and (idx.min() < 0 or idx.max() >= self.num_samples):
            raise ValueError(f"teacher store {self.path} holds samples 0..{self.num_samples - 1}; the batch "
                             f"asks for sample {int(idx.max() if idx.max() >= self.num_samples else idx.min())}")
        parts: dict[str, list] = {"indices": [], "logprobs": [], "rest": []}
        order = []
        shard_of = idx // self.samples_per_shard
        for s in np.unique(shard_of):
            where = np.nonzero(shard_of == s)[0]
            rows = idx[where] - s * self.samples_per_shard
            for name, (arr, view) in self._shard(int(s)).items():
                t = torch.from_numpy(np.ascontiguousarray(arr[rows]))
                parts[name].append(t.view(view) if view is not None else t)
            order.append(torch.from_numpy(where))
        if not order:
            empty = (0, *self.positions)
            return TopK(torch.zeros((*empty, self.k), dtype=torch.long, device=device),
                        torch.zeros((*empty, self.k), device=device), torch.zeros(empty, device=device))
        inverse = torch.empty(len(idx), dtype=torch.long)
        inverse[torch.cat(order)] = torch.arange(len(idx))
        out = {name: torch.cat(ts)[inverse] if len(ts) > 1 else ts[0] for name, ts in parts.items()}
        indices, logprobs, rest = out["indices"], out["logprobs"], out["rest"]
        if k is not None and k != self.k:
            if not 1 <= k <= self.k:
                raise ConfigError(f"topk = {k} but teacher store {self.path} holds k = {self.k}: ask for at "
                                  f"most {self.k} or rebuild the store with a larger k")
            rest = rest + logprobs[..., k:].float().exp().sum(-1)
            indices, logprobs = indices[..., :k], logprobs[..., :k]
        return TopK(indices.to(device, torch.long), logprobs.to(device), rest.to(device))

    def nbytes(self) -> int:
        return sum((self.path / s["file"]).stat().st_size for s in self.manifest["shards"])


def _write_shard(folder: Path, n: int, start: int, chunk: dict) -> dict:
    from safetensors.torch import save_file

    name = f"shard-{n:05d}.safetensors"
    save_file({k: v.contiguous() for k, v in chunk.items()}, str(folder / name))
    return {"file": name, "start": start, "stop": start + len(chunk["rest"])}


def build_store(teacher, data, path: str | Path, k: int, *, temperature: float = 1.0,
                inputs: str | Mapping[str, str] = "input", value_dtype: str = "float16",
                batch_size: int = 64, device: str | torch.device = "cpu", shard_mb: float = 256.0,
                overwrite: bool = False, progress: bool = True) -> TopKStore:
    """Run ``teacher`` once over ``data`` in index order and write a top-k store at ``path``.

    teacher: an nn.Module or a Teacher (``inputs`` names the batch keys a module reads, as a model's
        ``inputs`` in a config: ``"input"`` or ``{"input_ids": "input_ids", ...}``).
    data: anything joryu trains on (``TensorData``, tensors, a Dataset...); without augmentation.
    k: classes kept per position (1 <= k <= the number of classes / vocabulary size).
    temperature: T of the stored log-probabilities and remaining mass; the bucket truncation needs
        the run's distillation temperature to equal it, the renormalised one works at any T.
    value_dtype: ``float16`` (default), ``bfloat16`` or ``float32`` for the log-probabilities.
    shard_mb: target size of one shard file. overwrite: replace an existing store at ``path``.

    Returns the opened ``TopKStore``.
    """
    path = Path(path)
    if value_dtype not in VALUE_DTYPES:
        raise ConfigError(f"value_dtype must be one of {', '.join(VALUE_DTYPES)}, got {value_dtype!r}")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if path.exists() and not overwrite:
        raise ConfigError(f"{path} exists: pass overwrite=True to replace it, or choose another path")
    t = as_teacher(teacher, inputs)
    if getattr(t, "stochastic", False):
        raise ConfigError(f"{type(t).__name__} draws afresh on each call: its outputs cannot be stored once")
    source = as_source(data)
    t.to(device)
    loader = make_loader(source, batch_size, shuffle=False, device=device)
    partial = path.with_name(path.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    dtype = VALUE_DTYPES[value_dtype]
    shards, pending, filled = [], [], 0
    per_shard = num_classes = positions = None
    bar = tqdm(total=len(loader), desc=f"teacher store (k={k})", disable=not progress, dynamic_ncols=True)
    for batch in loader.iterate(0):
        index = batch["index"].to("cpu")
        start = filled + sum(len(p["rest"]) for p in pending)
        expect = torch.arange(start, start + len(index))
        if not torch.equal(index, expect):
            raise ValueError("the data loader did not yield samples in index order; build_store needs it")
        rows = _rows_of(t(batch).logits)
        if num_classes is None:
            num_classes, positions = rows.shape[-1], tuple(rows.shape[1:-1])
            if k > num_classes:
                raise ConfigError(f"k = {k} exceeds the teacher's {num_classes} classes: use k <= {num_classes}")
            per_pos = bytes_per_position(k, value_dtype)
            per_shard = max(1, int(shard_mb * 2**20 // (per_pos * max(1, math.prod(positions)))))
        elif tuple(rows.shape[1:-1]) != positions:
            raise ConfigError(f"samples have {tuple(rows.shape[1:-1])} positions after {positions} earlier: "
                              "a store needs one shape per sample (pad to one length)")
        ind, lp, rest = topk_from_logits(rows, k, temperature)
        pending.append({"indices": ind.to("cpu", torch.int32), "logprobs": lp.to("cpu", dtype),
                        "rest": rest.to("cpu", torch.float32)})
        while sum(len(p["rest"]) for p in pending) >= per_shard:
            joined = {name: torch.cat([p[name] for p in pending]) for name in pending[0]}
            shards.append(_write_shard(partial, len(shards), filled,
                                       {n: v[:per_shard] for n, v in joined.items()}))
            filled += per_shard
            pending = [{n: v[per_shard:] for n, v in joined.items()}]
        bar.update(1)
    bar.close()
    if pending and sum(len(p["rest"]) for p in pending):
        joined = {name: torch.cat([p[name] for p in pending]) for name in pending[0]}
        shards.append(_write_shard(partial, len(shards), filled, joined))
        filled += len(joined["rest"])
    if filled == 0:
        raise ConfigError("the data is empty: nothing to store")
    manifest = {"kind": KIND, "format": FORMAT, "k": k, "num_classes": num_classes, "num_samples": filled,
                "positions": list(positions), "temperature": temperature, "value_dtype": value_dtype,
                "values": "log-probabilities at the temperature", "samples_per_shard": per_shard,
                "bytes_per_position": bytes_per_position(k, value_dtype), "shards": shards,
                "fingerprint": {"teacher": t.fingerprint(), "data": data_fingerprint(source)},
                "teacher": type(t.models()[0]).__name__ if t.models() else type(t).__name__}
    (partial / MANIFEST).write_text(json.dumps(manifest, indent=1))
    if path.exists():
        shutil.rmtree(path)
    partial.rename(path)
    return TopKStore(path)
