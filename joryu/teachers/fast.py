"""A frozen teacher made cheaper: BatchNorm folded into convolutions, inference mode, optional
channels_last and torch.compile. Outputs equal the eager teacher's (to float rounding)."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from joryu.outputs import Outputs, forward
from joryu.teachers.base import Teacher, freeze

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``model`` (in eval mode) with each BatchNorm that directly follows a convolution
    folded into it. Uses torch.fx; returns ``(model_copy, number_folded)``. A model fx cannot trace
    comes back unchanged (a copy), with a warning."""
    model = copy.deepcopy(model).eval()
    if not any(isinstance(m, _BNS) for m in model.modules()):  # nothing to fold (e.g. transformers)
        return model, 0
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # noqa: BLE001 - any tracing failure: fold inside nn.Sequential only
        folded = _fold_sequential(model)
        if folded == 0:
            warnings.warn(f"BatchNorm folding skipped: torch.fx cannot trace {type(model).__name__} ({e}) "
                          "and it has no conv -> BatchNorm pairs inside nn.Sequential", stacklevel=2)
        return model, folded
    modules = dict(gm.named_modules())
    folded = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BNS):
            continue
        prev = node.args[0]
        if not (isinstance(prev, fx.Node) and prev.op == "call_module"
                and isinstance(modules.get(prev.target), _CONVS) and len(prev.users) == 1):
            continue
        conv, bn = modules[prev.target], modules[node.target]
        if not bn.track_running_stats or bn.running_mean is None:
            continue
        fused = fuse_conv_bn_eval(conv, bn)
        parent_name, _, attr = prev.target.rpartition(".")
        setattr(gm.get_submodule(parent_name) if parent_name else gm, attr, fused)
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.recompile()
    gm.delete_all_unused_submodules()
    return gm, folded


def _fold_sequential(model: nn.Module) -> int:
    """Fold conv -> BatchNorm pairs that sit next to each other in an nn.Sequential (in place)."""
    folded = 0
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, _CONVS) and isinstance(bn, _BNS) and bn.track_running_stats \
                    and bn.running_mean is not None:
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = nn.Identity()
                folded += 1
    return folded


class FastTeacher(Teacher):
    """The eager model's predictions, faster: folded BatchNorm, ``torch.inference_mode``,
    optional ``channels_last`` (4-D inputs) and ``torch.compile``.

    The eager model is kept (``self.model``) for fingerprints; ``self.fast`` runs the forward.
    """

    def __init__(self, model: nn.Module, input_key: str = "input", fold_bn: bool = True,
                 channels_last: bool = False, compile: bool = False):
        self.model = freeze(model)
        self.input_key = input_key
        fast, self.folded = fold_batchnorm(self.model) if fold_bn else (copy.deepcopy(self.model), 0)
        self.fast = freeze(fast)
        self.channels_last = channels_last
        if channels_last:
            self.fast = self.fast.to(memory_format=torch.channels_last)
        if compile:
            self.fast.compile()

    def __call__(self, batch):
        with torch.inference_mode():
            key = self.input_key
            if self.channels_last and isinstance(key, str) and batch[key].dim() == 4:
                batch = {**batch, key: batch[key].contiguous(memory_format=torch.channels_last)}
            logits = forward(self.fast, batch, key)
        return Outputs(logits.clone())  # a normal tensor: autograd may save it as a loss target

    def models(self):
        return [self.model, self.fast]

    def fingerprint(self) -> str:
        from joryu.teachers.base import weights_fingerprint

        return weights_fingerprint(self.model)
