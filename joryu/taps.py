"""Named intermediate features from any nn.Module through forward hooks.

    tap = Taps(model, {"hint": "layer2.1.conv2"})
    logits = model(x)
    tap.features["hint"]          # the output of model.layer2[1].conv2 for x

Nothing in the model is edited. A wrong path fails at once and lists the valid ones.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

from torch import Tensor, nn

from joryu.errors import TapError
from joryu.outputs import unwrap_feature


def module_paths(model: nn.Module) -> list[str]:
    return [name for name, _ in model.named_modules() if name]


def resolve(model: nn.Module, path: str) -> nn.Module:
    """The submodule at ``path``; a wrong path raises TapError listing the paths that exist."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        paths = module_paths(model)
        close = difflib.get_close_matches(path, paths, n=3, cutoff=0.5)
        hint = f" Closest: {', '.join(close)}." if close else ""
        shown = ", ".join(paths[:60]) + (" ..." if len(paths) > 60 else "")
        raise TapError(
            f"no module at path {path!r} in {type(model).__name__}.{hint} Valid paths: {shown}"
        ) from None


class Taps:
    """Forward hooks that record named module outputs on every forward of ``model``.

    ``features`` holds the outputs of the last forward. With ``detach=True`` (for teachers)
    the stored tensors are detached. Call ``remove()`` (or use as a context manager) to
    take the hooks off. Taps are not pickled with the model: they live beside it.
    """

    def __init__(self, model: nn.Module, paths: Mapping[str, str], detach: bool = False):
        self.paths = dict(paths)
        self.detach = detach
        self.features: dict[str, Tensor] = {}
        self._handles = []
        for name, path in self.paths.items():
            module = resolve(model, path)
            self._handles.append(module.register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            value = unwrap_feature(output)
            self.features[name] = value.detach() if self.detach else value

        return hook

    def clear(self) -> None:
        self.features = {}

    def pop(self) -> dict[str, Tensor]:
        out, self.features = self.features, {}
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def taps(model: nn.Module, paths: Mapping[str, str], detach: bool = False) -> Taps:
    """Shorthand for ``Taps(model, paths, detach)``."""
    return Taps(model, paths, detach)
