"""Model registry: ``create(name, **kw)`` builds a zoo model or any importable factory."""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable

from torch import nn

from joryu.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_DOCS: dict[str, str] = {}


def register(name: str, doc: str = ""):
    """Decorator: register ``factory(**kw) -> nn.Module`` under ``name``."""

    def wrap(factory):
        if name in _MODELS:
            raise ValueError(f"model {name!r} registered twice")
        _MODELS[name] = factory
        lines = (factory.__doc__ or "").strip().splitlines()
        _DOCS[name] = doc or (lines[0] if lines else "")
        return factory

    return wrap


def available() -> list[str]:
    return sorted(_MODELS)


def describe() -> dict[str, str]:
    return {k: _DOCS.get(k, "") for k in available()}


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ConfigError(
            f"model {spec!r}: cannot import module {module_name!r} ({e}); install it or fix the path"
        ) from e
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"model {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model {spec!r}: {attr!r} is not callable")
    return obj


def create(name: str, **kwargs) -> nn.Module:
    """Build a model by registry name (``resnet20``) or import path (``torchvision.models:resnet18``).

    Keyword arguments go to the factory (``num_classes``, ``in_channels``, ...).
    """
    if ":" in name:
        factory = _import_factory(name)
    else:
        if name not in _MODELS:
            close = difflib.get_close_matches(name, available(), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"unknown model {name!r}.{hint} Known models: {', '.join(available())}; "
                "or give an import path 'package.module:factory'."
            )
        factory = _MODELS[name]
    try:
        model = factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"model {name!r} rejected its arguments {sorted(kwargs)}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
