"""In-memory datasets that live on the device, deterministic batch order, batch-wise augmentation.

A batch is a dict: ``input``, ``target``, ``index`` (position in the dataset) plus any other
per-sample tensors the dataset carries (``input_b``, ``privileged``, ``labeled``...), and two
non-tensor keys that the teacher cache reads: ``data_id`` (a fingerprint of the dataset) and
``aug_id`` (None when the batch is not augmented).

Batch order is a pure function of (seed, epoch, rank), so a resumed run sees the same batches.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor


class Augment(BaseModel):
    """Batch-wise augmentation applied on the device; the one declaration of these options (a
    config's ``data.augment`` is this model, validated like the rest of the config).

    draws: 0 = a fresh random augmentation every time. K > 0 = every sample is seen, each epoch,
    under one of K fixed augmentation draws (chosen at random per sample and epoch); the same
    (sample, draw) always gives the same augmented input, so teacher outputs can be cached per
    (sample, draw), as fast-KD work stores soft labels per crop. Not with ``noise``.
    """

    model_config = ConfigDict(extra="forbid")

    shift: int = Field(0, ge=0, description="maximum random translation along each spatial axis "
                       "(zero padding)")
    flip: bool = Field(False, description="random horizontal flip (last axis), for natural images")
    noise: float = Field(0.0, ge=0, allow_inf_nan=False,
                         description="standard deviation of added Gaussian noise")
    draws: int = Field(0, ge=0, description="0: fresh draws; K > 0: one of K fixed draws per sample")

    @model_validator(mode="after")
    def _draws_without_noise(self):
        if self.draws > 0 and self.noise > 0:
            raise ValueError("fixed draws (draws > 0) cannot be combined with noise; use shift/flip, "
                             "or draws: 0")
        return self

    @property
    def active(self) -> bool:
        return self.shift > 0 or self.flip or self.noise > 0

    def signature(self) -> str:
        return f"shift={self.shift},flip={self.flip},noise={self.noise},draws={self.draws}"


def _shift_by(x: Tensor, max_shift: int, offsets: Tensor) -> Tensor:
    """Translate each sample by ``offsets - max_shift`` (offsets in [0, 2*max_shift]) per spatial axis."""
    squeeze = x.dim() == 2
    if squeeze:  # (B, L) signals
        x = x.unsqueeze(1)
    b, c = x.shape[:2]
    spatial = x.dim() - 2
    xp = torch.nn.functional.pad(x, [max_shift, max_shift] * spatial)
    offsets = offsets.to(x.device)
    bidx = torch.arange(b, device=x.device)
    chans = torch.arange(c, device=x.device)
    if spatial == 1:
        cols = offsets[:, 0:1] + torch.arange(x.shape[-1], device=x.device)
        out = xp[bidx[:, None, None], chans[None, :, None], cols[:, None, :]]
    else:
        h, w = x.shape[-2:]
        rows = offsets[:, 0:1] + torch.arange(h, device=x.device)
        cols = offsets[:, 1:2] + torch.arange(w, device=x.device)
        out = xp[bidx[:, None, None, None], chans[None, :, None, None], rows[:, None, :, None],
                 cols[:, None, None, :]]
    return out.squeeze(1) if squeeze else out


def _spatial_dims(x: Tensor) -> int:
    return 1 if x.dim() <= 3 else x.dim() - 2


def _flip(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.to(x.device).view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)


def apply_augment(x: Tensor, aug: Augment, seed: int) -> Tensor:
    """Augment a batch deterministically from ``seed`` (same seed, same result)."""
    gen = torch.Generator().manual_seed(seed)
    if aug.shift > 0:
        offsets = torch.randint(0, 2 * aug.shift + 1, (x.shape[0], _spatial_dims(x)), generator=gen)
        x = _shift_by(x, aug.shift, offsets)
    if aug.flip:
        x = _flip(x, torch.rand(x.shape[0], generator=gen) < 0.5)
    if aug.noise > 0:
        x = x + aug.noise * torch.randn(x.shape, generator=gen).to(x.device)
    return x


def _hash(keys: Tensor, salt: int) -> Tensor:
    """A cheap, vectorised integer hash of int64 keys to [0, 2**31)."""
    h = (keys * 2654435761 + salt * 97531 + 12345) % 2147483647
    h = (h ^ (h >> 13)) * 1274126177 % 2147483647
    return h ^ (h >> 16)


def apply_augment_keyed(x: Tensor, aug: Augment, keys: Tensor) -> Tensor:
    """Augment each sample by its own key: the same key always gives the same augmentation."""
    keys = keys.long()
    if aug.shift > 0:
        offsets = torch.stack([_hash(keys, 1 + a) % (2 * aug.shift + 1) for a in range(_spatial_dims(x))], 1)
        x = _shift_by(x, aug.shift, offsets)
    if aug.flip:
        x = _flip(x, _hash(keys, 99) % 2 == 1)
    return x


@dataclass
class TensorData:
    """A dataset held as tensors of equal length. ``target`` is required; models read ``input`` or
    whichever keys their ``inputs`` name (``input_ids``, ``attention_mask``...)."""

    tensors: dict[str, Tensor]
    num_classes: int
    name: str = "data"
    mean: float | None = None  # applied per batch: (x - mean) / std, after uint8 -> [0, 1]
    std: float | None = None
    _fingerprint: str | None = field(default=None, repr=False)
    # True when ``target`` was made from a Hugging Face ``labels`` tensor (kept under ``labels``):
    # ``joryu.data.sources.align_labels`` then remakes it for a causal LM (shifted) or not
    hf_labels: bool = False

    def __post_init__(self):
        if "target" not in self.tensors or len(self.tensors) < 2:
            raise ValueError("TensorData needs a 'target' tensor and at least one input tensor "
                             "('input', or the keys a model's inputs name)")
        n = len(self.tensors["target"])
        for k, v in self.tensors.items():
            if len(v) != n:
                raise ValueError(f"tensor {k!r} has {len(v)} rows, 'target' has {n}")

    def __len__(self) -> int:
        return len(self.tensors["target"])

    @property
    def input_shape(self) -> tuple[int, ...]:
        key = "input" if "input" in self.tensors else next(k for k in self.tensors if k != "target")
        return tuple(self.tensors[key].shape[1:])

    @property
    def targets(self) -> Tensor:
        return self.tensors["target"]

    def subset(self, idx, name: str | None = None) -> TensorData:
        idx = torch.as_tensor(idx, dtype=torch.long)
        return TensorData({k: v[idx] for k, v in self.tensors.items()}, self.num_classes,
                          name or self.name, self.mean, self.std, hf_labels=self.hf_labels)

    def with_tensors(self, **tensors: Tensor) -> TensorData:
        return TensorData({**self.tensors, **tensors}, self.num_classes, self.name, self.mean, self.std,
                          hf_labels=self.hf_labels and "target" not in tensors)

    def to(self, device) -> TensorData:
        return TensorData({k: v.to(device) for k, v in self.tensors.items()}, self.num_classes,
                          self.name, self.mean, self.std, self._fingerprint, self.hf_labels)

    def fingerprint(self) -> str:
        """Content hash of all tensors (computed once): the teacher cache keys on it."""
        if self._fingerprint is None:
            h = hashlib.sha1()
            for k in sorted(self.tensors):
                t = self.tensors[k].detach().cpu().contiguous()
                h.update(k.encode())
                h.update(str(t.dtype).encode())
                h.update(str(tuple(t.shape)).encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            h.update(f"{self.mean},{self.std}".encode())
            self._fingerprint = h.hexdigest()[:16]
        return self._fingerprint

    def prepare_input(self, x: Tensor) -> Tensor:
        """uint8 images -> floats in [0, 1]; other integer tensors (token ids) keep their dtype
        unless the data is normalised (``mean``/``std`` set); then ``(x - mean) / std``."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif not x.is_floating_point():
            if self.mean is None:
                return x
            x = x.float()
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x


def split_validation(data: TensorData, fraction: float, seed: int = 0) -> tuple[TensorData, TensorData | None]:
    """Carve a validation split off the training data (fixed ``seed``, stratified by class)."""
    if fraction <= 0:
        return data, None
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in [0, 1), got {fraction}")
    gen = torch.Generator().manual_seed(seed)
    targets = data.targets
    if targets.dim() > 1:  # per-position targets (tokens, pixels): a plain random split of samples
        perm = torch.randperm(len(data), generator=gen)
        k = int(round(len(data) * fraction))
        return (data.subset(perm[k:].sort().values, data.name + "/train"),
                data.subset(perm[:k].sort().values, data.name + "/val"))
    val_idx = []
    for c in torch.unique(targets):
        idx = torch.nonzero(targets == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        val_idx.append(idx[: int(round(len(idx) * fraction))])
    val = torch.cat(val_idx).sort().values
    mask = torch.ones(len(data), dtype=torch.bool)
    mask[val] = False
    train_idx = torch.nonzero(mask).flatten()
    return data.subset(train_idx, data.name + "/train"), data.subset(val, data.name + "/val")


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  drop_last: bool = False, rank: int = 0, world_size: int = 1) -> list[Tensor]:
    """Index batches for one epoch on one process; a pure function of its arguments.

    With several processes each gets an equal share of the permutation (the remainder is
    dropped while shuffling, so every process runs the same number of steps).
    """
    if shuffle:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=gen)
    else:
        order = torch.arange(n)
    if world_size > 1:
        if shuffle:
            order = order[: (n // world_size) * world_size]
        order = order[rank::world_size]
    m = len(order)
    stop = (m // batch_size) * batch_size if drop_last else m
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]


class TensorLoader:
    """Iterates a ``TensorData`` on the device in deterministic batches, augmenting per batch."""

    def __init__(self, data: TensorData, batch_size: int, shuffle: bool = True, seed: int = 0,
                 augment: Augment | None = None, drop_last: bool = False, device="cpu",
                 rank: int = 0, world_size: int = 1):
        self.data = data.to(device)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.augment = augment if augment is not None and augment.active else None
        self.drop_last = drop_last
        self.device = device
        self.rank, self.world_size = rank, world_size
        self.data_id = data.fingerprint() + (f"|{self.augment.signature()}" if self.augment else "")

    def __len__(self) -> int:
        return len(self.batches(0))

    @property
    def num_samples(self) -> int:
        return len(self.data)

    def batches(self, epoch: int) -> list[Tensor]:
        return epoch_batches(len(self.data), self.batch_size, self.seed, epoch, self.shuffle,
                             self.drop_last, self.rank, self.world_size)

    def batch(self, idx: Tensor, aug_seed: int | None = None, draws: Tensor | None = None) -> dict:
        idx_dev = idx.to(self.device)
        out = {k: v[idx_dev] for k, v in self.data.tensors.items()}
        for key in ("input", "input_b", "privileged"):
            if key in out:
                out[key] = self.data.prepare_input(out[key])
        out["index"] = idx_dev
        out["data_id"] = self.data_id
        out["aug_id"] = None
        if self.augment is not None and draws is not None:
            key = idx_dev * self.augment.draws + draws.to(self.device)[idx_dev]
            out["input"] = apply_augment_keyed(out["input"], self.augment, key)
            out["aug_key"] = key
        elif self.augment is not None and aug_seed is not None:
            out["input"] = apply_augment(out["input"], self.augment, aug_seed)
            out["aug_id"] = aug_seed
        return out

    def epoch_draws(self, epoch: int) -> Tensor | None:
        """With fixed augmentation draws: which draw every sample uses this epoch."""
        if self.augment is None or self.augment.draws == 0 or not self.shuffle:
            return None
        gen = torch.Generator().manual_seed(self.seed * 31_337 + epoch)
        return torch.randint(0, self.augment.draws, (len(self.data),), generator=gen)

    def iterate(self, epoch: int = 0, start: int = 0) -> Iterator[dict]:
        draws = self.epoch_draws(epoch)
        for i, idx in enumerate(self.batches(epoch)):
            if i < start:
                continue
            aug_seed = (self.seed * 7919 + epoch) * 100_003 + i if self.shuffle else None
            yield self.batch(idx, aug_seed, draws)

    def __iter__(self):
        return self.iterate(0)
