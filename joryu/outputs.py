"""One place where model outputs are unwrapped into ``Outputs(logits, features)``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from joryu.errors import ConfigError, qualified_name, reraise_as_user


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


# --------------------------------------------------------------------------- model inputs
# A model's inputs say which batch tensors fill which forward arguments:
#   "input"                                        model(batch["input"])            (the default)
#   ["input_ids", "attention_mask"]                model(batch["input_ids"], batch["attention_mask"])
#   {"input_ids": "ids", "attention_mask": "am"}   model(input_ids=batch["ids"], attention_mask=batch["am"])
# Tensors are passed as they are: integer token ids stay integers.

Inputs = str | Sequence[str] | Mapping[str, str]
DEFAULT_INPUTS = "input"
_ATTR = "joryu_inputs"


def normalize_inputs(inputs) -> str | tuple[str, ...] | dict[str, str]:
    """``inputs`` validated: a str, a tuple of str (positional) or a dict str -> str (keyword)."""
    if isinstance(inputs, str):
        if not inputs:
            raise ConfigError("a model's inputs must name a batch key, got ''")
        return inputs
    if isinstance(inputs, Mapping):
        if not inputs or not all(isinstance(k, str) and isinstance(v, str) and k and v
                                 for k, v in inputs.items()):
            raise ConfigError(f"a model's inputs mapping must be {{forward_argument: batch_key}} with "
                              f"non-empty string names, got {dict(inputs)!r}")
        return dict(inputs)
    if isinstance(inputs, (list, tuple)):
        if not inputs or not all(isinstance(k, str) and k for k in inputs):
            raise ConfigError(f"a model's inputs list must hold batch key names, got {list(inputs)!r}")
        return tuple(inputs)
    raise ConfigError(f"a model's inputs must be a batch key, a list of keys or a mapping "
                      f"{{forward_argument: batch_key}}, not {type(inputs).__name__}")


def declare_inputs(model: torch.nn.Module, inputs) -> torch.nn.Module:
    """Record on ``model`` the batch keys it reads; ``forward(model, batch)`` then uses them
    wherever a caller passes the default ``"input"``. Returns the model."""
    spec = normalize_inputs(inputs)
    if spec == DEFAULT_INPUTS:
        model.__dict__.pop(_ATTR, None)
    else:
        model.__dict__[_ATTR] = spec  # a plain attribute: copied by deepcopy, ignored by state_dict
    return model


def inputs_of(model, inputs=DEFAULT_INPUTS):
    """The inputs a call uses: ``inputs`` unless it is the default and ``model`` declares its own."""
    if inputs is None or (isinstance(inputs, str) and inputs == DEFAULT_INPUTS):
        declared = getattr(model, "__dict__", {}).get(_ATTR)
        if declared is not None:
            return declared
        return DEFAULT_INPUTS
    return inputs if isinstance(inputs, (str, tuple, dict)) else normalize_inputs(inputs)


def input_keys(inputs) -> list[str]:
    """The batch keys ``inputs`` reads, in order."""
    if isinstance(inputs, str):
        return [inputs]
    if isinstance(inputs, Mapping):
        return list(inputs.values())
    return list(inputs)


def attention_mask_of(model, batch: Mapping, inputs=DEFAULT_INPUTS) -> Tensor | None:
    """The batch's padding mask for ``model`` (1 = real token, 0 = padding): the tensor its inputs
    pass as ``attention_mask`` (by keyword, or a positional key of that name), else the batch's
    ``attention_mask``; None when there is none."""
    spec = inputs_of(model, inputs)
    key = None
    if isinstance(spec, Mapping):
        key = spec.get("attention_mask")
    elif "attention_mask" in input_keys(spec):
        key = "attention_mask"
    value = batch.get(key or "attention_mask")
    return value if isinstance(value, Tensor) else None


_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
CAUSAL_ATTR = "joryu_causal_lm"


def is_causal_lm(model) -> bool:
    """Whether ``model`` predicts the next token at each position (so Hugging Face ``labels`` are
    shifted for it, see ``joryu.losses.positions``): ``model.joryu_causal_lm`` when set (for one's
    own models), else a transformers causal-LM class (its name in transformers' causal-LM mapping
    or ending in ``ForCausalLM`` / ``LMHeadModel``, PEFT wrappers included)."""
    flag = getattr(model, "__dict__", {}).get(CAUSAL_ATTR)
    if flag is not None:
        return bool(flag)
    names = {type(model).__name__}
    inner = getattr(model, "base_model", None)  # PEFT: PeftModel -> LoraModel -> the HF model
    for _ in range(3):
        if not isinstance(inner, torch.nn.Module):
            break
        names.add(type(inner).__name__)
        inner = getattr(inner, "model", None)
    if any(n.endswith(_CAUSAL_SUFFIXES) for n in names):
        return True
    if not type(model).__module__.startswith(("transformers", "peft")):
        return False
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return bool(names & set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values()))


def _missing(model, batch: Mapping, key: str, inputs) -> ConfigError:
    have = sorted(k for k, v in batch.items() if isinstance(v, Tensor))
    return ConfigError(f"{type(model).__name__} reads batch key {key!r} (its inputs: {inputs!r}) but the "
                       f"batch has {have}; set the model's inputs to keys the data has")


def model_args(model, batch: Mapping, inputs=DEFAULT_INPUTS) -> tuple[tuple, dict]:
    """``(args, kwargs)`` for ``model`` from ``batch`` following ``inputs``."""
    spec = inputs_of(model, inputs)
    try:
        if isinstance(spec, str):
            return (batch[spec],), {}
        if isinstance(spec, Mapping):
            return (), {arg: batch[key] for arg, key in spec.items()}
        return tuple(batch[k] for k in spec), {}
    except KeyError as e:
        raise _missing(model, batch, e.args[0], spec) from None


def _dtype_error(model, err: RuntimeError, args, kwargs) -> ConfigError | None:
    msg = str(err)
    tensors = [t for t in (*args, *kwargs.values()) if isinstance(t, Tensor)]
    ints = [t for t in tensors if not t.is_floating_point() and not t.is_complex() and t.dtype != torch.bool]
    first = msg.strip().splitlines()[0] if msg.strip() else type(err).__name__
    if ("indices" in msg or "Embedding" in msg) and any(t.is_floating_point() for t in tensors):
        return ConfigError(f"{type(model).__name__} wants integer token ids but got float inputs ({first}); "
                           "keep the ids as an integer tensor (int64) in the data")
    if ints and any(w in msg for w in ("dtype", "scalar type", "Long", "Int", "type (long", "type (int")):
        kinds = ", ".join(sorted({str(t.dtype).replace("torch.", "") for t in ints}))
        return ConfigError(f"{type(model).__name__} computes in floats but got integer inputs ({kinds}): "
                           f"{first}; store the input as a float tensor or point the model's inputs at "
                           "the right key")
    return None


def call(model: torch.nn.Module, batch: Mapping, inputs=DEFAULT_INPUTS):
    """Run ``model`` on the batch tensors that ``inputs`` names; return its raw output."""
    args, kwargs = model_args(model, batch, inputs)
    try:
        return model(*args, **kwargs)
    except Exception as e:  # noqa: BLE001 - the user's forward failed (errors.py: whose code)
        err = _dtype_error(model, e, args, kwargs) if isinstance(e, RuntimeError) else None
        if err is not None:
            raise err from e
        reraise_as_user(e, f"{qualified_name(type(model))}.forward")


def forward(model: torch.nn.Module, batch: Mapping, inputs=DEFAULT_INPUTS) -> Tensor:
    """Run ``model`` on ``batch`` following ``inputs`` (see ``model_args``); return its logits."""
    return unwrap(call(model, batch, inputs))
