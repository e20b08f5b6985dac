"""Fresh initialisations of an existing architecture (Born-Again generations, DML peers, ONE branches)."""

from __future__ import annotations

import copy

import torch
from torch import nn

from joryu.errors import ConfigError
from joryu.teachers.base import weights_fingerprint


def reinitialise(model: nn.Module, seed: int, skip: set[int] | frozenset = frozenset()) -> nn.Module:
    """Re-draw every parameter of ``model`` in place with the modules' own ``reset_parameters``.

    The draw is a pure function of ``seed`` (the global RNG state is left untouched). Modules whose
    ``id`` is in ``skip`` (and their children) are left alone. BatchNorm running statistics are reset
    too. A parameter that no ``reset_parameters`` covers raises, so a "fresh" network never silently
    keeps trained weights.
    """
    covered: set[int] = set()
    skipped: set[int] = set()
    for m in model.modules():
        if id(m) in skip:
            skipped.update(id(p) for p in m.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        for m in model.modules():
            if id(m) in skip or any(id(p) in skipped for p in m.parameters(recurse=False)):
                continue
            own = list(m.parameters(recurse=False))
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
                covered.update(id(p) for p in own)
            elif hasattr(m, "reset_running_stats"):
                m.reset_running_stats()
    missed = [n for n, p in model.named_parameters() if id(p) not in covered and id(p) not in skipped]
    if missed:
        raise ConfigError(f"cannot re-initialise {type(model).__name__}: no reset_parameters() covers "
                          f"{', '.join(missed[:5])}{'...' if len(missed) > 5 else ''}; give those modules "
                          "a reset_parameters method")
    return model


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A deep copy of ``model`` (same architecture) with every parameter freshly initialised from ``seed``."""
    new = copy.deepcopy(model)
    for p in new.parameters():
        p.requires_grad_(True)
    new.train()
    return reinitialise(new, seed)


def seed_from(model: nn.Module, salt: int = 0) -> int:
    """A deterministic seed derived from a model's current weights (and ``salt``).

    Stage builders use it to give each generation or peer its own initialisation that depends on
    the run's seed (through the starting student's initial weights) without a global RNG draw, so a
    resumed run re-creates the same networks.
    """
    return (int(weights_fingerprint(model)[:8], 16) + 7919 * int(salt)) % (2**31 - 1)
