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

import torch

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


def _clean_mask(data, spec, num_classes: int) -> torch.Tensor:
    if not isinstance(spec, dict):
        raise ConfigError(f"data.fields.clean must be a mapping (fraction, per_class or index_file), got {spec!r}")
    seed = int(spec.get("seed", 0))
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
    if ("fraction" in spec) == ("per_class" in spec):
        raise ConfigError("data.fields.clean: give exactly one of fraction, per_class or index_file")
    return clean_mask(data.targets, per_class=spec.get("per_class"), fraction=spec.get("fraction"), seed=seed)


def _view(data, key: str, spec):
    if not isinstance(spec, dict) or len({"transform", "factory"} & set(spec)) != 1:
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
    unknown = sorted(set(spec) - set(_KNOWN))
    if unknown:
        raise ConfigError(f"data.fields: unknown field {unknown[0]!r}; known: {', '.join(_KNOWN)}")
    clean = _clean_mask(data, spec["clean"], num_classes) if "clean" in spec else None
    if "noise" in spec:
        n = spec["noise"]
        if not isinstance(n, dict):
            raise ConfigError(f"data.fields.noise must be a mapping (kind, rate, seed or matrix), got {n!r}")
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
        lp = lp if isinstance(lp, dict) else {"per_class": lp}
        data = hide_labels(data, labeled_per_class(data.targets, int(lp["per_class"]), int(lp.get("seed", 0))))
    for key in ("privileged", "input_b"):
        if key in spec:
            data = _view(data, key, spec[key])
    return data
