"""Wang, Vicol, Lucas, Gu, Grosse & Zemel (2018), "Adversarial Distillation of Bayesian Neural Network
Posteriors", ICML (APD).

Distils a Bayesian posterior over a network's weights, known only through sampler draws, into a
generator of weights. Two stages, both through the engine's manual-optimization path:

1. ``sample``: SGLD on the student's parameters (``joryu.losses.posterior.SGLD``):
   θ ← θ − (ε/2)(∇ mean-batch NLL + wd·θ) + N(0, ε/N), N = training-set size. After ``burn_in``
   iterations, every ``thin``-th iterate is kept as a flattened parameter vector. Options (off by
   default, docs/methods/posterior_distillation.md): ``cycle_length`` L makes it cyclical SG-MCMC
   (Zhang et al. 2020), ε_k = (ε/2)(cos(π (k mod L)/L) + 1), noise-free for the first ``explore``
   of each cycle and sampled (samples kept) in the rest; ``temperature`` T scales the noise
   variance to T·ε_k/N (samples from p(θ|D)^(1/T)).
2. ``gan``: WGAN-GP whose generator G: z ∈ R^32 → 3×[Linear(h), ReLU] → Linear(|θ|) outputs a
   parameter vector and whose critic (|θ| → 3×[Linear(h), ReLU] → 1) separates generated from
   sampled vectors; ``n_critic`` critic steps (λ_GP = 10) per generator step. One generator step
   per engine step (the data batch itself is not used in this stage).

Prediction averages the softmax over K generated parameter vectors:
p(y|x) ≈ (1/K) Σ_k softmax(f(x; G(z_k))). ``deployable()`` is a ``GeneratorEnsemble`` (fixed z_k)
whose forward returns log p(y|x); ``eval_logits`` also reports the SGLD samples' ensemble.

Defaults follow the reference configs where the reference code was read (docs/methods/posterior_distillation.md) (ε = 0.05, wd = 1e-3,
burn-in 500, thin 20, z dim 32, hidden 100, λ = 10, 5 critic steps, Adam 1e-4, batch 100, 200
predictive samples). Deviations and best guesses:
- Offline variant (Alg. 1) only: sample first, then train the GAN; the online variant (parallel
  chains feeding a buffer while the GAN trains) is not implemented.
- ``standardize`` (default on, an addition from the calibration in docs/methods/posterior_distillation.md): the GAN sees each
  coordinate standardised by the samples' mean and std; generated vectors are mapped back.
- GAN optimiser: Adam(1e-4) with ``gan_betas`` = (0.5, 0.9), as the reference ``gan.py`` (the
  TensorFlow script the APD README runs for MNIST) uses for WGAN-GP; the reference's alternative
  ``gan_pytorch.py`` keeps PyTorch's defaults (0.9, 0.999). Both are one option away.
- SGLD step size. The sampler's step on the log posterior (sum over the N points) is h = ε/N:
  the reference config (``sgld-mnist-1-1.yaml``: ε = 0.05, N = 50 000) gives h = 1e-6. Small data
  with the same ε has a much larger h (ε = 0.05 on N = 1150 is 4.3e-5; the digits reproduction's
  ε = 0.5 is 4.3e-4, about 430x the reference's). ``sgld_step`` sets h directly (ε = h·N).
- Generator iterations: one per engine step, so ``gan_epochs`` x batches per epoch; the reference
  trains 100 000 (``gan1.yaml``: ``iters``), 5 critic steps each. The default 100 epochs on a
  small dataset is far fewer: raise ``gan_epochs`` for a faithful run.
- ``max_samples``: the GAN trains on the last ``max_samples`` samples (reference: 1000).
- The SGLD step ignores the run's ``train.lr``/optimizer; the stage's schedule is constant.
- Run lengths are in engine epochs (``sample_epochs``, ``gan_epochs``), one iteration per batch.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from joryu.distiller import Distiller
from joryu.losses.posterior import (
    SGLD,
    cyclical_step,
    ensemble_probs,
    flatten_params,
    gradient_penalty,
    in_sampling_phase,
    wgan_critic_loss,
    wgan_generator_loss,
)
from joryu.methods.base import (
    Baseline,
    DefaultsEvidence,
    Method,
    Params,
    Stage,
    StageContext,
    register_method,
)
from joryu.outputs import forward


def mlp_net(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class ParameterEnsemble(nn.Module):
    """A network template evaluated at K parameter vectors; forward gives log mean softmax."""

    def __init__(self, model: nn.Module, vectors: torch.Tensor):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.register_buffer("vectors", vectors.detach().clone())

    def forward(self, x):
        return ensemble_probs(self.model, self.vectors, x).clamp_min(1e-12).log()


class GeneratorEnsemble(nn.Module):
    """The distilled posterior: G(z_k) for K fixed z_k, mapped back to parameter space."""

    def __init__(self, model: nn.Module, generator: nn.Module, mean: torch.Tensor,
                 std: torch.Tensor, num_samples: int = 200, z_dim: int = 32, seed: int = 0):
        super().__init__()
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.generator = generator
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)
        self.register_buffer("z", torch.randn(num_samples, z_dim, generator=torch.Generator().manual_seed(seed)))

    def vectors(self, z=None) -> torch.Tensor:
        z = self.z if z is None else z
        return self.generator(z.to(self.mean.device)) * self.std + self.mean

    def forward(self, x):
        with torch.no_grad():
            return ensemble_probs(self.model, self.vectors(), x).clamp_min(1e-12).log()


class SGLDDistiller(Distiller):
    """Stage 1: run SGLD on the student and keep thinned samples after burn-in."""

    automatic_optimization = False

    def __init__(self, student: nn.Module, num_data: int, lr: float, weight_decay: float,
                 burn_in: int, thin: int, noise: bool, input_key: str = "input", *,
                 step: float | None, cycle_length: int | None, explore: float, temperature: float):
        super().__init__(student, (), input_key)
        lr = step * num_data if step is not None else lr  # h = eps / N
        self.num_data, self.lr, self.weight_decay = num_data, lr, weight_decay
        self.burn_in, self.thin, self.noise = burn_in, thin, noise
        self.cycle_length, self.explore, self.temperature = cycle_length, explore, temperature
        # the iteration count and the kept samples are buffers, so a checkpoint holds them and a
        # resumed run (or a stage read back on --resume) has every sample an uninterrupted one has
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))
        self.register_buffer("kept", torch.zeros(0, flatten_params(student).numel()))

    @property
    def iteration(self) -> int:
        return int(self.iterations)

    @property
    def samples(self) -> torch.Tensor:
        """The kept samples, one flattened parameter vector per row."""
        return self.kept

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = state_dict.get(prefix + "kept")
        if saved is not None and saved.shape != self.kept.shape:  # as many samples as were kept
            self.kept = torch.zeros_like(saved, device=self.kept.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def schedule(self, k: int) -> tuple[float, bool]:
        """(ε_k, sampling) for iteration k = 0, 1, ...: constant ε and always sampling, or with
        ``cycle_length`` the cSG-MCMC cosine cycle, whose exploration phase runs without noise."""
        if self.cycle_length is None:
            return self.lr, True
        return (cyclical_step(k, self.lr, self.cycle_length),
                in_sampling_phase(k, self.cycle_length, self.explore))

    def keeps(self, k: int) -> bool:
        """Whether iterate k (0-based, taken after its update) is kept: after ``burn_in`` iterations,
        every ``thin``-th, and with a cycle only in the sampling phase."""
        done = k + 1
        return done > self.burn_in and (done - self.burn_in) % self.thin == 0 and self.schedule(k)[1]

    def configure_optimizers(self, build):
        return [SGLD(self.student.parameters(), self.lr, self.num_data, self.weight_decay, self.noise,
                     temperature=self.temperature)]

    def training_step(self, batch):
        loss = F.cross_entropy(forward(self.student, batch, self.input_key), batch["target"])
        self.ctx.backward(loss)
        opt = self.ctx.optimizers[0]
        if self.cycle_length is not None:  # set before every update (the engine's schedule resets lr)
            eps, sampling = self.schedule(self.iteration)
            for g in opt.param_groups:
                g["lr"], g["noise"] = eps, self.noise and sampling
        self.ctx.step(opt)
        if self.keeps(self.iteration):
            sample = flatten_params(self.student).detach().to(self.kept.device, self.kept.dtype)
            self.kept = torch.cat([self.kept, sample[None]])
        self.iterations += 1
        return {"loss": loss.detach()}

    def sample_tensor(self) -> torch.Tensor:
        if len(self.kept) == 0:
            raise RuntimeError(f"SGLD kept no samples: {self.iteration} iterations, burn-in {self.burn_in}, "
                               f"thin {self.thin}; run the sample stage longer")
        return self.kept.cpu()

    @torch.no_grad()
    def eval_logits(self, batch):
        out = {"student": forward(self.student, batch, self.input_key)}
        if len(self.kept):
            ens = ParameterEnsemble(self.student, self.sample_tensor().to(batch[self.input_key].device))
            out["sgld"] = ens(batch[self.input_key])
        return out


class APDDistiller(Distiller):
    """Stage 2: WGAN-GP from noise to parameter vectors, against the SGLD samples."""

    automatic_optimization = False

    def __init__(self, student: nn.Module, samples: torch.Tensor, z_dim: int, hidden: int,
                 layers: int, n_critic: int, gp_weight: float, gan_batch: int, betas,
                 standardize: bool, num_predictive: int, seed: int = 0, input_key: str = "input"):
        super().__init__(student, (), input_key)
        for p in student.parameters():
            p.requires_grad_(False)
        d = samples.shape[1]
        self.register_buffer("samples", samples.detach().clone())
        mean = samples.mean(0) if standardize else torch.zeros(d)
        std = samples.std(0).clamp_min(1e-6) if standardize and len(samples) > 1 else torch.ones(d)
        self.generator = mlp_net([z_dim] + [hidden] * layers + [d])
        self.critic = mlp_net([d] + [hidden] * layers + [1])
        self.ensemble = GeneratorEnsemble(student, self.generator, mean, std, num_predictive, z_dim, seed)
        self.z_dim, self.n_critic, self.gp_weight, self.gan_batch, self.betas = z_dim, n_critic, gp_weight, gan_batch, betas

    def configure_optimizers(self, build):
        opts = [build(list(self.generator.parameters())), build(list(self.critic.parameters()))]
        for o in opts:
            for g in o.param_groups:
                if "betas" in g:
                    g["betas"] = tuple(self.betas)
        return opts

    def _real(self, device):
        idx = torch.randint(len(self.samples), (self.gan_batch,))
        return (self.samples[idx.to(self.samples.device)].to(device) - self.ensemble.mean) / self.ensemble.std

    def training_step(self, batch):
        opt_g, opt_d = self.ctx.optimizers
        device = self.samples.device
        for _ in range(self.n_critic):
            opt_d.zero_grad(set_to_none=True)
            real = self._real(device)
            fake = self.generator(torch.randn(self.gan_batch, self.z_dim, device=device)).detach()
            w = wgan_critic_loss(self.critic(real), self.critic(fake))
            gp = gradient_penalty(self.critic, real, fake)
            self.ctx.backward(w + self.gp_weight * gp)
            self.ctx.step(opt_d)
        opt_g.zero_grad(set_to_none=True)
        g_loss = wgan_generator_loss(self.critic(self.generator(torch.randn(self.gan_batch, self.z_dim, device=device))))
        self.ctx.backward(g_loss)
        self.ctx.step(opt_g)
        opt_d.zero_grad(set_to_none=True)
        return {"loss": g_loss.detach(), "critic_wasserstein": -w.detach(), "gp": gp.detach()}

    @torch.no_grad()
    def eval_logits(self, batch):
        x = batch[self.input_key]
        return {"generator": self.ensemble(x),
                "sgld": ParameterEnsemble(self.student, self.samples).to(x.device)(x)}

    def deployable(self) -> nn.Module:
        return self.ensemble

    def extra_metrics(self):
        with torch.no_grad():
            gen = self.ensemble.vectors()
        return {"gen_std": float(gen.std(0).mean()), "sgld_std": float(self.samples.std(0).mean())}


@dataclass
class PosteriorState:
    """What the sampling stage hands to the GAN stage: the kept SGLD samples, one flattened
    parameter vector per row (at most ``max_samples``, the latest)."""

    samples: torch.Tensor | None = None


class PosteriorDistillationParams(Params):
    sgld_lr: float = Field(0.05, gt=0, description="epsilon (reference config 0.05 with N = 50k); step h = eps/N")
    sgld_step: float | None = Field(None, gt=0, description="h = eps/N directly (reference 1e-6); overrides sgld_lr")
    weight_decay: float = Field(1e-3, ge=0, description="wd: the Gaussian prior's precision per data point")
    burn_in: int = Field(500, ge=0, description="SGLD iterations discarded")
    thin: int = Field(20, ge=1, description="keep every thin-th iterate after burn-in")
    noise: bool = Field(True, description="False: the sampler is plain SGD with lr eps/2 (the MAP baseline)")
    cycle_length: int | None = Field(None, ge=2, description=(
        "cyclical SG-MCMC (Zhang et al. 2020): the step restarts at eps every cycle_length iterations "
        "and decays as eps/2 (cos(pi (k mod L)/L) + 1); None: constant eps"))
    explore: float = Field(0.8, ge=0, lt=1, description=(
        "with cycle_length: the fraction of each cycle run without noise (exploration, SGD); samples "
        "are kept only in the rest (the sampling phase)"))
    temperature: float = Field(1.0, ge=0, description=(
        "T: SGLD noise variance T eps/N, samples from p(theta|D)^(1/T); 1 is the posterior"))
    max_samples: int = Field(1000, ge=1, description="the GAN trains on the last max_samples samples")
    sample_epochs: int = Field(100, ge=1, description="engine epochs of SGLD (one iteration per batch)")
    sample_batch_size: int = Field(100, ge=1)
    gan_epochs: int = Field(100, ge=1, description="engine epochs of WGAN-GP (one G iteration per batch)")
    gan_lr: float = Field(1e-4, gt=0)
    gan_betas: tuple[float, float] = Field((0.5, 0.9), description="Adam betas of G and the critic (reference gan.py)")
    gan_batch: int = Field(100, ge=1, description="parameter vectors per GAN batch")
    z_dim: int = Field(32, ge=1)
    hidden: int = Field(100, ge=1)
    layers: int = Field(3, ge=1)
    n_critic: int = Field(5, ge=1)
    gp_weight: float = Field(10.0, ge=0)
    standardize: bool = Field(True, description="GAN on per-coordinate standardised vectors (an addition)")
    num_predictive: int = Field(200, ge=1, description="generated samples averaged at test time")


@register_method("posterior_distillation",
                 paper="Wang, Vicol, Lucas, Gu, Grosse & Zemel 2018, Adversarial Distillation of Bayesian "
                       "Neural Network Posteriors, ICML")
class PosteriorDistillation(Method):
    Params = PosteriorDistillationParams
    defaults_evidence = DefaultsEvidence(
        hurts=True, source="results/defaults/posterior_distillation.md",
        regime="Checked on digits only (a run takes 2 to 10 minutes there; on MNIST-1D one had not finished "
               "after 15): the generator's posterior-predictive student is 0.26 points below the student "
               "alone (3 seeds, interval -6.12 .. +5.60, one seed +2.3, one -2.3). Its regime is calibrated "
               "uncertainty from a distilled posterior (NLL, out-of-distribution detection: its "
               "reproduction), not a more accurate small network.")
    needs_teacher = False

    def new_state(self, ctx: StageContext) -> PosteriorState:
        return PosteriorState()

    def stages(self):
        p = self.params

        def build_sampler(ctx):
            return SGLDDistiller(ctx.student, len(ctx.train_data), p.sgld_lr, p.weight_decay, p.burn_in, p.thin,
                                 p.noise, step=p.sgld_step, cycle_length=p.cycle_length, explore=p.explore,
                                 temperature=p.temperature)

        def keep_samples(ctx: StageContext[PosteriorState], distiller):
            ctx.state.samples = distiller.sample_tensor()[-p.max_samples:]

        def build_gan(ctx: StageContext[PosteriorState]):
            return APDDistiller(ctx.student, ctx.state.samples, p.z_dim, p.hidden, p.layers, p.n_critic,
                                p.gp_weight, p.gan_batch, betas=p.gan_betas, standardize=p.standardize,
                                num_predictive=p.num_predictive)

        return [
            Stage("sample", build_sampler, train={"epochs": p.sample_epochs, "batch_size": p.sample_batch_size,
                                                  "scheduler": "constant", "warmup_epochs": 0,
                                                  "clip_grad_norm": None},
                  after=keep_samples),
            Stage("gan", build_gan, train={"epochs": p.gan_epochs, "optimizer": "adam", "lr": p.gan_lr,
                                           "weight_decay": 0.0, "scheduler": "constant", "warmup_epochs": 0,
                                           "batch_size": p.sample_batch_size}),
        ]

    def deployed_network(self, student, teacher):
        """A ``GeneratorEnsemble`` shaped like the one the gan stage builds (weights to be loaded)."""
        p = self.params
        d = flatten_params(student).numel()
        gen = mlp_net([p.z_dim] + [p.hidden] * p.layers + [d])
        return GeneratorEnsemble(student, gen, torch.zeros(d), torch.ones(d), p.num_predictive, p.z_dim)

    def baselines(self):
        """The paper's comparisons: SGD (the MAP point estimate: the same sampler without noise, same
        init, iterations and step) and the SGLD samples' own ensemble (what the generator distils,
        at one forward pass per kept sample)."""
        p = self.params

        def sgd(b):
            sample = {"epochs": p.sample_epochs, "batch_size": p.sample_batch_size, "scheduler": "constant",
                      "warmup_epochs": 0, "clip_grad_norm": None}
            return b.train(b.fresh_student(), train=sample, build=lambda ctx: SGLDDistiller(
                ctx.student, len(ctx.train_data), p.sgld_lr, p.weight_decay, p.burn_in, p.thin, False,
                step=p.sgld_step, cycle_length=p.cycle_length, explore=p.explore,
                temperature=p.temperature))

        def sgld(b):
            return ParameterEnsemble(b.ctx.results["sample"].distiller.student, b.ctx.state.samples)

        return [Baseline("SGD (MAP, same iterations)", sgd, folder="baseline_sgd"),
                Baseline("SGLD samples' ensemble", sgld)]
