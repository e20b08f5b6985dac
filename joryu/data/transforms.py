"""Per-sample transforms for streamed data: ours by name (no torchvision needed), or any callable
by import path (``torchvision.transforms.v2:RandomHorizontalFlip`` works where it is installed).

A pipeline is written in a config as a list; each item is

* a name: ``hflip``, ``to_tensor``;
* a one-key mapping ``{name: args}``: args is the first argument (``{resize: 32}``,
  ``{resize: [32, 40]}``) or keyword arguments (``{normalize: {mean: [...], std: [...]}}``);
* an import path ``package.module:attr`` in either form. A class is instantiated with the args
  (``{torchvision.transforms.v2:Resize: {size: [32, 32]}}``; a list is spread as positional
  arguments); a function is the transform itself, or, given args, a factory called with them.

Our transforms work on float tensors ``C x H x W`` in [0, 1] (PIL images and uint8 arrays are
converted first). Random ones draw from a ``torch.Generator`` the loader seeds from
(seed, epoch, sample), so the same sample in the same epoch is transformed the same way with any
number of workers and after a resume. The random source passed to a transform call is a
``Draws`` (a counter-based generator, free to create per sample; a ``random.Random`` or a
``torch.Generator`` is also accepted). A callable by import
path runs under a forked global torch RNG seeded from it (torchvision draws from the global RNG).
"""

from __future__ import annotations

import importlib
import math
import random
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from joryu.errors import ConfigError, reraise_as_user

__all__ = ["Draws", "Pipeline", "build_transform", "to_tensor", "available_transforms"]


_M64 = (1 << 64) - 1


class Draws:
    """A counter-based random source: the k-th draw is splitmix64(seed + k). Creating one costs
    nothing (a ``random.Random`` seeds a 624-word state, ~20 us), so every sample can have its own;
    it offers the ``random.Random`` methods the transforms use."""

    __slots__ = ("seed", "k")

    def __init__(self, seed: int):
        self.seed, self.k = int(seed) & _M64, 0

    def getrandbits(self, bits: int) -> int:
        self.k += 1
        z = (self.seed + self.k * 0x9E3779B97F4A7C15) & _M64
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _M64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _M64
        return (z ^ (z >> 31)) >> (64 - bits)

    def random(self) -> float:
        return self.getrandbits(53) / 9007199254740992.0

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()

    def randint(self, a: int, b: int) -> int:
        return a + int(self.random() * (b - a + 1))

    def sample(self, population, k: int) -> list:
        pool = list(population)
        for i in range(len(pool) - 1, 0, -1):  # Fisher-Yates
            j = int(self.random() * (i + 1))
            pool[i], pool[j] = pool[j], pool[i]
        return pool[:k]


def _rng(gen):
    """The random source of a transform call: ``gen`` (``Draws``, a ``random.Random``, or a
    ``torch.Generator`` to draw a seed from), or Python's global one when None."""
    if gen is None:
        return random  # the module's functions: Python's global generator
    if isinstance(gen, torch.Generator):
        return random.Random(int(torch.randint(0, 2**62, (1,), generator=gen)))
    return gen


def to_tensor(x) -> Tensor:
    """A float tensor ``C x H x W`` (images) from a PIL image, a numpy array or a tensor.

    uint8 data are scaled to [0, 1]; an ``H x W x C`` array (PIL/numpy layout) is transposed."""
    if isinstance(x, Tensor):
        t = x
        if t.dtype == torch.uint8:
            t = t.float().div_(255.0)
        elif not t.is_floating_point():
            t = t.float()
        return t
    if hasattr(x, "convert") and hasattr(x, "size") and hasattr(x, "mode"):  # a PIL image
        x = x.convert("RGB") if x.mode not in ("RGB", "L") else x
        arr = np.asarray(x)
        arr = arr[:, :, None] if arr.ndim == 2 else arr
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)
    arr = np.asarray(x)
    if arr.ndim == 3 and arr.shape[-1] in (1, 3, 4) and arr.shape[0] not in (1, 3, 4):
        arr = arr.transpose(2, 0, 1)
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return to_tensor(t)


def _hw(size) -> tuple[int, int]:
    """``size`` (an int or ``[height, width]``) as two positive ints; ValueError otherwise (the
    pipeline builder turns it into one line naming the transform)."""
    if isinstance(size, bool) or not isinstance(size, int | float | list | tuple):
        raise ValueError(f"a size must be a positive int or [height, width], got {size!r}")
    hw = (size, size) if isinstance(size, int | float) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int | float) and not isinstance(s, bool) and
                               math.isfinite(s) and s == int(s) and s >= 1 for s in hw):
        raise ValueError(f"a size must be a positive int or [height, width] of positive ints, got {size!r}")
    return int(hw[0]), int(hw[1])


def _in_range(name: str, value, lo: float, hi: float) -> float:
    """``value`` as a float in ``[lo, hi]``, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not lo <= float(value) <= hi:
        raise ValueError(f"{name} must be a number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _resize_to(x: Tensor, h: int, w: int) -> Tensor:
    if tuple(x.shape[-2:]) == (h, w):
        return x
    squeeze = x.dim() == 3
    y = F.interpolate(x.unsqueeze(0) if squeeze else x, size=(h, w), mode="bilinear",
                      align_corners=False, antialias=True)
    return y.squeeze(0) if squeeze else y


class Resize:
    """``size`` int: the shorter side becomes ``size`` (aspect kept); ``[h, w]``: exactly that."""

    random = False

    def __init__(self, size):
        hw = _hw(size)
        self.size = hw[0] if isinstance(size, int | float) else hw

    def __call__(self, x: Tensor, gen=None) -> Tensor:
        h, w = x.shape[-2:]
        if isinstance(self.size, int):
            s = self.size
            nh, nw = (s, max(1, round(w * s / h))) if h <= w else (max(1, round(h * s / w)), s)
        else:
            nh, nw = self.size
        return _resize_to(x, nh, nw)


class CenterCrop:
    """The central ``size`` crop (zero padding where the image is smaller)."""

    random = False

    def __init__(self, size):
        self.h, self.w = _hw(size)

    def __call__(self, x: Tensor, gen=None) -> Tensor:
        h, w = x.shape[-2:]
        if h < self.h or w < self.w:
            ph, pw = max(0, self.h - h), max(0, self.w - w)
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
            h, w = x.shape[-2:]
        top, left = (h - self.h) // 2, (w - self.w) // 2
        return x[..., top:top + self.h, left:left + self.w]


class RandomResizedCrop:
    """A random crop of ``scale`` of the area and ``ratio`` aspect, resized to ``size``
    (Szegedy et al.'s Inception crop, as torchvision's ``RandomResizedCrop``)."""

    random = True

    def __init__(self, size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
        self.h, self.w = _hw(size)
        if len(scale) != 2 or len(ratio) != 2:
            raise ValueError(f"scale and ratio are (low, high) pairs, got {scale!r} and {ratio!r}")
        self.scale = tuple(_in_range("scale", v, 0, 1) for v in scale)
        self.ratio = tuple(_in_range("ratio", v, 1e-6, 1e6) for v in ratio)
        if self.scale[0] > self.scale[1] or self.ratio[0] > self.ratio[1] or self.scale[1] == 0:
            raise ValueError(f"scale and ratio must be increasing (low, high) pairs with a positive "
                             f"high scale, got {scale!r} and {ratio!r}")

    def __call__(self, x: Tensor, gen=None) -> Tensor:
        rng = _rng(gen)
        h, w = x.shape[-2:]
        area = h * w
        log_r = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            u = [rng.random(), rng.random()]
            target = area * (self.scale[0] + u[0] * (self.scale[1] - self.scale[0]))
            aspect = math.exp(log_r[0] + u[1] * (log_r[1] - log_r[0]))
            cw, ch = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
            if 0 < cw <= w and 0 < ch <= h:
                top, left = rng.randint(0, h - ch), rng.randint(0, w - cw)
                return _resize_to(x[..., top:top + ch, left:left + cw], self.h, self.w)
        s = min(h, w)  # fall back to the central square
        top, left = (h - s) // 2, (w - s) // 2
        return _resize_to(x[..., top:top + s, left:left + s], self.h, self.w)


class HFlip:
    """Mirror the last axis with probability ``p``."""

    random = True

    def __init__(self, p: float = 0.5):
        self.p = _in_range("p", p, 0, 1)

    def __call__(self, x: Tensor, gen=None) -> Tensor:
        return x.flip(-1) if _rng(gen).random() < self.p else x


def _gray(x: Tensor) -> Tensor:
    if x.shape[-3] == 1:
        return x
    return (0.299 * x[..., 0:1, :, :] + 0.587 * x[..., 1:2, :, :] + 0.114 * x[..., 2:3, :, :])


class ColorJitter:
    """Random brightness, contrast and saturation factors in ``[1 - v, 1 + v]``, applied in a
    random order; results clamped to [0, 1]. Each ``v`` is in [0, 1] (a larger one would draw
    negative factors). (Hue jitter is not implemented: use torchvision.)"""

    random = True

    def __init__(self, brightness: float = 0.0, contrast: float = 0.0, saturation: float = 0.0,
                 hue: float = 0.0):
        if hue:
            raise ConfigError("color_jitter: hue is not implemented in joryu's transforms; use "
                              "torchvision.transforms.v2:ColorJitter by import path")
        self.b, self.c, self.s = (_in_range(n, v, 0, 1) for n, v in (
            ("brightness", brightness), ("contrast", contrast), ("saturation", saturation)))

    def __call__(self, x: Tensor, gen=None) -> Tensor:
        rng = _rng(gen)
        order = rng.sample(range(3), 3)
        f = [1 + (2 * rng.random() - 1) * v for v in (self.b, self.c, self.s)]
        for k in order:
            if k == 0 and self.b:
                x = x * f[0]
            elif k == 1 and self.c:
                x = (x - _gray(x).mean()) * f[1] + _gray(x).mean()
            elif k == 2 and self.s and x.shape[-3] == 3:
                g = _gray(x)
                x = (x - g) * f[2] + g
        return x.clamp(0, 1)


class Normalize:
    """``(x - mean) / std`` per channel."""

    random = False

    def __init__(self, mean, std):
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(-1, 1, 1)
        if bool((self.std <= 0).any()) or not bool(torch.isfinite(self.std).all()):
            raise ConfigError(f"normalize: std must be positive and finite, got {std!r}")
        if not bool(torch.isfinite(self.mean).all()):
            raise ConfigError(f"normalize: mean must be finite, got {mean!r}")

    def __call__(self, x: Tensor, gen=None) -> Tensor:
        k = self.mean.numel()
        if k == 1:
            return (x - self.mean.view(())) / self.std.view(())
        if x.dim() < 3 or x.shape[-3] != k:
            raise ConfigError(f"normalize: {k} means for an input of shape {tuple(x.shape)}; give "
                              "one mean/std per channel (C x H x W), or a single value")
        return (x - self.mean) / self.std


class ToTensor:
    """PIL image / array / integer tensor to a float tensor in [0, 1]."""

    random = False

    def __call__(self, x, gen=None) -> Tensor:
        return to_tensor(x)


_NAMED: dict[str, type] = {
    "resize": Resize, "center_crop": CenterCrop, "random_resized_crop": RandomResizedCrop,
    "hflip": HFlip, "color_jitter": ColorJitter, "normalize": Normalize, "to_tensor": ToTensor,
}


def available_transforms() -> list[str]:
    return sorted(_NAMED)


_RANDOM_NAMES = ("Random", "ColorJitter", "AutoAugment", "RandAugment", "TrivialAugment", "AugMix",
                 "GaussianBlur", "GaussianNoise", "ElasticTransform", "CutMix", "MixUp")


class _Foreign:
    """A callable by import path: run under the global torch RNG, forked and seeded from ``gen``.

    It counts as random (dropped from the default evaluation transform, and teacher outputs
    are not cached) when its class name says so (``Random*``, ``ColorJitter``, ``*Augment``...)."""

    def __init__(self, fn: Callable, name: str):
        self.fn, self.name = fn, name
        cls = type(fn).__name__ if not isinstance(fn, type) else fn.__name__
        self.random = any(cls.startswith(r) for r in _RANDOM_NAMES)

    def __call__(self, x, gen=None):
        try:
            if gen is None:
                return self.fn(x)
            seed = _rng(gen).getrandbits(62)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return self.fn(x)
        except Exception as e:  # noqa: BLE001 - the user's transform failed (StreamData adds the sample)
            reraise_as_user(e, self.fn)


class Pipeline:
    """Transforms applied in order; ``pipeline(x, rng)``. Ours convert their input to a tensor."""

    def __init__(self, steps: Sequence, spec=None):
        self.steps = list(steps)
        self.spec = spec
        self.random = any(getattr(s, "random", True) for s in self.steps)

    def __call__(self, x, gen=None):
        for s in self.steps:
            if not isinstance(s, _Foreign):
                x = to_tensor(x)
            x = s(x, gen)
        return x

    def deterministic(self) -> Pipeline | None:
        """The steps that are not random (the default evaluation transform)."""
        steps = [s for s in self.steps if not getattr(s, "random", True)]
        return Pipeline(steps, f"deterministic part of {self.spec!r}") if steps else None

    def __repr__(self) -> str:
        return f"Pipeline({self.spec!r})"


def _import(path: str):
    mod, _, attr = path.partition(":")
    try:
        obj = importlib.import_module(mod)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"transform {path!r} cannot be imported ({e}); check the module path "
                          "and that its package is installed") from None
    return obj


def _call(fn, args, what: str, spread: bool = True):
    try:
        if isinstance(args, dict):
            return fn(**args)
        if isinstance(args, list | tuple) and spread:
            return fn(*args)
        return fn(args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"transform {what!r} rejected its arguments {args!r}: {e}") from None


def _step(item):
    if isinstance(item, str):
        name, args, has_args = item, None, False
    elif isinstance(item, dict) and len(item) == 1:
        (name, args), = item.items()
        has_args = True
    elif callable(item):
        return _Foreign(item, repr(item))
    else:
        raise ConfigError(f"a transform must be a name, a one-key mapping {{name: args}} or an "
                          f"import path, got {item!r}")
    if ":" in name:
        obj = _import(name)
        if isinstance(obj, type):
            obj = _call(obj, args if has_args and args is not None else {}, name)
        elif has_args:
            obj = _call(obj, args, name)
        if not callable(obj):
            raise ConfigError(f"transform {name!r} is not callable; name a transform class or function")
        return _Foreign(obj, name)
    if name not in _NAMED:
        import difflib

        close = difflib.get_close_matches(name, list(_NAMED), n=2)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"unknown transform {name!r}{hint}; known: {', '.join(available_transforms())}, "
                          "or an import path like torchvision.transforms.v2:RandomHorizontalFlip")
    cls = _NAMED[name]
    return _call(cls, args, name, spread=False) if has_args and args is not None else _call(cls, {}, name)


def build_transform(spec) -> Pipeline | None:
    """A Pipeline from a config value (a list of items, one item, an import path or a callable)."""
    if spec is None:
        return None
    if isinstance(spec, Pipeline):
        return spec
    if isinstance(spec, str) and ":" in spec:
        obj = _import(spec)
        if isinstance(obj, type):
            obj = obj()
        return Pipeline([obj if isinstance(obj, Pipeline) else _Foreign(obj, spec)], spec)
    items = spec if isinstance(spec, list | tuple) else [spec]
    return Pipeline([_step(i) for i in items], spec)
