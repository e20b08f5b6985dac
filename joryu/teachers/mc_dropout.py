"""Monte-Carlo dropout teacher: one dropout network sampled with fresh masks.

``MCDropoutTeacher(model)(batch)`` returns the K-sample predictive mean
p̄(y|x) = 1/K Σ_k softmax(f(x; θ, z_k)) (as log-probabilities, valid logits at T=1);
``.sample(batch)`` returns the logits of one fresh mask per sample. While sampling only the
dropout modules are in train mode: BatchNorm and everything else stay in eval mode.

``weight_scaled(model)`` is "standard dropout" (weight scaling): PyTorch's dropout is inverted
(scaled at training time), so the eval-mode network *is* the weight-scaled one; the copy has its
dropout modules removed so it is deterministic in train mode too.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

from joryu.outputs import Outputs, forward
from joryu.teachers.base import Teacher, freeze


def dropout_modules(model: nn.Module) -> list[nn.Module]:
    """Every dropout module of ``model`` (Dropout, Dropout1d/2d/3d, AlphaDropout...)."""
    return [m for m in model.modules() if isinstance(m, _DropoutNd)]


@contextmanager
def dropout_active(model: nn.Module):
    """Eval mode for the whole model except its dropout modules, which sample masks."""
    was = {m: m.training for m in model.modules()}
    model.eval()
    for m in dropout_modules(model):
        m.train()
    try:
        yield model
    finally:
        for m, t in was.items():
            m.train(t)


def strip_dropout(model: nn.Module) -> nn.Module:
    """Replace every dropout module of ``model`` by ``nn.Identity`` in place; returns the model."""
    for name, child in list(model.named_children()):
        if isinstance(child, _DropoutNd):
            setattr(model, name, nn.Identity())
        else:
            strip_dropout(child)
    return model


def weight_scaled(model: nn.Module) -> nn.Module:
    """A deterministic copy of a dropout network: standard dropout's weight-scaling rule."""
    return strip_dropout(copy.deepcopy(model))


class MCDropoutTeacher(Teacher):
    """A dropout network used as a stochastic teacher.

    samples: K, the number of masks averaged by ``__call__`` (``mode="mean"``).
    mode: ``"mean"`` (default) returns log p̄ from K masks; ``"sample"`` returns one mask's logits.
    chunk: the most rows (samples x masks) run in one forward pass.
    The masks come from torch's global generator, so ``torch.manual_seed`` fixes them.
    """

    stochastic = True

    def __init__(self, model: nn.Module, samples: int = 200, mode: str = "mean", input_key: str = "input",
                 chunk: int = 65536):
        if mode not in ("mean", "sample"):
            raise ValueError(f"mode must be 'mean' or 'sample', got {mode!r}")
        if samples < 1:
            raise ValueError("samples must be >= 1")
        if not dropout_modules(model):
            raise ValueError(f"{type(model).__name__} has no dropout module: MC dropout needs one")
        self.model = freeze(model)
        self.samples = int(samples)
        self.mode = mode
        self.input_key = input_key
        self.chunk = int(chunk)

    def models(self):
        return [self.model]

    def _logits(self, x: Tensor) -> Tensor:
        with dropout_active(self.model):
            return forward(self.model, {self.input_key: x}, self.input_key)

    def sample(self, batch: Mapping) -> Outputs:
        """Logits from one fresh dropout mask per sample."""
        with torch.no_grad():
            return Outputs(self._logits(batch[self.input_key]))

    def mean_probs(self, batch: Mapping, samples: int | None = None) -> Tensor:
        """p̄(y|x): the mean over ``samples`` masks of the softmax, shape (B, C)."""
        k = int(samples or self.samples)
        x = batch[self.input_key]
        b = x.shape[0]
        per = max(1, self.chunk // max(1, b))  # masks per forward pass
        total = None
        with torch.no_grad():
            done = 0
            while done < k:
                m = min(per, k - done)
                xr = x.repeat(m, *([1] * (x.dim() - 1)))  # row j*b + i is sample i under mask j
                p = F.softmax(self._logits(xr).float(), dim=-1).view(m, b, -1).sum(0)
                total = p if total is None else total + p
                done += m
        return total / k

    def _forward(self, batch):
        if self.mode == "sample":
            return Outputs(self._logits(batch[self.input_key]))
        return Outputs(self.mean_probs(batch).clamp_min(1e-12).log())
