"""Optional dependencies: import one, or say in one line which extra installs it."""

from __future__ import annotations

import importlib

from joryu.errors import ConfigError

# import name -> (pip package, joryu extra)
EXTRAS = {
    "sklearn": ("scikit-learn", "demo"),
    "mnist1d": ("mnist1d", "demo"),
    "mlxtend": ("mlxtend", "demo"),
    "matplotlib": ("matplotlib", "plot"),
    "datasets": ("datasets", "hf"),
    "transformers": ("transformers", "hf"),
    "onnx": ("onnx", "onnx"),
    "onnxruntime": ("onnxruntime", "onnx"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "peft": ("peft", "lora"),
}


def missing_message(module: str, purpose: str) -> str:
    top = module.split(".")[0]
    pkg, extra = EXTRAS.get(top, (top, None))
    how = f"pip install 'joryu[{extra}]' (or pip install {pkg})" if extra else f"pip install {pkg}"
    return f"{purpose} needs the optional package {pkg}, which is not installed; install it with {how}"


def require(module: str, purpose: str):
    """``importlib.import_module(module)``, or a one-line ConfigError naming the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(missing_message(module, purpose)) from None
