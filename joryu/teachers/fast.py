"""A frozen teacher made cheaper: BatchNorm folded into convolutions, inference mode, optional
channels_last and torch.compile. Outputs equal the eager teacher's (to float rounding)."""

from __future__ import annotations

import copy
import warnings

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from joryu import meter
from joryu.outputs import Outputs, forward
from joryu.teachers.base import Teacher, batch_size, freeze, weights_fingerprint

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BNS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s module structure whose parameters and buffers *are* the original's
    (no tensor is copied): editing the copy's structure leaves ``model`` alone, and in-place
    changes to ``model``'s weights show in the copy."""
    memo = {id(t): t for t in list(model.parameters()) + list(model.buffers())}
    return copy.deepcopy(model, memo)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A model computing ``model``'s eval-mode function with each BatchNorm that directly follows a
    convolution folded into it. Uses torch.fx; returns ``(folded, number_folded)``. Only the folded
    convolutions get new weights: every other parameter and buffer is shared with ``model`` (see
    :func:`shared_copy`), so no second resident copy of the teacher is made. A model fx cannot
    trace is folded inside its ``nn.Sequential`` containers only, with a warning if none fold.
    ``model`` itself is left as it is (put it in eval mode first)."""
    model = shared_copy(model).eval()
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

    ``self.model`` is the user's teacher; ``self.fast`` runs the forward. The folded model shares
    every tensor with ``self.model`` except the folded convolutions' (one resident copy of the
    teacher; with ``fold_bn=False`` ``self.fast`` *is* ``self.model``; ``channels_last`` converts,
    so copies, the weights). Before every call the
    model's tensors are checked by their version counters (bumped by every in-place change:
    ``load_state_dict``, ``p.add_``, BatchNorm statistics updated by a train-mode forward) and
    identity; on a change the folding is redone, so the served outputs follow the teacher.
    """

    def __init__(self, model: nn.Module, input_key: str = "input", fold_bn: bool = True,
                 channels_last: bool = False, compile: bool = False):
        self.model = freeze(model)
        self.input_key = input_key
        self.fold_bn = fold_bn
        self.channels_last = channels_last
        self.compile = compile
        self.refolds = 0
        self._version = None
        self._prepare()
        self.refolds = 0

    def _current_version(self) -> tuple:
        return tuple((id(t), t.data_ptr(), t._version)
                     for t in list(self.model.parameters()) + list(self.model.buffers()))

    def _prepare(self) -> None:
        self.model.eval()
        if self.fold_bn:
            fast, self.folded = fold_batchnorm(self.model)
        else:
            fast, self.folded = self.model, 0
        if self.channels_last:  # converting the weights' layout copies them (a second copy, opt-in)
            fast = copy.deepcopy(fast).to(memory_format=torch.channels_last)
        elif self.compile and fast is self.model:
            fast = shared_copy(fast)  # compile a structural copy, never the user's module
        fast = freeze(fast)
        if self.compile:
            fast.compile()
        self.fast = fast
        self._version = self._current_version()
        self.refolds += 1

    def refresh(self) -> bool:
        """Re-fold if the teacher's weights changed since the last fold; True if it did."""
        if self._current_version() != self._version:
            self._prepare()
            return True
        return False

    def __call__(self, batch):
        self.refresh()
        with torch.inference_mode(), meter.teacher_call(batch_size(batch, self.input_key)):
            if self.channels_last and isinstance(self.input_key, str) and batch[self.input_key].dim() == 4:
                batch = {**batch, self.input_key: batch[self.input_key].contiguous(memory_format=torch.channels_last)}
            logits = forward(self.fast, batch, self.input_key)
        return Outputs(logits.clone())  # a normal tensor: autograd may save it as a loss target

    def models(self):
        return [self.model]

    def to(self, device):
        self.model.to(device)
        self._prepare()
        return self

    def fingerprint(self) -> str:
        return weights_fingerprint(self.model)
