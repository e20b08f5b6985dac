"""Per-sample fields for any dataset, from a config's ``data.fields``.

Methods that need more than ``(input, target)`` read extra per-sample keys (see
``joryu.data.imperfect``). ``apply_fields(train, spec, num_classes)`` adds them to a TensorData
or a streamed dataset alike, reusing the helpers in ``joryu.data.noise`` and
``joryu.data.imperfect``::

    fields:
      clean: {fraction: 0.1}          # or {per_class: 40} or {index_file: clean.txt}; seed: 0
      noise: {kind: pairflip, rate: 0.4, seed: 0}   # or {kind: symmetric, ...} or {matrix: [[...]]}
      labels_per_class: {per_class: 3, seed: 0}      # the others hidden: target -100, labeled False
      privileged: {transform: [{resize: [4, 4]}]}    # or {factory: pkg.mod:fn} aligned by index
      input_b: {factory: pkg.mod:edges}               # a paired modality, same forms

Order: clean, then noise (clean rows keep their labels), then hidden labels, then views.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from joryu.data.core import TensorData
from joryu.data.imperfect import hide_labels, labeled_per_class
from joryu.data.noise import (
    add_label_noise,
    check_noise_matrix,
    clean_mask,
    mark_clean,
    noise_matrix,
)
from joryu.data.sources import StreamData, as_source, load_factory
from joryu.data.transforms import build_transform
from joryu.errors import ConfigError

_KNOWN = ("clean", "noise", "labels_per_class", "privileged", "input_b")


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class CleanSpec(_Spec):
    """``clean``: which samples have trusted labels (exactly one of the three ways)."""

    fraction: float | None = Field(None, ge=0, le=1, description="share of each class marked clean")
    per_class: int | None = Field(None, ge=0, description="samples of each class marked clean")
    index_file: str | None = Field(None, description="text file of clean sample indices")
    seed: int = Field(0, ge=0, description="seed of the draw")

    @model_validator(mode="after")
    def _one(self):
        given = [k for k in ("fraction", "per_class", "index_file") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of fraction, per_class or index_file")
        return self


class NoiseSpec(_Spec):
    """``noise``: labels flipped by a transition matrix (a kind and rate, or the matrix)."""

    kind: Literal["symmetric", "pairflip"] = "symmetric"
    rate: float = Field(0.2, ge=0, le=1, description="probability that a label is flipped")
    seed: int = Field(0, ge=0)
    matrix: list[list[float]] | None = Field(None, description="row-stochastic transition matrix")


class LabelsSpec(_Spec):
    """``labels_per_class``: labels kept per class (the others hidden)."""

    per_class: int = Field(ge=1)
    seed: int = Field(0, ge=0)


class ViewSpec(_Spec):
    """``privileged`` / ``input_b``: a transform of the input, or a factory aligned by index."""

    transform: Any = None
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)


_SPECS = {"clean": CleanSpec, "noise": NoiseSpec, "labels_per_class": LabelsSpec,
          "privileged": ViewSpec, "input_b": ViewSpec}


def check_field(name: str, spec) -> dict:
    """``spec`` of field ``name`` validated (ranges, known keys, integer seeds): the keys the
    user gave, or a one-line ConfigError naming ``data.fields.<name>.<key>``."""
    if name == "labels_per_class" and not isinstance(spec, dict):
        spec = {"per_class": spec}
    if not isinstance(spec, dict):
        raise ConfigError(f"data.fields.{name} must be a mapping, got {spec!r}")
    try:
        model = _SPECS[name].model_validate(spec)
    except ValidationError as e:
        parts = []
        for err in e.errors():
            loc = ".".join(str(x) for x in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            if err["type"] == "extra_forbidden":
                msg += f" (allowed: {', '.join(_SPECS[name].model_fields)})"
            elif "input" in err and err["type"] != "missing":
                msg += f" (got {err['input']!r})"
            parts.append(f"data.fields.{name}{'.' + loc if loc else ''}: {msg}")
        raise ConfigError("; ".join(parts)) from None
    return model.model_dump(exclude_unset=True)


def _clean_mask(data, spec, num_classes: int) -> torch.Tensor:
    spec = check_field("clean", spec)
    seed = spec.get("seed", 0)
    if "index_file" in spec:
        path = Path(spec["index_file"])
        if not path.is_file():
            raise ConfigError(f"data.fields.clean.index_file {path} not found; give a text file of "
                              "sample indices, one per line")
        try:
            idx = torch.as_tensor([int(x) for x in path.read_text().split()], dtype=torch.long)
        except ValueError:
            raise ConfigError(f"{path} must hold integer sample indices, one per line") from None
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= len(data)):
            raise ConfigError(f"{path} names sample {int(idx.max())} but the data has {len(data)} samples")
        mask = torch.zeros(len(data), dtype=torch.bool)
        mask[idx] = True
        return mask
    return clean_mask(data.targets, per_class=spec.get("per_class"), fraction=spec.get("fraction"), seed=seed)


def _view(data, key: str, spec):
    spec = check_field(key, spec)
    if len({"transform", "factory"} & set(spec)) != 1:
        raise ConfigError(f"data.fields.{key} needs one of transform (a transform list) or factory "
                          "(package.module:fn returning a dataset aligned with the training data by index)")
    if "transform" in spec:
        tf = build_transform(spec["transform"])
        if isinstance(data, StreamData):
            from dataclasses import replace

            return replace(data, views={**data.views, key: tf})
        x = data.prepare_input(data.tensors["input"])
        return data.with_tensors(**{key: torch.stack([tf(row) for row in x])})
    other = as_source(load_factory(spec["factory"], **spec.get("kwargs", {})))
    if len(other) != len(data):
        raise ConfigError(f"data.fields.{key}: the factory's dataset has {len(other)} samples, the "
                          f"training data has {len(data)}; they must be aligned by index")
    if isinstance(other, TensorData):
        values = other.prepare_input(other.tensors["input"])
    else:
        values = torch.stack([other[i]["input"] for i in range(len(other))])
    return data.with_tensors(**{key: values})


def apply_fields(data, spec: dict, num_classes: int):
    """``data`` with the per-sample fields ``spec`` asks for (see the module docstring)."""
    if not isinstance(spec, dict):
        raise ConfigError(f"data.fields must be a mapping of fields ({', '.join(_KNOWN)}), got {spec!r}")
    unknown = sorted(set(spec) - set(_KNOWN))
    if unknown:
        raise ConfigError(f"data.fields: unknown field {unknown[0]!r}; known: {', '.join(_KNOWN)}")
    spec = {**spec, **{k: check_field(k, v) for k, v in spec.items() if k in ("noise", "labels_per_class")}}
    clean = _clean_mask(data, spec["clean"], num_classes) if "clean" in spec else None
    if "noise" in spec:
        n = spec["noise"]
        try:
            t = check_noise_matrix(n["matrix"], num_classes) if "matrix" in n else \
                noise_matrix(n.get("kind", "symmetric"), num_classes, float(n.get("rate", 0.2)))
        except ValueError as e:
            raise ConfigError(f"data.fields.noise: {e}") from None
        data = add_label_noise(data, t, seed=int(n.get("seed", 0)), clean=clean)
    elif clean is not None:
        data = mark_clean(data, clean)
    if "labels_per_class" in spec:
        lp = spec["labels_per_class"]
        data = hide_labels(data, labeled_per_class(data.targets, int(lp["per_class"]), int(lp.get("seed", 0))))
    for key in ("privileged", "input_b"):
        if key in spec:
            data = _view(data, key, spec[key])
    return data
