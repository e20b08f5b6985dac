"""Built-in token and pixel datasets (offline, generated or read from this machine).

- ``synthetic_text``: sequence classification on padded token ids (``input_ids``,
  ``attention_mask``, ``target`` [N]).
- ``synthetic_lm``: padded token sequences from a fixed random Markov chain, for causal language
  models (``target`` [N, L] = the next token, -100 at padding and the last position).
- ``synthetic_shapes``: images with rectangles, per-pixel class masks (``target`` [N, H, W]).
- ``stdlib_bytes``: byte-level language modelling of the Python standard library's own source
  files, split by file (``joryu.data.text.stdlib_files``).

Token id 0 is padding in every text set here.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

import torch

from joryu.data.core import TensorData
from joryu.data.registry import DataBundle, register_dataset
from joryu.errors import ConfigError
from joryu.losses.positions import next_token_targets

PAD = 0


def _lengths(n: int, min_len: int, max_len: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randint(min_len, max_len + 1, (n,), generator=gen)


def _pad_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    return (torch.arange(max_len)[None, :] < lengths[:, None]).long()


def _split(tensors: dict, n_test: int, num_classes: int, name: str) -> tuple[TensorData, TensorData]:
    n = len(tensors["target"])
    tr = {k: v[: n - n_test] for k, v in tensors.items()}
    te = {k: v[n - n_test:] for k, v in tensors.items()}
    return TensorData(tr, num_classes, name + "/train"), TensorData(te, num_classes, name + "/test")


@register_dataset("synthetic_text", doc="padded token sequences, label = which of two marker tokens occurs more")
def synthetic_text(num_samples: int = 1200, test_samples: int = 400, vocab_size: int = 32, min_len: int = 6,
                   max_len: int = 24, seed: int = 0) -> DataBundle:
    """Label 1 when token 3 occurs more often than token 4 (ties broken by the first token's parity);
    every sequence is right-padded with 0 to ``max_len`` and has an ``attention_mask``."""
    gen = torch.Generator().manual_seed(seed)
    n = num_samples + test_samples
    lengths = _lengths(n, min_len, max_len, gen)
    mask = _pad_mask(lengths, max_len)
    ids = torch.randint(3, vocab_size, (n, max_len), generator=gen)
    ids = torch.where(mask.bool(), ids, torch.full_like(ids, PAD))
    a, b = (ids == 3).sum(1), (ids == 4).sum(1)
    y = torch.where(a == b, ids[:, 0] % 2, (a > b).long())
    train, test = _split({"input_ids": ids, "attention_mask": mask, "target": y}, test_samples, 2,
                         "synthetic_text")
    return DataBundle("synthetic_text", train, test, 2, (max_len,))


def markov_sequences(n: int, vocab_size: int, min_len: int, max_len: int, seed: int = 0,
                     branching: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)``: sequences that start with token 1 and follow a fixed random
    transition table in which each token has ``branching`` likely successors (tokens 3..V-1)."""
    gen = torch.Generator().manual_seed(seed)
    table = torch.full((vocab_size, vocab_size), 0.02)
    for v in range(vocab_size):
        succ = torch.randint(3, vocab_size, (branching,), generator=gen)
        table[v, succ] += torch.rand(branching, generator=gen) * 3 + 1
    table[:, :3] = 0  # never emit pad / bos / eos inside a sequence
    table = table / table.sum(1, keepdim=True)
    lengths = _lengths(n, min_len, max_len, gen)
    ids = torch.zeros(n, max_len, dtype=torch.long)
    ids[:, 0] = 1
    for t in range(1, max_len):
        ids[:, t] = torch.multinomial(table[ids[:, t - 1]], 1, generator=gen).squeeze(1)
    mask = _pad_mask(lengths, max_len)
    return ids.masked_fill(~mask.bool(), PAD), mask


@register_dataset("synthetic_lm", doc="padded token sequences from a fixed random Markov chain (causal LM)")
def synthetic_lm(num_samples: int = 1200, test_samples: int = 400, vocab_size: int = 48, min_len: int = 8,
                 max_len: int = 32, seed: int = 0, prompt_length: int = 0) -> DataBundle:
    """``prompt_length`` > 0 adds that column (the first tokens of every row are a prompt, for
    on-policy distillation, ``gkd``); it must be shorter than ``min_len``."""
    if prompt_length and not 0 < prompt_length < min_len:
        raise ConfigError(f"synthetic_lm: prompt_length must be between 1 and min_len - 1 = {min_len - 1}, "
                          f"got {prompt_length}")
    ids, mask = markov_sequences(num_samples + test_samples, vocab_size, min_len, max_len, seed)
    target = next_token_targets(ids, mask)
    tensors = {"input_ids": ids, "attention_mask": mask, "target": target}
    if prompt_length:
        tensors["prompt_length"] = torch.full((len(ids),), int(prompt_length))
    train, test = _split(tensors, test_samples, vocab_size, "synthetic_lm")
    return DataBundle("synthetic_lm", train, test, vocab_size, (max_len,))


@register_dataset("synthetic_shapes", doc="noisy images with rectangles; per-pixel masks (segmentation)")
def synthetic_shapes(num_samples: int = 800, test_samples: int = 200, size: int = 16, num_classes: int = 3,
                     noise: float = 0.3, seed: int = 0) -> DataBundle:
    """Class 0 background; each image holds one rectangle of every other class, drawn at intensity
    ``c / (num_classes - 1)`` plus Gaussian noise, later rectangles on top of earlier ones."""
    gen = torch.Generator().manual_seed(seed)
    n = num_samples + test_samples
    masks = torch.zeros(n, size, size, dtype=torch.long)
    for c in range(1, num_classes):
        lo = torch.randint(0, size - 4, (n, 2), generator=gen)
        ext = torch.randint(3, size // 2 + 1, (n, 2), generator=gen)
        hi = (lo + ext).clamp(max=size)
        r = torch.arange(size)
        inside = ((r[None, :, None] >= lo[:, 0, None, None]) & (r[None, :, None] < hi[:, 0, None, None])
                  & (r[None, None, :] >= lo[:, 1, None, None]) & (r[None, None, :] < hi[:, 1, None, None]))
        masks[inside] = c
    x = masks.float().div(num_classes - 1).unsqueeze(1)
    x = x + noise * torch.randn(x.shape, generator=gen)
    train, test = _split({"input": x, "target": masks}, test_samples, num_classes, "synthetic_shapes")
    return DataBundle("synthetic_shapes", train, test, num_classes, (1, size, size))


# --------------------------------------------------------------------------- the stdlib's own text

def stdlib_files(root: str | Path | None = None, max_bytes: int = 60_000) -> list[Path]:
    """The standard library's top-level ``*.py`` files (no packages, no tests), sorted by name:
    the same list on every machine with the same Python version. Files over ``max_bytes`` are
    left out so no single file dominates a split."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file() and not p.name.startswith("test"))
    return [p for p in files if 0 < p.stat().st_size <= max_bytes]


def split_files(files: list[Path], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> dict[str, list[Path]]:
    """Files shuffled with ``seed`` and cut into train / validation / test by count."""
    gen = torch.Generator().manual_seed(seed)
    order = [files[i] for i in torch.randperm(len(files), generator=gen).tolist()]
    n_tr = int(round(fractions[0] * len(files)))
    n_va = int(round(fractions[1] * len(files)))
    return {"train": sorted(order[:n_tr]), "val": sorted(order[n_tr:n_tr + n_va]),
            "test": sorted(order[n_tr + n_va:])}


def byte_windows(files: list[Path], length: int, stride: int | None = None,
                 max_windows: int | None = None, seed: int = 0) -> TensorData:
    """Byte-level LM windows of ``length + 1`` bytes cut from each file (``stride`` apart, default
    ``length``): ``input_ids`` are bytes + 1 (0 stays padding, vocabulary 257), ``target`` the
    next byte of every position. With ``max_windows``, a fixed random subset."""
    stride = stride or length
    rows = []
    for f in files:
        data = torch.frombuffer(bytearray(f.read_bytes()), dtype=torch.uint8).long() + 1
        for s in range(0, max(0, len(data) - length - 1) + 1, stride):
            w = data[s:s + length + 1]
            if len(w) == length + 1:
                rows.append(w)
    seq = torch.stack(rows)
    if max_windows is not None and len(seq) > max_windows:
        gen = torch.Generator().manual_seed(seed)
        seq = seq[torch.randperm(len(seq), generator=gen)[:max_windows].sort().values]
    ids, nxt = seq[:, :-1].contiguous(), seq[:, 1:].contiguous()
    return TensorData({"input_ids": ids, "target": nxt}, 257, "stdlib_bytes")


@register_dataset("stdlib_bytes", doc="byte-level LM on the Python standard library's source, split by file")
def stdlib_bytes(length: int = 64, max_train: int = 20000, max_test: int = 4000, seed: int = 0) -> DataBundle:
    parts = split_files(stdlib_files(), seed=seed)
    train = byte_windows(parts["train"], length, max_windows=max_train, seed=seed)
    test = byte_windows(parts["test"], length, max_windows=max_test, seed=seed)
    return DataBundle("stdlib_bytes", train, test, 257, (length,))
