"""Adversarial Posterior Distillation (Wang, Vicol, Lucas, Gu, Grosse & Zemel, ICML 2018): pure pieces.

- SGLD, the sampler of stage 1 (the reference code's ``NoisedSGD``), with N training points:

      θ ← θ − (ε/2) (∇_θ mean-batch NLL(θ) + wd·θ) + ξ,   ξ ~ N(0, T·ε/N)

  i.e. Langevin dynamics on the posterior ∝ exp(−N·NLL − N·wd·|θ|²/2) with step h = ε/N (the drift
  is (h/2)·∇log p, the noise variance h per coordinate: Welling & Teh's convention) at temperature
  T = 1; T < 1 samples the tempered posterior p^(1/T).
- Cyclical SG-MCMC (Zhang, Li, Zhang, Chen & Wilson, ICLR 2020, cSG-MCMC), an option of stage 1:
  the step restarts every L iterations and decays on a cosine,

      ε_k = (ε₀/2) (cos(π · (k mod L) / L) + 1),   k = 0, 1, 2, ...

  and each cycle is an exploration phase ((k mod L)/L < β: the update without noise, i.e. SGD)
  followed by a sampling phase (SGLD at the small steps, where samples are kept).
- WGAN-GP (Gulrajani et al. 2017) over flattened parameter vectors, stage 2:

      L_D = E[D(G(z))] − E[D(θ)] + λ E[(‖∇_θ̂ D(θ̂)‖₂ − 1)²],  θ̂ = u·θ + (1 − u)·G(z), u ~ U(0, 1)
      L_G = −E[D(G(z))]

- The Bayesian predictive p(y|x) ≈ (1/K) Σ_k softmax(f(x; θ_k)), and the predictive entropy used to
  separate in- from out-of-distribution inputs (scored by AUROC).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from joryu.outputs import unwrap


class SGLD(torch.optim.Optimizer):
    """Stochastic-gradient Langevin dynamics as a torch optimizer.

    ``lr`` is ε, ``num_data`` is N. Each step: p ← p − (ε/2)(grad + wd·p) + N(0, T·ε/N) per
    coordinate, T the ``temperature`` (1: the posterior itself; T < 1 samples the tempered
    posterior ∝ p(θ|D)^(1/T), as cSG-MCMC's experiments do). With ``noise=False`` it is SGD with
    lr ε/2 (the MAP baseline).
    """

    def __init__(self, params, lr: float, num_data: int, weight_decay: float = 0.0, noise: bool = True,
                 generator: torch.Generator | None = None, temperature: float = 1.0):
        if lr <= 0 or num_data < 1 or temperature < 0:
            raise ValueError("SGLD needs lr > 0, num_data >= 1 and temperature >= 0")
        super().__init__(params, dict(lr=lr, num_data=num_data, weight_decay=weight_decay, noise=noise,
                                      temperature=temperature))
        self.generator = generator

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            eps, n, wd = group["lr"], group["num_data"], group["weight_decay"]
            for p in group["params"]:
                d = torch.zeros_like(p) if p.grad is None else p.grad.clone()
                if wd:
                    d.add_(p, alpha=wd)
                p.add_(d, alpha=-eps / 2)
                if group["noise"]:
                    xi = torch.randn(p.shape, generator=self.generator, dtype=p.dtype).to(p.device)
                    p.add_(xi, alpha=math.sqrt(group["temperature"] * eps / n))
        return loss


def cyclical_step(iteration: int, eps0: float, cycle_length: int) -> float:
    """ε_k = (ε₀/2)(cos(π (k mod L)/L) + 1) for iteration k = 0, 1, ... and cycle length L:
    ε₀ at every cycle start, decaying to (ε₀/2)(cos(π (L−1)/L) + 1) on a cycle's last iteration."""
    if cycle_length < 1:
        raise ValueError("cycle_length must be >= 1")
    return eps0 / 2 * (math.cos(math.pi * (iteration % cycle_length) / cycle_length) + 1)


def in_sampling_phase(iteration: int, cycle_length: int, explore: float) -> bool:
    """Whether iteration k lies in its cycle's sampling phase: (k mod L)/L >= β (``explore``)."""
    return (iteration % cycle_length) / cycle_length >= explore


def flatten_params(model: nn.Module) -> Tensor:
    """All parameters of ``model`` as one vector, in ``named_parameters`` order."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten_params(vec: Tensor, model: nn.Module) -> dict[str, Tensor]:
    """Split vectors (..., |θ|) back into ``model``'s named parameter shapes (leading dims kept)."""
    total = sum(p.numel() for p in model.parameters())
    if total != vec.shape[-1]:
        raise ValueError(f"vector has {vec.shape[-1]} entries, the model has {total} parameters")
    out, i = {}, 0
    lead = vec.shape[:-1]
    for name, p in model.named_parameters():
        n = p.numel()
        out[name] = vec[..., i:i + n].reshape(*lead, *p.shape)
        i += n
    return out


def ensemble_probs(model: nn.Module, vectors: Tensor, x: Tensor, chunk: int = 50) -> Tensor:
    """p(y|x) = mean_k softmax(f(x; θ_k)) for parameter vectors (K, |θ|); returns (B, classes)."""
    buffers = dict(model.named_buffers())

    def one(params, inp):
        return unwrap(functional_call(model, {**buffers, **params}, (inp,))).softmax(-1)

    total = None
    for s in range(0, len(vectors), chunk):
        probs = vmap(one, in_dims=(0, None))(unflatten_params(vectors[s:s + chunk], model), x).sum(0)
        total = probs if total is None else total + probs
    return total / len(vectors)


def predictive_entropy(probs: Tensor) -> Tensor:
    """H[p(y|x)] = −Σ_y p log p, per row."""
    return -(probs * probs.clamp_min(1e-12).log()).sum(-1)


def auroc(scores_pos: Tensor, scores_neg: Tensor) -> float:
    """Area under the ROC curve for "positive scores higher" (Mann–Whitney U, ties count one half)."""
    pos, neg = scores_pos.flatten().double(), scores_neg.flatten().double()
    greater = (pos[:, None] > neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def gradient_penalty(critic: nn.Module, real: Tensor, fake: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """E[(‖∇ D(θ̂)‖₂ − 1)²] at random interpolates θ̂ = u·real + (1 − u)·fake (rows are samples)."""
    u = torch.rand(real.shape[0], 1, generator=generator).to(real.device, real.dtype)
    mix = (u * real.detach() + (1 - u) * fake.detach()).requires_grad_(True)
    (g,) = torch.autograd.grad(critic(mix).sum(), mix, create_graph=True)
    return ((g.norm(dim=1) - 1) ** 2).mean()


def wgan_critic_loss(d_real: Tensor, d_fake: Tensor) -> Tensor:
    """E[D(fake)] − E[D(real)] (the critic minimises it)."""
    return d_fake.mean() - d_real.mean()


def wgan_generator_loss(d_fake: Tensor) -> Tensor:
    """−E[D(G(z))]."""
    return -d_fake.mean()
