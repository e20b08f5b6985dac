"""LoRA students through the ``peft`` package (optional: ``pip install joryu[lora]``).

``apply_lora(model, LoraOptions)`` wraps a network in a ``peft`` ``PeftModel``: the base weights are
frozen (``requires_grad`` False, so the optimizer never sees them) and only the low-rank adapters
train. ``save_adapters`` writes them with ``save_pretrained`` (``adapter_config.json`` and
``adapter_model.safetensors``); ``load_adapters(base, folder)`` puts them back on a fresh base.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from joryu import atomic
from joryu._optional import require
from joryu.errors import ConfigError
from joryu.outputs import declare_inputs, inputs_of


def _peft():
    return require("peft", "a LoRA student")


def is_peft(model) -> bool:
    """Whether ``model`` is a ``peft`` wrapper (adapters on a frozen base)."""
    return type(model).__module__.startswith("peft.")


def _carry_inputs(src, dst):
    """The batch keys ``src`` declared (``joryu.outputs.declare_inputs``) also on ``dst``."""
    return declare_inputs(dst, inputs_of(src))


def apply_lora(model: torch.nn.Module, r: int = 8, alpha: int = 16, dropout: float = 0.0,
               target_modules: list[str] | None = None) -> torch.nn.Module:
    """``model`` with LoRA adapters of rank ``r`` (scale ``alpha / r``) on ``target_modules`` (module
    names or suffixes; default: peft's choice for a known transformers architecture, e.g. GPT-2's
    ``c_attn``); only the adapters require gradients."""
    peft = _peft()
    if target_modules is None and getattr(getattr(model, "config", None), "model_type", None) is None:
        raise ConfigError(f"LoRA on {type(model).__name__}: name the layers to adapt with "
                          "lora.target_modules (e.g. [fc1, fc2]); peft picks them only for transformers models")
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules)
    try:
        wrapped = peft.get_peft_model(model, cfg)
    except ValueError as e:
        raise ConfigError(f"LoRA on {type(model).__name__}: {e}".splitlines()[0]) from None
    return _carry_inputs(model, wrapped)


def save_adapters(model, folder: str | Path) -> Path:
    """The adapters of a ``peft`` model (not its base weights) in ``folder``: written into a
    temporary folder beside it, then renamed, so a kill leaves the old folder or the new one."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(str(tmp))
        if folder.exists():
            shutil.rmtree(folder)
        atomic.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def load_adapters(base: torch.nn.Module, folder: str | Path, trainable: bool = False) -> torch.nn.Module:
    """``base`` with the adapters saved in ``folder`` (``save_adapters``)."""
    peft = _peft()
    return _carry_inputs(base, peft.PeftModel.from_pretrained(base, str(folder), is_trainable=trainable))


def parameter_counts(model: torch.nn.Module) -> dict:
    """``{"trainable": n, "total": m}`` parameters of ``model`` (trainable: requires_grad)."""
    params = list(model.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params)}
