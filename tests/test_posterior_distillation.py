import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from joryu.config import TrainConfig
from joryu.errors import ConfigError
from joryu.losses.posterior import (
    SGLD,
    auroc,
    cyclical_step,
    ensemble_probs,
    flatten_params,
    gradient_penalty,
    in_sampling_phase,
    predictive_entropy,
    unflatten_params,
    wgan_critic_loss,
    wgan_generator_loss,
)
from joryu.methods import StageContext, get_method
from joryu.methods.posterior_distillation import (
    APDDistiller,
    GeneratorEnsemble,
    ParameterEnsemble,
    SGLDDistiller,
)
from joryu.run.stages import run_stages


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 3))


def test_sgld_without_noise_is_sgd_with_half_the_step():
    a, b = net(), net()
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    opt_a = SGLD(a.parameters(), lr=0.2, num_data=100, weight_decay=0.01, noise=False)
    opt_b = torch.optim.SGD(b.parameters(), lr=0.1, weight_decay=0.01)
    for _ in range(3):
        for m, o in ((a, opt_a), (b, opt_b)):
            o.zero_grad()
            F.cross_entropy(m(x), y).backward()
            o.step()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_sgld_step_variance_is_eps_over_n():
    """With zero gradient and no weight decay each coordinate moves by N(0, eps/N)."""
    eps, n = 0.5, 50
    p = nn.Parameter(torch.zeros(200_000))
    opt = SGLD([p], lr=eps, num_data=n, generator=torch.Generator().manual_seed(0))
    p.grad = torch.zeros_like(p)
    opt.step()
    var = float(p.detach().var())
    assert abs(var - eps / n) < 0.02 * eps / n
    assert abs(float(p.detach().mean())) < 4 * math.sqrt(eps / n / len(p))
    # the drift: a constant gradient g moves the mean by -eps/2 * g
    p2 = nn.Parameter(torch.zeros(200_000))
    opt2 = SGLD([p2], lr=eps, num_data=n, generator=torch.Generator().manual_seed(1))
    p2.grad = torch.full_like(p2, 2.0)
    opt2.step()
    assert abs(float(p2.detach().mean()) + eps / 2 * 2.0) < 4 * math.sqrt(eps / n / len(p2))


def test_flatten_unflatten_roundtrip():
    m = net()
    v = flatten_params(m)
    assert v.shape == (sum(p.numel() for p in m.parameters()),)
    back = unflatten_params(v, m)
    for name, p in m.named_parameters():
        assert torch.equal(back[name], p.detach())
    batch = torch.stack([v, 2 * v])
    assert torch.equal(unflatten_params(batch, m)["2.bias"][1], 2 * m[2].bias.detach())
    with pytest.raises(ValueError, match="parameters"):
        unflatten_params(v[:-1], m)


def test_identical_samples_give_the_single_model_predictive():
    m = net()
    x = torch.randn(10, 8)
    v = flatten_params(m)
    probs = ensemble_probs(m, v.repeat(7, 1), x, chunk=3)
    assert torch.allclose(probs, m(x).softmax(-1), atol=1e-6)
    ens = ParameterEnsemble(m, v.repeat(4, 1))
    assert torch.allclose(ens(x), m(x).log_softmax(-1), atol=1e-5)


def test_ensemble_probs_is_the_mean_of_member_softmaxes():
    m = net()
    x = torch.randn(5, 8)
    vs = torch.randn(3, flatten_params(m).numel())
    expected = torch.stack([torch.func.functional_call(m, unflatten_params(v, m), (x,)).softmax(-1)
                            for v in vs]).mean(0)
    assert torch.allclose(ensemble_probs(m, vs, x), expected, atol=1e-6)


def test_entropy_and_auroc():
    uniform, onehot = torch.full((1, 4), 0.25), torch.tensor([[1.0, 0, 0, 0]])
    assert abs(float(predictive_entropy(uniform)) - math.log(4)) < 1e-6
    assert float(predictive_entropy(onehot)) < 1e-6
    assert auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == 0.0
    assert auroc(torch.tensor([1.0, 1.0]), torch.tensor([1.0])) == 0.5
    g = torch.Generator().manual_seed(0)
    assert abs(auroc(torch.randn(2000, generator=g), torch.randn(2000, generator=g)) - 0.5) < 0.03


def test_gradient_penalty_and_wgan_losses():
    lin = nn.Linear(5, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.6, 0.8, 0.0, 0.0, 0.0]]))  # unit-norm gradient everywhere
    real, fake = torch.randn(8, 5), torch.randn(8, 5)
    assert float(gradient_penalty(lin, real, fake)) < 1e-10
    with torch.no_grad():
        lin.weight.mul_(3.0)
    assert abs(float(gradient_penalty(lin, real, fake)) - 4.0) < 1e-5
    gp = gradient_penalty(lin, real, fake)
    gp.backward()
    assert lin.weight.grad is not None and lin.weight.grad.abs().sum() > 0
    d_real, d_fake = torch.tensor([1.0, 3.0]), torch.tensor([0.0, 1.0])
    assert float(wgan_critic_loss(d_real, d_fake)) == -1.5
    assert float(wgan_generator_loss(d_fake)) == -0.5


def test_generator_ensemble_maps_back_to_parameter_space():
    m = net()
    d = flatten_params(m).numel()
    gen = nn.Linear(4, d)
    with torch.no_grad():
        gen.weight.zero_()
        gen.bias.zero_()
    mean = flatten_params(m)
    ens = GeneratorEnsemble(m, gen, mean, torch.ones(d), num_samples=5, z_dim=4)
    assert torch.allclose(ens.vectors(), mean.repeat(5, 1))
    x = torch.randn(3, 8)
    assert torch.allclose(ens(x), m(x).log_softmax(-1), atol=1e-5)


def test_posterior_distillation_two_stages_through_the_engine(tiny_data):
    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    m = get_method("posterior_distillation", {"sgld_lr": 0.5, "burn_in": 20, "thin": 5, "sample_epochs": 20,
                                              "gan_epochs": 2, "hidden": 16, "num_predictive": 20})
    cfg = TrainConfig(epochs=1)
    ens, res = run_stages(m, student=student, teacher=None, train=tiny_data, val=tiny_data, train_cfg=cfg, run_dir=None, seed=0, augment=None, progress=False, resume=False, label="apd", num_classes=3)
    sampler = res["sample"].distiller
    # 240 samples / batch 100 = 3 iterations per epoch, 60 in all: (60 - 20) / 5 samples kept
    assert sampler.iteration == 60 and len(sampler.samples) == 8
    assert res["sample"].val["val/sgld/acc"] > 60
    gan = res["gan"].distiller
    assert isinstance(gan, APDDistiller) and isinstance(ens, GeneratorEnsemble)
    assert gan.samples.shape == (8, flatten_params(student).numel())
    assert {"val/generator/acc", "val/sgld/acc"} <= set(res["gan"].val)
    assert "gen_std" in res["gan"].history[-1]
    # the student's weights are a template only; the GAN trains generator and critic
    assert all(not p.requires_grad for p in gan.student.parameters())
    assert ens(tiny_data.tensors["input"][:4]).shape == (4, 3)


def test_posterior_distillation_reproduction_quick(tmp_path):
    from joryu.reproduce import run_reproduction

    md = run_reproduction("posterior_distillation", quick=True, out_dir=tmp_path, progress=False)
    text = md.read_text()
    assert text.count("- **") == 9 and "QUICK smoke run" in text
    data = json.loads(md.with_suffix(".json").read_text())
    assert len(data["claims"]) == 9 and len(data["tables"]) == 2


def test_sgld_step_and_gan_betas_come_from_the_params(tiny_data):
    # h = eps / N is the step on the log posterior; the reference's is 0.05 / 50000 = 1e-6
    m = get_method("posterior_distillation", {"sgld_step": 1e-6, "gan_betas": (0.9, 0.999)})
    stages = m.stages()
    ctx = StageContext(student=nn.Linear(8, 3), teacher=None, train_data=tiny_data, num_classes=3,
                       train_cfg=TrainConfig(epochs=1))
    ctx.state = m.new_state(ctx)
    sampler = stages[0].build(ctx)
    assert sampler.lr == pytest.approx(1e-6 * len(tiny_data))
    (opt,) = sampler.configure_optimizers(None)
    with torch.no_grad():  # with zero gradient and no prior, the per-coordinate step variance is h
        w = torch.zeros(20000, requires_grad=True)
        sgld = type(opt)([w], lr=sampler.lr, num_data=len(tiny_data), generator=torch.Generator().manual_seed(0))
        sgld.step()
    assert float(w.var()) == pytest.approx(1e-6, rel=0.05)
    ctx.state.samples = torch.randn(4, sum(p.numel() for p in ctx.student.parameters()))
    gan = stages[1].build(ctx)
    opts = gan.configure_optimizers(lambda ps: torch.optim.Adam(ps, lr=1e-4))
    assert all(g["betas"] == (0.9, 0.999) for o in opts for g in o.param_groups)
    default = get_method("posterior_distillation").params
    assert default.gan_betas == (0.5, 0.9) and default.sgld_step is None


def test_cyclical_step_restarts_decays_and_bottoms_out():
    eps0, L = 0.8, 10
    steps = [cyclical_step(k, eps0, L) for k in range(3 * L)]
    assert steps[0] == steps[L] == steps[2 * L] == pytest.approx(eps0)  # every cycle starts at eps0
    assert steps[L // 2] == pytest.approx(eps0 / 2)  # half way: cos(pi/2) = 0
    cycle = steps[:L]
    assert all(a > b for a, b in zip(cycle, cycle[1:]))  # decays within a cycle
    assert min(steps) == pytest.approx(eps0 / 2 * (math.cos(math.pi * (L - 1) / L) + 1))
    assert min(steps) == steps[L - 1] == steps[3 * L - 1] and 0 < min(steps) < 0.03 * eps0
    with pytest.raises(ValueError, match="cycle_length"):
        cyclical_step(0, eps0, 0)


def test_sampling_phase_is_the_tail_of_each_cycle():
    L, beta = 10, 0.8
    phase = [in_sampling_phase(k, L, beta) for k in range(2 * L)]
    assert phase == [False] * 8 + [True] * 2 + [False] * 8 + [True] * 2
    assert all(in_sampling_phase(k, L, 0.0) for k in range(L))  # no exploration: always sampling


def test_sgld_noise_variance_is_temperature_times_eps_over_n():
    eps, n, temp = 0.5, 50, 0.1
    p = nn.Parameter(torch.zeros(200_000))
    opt = SGLD([p], lr=eps, num_data=n, generator=torch.Generator().manual_seed(0), temperature=temp)
    p.grad = torch.zeros_like(p)
    opt.step()
    assert float(p.detach().var()) == pytest.approx(temp * eps / n, rel=0.02)
    with pytest.raises(ValueError, match="temperature"):
        SGLD([p], lr=eps, num_data=n, temperature=-1.0)


class _WithIdle(nn.Module):
    """A classifier and a parameter the loss never touches: SGLD moves it by its noise alone."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 3)
        self.idle = nn.Parameter(torch.zeros(50_000))

    def forward(self, x):
        return self.fc(x)


def _drive(distiller, iterations):
    """Run ``distiller.training_step`` as the engine would (zero_grad, step), recording the idle
    parameter after every iteration."""
    (opt,) = distiller.configure_optimizers(None)
    distiller.ctx = SimpleNamespace(optimizers=[opt], backward=lambda loss: loss.backward(),
                                    step=lambda o: (o.step(), o.zero_grad(set_to_none=True)))
    x, y = torch.randn(16, 8), torch.randint(0, 3, (16,))
    trace = [distiller.student.idle.detach().clone()]
    for _ in range(iterations):
        distiller.training_step({"input": x, "target": y})
        trace.append(distiller.student.idle.detach().clone())
    return trace


def test_cyclical_sampler_keeps_samples_only_in_the_sampling_phase_after_burn_in():
    torch.manual_seed(0)
    L, beta, burn, n = 10, 0.6, 17, 100
    d = SGLDDistiller(_WithIdle(), n, 0.5, 0.0, burn_in=burn, thin=1, noise=True, step=None,
                      cycle_length=L, explore=beta, temperature=0.5)
    trace = _drive(d, 40)
    kept = [k for k in range(40) if d.keeps(k)]
    # sampling phase: k mod 10 in {6..9}; burn-in: the first 17 iterates (k = 0..16) are dropped
    assert kept == [17, 18, 19, 26, 27, 28, 29, 36, 37, 38, 39]
    assert len(d.samples) == len(kept)
    for j, k in enumerate(kept):  # sample j is iterate k (its idle coordinates)
        assert torch.equal(d.samples[j][:50_000], trace[k + 1])  # own parameters come first
    for k in range(40):  # the noise follows the step: variance T eps_k / N, none while exploring
        move = trace[k + 1] - trace[k]
        if in_sampling_phase(k, L, beta):
            assert float(move.var()) == pytest.approx(0.5 * cyclical_step(k, 0.5, L) / n, rel=0.05)
        else:
            assert torch.equal(move, torch.zeros_like(move))


def test_constant_sampler_keeps_every_thin_th_iterate_after_burn_in():
    d = SGLDDistiller(_WithIdle(), 100, 0.5, 0.0, burn_in=4, thin=3, noise=True, step=None,
                      cycle_length=None, explore=0.8, temperature=1.0)
    trace = _drive(d, 12)
    assert [k for k in range(12) if d.keeps(k)] == [6, 9]  # iterates 7 and 10 (1-based)
    moves = torch.stack([trace[k + 1] - trace[k] for k in range(12)])
    assert float(moves.var()) == pytest.approx(0.5 / 100, rel=0.02)  # variance eps/N every step


def test_cycle_params_reach_the_sampler_and_the_sgd_baseline(tiny_data):
    m = get_method("posterior_distillation", {"cycle_length": 30, "explore": 0.7, "temperature": 0.2})
    ctx = StageContext(student=nn.Linear(8, 3), teacher=None, train_data=tiny_data, num_classes=3,
                       train_cfg=TrainConfig(epochs=1))
    ctx.state = m.new_state(ctx)
    sampler = m.stages()[0].build(ctx)
    assert (sampler.cycle_length, sampler.explore, sampler.temperature) == (30, 0.7, 0.2)
    default = get_method("posterior_distillation").params
    assert default.cycle_length is None and default.temperature == 1.0  # constant step, the posterior
    with pytest.raises(ConfigError, match="cycle_length"):
        get_method("posterior_distillation", {"cycle_length": 1})
