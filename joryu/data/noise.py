"""Noisy labels: reproducible label-noise injection and the "verified clean" mask.

A noise matrix ``T`` is row-stochastic: ``T[i, j] = P(observed label = j | true label = i)``.

- ``noise_matrix("symmetric", C, rate)``: a sample keeps its label with probability ``1 - rate``
  and otherwise moves to one of the other ``C - 1`` classes uniformly (``T[i, j] = rate / (C - 1)``).
- ``noise_matrix("pairflip", C, rate)``: systematic noise, class ``i`` becomes ``(i + 1) mod C``
  with probability ``rate`` (the "multi-mode", confusable-class noise of real data).
- any class-dependent matrix: pass a ``C x C`` tensor (or nested list) whose rows sum to 1.

``inject_noise`` draws each observed label from the row of its true class with a seeded
generator, so the same (targets, matrix, seed) always gives the same noisy labels.

Users who bring their own noisy data mark which samples they trust with ``mark_clean``:
a boolean per-sample tensor ``clean`` that methods such as ``noisy_label_distillation`` read.
"""

from __future__ import annotations

import torch
from torch import Tensor

from joryu.data.core import TensorData

NOISE_KINDS = ("symmetric", "pairflip")


def noise_matrix(kind: str, num_classes: int, rate: float) -> Tensor:
    """The ``C x C`` row-stochastic transition matrix of a named noise model (float64)."""
    c = int(num_classes)
    if c < 2:
        raise ValueError(f"label noise needs at least 2 classes, got {c}")
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")
    if kind == "symmetric":
        t = torch.full((c, c), rate / (c - 1), dtype=torch.float64)
        t.fill_diagonal_(1.0 - rate)
    elif kind in ("pairflip", "pair"):
        t = torch.eye(c, dtype=torch.float64) * (1.0 - rate)
        idx = torch.arange(c)
        t[idx, (idx + 1) % c] += rate
    else:
        raise ValueError(f"unknown noise kind {kind!r}; use one of {NOISE_KINDS} or pass a matrix")
    return t


def check_noise_matrix(matrix, num_classes: int | None = None) -> Tensor:
    """Validate a class-dependent noise matrix: square, non-negative, rows summing to 1."""
    t = torch.as_tensor(matrix, dtype=torch.float64)
    if t.dim() != 2 or t.shape[0] != t.shape[1]:
        raise ValueError(f"a noise matrix must be square (C x C), got shape {tuple(t.shape)}")
    if num_classes is not None and t.shape[0] != num_classes:
        raise ValueError(f"the noise matrix is {t.shape[0]} x {t.shape[0]} but the data has {num_classes} classes")
    if bool((t < 0).any()):
        raise ValueError("a noise matrix must have no negative entries")
    if not torch.allclose(t.sum(1), torch.ones(t.shape[0], dtype=torch.float64), atol=1e-6):
        raise ValueError(f"each row of a noise matrix must sum to 1 (row sums: {t.sum(1).tolist()})")
    return t


def inject_noise(targets: Tensor, matrix, seed: int = 0, mask: Tensor | None = None) -> Tensor:
    """Observed labels drawn from ``matrix[true label]`` for every sample (where ``mask`` is True).

    Reproducible: the draw depends only on ``(targets, matrix, seed)``. Rows outside ``mask``
    keep their label. Returns a new long tensor on the device of ``targets``.
    """
    targets = torch.as_tensor(targets)
    t = check_noise_matrix(matrix)
    y = targets.detach().cpu().long()
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= t.shape[0]):
        raise ValueError(f"targets must lie in [0, {t.shape[0]}) to inject noise")
    gen = torch.Generator().manual_seed(int(seed))
    u = torch.rand(len(y), generator=gen, dtype=torch.float64)
    cdf = t.cumsum(1)
    cdf[:, -1] = 1.0 + 1e-12  # guard against rounding in the last column
    noisy = torch.searchsorted(cdf[y], u.unsqueeze(1)).squeeze(1).clamp_max(t.shape[0] - 1)
    if mask is not None:
        noisy = torch.where(torch.as_tensor(mask).cpu().bool(), noisy, y)
    return noisy.to(targets.device)


def clean_mask(targets: Tensor, per_class: int | None = None, fraction: float | None = None,
               seed: int = 0) -> Tensor:
    """A stratified random choice of samples to treat as verified clean (boolean mask).

    Give ``per_class`` (that many of each class, or all of a smaller class) or ``fraction``
    (that share of each class, rounded).
    """
    if (per_class is None) == (fraction is None):
        raise ValueError("give exactly one of per_class or fraction")
    y = torch.as_tensor(targets).cpu().long()
    gen = torch.Generator().manual_seed(int(seed))
    mask = torch.zeros(len(y), dtype=torch.bool)
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = int(per_class) if per_class is not None else int(round(float(fraction) * len(idx)))
        mask[idx[:k]] = True
    return mask


def mark_clean(data: TensorData, clean) -> TensorData:
    """``data`` with a per-sample boolean ``clean`` tensor: the samples whose labels are trusted.

    ``clean`` is a boolean mask of length ``len(data)`` or a list of sample indices.
    """
    c = torch.as_tensor(clean)
    if c.dtype != torch.bool:
        idx = c.long().flatten()
        c = torch.zeros(len(data), dtype=torch.bool)
        c[idx] = True
    if len(c) != len(data):
        raise ValueError(f"clean mask has {len(c)} entries, the data has {len(data)} samples")
    return data.with_tensors(clean=c.to(data.targets.device))


def add_label_noise(data: TensorData, noise="pairflip", rate: float = 0.2, seed: int = 0,
                    clean: Tensor | None = None) -> TensorData:
    """A copy of ``data`` whose labels are corrupted by ``noise`` everywhere except ``clean`` rows.

    ``noise`` is ``"symmetric"``, ``"pairflip"`` or a ``C x C`` matrix. ``clean`` (a mask,
    default: none) marks the verified samples, which keep their true labels and are stored as
    the ``clean`` tensor. Nothing else is stored: the true labels of noisy rows are gone.
    """
    t = noise_matrix(noise, data.num_classes, rate) if isinstance(noise, str) else \
        check_noise_matrix(noise, data.num_classes)
    c = torch.zeros(len(data), dtype=torch.bool) if clean is None else torch.as_tensor(clean).cpu().bool()
    noisy = inject_noise(data.targets, t, seed, mask=~c)
    return mark_clean(data.with_tensors(target=noisy), c)


def observed_noise_matrix(true: Tensor, noisy: Tensor, num_classes: int) -> Tensor:
    """Empirical ``P(noisy = j | true = i)`` (rows of absent classes are left at 0)."""
    true, noisy = torch.as_tensor(true).cpu().long(), torch.as_tensor(noisy).cpu().long()
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((true, noisy), torch.ones(len(true), dtype=torch.float64), accumulate=True)
    return counts / counts.sum(1, keepdim=True).clamp_min(1)
