"""Model registry: ``create(name, **kw)`` builds a zoo model or any importable factory."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from joryu.errors import ConfigError, one_line
from joryu.registry import Registry


@dataclass
class ModelInfo:
    factory: Callable[..., nn.Module]
    doc: str


MODELS: Registry[ModelInfo] = Registry("model")


def register(name: str, doc: str = ""):
    """Decorator: register ``factory(**kw) -> nn.Module`` under ``name``."""

    def wrap(factory):
        if name in MODELS:
            raise ValueError(f"model {name!r} registered twice")
        lines = (factory.__doc__ or "").strip().splitlines()
        MODELS.register(name, ModelInfo(factory, doc or (lines[0] if lines else "")))
        return factory

    return wrap


def _first_line(e: BaseException) -> str:
    return one_line(e)


def kwargs_text(kwargs: dict) -> str:
    return f"options {kwargs}" if kwargs else "no options"


def available() -> list[str]:
    return MODELS.names()


def describe() -> dict[str, str]:
    return {k: info.doc for k, info in MODELS.items()}


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


def zoo_factory(name: str) -> Callable[..., nn.Module]:
    """The factory registered as ``name``; a one-line ConfigError with suggestions if unknown."""
    return MODELS.get(name, "Or give an import path 'package.module:factory'.").factory


def options(name: str) -> list[tuple[str, str, str]]:
    """(option, annotation, default) of a zoo model's factory, from its signature."""
    factory = zoo_factory(name)
    try:
        sig = inspect.signature(factory, eval_str=True)
    except Exception:
        sig = inspect.signature(factory)
    rows = []
    for p in sig.parameters.values():
        if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        ann = "" if p.annotation is p.empty else (p.annotation if isinstance(p.annotation, str)
                                                   else getattr(p.annotation, "__name__", str(p.annotation)))
        rows.append((p.name, str(ann), "(required)" if p.default is p.empty else repr(p.default)))
    return rows


def accepts(factory: Callable, name: str) -> bool:
    """Whether ``factory`` takes a keyword argument ``name`` (or any keyword: ``**kwargs``)."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def create(name: str, **kwargs) -> nn.Module:
    """Build a model by registry name (``resnet20``) or import path (``torchvision.models:resnet18``).

    Keyword arguments go to the factory (``num_classes``, ``in_channels``, ...).
    """
    factory = _import_factory(name) if ":" in name else zoo_factory(name)
    try:
        model = factory(**kwargs)
    except ConfigError:
        raise
    except TypeError as e:
        raise ConfigError(f"model {name!r} rejected its arguments {sorted(kwargs)}: "
                          f"{_first_line(e)}") from None
    except Exception as e:  # a factory that fails is a config problem: say which, in one line
        raise ConfigError(f"model {name!r} failed to build with {kwargs_text(kwargs)}: "
                          f"{type(e).__name__}: {_first_line(e)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned {type(model).__name__}, not a torch.nn.Module")
    return model
