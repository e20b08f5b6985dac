"""A network sharded for one stage (``train.fsdp``) and made whole again at the stage's end.

Accelerate shards a Distiller in place (torch's ``fully_shard``): each module gets a new class,
forward and state-dict hooks, bookkeeping attributes, and its parameters become DTensor shards.
``record(distiller)`` notes, before that, each module's class, attributes and hooks;
``make_whole(distiller, layout)`` (every process, at the end of a sharded ``fit`` or dry step)
gathers the full weights with ``get_model_state_dict(full_state_dict=True)``, registers them as
plain parameters (parameters tied to one shard stay tied), hands every process the main process's
buffers, and takes off what sharding added: the class, the hooks and attributes whose code comes
from torch.distributed or Accelerate. The network is then the plain module it was, with the trained
weights, on every process: what follows a stage (the next stage, the scores, the files a run
writes) sees it exactly as after a run without ``train.fsdp``, and it can be sharded again.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.distributed as dist
from torch import nn

# torch.distributed's FSDP, DTensor and checkpoint modules are imported where a network is made
# whole, not with joryu: some torch builds lack them, and a run without train.fsdp never needs them

# hook tables of nn.Module; the *_with_kwargs / always_called tables flag entries of the first three
_HOOKS = ("_forward_pre_hooks", "_forward_hooks", "_backward_pre_hooks", "_backward_hooks",
          "_state_dict_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks",
          "_load_state_dict_post_hooks")
_HOOK_FLAGS = ("_forward_pre_hooks_with_kwargs", "_forward_hooks_with_kwargs", "_forward_hooks_always_called")
_SHARDING_CODE = ("torch.distributed", "accelerate")
# attributes fully_shard and Accelerate set on a module (the composable-API state, Dynamo's flags)
_SHARDING_ATTRS = ("__composable_api", "_fsdp", "_is_fsdp", "_is_accelerate")


@dataclass
class Layout:
    """Each module of a network before sharding: its class, attribute names and hook ids."""

    classes: dict[str, type]
    attrs: dict[str, set[str]]
    hooks: dict[str, dict[str, set[int]]]


def record(model: nn.Module) -> Layout:
    """What ``make_whole`` restores, noted before ``model`` is sharded."""
    classes, attrs, hooks = {}, {}, {}
    for name, m in model.named_modules(remove_duplicate=False):
        classes[name] = type(m)
        attrs[name] = set(m.__dict__)
        hooks[name] = {h: set(getattr(m, h)) for h in _HOOKS + _HOOK_FLAGS if isinstance(getattr(m, h, None), dict)}
    return Layout(classes, attrs, hooks)


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in model.parameters())


def _code_of(fn) -> str:
    """The module that defines a hook (through nn.Module's wrapper, partials and bound methods)."""
    for attr in ("hook", "func", "__func__"):
        fn = getattr(fn, attr, fn)
    return getattr(fn, "__module__", None) or ""


def make_whole(model: nn.Module, layout: Layout) -> None:
    """Gather ``model``'s shards and make it the plain module ``layout`` recorded (see the module
    docstring). A collective: every process calls it, in the same order."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor import DTensor

    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.reshard()  # the registered parameters are the shards again (a root keeps them gathered)
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    made: dict[int, nn.Parameter] = {}
    for prefix, m in model.named_modules(remove_duplicate=False):
        for name, p in list(m._parameters.items()):
            if not isinstance(p, DTensor):
                continue
            if id(p) not in made:
                value = full.pop(f"{prefix}.{name}" if prefix else name, None)
                value = p.full_tensor() if value is None else value  # a name state_dict leaves out
                made[id(p)] = nn.Parameter(value.detach(), requires_grad=p.requires_grad)
            m._parameters[name] = made[id(p)]
    del full
    _undo_sharding(model, layout)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for b in model.buffers():  # buffers are not sharded: each process kept its own
            dist.broadcast(b.data, src=0)


def _undo_sharding(model: nn.Module, layout: Layout) -> None:
    """Take off the class, hooks and attributes that sharding added to ``model``'s modules."""
    from torch.distributed import _composable_state

    for name, m in model.named_modules(remove_duplicate=False):
        if name not in layout.classes:
            continue
        if type(m) is not layout.classes[name]:
            m.__class__ = layout.classes[name]
        for key in set(m.__dict__) - layout.attrs[name]:
            if key.startswith(_SHARDING_ATTRS):
                del m.__dict__[key]
        before = layout.hooks[name]
        gone = set()
        for h in _HOOKS:
            table = getattr(m, h, None)
            if not isinstance(table, dict):
                continue
            for hid in set(table) - before.get(h, set()):
                if _code_of(table[hid]).startswith(_SHARDING_CODE):
                    del table[hid]
                    gone.add(hid)
        for h in _HOOK_FLAGS:
            table = getattr(m, h, None)
            if isinstance(table, dict):
                for hid in gone & set(table):
                    del table[hid]
        # torch keeps a module -> sharding state table; a module left in it could not be sharded again
        getattr(_composable_state, "_module_state_mapping", {}).pop(m, None)
