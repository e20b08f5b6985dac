"""Keyword options checked against a function's signature before the function is called (a
dataset's kwargs, a zoo model's kwargs): a wrong or misspelt option is one line."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError, create_model

from joryu.errors import ConfigError


def signature_model(fn, skip: tuple[str, ...] = ()) -> type[BaseModel] | None:
    """A strict pydantic model of ``fn``'s keyword parameters (None if it takes ``**kwargs``)."""
    try:
        sig = inspect.signature(fn, eval_str=True)
    except Exception:  # an annotation that does not evaluate: names only
        try:
            sig = inspect.signature(fn)
        except (TypeError, ValueError):
            return None
    fields = {}
    for name, p in sig.parameters.items():
        if p.kind is p.VAR_KEYWORD:
            return None
        if p.kind is p.VAR_POSITIONAL or name in skip:
            continue
        ann = Any if p.annotation is p.empty or isinstance(p.annotation, str) else p.annotation
        fields[name] = (ann, ... if p.default is p.empty else p.default)
    try:
        return create_model(f"{getattr(fn, '__name__', 'fn')}_options", __config__=ConfigDict(
            extra="forbid", arbitrary_types_allowed=True, protected_namespaces=()), **fields)
    except Exception:  # an annotation pydantic cannot express: check names only
        return create_model(f"{getattr(fn, '__name__', 'fn')}_options", __config__=ConfigDict(
            extra="forbid", protected_namespaces=()), **{k: (Any, d) for k, (_, d) in fields.items()})


def check_function_options(fn, options: dict, where: str, what: str, skip: tuple[str, ...] = (),
                           partial: bool = True) -> None:
    """Raise a one-line ConfigError when ``options`` do not fit ``fn``'s signature.

    ``partial``: missing required parameters are not errors (the caller supplies them)."""
    model = signature_model(fn, skip)
    if model is None:
        return
    try:
        model.model_validate(options)
    except ValidationError as e:
        errs = [err for err in e.errors() if not (partial and err["type"] == "missing")]
        if not errs:
            return
        parts = []
        for err in errs:
            loc = ".".join(str(x) for x in err["loc"])
            if err["type"] == "extra_forbidden":
                close = difflib.get_close_matches(str(err["loc"][0]), list(model.model_fields), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                parts.append(f"{where}.{loc}: unknown option of {what}{hint} "
                             f"(options: {', '.join(model.model_fields) or 'none'})")
            else:
                parts.append(f"{where}.{loc}: {err['msg']} (got {err.get('input')!r})")
        raise ConfigError("config error: " + "; ".join(parts)) from None


def format_validation_error(e: ValidationError, prefix: str = "", model: type[BaseModel] | None = None) -> str:
    """One line per problem: the dotted key, what is wrong and what is allowed (the allowed keys
    of an unknown one are read off ``model``, the model that was validated)."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"])
        loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
            inner = _model_at(model, err["loc"][:-1])
            if inner is not None:
                msg += f" (allowed: {', '.join(sorted(inner.model_fields))})"
        elif "input" in err and err["type"] not in ("missing",):
            msg += f" (got {err['input']!r})"
        parts.append(f"{loc}: {msg}")
    return "; ".join(parts)


def _model_at(model: type[BaseModel] | None, loc) -> type[BaseModel] | None:
    """The pydantic model found at the key path ``loc`` inside ``model``."""
    for key in loc:
        if model is None or not isinstance(key, str) or key not in getattr(model, "model_fields", {}):
            return None
        ann = model.model_fields[key].annotation
        args = getattr(ann, "__args__", ())
        candidates = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = candidates[0] if candidates else None
    return model


def validate_params(model: type[BaseModel], params: dict, where: str) -> BaseModel:
    """``params`` validated by ``model``; a wrong key or value is one ConfigError naming ``where``."""
    try:
        return model.model_validate(params)
    except ValidationError as e:
        raise ConfigError("config error: " + format_validation_error(e, prefix=f"{where}.", model=model)) from None
