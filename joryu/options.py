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
