"""One place where model outputs are unwrapped into ``Outputs(logits, features)``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor


@dataclass
class Outputs:
    """What every forward through joryu yields: class logits and named features."""

    logits: Tensor
    features: dict[str, Tensor] = field(default_factory=dict)

    def detach(self) -> Outputs:
        return Outputs(self.logits.detach(), {k: v.detach() for k, v in self.features.items()})


def unwrap(out) -> Tensor:
    """Return the logits tensor of a model output.

    Accepts a tensor, an object with ``.logits`` (Hugging Face style), a mapping with a
    ``"logits"`` key, an ``Outputs``, or a tuple/list whose first element is one of these.
    """
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Outputs):
        return out.logits
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(out, Mapping):
        if "logits" in out:
            return unwrap(out["logits"])
        raise TypeError(f"model returned a mapping without a 'logits' key (keys: {sorted(out)})")
    if isinstance(out, (tuple, list)) and out:
        return unwrap(out[0])
    raise TypeError(
        f"cannot find logits in a model output of type {type(out).__name__}; return a tensor, "
        "a tuple whose first item is the logits, a dict with 'logits', or an object with .logits"
    )


def unwrap_feature(value) -> Tensor:
    """A hooked module's output as one tensor (first element of tuples, ``.last_hidden_state``...)."""
    if isinstance(value, Tensor):
        return value
    for attr in ("last_hidden_state", "logits"):
        v = getattr(value, attr, None)
        if isinstance(v, Tensor):
            return v
    if isinstance(value, (tuple, list)) and value and isinstance(value[0], Tensor):
        return value[0]
    raise TypeError(f"cannot use a module output of type {type(value).__name__} as a feature")


def forward(model: torch.nn.Module, batch: Mapping, input_key: str = "input") -> Tensor:
    """Run ``model`` on ``batch[input_key]`` and return its logits."""
    if input_key not in batch:
        raise KeyError(f"batch has no {input_key!r} key (keys: {sorted(batch)}); set the model's input key")
    return unwrap(model(batch[input_key]))
