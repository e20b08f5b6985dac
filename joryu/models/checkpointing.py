"""Gradient checkpointing: keep fewer activations in the forward pass and recompute them in the
backward pass (``train.gradient_checkpointing: true``).

- A Hugging Face model (or a ``peft`` wrapper of one) uses its own
  ``activation_checkpointing_enable`` (``gradient_checkpointing_enable`` before transformers 5),
  non-reentrant ``torch.utils.checkpoint``.
- A zoo network checkpoints each block its ``feature_layers`` name (ResNet stages, the text
  models' blocks, the MLP blocks...): only a block's input is kept, its inside is recomputed.

Either way the loss and the gradients are those of the plain forward (dropout replays its random
draws; BatchNorm's running statistics, which a recomputation would update a second time, are put
back after it), and only training-mode forwards with gradients enabled are checkpointed.
"""

from __future__ import annotations

import types

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from joryu.errors import ConfigError

_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _checkpointed_forward(self, *args, **kwargs):
    plain = type(self).forward
    if not (self.training and torch.is_grad_enabled()):
        return plain(self, *args, **kwargs)
    bns = [m for m in self.modules() if isinstance(m, _BNS) and m.track_running_stats]
    calls = [0]

    def run(*a, **k):
        calls[0] += 1
        if calls[0] == 1 or not bns:
            return plain(self, *a, **k)
        saved = [[b.running_mean.clone(), b.running_var.clone(), b.num_batches_tracked.clone()] for b in bns]
        try:
            return plain(self, *a, **k)
        finally:  # the recomputation must not count this batch's statistics twice
            with torch.no_grad():
                for b, (mean, var, n) in zip(bns, saved):
                    b.running_mean.copy_(mean)
                    b.running_var.copy_(var)
                    b.num_batches_tracked.copy_(n)

    return checkpoint(run, *args, use_reentrant=False, **kwargs)


def enable_gradient_checkpointing(model: nn.Module) -> int:
    """Turn checkpointing on for ``model`` (see the module docstring); returns the number of zoo
    blocks wrapped (0 for a Hugging Face model). A network with neither is one ConfigError."""
    if callable(getattr(model, "activation_checkpointing_enable", None)):  # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return 0
    if callable(getattr(model, "gradient_checkpointing_enable", None)):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return 0
    names = getattr(model, "feature_layers", None) or []
    blocks = [model.get_submodule(n) for n in names]
    blocks = [b for b in blocks if any(True for _ in b.parameters())]
    if not blocks:
        raise ConfigError(f"train.gradient_checkpointing: {type(model).__name__} is neither a Hugging Face "
                          "model nor a zoo network with blocks (feature_layers); turn it off for this network")
    for b in blocks:
        if "forward" not in b.__dict__:
            b.forward = types.MethodType(_checkpointed_forward, b)
    return len(blocks)
