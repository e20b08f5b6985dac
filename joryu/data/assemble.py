"""A ``DataConfig`` turned into a ``DataBundle``: the one place that puts a dataset together from
its parts (source, splits, transforms, views, columns, loader options, per-sample fields)."""

from __future__ import annotations

from joryu.data.core import TensorData
from joryu.data.fields import apply_fields
from joryu.data.registry import DataBundle, load
from joryu.data.sources import LoaderOptions, bundle_from, load_factory
from joryu.data.transforms import build_transform
from joryu.errors import ConfigError


def load_data(cfg):
    """The ``DataBundle`` a ``DataConfig`` describes: a registered dataset or a factory by import
    path, an optional test/validation factory, transforms, views, columns, loader options and
    per-sample fields."""
    tf = build_transform(cfg.transform)
    etf = build_transform(cfg.eval_transform) if cfg.eval_transform is not None else (
        tf.deterministic() if tf is not None else None)
    views, eval_views = {}, {}
    for key, spec in (cfg.views or {}).items():
        if isinstance(spec, dict) and set(spec) <= {"train", "eval"} and spec:
            views[key] = build_transform(spec.get("train"))
            eval_views[key] = build_transform(spec["eval"]) if "eval" in spec else (
                views[key].deterministic() if views[key] is not None else None)
        else:
            views[key] = build_transform(spec)
            eval_views[key] = views[key].deterministic() if views[key] is not None else None
    common = dict(columns=cfg.columns, loader=LoaderOptions.of(cfg.loader))
    streamed = tf is not None or etf is not None or views or cfg.columns
    opts = {"train": dict(common, transform=tf, eval_transform=etf, views=views, eval_views=eval_views),
            "test": dict(common, transform=etf, eval_transform=etf, views=eval_views, eval_views=eval_views)}
    if ":" in cfg.name:
        kwargs = dict(cfg.kwargs)
        if cfg.path:
            kwargs.setdefault("path", cfg.path)
        result = load_factory(cfg.name, **kwargs)
        name = cfg.name.rsplit(":", 1)[1]
    else:
        result = load(cfg.name, cfg.path, **cfg.kwargs)
        name = result.name
    test = load_factory(cfg.test, **cfg.test_kwargs) if cfg.test else None
    val = load_factory(cfg.val, **cfg.test_kwargs) if cfg.val else None
    if isinstance(result, DataBundle) and streamed and isinstance(result.train, TensorData):
        raise ConfigError(f"dataset {name!r} is in-memory tensor data: transforms, views and columns "
                          "apply to streamed datasets; use data.augment for tensor data")
    bundle = bundle_from(result, name, test, val, opts)
    if cfg.fields:
        bundle.train = apply_fields(bundle.train, cfg.fields, bundle.num_classes)
    return bundle
