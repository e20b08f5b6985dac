"""Helpers shared by the feature-level methods (FitNets, FSP, KD-SVD, cross-modal, blockwise).

Nothing here knows a method: taps on a teacher, a sample input to size adapters, the modules
a forward pass runs before a given one, an early exit after a module, and a MAC counter.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from joryu.data import TensorData
from joryu.errors import ConfigError
from joryu.outputs import call
from joryu.taps import resolve
from joryu.teachers import FrozenTeacher, Teacher


def sample_input(data, key: str = "input", n: int = 2) -> Tensor:
    """``n`` prepared inputs of ``data`` under ``key`` (to size regressors and adapters)."""
    if isinstance(data, TensorData):
        if key not in data.tensors:
            raise ConfigError(f"the data has no {key!r} tensor (has {sorted(data.tensors)})")
        return data.prepare_input(data.tensors[key][:n])
    x = torch.stack([data[i][key] for i in range(n)])
    return x.float() if x.dtype == torch.uint8 else x  # token ids keep their integer dtype


def on_device_of(model: nn.Module, x):
    """``x`` (a tensor, or a batch dict) moved to the device of ``model``'s first parameter (or buffer)."""
    for t in list(model.parameters()) + list(model.buffers()):
        if isinstance(x, Mapping):
            return {k: (v.to(t.device) if isinstance(v, Tensor) else v) for k, v in x.items()}
        return x.to(t.device)
    return x


def _run(model: nn.Module, x, inputs="input") -> None:
    """``model(x)`` for a tensor; for a batch dict, the call its ``inputs`` describe."""
    if isinstance(x, Mapping):
        call(model, x, inputs)
    else:
        model(x)


def tapped_teacher(teacher: Teacher, features: Mapping[str, str]) -> FrozenTeacher:
    """A FrozenTeacher over ``teacher``'s network whose ``Outputs.features`` hold ``features``
    (name -> module path), detached. Call ``.taps.remove()`` when the stage ends."""
    model = getattr(teacher, "model", None)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"this method taps the teacher's intermediate features, so the teacher must be a "
                          f"single network (a FrozenTeacher), not {type(teacher).__name__}")
    return FrozenTeacher(model, getattr(teacher, "input_key", "input"), features=dict(features))


def default_layer(model: nn.Module, where: str = "middle") -> str:
    """A layer from the model's ``feature_layers`` list (zoo models have one)."""
    layers = getattr(model, "feature_layers", None)
    if not layers:
        raise ConfigError(f"{type(model).__name__} lists no feature_layers: give the layer's module path "
                          "in the method's params")
    if where == "middle":
        return layers[(len(layers) - 1) // 2]
    return layers[-1] if where == "last" else layers[0]


class StopForward(Exception):
    """Raised by a hook to end a forward pass early (nothing after the hooked module runs)."""


class StopAfter:
    """Context manager: a forward pass of the model stops right after ``module`` has run.

        with StopAfter(model.layer2):
            try:
                model(x)
            except StopForward:
                pass
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.handle = None

    def __enter__(self):
        def hook(_m, _i, _o):
            raise StopForward

        self.handle = self.module.register_forward_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()
        return False


def run_until(model: nn.Module, path: str, x, inputs="input") -> None:
    """Run ``model(x)`` (or, for a batch dict, ``forward``'s call with ``inputs``) but stop right
    after the module at ``path`` (its taps have fired)."""
    with StopAfter(resolve(model, path)):
        try:
            _run(model, x, inputs)
        except StopForward:
            pass


@torch.no_grad()
def modules_run_before(model: nn.Module, path: str, x, inputs="input") -> list[nn.Module]:
    """The modules that run in a forward pass of ``x`` up to and including the module at ``path``
    (its submodules included), in execution order. The model's mode and state are restored."""
    target = resolve(model, path)
    order: list[nn.Module] = []
    handles = [m.register_forward_hook(lambda m, i, o: order.append(m)) for m in model.modules()
               if m is not model]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    was = model.training
    model.eval()
    try:
        run_until(model, path, x, inputs)
    finally:
        for h in handles:
            h.remove()
        model.train(was)
        model.load_state_dict(state)
    if target not in order:
        raise ConfigError(f"module {path!r} did not run in a forward pass of {type(model).__name__}")
    seen = []
    for m in order:
        if m not in seen:
            seen.append(m)
    for m in target.modules():
        if m not in seen:
            seen.append(m)
    return seen


def parameters_up_to(model: nn.Module, path: str, x, inputs="input") -> list[nn.Parameter]:
    """Parameters of every module that runs before (or inside) the module at ``path``."""
    out, ids = [], set()
    for m in modules_run_before(model, path, x, inputs):
        for p in m.parameters(recurse=False):
            if id(p) not in ids:
                ids.add(id(p))
                out.append(p)
    return out


@torch.no_grad()
def count_macs(model: nn.Module, x: Tensor) -> int:
    """Multiply-accumulates of one forward pass of ``x[:1]`` through convolutions and linear layers."""
    total = [0]

    def hook(m, inputs, out):
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            k = int(torch.tensor(m.kernel_size).prod())
            total[0] += out[0].numel() * (m.in_channels // m.groups) * k
        elif isinstance(m, nn.Linear):
            total[0] += out[0].numel() * m.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    was = model.training
    model.eval()
    try:
        model(x[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return total[0]
