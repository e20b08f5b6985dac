"""The model zoo. ``create(name, **kw)`` builds one; any nn.Module works with joryu.

Zoo models accept ``num_classes`` and ``input_shape`` (C, H, W) / (L,) keyword arguments,
and list their main feature layers (module paths usable as taps) in ``model.feature_layers``.
"""

from joryu.models import cifar, lenet, seg, small  # noqa: F401  (registers the models)
from joryu.models.registry import available, create, describe, register

__all__ = ["available", "create", "describe", "register", "count_parameters"]


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
