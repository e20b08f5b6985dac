"""Data with imperfect supervision: few labels, privileged features, noisy labels.

Conventions every method can rely on:

- ``labeled`` (bool per sample): False marks a sample whose label is unknown. Its ``target``
  is ``IGNORE_INDEX`` (-100), which ``torch.nn.functional.cross_entropy`` skips by default, so
  no loss can learn from a hidden label by accident; the engine scores only labelled rows.
- ``privileged`` (float per sample): features that exist only at training time (Vapnik's
  privileged information). A teacher reads them (``FrozenTeacher(model, input_key="privileged")``);
  the student and every evaluation of it read ``input`` only.
- ``clean`` (bool per sample): labels verified by a person; see ``joryu.data.noise``.

Built-in datasets registered here: ``digits_privileged`` and ``mnist1d_noisy``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from joryu._optional import require
from joryu.data.core import TensorData
from joryu.data.noise import add_label_noise, clean_mask, noise_matrix
from joryu.data.registry import (
    DataBundle,
    _standardised,
    _stratified_split,
    mnist1d,
    register_dataset,
)

IGNORE_INDEX = -100


def labeled_per_class(targets: Tensor, per_class: int, seed: int = 0) -> Tensor:
    """Boolean mask keeping ``per_class`` randomly chosen labels of every class (a "label draw")."""
    return clean_mask(targets, per_class=per_class, seed=seed)


def hide_labels(data: TensorData, labeled) -> TensorData:
    """``data`` as a semi-supervised set: ``labeled`` rows keep their target, the others get
    ``IGNORE_INDEX``; the mask is stored as the ``labeled`` tensor. ``labeled`` is a boolean mask
    or a list of indices of the labelled samples."""
    m = torch.as_tensor(labeled)
    if m.dtype != torch.bool:
        idx = m.long().flatten()
        m = torch.zeros(len(data), dtype=torch.bool)
        m[idx] = True
    if len(m) != len(data):
        raise ValueError(f"labeled mask has {len(m)} entries, the data has {len(data)} samples")
    m = m.to(data.targets.device)
    target = torch.where(m, data.targets, torch.full_like(data.targets, IGNORE_INDEX))
    return data.with_tensors(target=target, labeled=m)


def degraded_view(images: Tensor, pool: int = 2, noise: float = 0.3, seed: int = 0) -> Tensor:
    """The weak regular view of docs/methods/generalized_distillation.md: ``pool x pool`` average pooling of the
    image, plus fixed Gaussian noise of standard deviation ``noise`` (seeded, one draw per sample)."""
    x = F.avg_pool2d(images.float(), pool) if pool > 1 else images.float()
    gen = torch.Generator().manual_seed(int(seed))
    return x + noise * torch.randn(x.shape, generator=gen)


@register_dataset("digits_privileged")
def digits_privileged(labels_per_class: int = 3, noise: float = 0.3, pool: int = 2, label_seed: int = 0,
                      view_seed: int = 0, test_size: int = 500, seed: int = 0) -> DataBundle:
    """digits, semi-supervised with privileged information: input = noisy 4x4 view, privileged = clean 8x8.

    The 8x8 images are standardised with the training split's mean and std (as ``digits``); the
    regular view is their ``pool x pool`` average plus N(0, noise^2) noise, drawn once per sample.
    Only ``labels_per_class`` labels per class are kept in the training split (``label_seed``
    picks them); the test split is fully labelled and also carries ``privileged`` so a teacher
    can be scored on it. Students must read ``input`` only.
    """
    load_digits = require("sklearn.datasets", "the digits_privileged dataset").load_digits

    d = load_digits()
    x = torch.as_tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    tr, te = _stratified_split(d.target, test_size, seed)
    y = torch.as_tensor(d.target, dtype=torch.long)
    p_tr, p_te = _standardised(x[tr], x[te])
    views = degraded_view(torch.cat([p_tr, p_te]), pool, noise, view_seed)
    x_tr, x_te = views[: len(tr)], views[len(tr):]
    train = TensorData({"input": x_tr, "privileged": p_tr, "target": y[tr]}, 10, "digits_privileged/train")
    train = hide_labels(train, labeled_per_class(y[tr], labels_per_class, label_seed))
    test = TensorData({"input": x_te, "privileged": p_te, "target": y[te]}, 10, "digits_privileged/test")
    return DataBundle("digits_privileged", train, test, 10, tuple(x_tr.shape[1:]))


@register_dataset("mnist1d_noisy")
def mnist1d_noisy(num_samples: int = 5000, seed: int = 42, noise: str = "pairflip", rate: float = 0.4,
                  clean_per_class: int = 40, noise_seed: int = 0, matrix=None) -> DataBundle:
    """MNIST-1D with label noise on the training split and a verified-clean subset (``clean`` mask).

    ``noise`` is "pairflip" (y -> y+1 mod 10 with probability ``rate``) or "symmetric";
    ``matrix`` (a 10 x 10 row-stochastic list) overrides both. ``clean_per_class`` samples per
    class keep their true label and are marked clean. The test split is untouched.
    """
    base = mnist1d(num_samples=num_samples, seed=seed)
    t = matrix if matrix is not None else noise_matrix(noise, base.num_classes, rate)
    cm = clean_mask(base.train.targets, per_class=clean_per_class, seed=noise_seed)
    train = add_label_noise(base.train, t, seed=noise_seed, clean=cm)
    train.name = "mnist1d_noisy/train"
    return DataBundle("mnist1d_noisy", train, base.test, base.num_classes, base.input_shape, base.augment)
