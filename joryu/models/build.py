"""Building a configured network and probing it on data: what every door (a run, ``joryu eval``,
``joryu export``, ``joryu.distill``) does before it trusts a model with the data."""

from __future__ import annotations

from pathlib import Path

import torch

from joryu.data import TensorData, example_batch
from joryu.errors import ConfigError, JoryuError, UserCodeError, one_line
from joryu.losses import positions
from joryu.models import registry
from joryu.models.lora import apply_lora
from joryu.models.registry import create
from joryu.outputs import declare_inputs, forward, input_keys, normalize_inputs
from joryu.weights import load_into


def build_model(cfg, num_classes: int, input_shape, role: str = "model") -> torch.nn.Module:
    """``cfg``: a ``joryu.config.ModelConfig`` (name, kwargs, inputs, checkpoint). A zoo model (``num_classes``/``input_shape`` filled in where the factory takes them) or an
    import-path factory's model, with ``cfg.checkpoint`` loaded; bad input raises one line."""
    kwargs = dict(cfg.kwargs)
    if ":" not in cfg.name:
        factory = registry.zoo_factory(cfg.name)
        if registry.accepts(factory, "num_classes"):
            kwargs.setdefault("num_classes", num_classes)
        if registry.accepts(factory, "input_shape"):
            kwargs.setdefault("input_shape", tuple(input_shape))
    model = create(cfg.name, **kwargs)
    declare_inputs(model, cfg.inputs)
    if cfg.checkpoint:
        path = Path(cfg.checkpoint)
        if not path.exists():
            raise ConfigError(f"checkpoint {path} for model {cfg.name!r} not found")
        load_into(model, path, f"model {cfg.name!r}")
    lora = getattr(cfg, "lora", None)
    if lora is not None:
        model = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    return model


def probe_logits(model: torch.nn.Module, data, inputs="input") -> torch.Tensor:
    """The model's logits on the first two samples of ``data`` (eval mode, no gradients)."""
    batch = example_batch(data, 2)
    batch = {k: (v.to(_device_of(model)) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            return forward(model, batch, inputs)
    finally:
        model.train(was)


def _device_of(model: torch.nn.Module):
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def output_classes(model: torch.nn.Module, data, input_key="input", name: str = "model",
                   data_shape=None) -> int:
    """Classes (vocabulary size for token logits) that ``model`` predicts on ``data``; a model
    that cannot run on the data is one ConfigError naming it and the shapes."""
    try:
        out = probe_logits(model, data, input_key)
    except JoryuError as e:
        if not isinstance(e, UserCodeError) or not getattr(e, "parts", ("", ""))[1].endswith(".forward"):
            raise  # a mistake joryu found, or the data's own code failed
        _cannot_run(e, data, input_key, name, data_shape, f"{e.parts[1]} raised {e.parts[3]}")
    except Exception as e:  # noqa: BLE001 - a zoo model or a torch module that does not fit
        _cannot_run(e, data, input_key, name, data_shape, f"{type(e).__name__}: {one_line(e)}")
    if not isinstance(out, torch.Tensor) or out.dim() < 2:
        raise ConfigError(f"{name} returned {type(out).__name__} of shape "
                          f"{tuple(getattr(out, 'shape', ()))}; expected logits [batch, classes, ...]")
    target = example_batch(data, 2).get("target")
    if isinstance(target, torch.Tensor) and out.dim() == 2 and target.dim() >= 2:
        raise ConfigError(f"{name} predicts one class per sample (logits of shape {tuple(out.shape)}) but "
                          f"each sample's target has shape {tuple(target.shape[1:])}: one-hot or "
                          "multi-label targets? give one class index per sample (e.g. "
                          "target.argmax(-1)); joryu trains single-label classification")
    return positions.num_classes(out)


def _cannot_run(e, data, input_key, name, data_shape, detail: str):
    try:
        got = {k: tuple(v.shape) for k, v in example_batch(data, 2).items()
               if isinstance(v, torch.Tensor) and k in input_keys(normalize_inputs(input_key))}
    except Exception:  # noqa: BLE001 - the description is best effort
        got = {}
    shape = f", the dataset's input shape is {tuple(data_shape)}" if data_shape is not None else ""
    got = f"a batch of shape {next(iter(got.values()))}" if len(got) == 1 else f"batch shapes {got}"
    raise ConfigError(f"{name} cannot run on the data: given {got}{shape}: {detail}. Fix the model's "
                      "kwargs (input_shape, in_channels...) or its inputs") from None


def input_shape_of(data, key, default) -> tuple:
    """Per-sample shape of ``data``'s ``key`` tensor (``default`` for ``input`` or streamed data);
    with several inputs, the shape of the first."""
    key = input_keys(normalize_inputs(key))[0]
    if key != "input" and isinstance(data, TensorData):
        if key not in data.tensors:
            raise ConfigError(f"the data has no {key!r} tensor (it has {sorted(data.tensors)}); "
                              "fix the model's inputs")
        return tuple(data.tensors[key].shape[1:])
    if key != "input" and isinstance(key, str) and hasattr(data, "sample"):
        sample = data.sample(0, train=True)
        if key not in sample:
            raise ConfigError(f"the data has no {key!r} key (a sample has {sorted(sample)}); "
                              "fix the model's input_key or add it with data.views")
        return tuple(sample[key].shape)
    return tuple(default)


def check_classes(models: dict[str, torch.nn.Module], data, num_classes: int,
                  input_keys: dict[str, str] | None = None, names: dict[str, str] | None = None,
                  data_shape=None) -> None:
    keys = input_keys or {}
    names = names or {}
    counts = {name: output_classes(m, data, keys.get(name, "input"), names.get(name, name), data_shape)
              for name, m in models.items()}
    bad = {k: v for k, v in counts.items() if v != num_classes}
    if bad:
        desc = ", ".join(f"{k} predicts {v}" for k, v in counts.items())
        raise ConfigError(f"class counts differ (vocabulary sizes, for language models): the data has "
                          f"{num_classes} classes, {desc}. Set num_classes (or vocab_size) in the model's "
                          "kwargs (or fix the checkpoint) so all agree.")
