"""Dataset Distillation (Wang, Zhu, Torralba & Efros 2018, arXiv:1811.10959): the unrolled inner loop.

Learned: synthetic inputs x̃_s (s = 0..S-1, one batch per step) with fixed labels ỹ_s, and one
learning rate per unrolled step, η̃_t = softplus(ρ_t), t = 0..T-1 with T = S·E (E epochs over
the S synthetic batches).

Inner loop (plain SGD on the synthetic data, from θ_0):

    θ_{t+1} = θ_t − η̃_t ∇_θ CE(f(x̃_{t mod S}; θ_t), ỹ_{t mod S})

Outer objective, minimised over (x̃, ρ) by back-propagating through all T steps:

    L(x̃, ρ; θ_0) = CE(f(x_real; θ_T), y_real)

The network is any ``nn.Module``, run functionally with ``torch.func.functional_call``; the
second-order terms come from autograd (``create_graph=True``), not a hand-written reverse pass.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint as _checkpoint

from joryu.outputs import unwrap


def softplus_inverse(x: float) -> float:
    """ρ with softplus(ρ) = x (x > 0): log(exp(x) − 1), stable for large x."""
    if x <= 0:
        raise ValueError(f"softplus_inverse needs x > 0, got {x}")
    return x + math.log(-math.expm1(-x))


def model_state(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(parameters, buffers) of ``model`` as detached copies, parameters ready to differentiate."""
    params = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    return params, buffers


def functional_logits(model: nn.Module, params: dict, buffers: dict, x: Tensor) -> Tensor:
    """Logits of ``model`` at weights ``params`` (and ``buffers``) on ``x``."""
    return unwrap(functional_call(model, {**buffers, **params}, (x,), strict=False))


def inner_step(model: nn.Module, names: list[str], buffers: dict, x: Tensor, y: Tensor, lr: Tensor,
               *weights: Tensor, create_graph: bool = True) -> tuple[Tensor, ...]:
    """One SGD step θ − η ∇_θ CE(f(x; θ), y), differentiable in θ, x and η when ``create_graph``."""
    params = dict(zip(names, weights))
    loss = F.cross_entropy(functional_logits(model, params, buffers, x), y)
    grads = torch.autograd.grad(loss, weights, create_graph=create_graph, allow_unused=True)
    return tuple(w if g is None else w - lr * g for w, g in zip(weights, grads))


def unrolled_sgd(model: nn.Module, params: dict[str, Tensor], images: Tensor, labels: Tensor, lrs: Tensor,
                 epochs: int = 1, buffers: dict[str, Tensor] | None = None, create_graph: bool = True,
                 checkpoint: bool = False) -> dict[str, Tensor]:
    """θ_T after T = S·epochs SGD steps over the synthetic batches ``images[s]`` (labels ``labels[s]``);
    see :func:`unrolled_sgd_state` (which also returns the buffers the steps leave)."""
    return unrolled_sgd_state(model, params, images, labels, lrs, epochs, buffers, create_graph, checkpoint)[0]


def unrolled_sgd_state(model: nn.Module, params: dict[str, Tensor], images: Tensor, labels: Tensor,
                       lrs: Tensor, epochs: int = 1, buffers: dict[str, Tensor] | None = None,
                       create_graph: bool = True, checkpoint: bool = False
                       ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(θ_T, buffers_T) after T = S·epochs SGD steps over the synthetic batches.

    images: (S, n, *input_shape); labels: (S, n); lrs: (S·epochs,) learning rates (already positive).
    ``params`` must require grad (see ``model_state``). With ``create_graph`` the result is
    differentiable in ``images``, ``lrs`` and ``params``; ``checkpoint`` recomputes each step in the
    backward pass instead of storing it (memory O(|θ|) per step instead of O(activations)).
    The module runs in its current mode (the paper: train mode for the inner steps). BatchNorm
    running statistics updated by each step are carried to the next and returned (they are
    statistics, not differentiated); the caller's ``buffers`` are not modified.
    """
    steps = images.shape[0]
    if len(lrs) != steps * epochs:
        raise ValueError(f"need one lr per unrolled step: {steps} steps x {epochs} epochs = "
                         f"{steps * epochs}, got {len(lrs)}")
    names = list(params)
    buffers = {k: v.clone() for k, v in (buffers or {}).items()}  # a private copy, updated step by step
    keys = list(buffers)
    weights = tuple(params[k] for k in names)
    for t in range(steps * epochs):
        s = t % steps
        if not create_graph:
            weights = tuple(w.detach().requires_grad_(True) for w in weights)
            with torch.enable_grad():
                weights = inner_step(model, names, buffers, images[s].detach(), labels[s], lrs[t].detach(),
                                     *weights, create_graph=False)
            weights = tuple(w.detach() for w in weights)
        elif checkpoint:
            # the step runs twice (forward, then recomputed in backward): it updates a copy of the
            # buffers it was given and returns it, so the statistics advance exactly once
            out = _checkpoint(_step_fn, model, names, keys, len(names), images[s], labels[s], lrs[t],
                              *weights, *(buffers[k] for k in keys), use_reentrant=False)
            weights = tuple(out[: len(names)])
            buffers = dict(zip(keys, (b.detach() for b in out[len(names):])))
        else:
            weights = inner_step(model, names, buffers, images[s], labels[s], lrs[t], *weights)
    return dict(zip(names, weights)), buffers


def _step_fn(model, names, keys, n_weights, x, y, lr, *tensors):
    weights, bufs = tensors[:n_weights], tensors[n_weights:]
    local = {k: b.clone() for k, b in zip(keys, bufs)}
    with torch.enable_grad():
        new = inner_step(model, names, local, x, y, lr, *weights)
    return (*new, *(local[k] for k in keys))


def dataset_distillation_loss(model: nn.Module, params: dict[str, Tensor], images: Tensor, labels: Tensor,
                              lrs: Tensor, x_real: Tensor, y_real: Tensor, epochs: int = 1,
                              buffers: dict[str, Tensor] | None = None, checkpoint: bool = False,
                              final_eval: bool = True) -> Tensor:
    """L = CE(f(x_real; θ_T), y_real), θ_T from ``unrolled_sgd`` (inner steps in train mode, the final
    loss in eval mode when ``final_eval``, as the reference code does, with the BatchNorm statistics
    the inner steps left)."""
    was = model.training
    model.train()
    final, final_buffers = unrolled_sgd_state(model, params, images, labels, lrs, epochs, buffers, True,
                                              checkpoint)
    model.train(not final_eval)
    try:
        if not final_eval:  # a train-mode forward updates statistics: keep that off the result
            final_buffers = {k: v.clone() for k, v in final_buffers.items()}
        return F.cross_entropy(functional_logits(model, final, final_buffers, x_real), y_real)
    finally:
        model.train(was)


def saved_tensor_bytes(fn, *args, **kwargs) -> tuple[object, int]:
    """Run ``fn`` and count the bytes autograd saves for the backward pass (the unrolled graph's
    memory, deterministic on any device). Returns (fn's result, bytes)."""
    total = [0]
    seen = set()

    def pack(t):
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))
        if key not in seen:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    return out, total[0]
