"""Printing a pydantic model's fields and a method's schema (``joryu methods NAME``,
``joryu config schema``)."""

from __future__ import annotations

from joryu.config import describe_fields
from joryu.methods import get_method, method_info


def print_fields(rows) -> None:
    if not rows:
        print("  (no parameters)")
        return
    w = max(len(r[0]) for r in rows)
    t = max(len(r[1]) for r in rows)
    for name, tname, default, desc in rows:
        print(f"  {name.ljust(w)}  {tname.ljust(t)}  default {default}" + (f"  {desc}" if desc else ""))


def method_schema(name: str) -> int:
    method = get_method(name)  # a one-line error (with suggestions) for an unknown name
    info = method_info(name)
    print(f"{name}: {info.paper} [{info.status}]")
    print(f"needs a teacher: {'yes' if method.needs_teacher else 'no'} (with default parameters)")
    ev = info.cls.defaults_evidence
    if ev is not None:
        print(f"defaults check: {ev.mark or 'the defaults do not hurt on average'} ({ev.source}). {ev.regime}")
    print("parameters (method.params.NAME):")
    print_fields(describe_fields(type(method.params)))
    return 0


def model_and_data_arguments(p, data_help: str) -> None:
    """The arguments ``joryu eval`` and ``joryu export`` share: a model with its weights instead of
    a run folder, and the dataset to read."""
    p.add_argument("--model", help="zoo name or package.module:factory (instead of a run folder)")
    p.add_argument("--model-kwarg", action="append", metavar="K=V", help="keyword argument of the model factory")
    p.add_argument("--weights", help="weights of --model (safetensors, a torch state dict, see joryu.weights)")
    p.add_argument("--input-key", default="input", help="batch key --model reads")
    p.add_argument("--data", help=data_help)
    p.add_argument("--data-path", help="dataset path (files on disk)")
    p.add_argument("--data-kwarg", action="append", metavar="K=V", help="keyword argument of the dataset")
