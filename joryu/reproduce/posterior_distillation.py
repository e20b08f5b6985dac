"""Wang et al. (2018), Adversarial Posterior Distillation: SGD vs SGLD samples vs the distilled generator on digits."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from joryu import models
from joryu.config import TrainConfig
from joryu.data import load
from joryu.losses.posterior import (
    auroc,
    ensemble_probs,
    flatten_params,
    in_sampling_phase,
    predictive_entropy,
)
from joryu.methods import StageContext, get_method
from joryu.methods.posterior_distillation import APDDistiller
from joryu.reproduce.claims import Table
from joryu.reproduce.common import protocol_splits, seeded
from joryu.reproduce.protocol import Arm, Compare, Context, Study
from joryu.reproduce.registry import register_reproduction
from joryu.run.stages import run_stages
from joryu.stats import compare_paired

COLS = ["test acc (%)", "test NLL", "AUROC rotated (%)", "AUROC noise (%)"]
TEST = 600              # digits has 1797 images: 1078 train / 120 validation / 599 test (rounding)
# the budget (the previous version: 1000 sample epochs, burn-in 3000, thin 30, 125 GAN epochs; 2500 s for 3 seeds)
SAMPLE_EPOCHS, GAN_EPOCHS, MAX_SAMPLES = 300, 91, 1000
QUICK = dict(sample_epochs=60, gan_epochs=1)
# the sampler, chosen on the validation split (CHOICES, PILOT): cyclical SGLD, 20 cycles of 165 iterations
SAMPLER = dict(sgld_lr=1.0, cycle_length=165, explore=0.8, temperature=0.1, burn_in=165, thin=3)
# the previous version's sampler: constant eps = 0.5, the posterior itself
CONSTANT = dict(sgld_lr=0.5, cycle_length=None, temperature=1.0, burn_in=1200, thin=15)
ACC_MARGIN, AUROC_MARGIN = 1.0, 3.0   # stated before the run (the previous criterion: 1 point, 0.03 AUROC)
SGD, SGLD, APD = "SGD (SGLD with the noise off), 1 network", "SGLD samples' ensemble", "APD generator"

# The validation pilot (``pilot(PILOT, seeds)``): setting -> sampler overrides, 3 300 iterations each.
_CYC = dict(cycle_length=165, burn_in=165, thin=3, explore=0.8)
PILOT = {
    "constant eps 0.5, T 1 (the previous version)": CONSTANT,
    "constant eps 0.1, T 1": {**CONSTANT, "sgld_lr": 0.1},
    "constant eps 0.5, T 1, burn-in 2400, thin 5": {**CONSTANT, "burn_in": 2400, "thin": 5},
    "constant eps 0.5, T 0.1": {**CONSTANT, "temperature": 0.1},
    "constant eps 0.5, T 0.01": {**CONSTANT, "temperature": 0.01},
    "cyclical eps 0.5, L 330, T 1": {**_CYC, "sgld_lr": 0.5, "cycle_length": 330, "burn_in": 330, "thin": 5,
                                     "temperature": 1.0},
    "cyclical eps 0.5, L 660, T 1": {**_CYC, "sgld_lr": 0.5, "cycle_length": 660, "burn_in": 660, "thin": 5,
                                     "temperature": 1.0},
    "cyclical eps 1, L 330, T 1": {**_CYC, "sgld_lr": 1.0, "cycle_length": 330, "burn_in": 330, "thin": 5,
                                   "temperature": 1.0},
    "cyclical eps 2, L 330, T 1": {**_CYC, "sgld_lr": 2.0, "cycle_length": 330, "burn_in": 330, "thin": 5,
                                   "temperature": 1.0},
    "cyclical eps 1, L 330, T 1, explore 0.5": {**_CYC, "sgld_lr": 1.0, "cycle_length": 330, "burn_in": 330,
                                                "thin": 5, "temperature": 1.0, "explore": 0.5},
    "cyclical eps 1, L 330, T 0.1": {**_CYC, "sgld_lr": 1.0, "cycle_length": 330, "burn_in": 330, "thin": 5,
                                     "temperature": 0.1},
    "cyclical eps 1, L 330, T 0.1, explore 0.5": {**_CYC, "sgld_lr": 1.0, "cycle_length": 330, "burn_in": 330,
                                                  "thin": 5, "temperature": 0.1, "explore": 0.5},
    "cyclical eps 1, L 330, T 0.01": {**_CYC, "sgld_lr": 1.0, "cycle_length": 330, "burn_in": 330, "thin": 5,
                                      "temperature": 0.01},
    "cyclical eps 1, L 165, T 1": {**_CYC, "sgld_lr": 1.0, "temperature": 1.0},
    "cyclical eps 1, L 165, T 0.1 (chosen)": SAMPLER,
    "cyclical eps 1, L 110, T 0.1": {**_CYC, "sgld_lr": 1.0, "cycle_length": 110, "burn_in": 110, "thin": 2,
                                     "temperature": 0.1},
}
CHOICES = """
The sampler was chosen on the 120-image validation split (the test split unread), by `pilot(PILOT, seeds)`
in this module: every setting runs 3 300 iterations (300 epochs of batch 100) from each seed's initialisation,
and the SGD arm's network runs the same schedule with the noise off. The previous version's sampler (constant
eps = 0.5 at T = 1) gave an ensemble worse than SGD on every seed: the T = 1 posterior of this 3 760-weight MLP
under the wd = 1e-3 prior spreads each weight by about 0.34 and loses 1-2 points of accuracy. Smaller or
longer constant steps were worse, cooling (T = 0.1, 0.01) only brought the constant chain back to SGD's level,
and the cyclical schedule (cSG-MCMC: a restart every L iterations, noise-free exploration for 80% of each
cycle, samples from the low-step tail) is what put the ensemble at or below SGD. The chosen setting is the
one whose paired validation interval excludes zero (10 seeds): cyclical, eps0 = 1, L = 165 (20 cycles),
explore 0.8, T = 0.1 (a tempered posterior, as in cSG-MCMC's own experiments), burn-in one cycle, thin 3
(209 samples). Its margin is small (-0.0027 nats, 3.6% of SGD's validation NLL) and was picked among 16
settings, so the test split may well not confirm it. Validation NLL (mean over the seeds listed):

| sampler setting | samples | seeds | val NLL ensemble | val NLL SGD | ensemble - SGD (95% t) | seeds ensemble better |
|---|---|---|---|---|---|---|
| constant eps 0.5, T 1 (the previous version) | 140 | 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 | 0.1268 | 0.0801 | +0.0467 (+0.0309 .. +0.0626) | 0/10 |
| constant eps 0.1, T 1 | 140 | 0, 1, 2 | 0.1411 | 0.0843 | +0.0568 (+0.0378 .. +0.0758) | 0/3 |
| constant eps 0.5, T 1, burn-in 2400, thin 5 | 180 | 0, 1, 2 | 0.1836 | 0.0828 | +0.1008 (-0.0214 .. +0.2230) | 0/3 |
| constant eps 0.5, T 0.1 | 140 | 0, 1, 2, 3, 4 | 0.0933 | 0.0804 | +0.0129 (-0.0102 .. +0.0359) | 1/5 |
| constant eps 0.5, T 0.01 | 140 | 0, 1, 2, 3, 4 | 0.0837 | 0.0804 | +0.0032 (-0.0050 .. +0.0115) | 2/5 |
| cyclical eps 0.5, L 330, T 1 | 126 | 0, 1, 2 | 0.0803 | 0.0856 | -0.0053 (-0.0207 .. +0.0101) | 2/3 |
| cyclical eps 0.5, L 660, T 1 | 108 | 0, 1, 2 | 0.0848 | 0.0855 | -0.0007 (-0.0253 .. +0.0238) | 2/3 |
| cyclical eps 1, L 330, T 1 | 126 | 0, 1, 2, 3, 4 | 0.0724 | 0.0740 | -0.0017 (-0.0164 .. +0.0131) | 3/5 |
| cyclical eps 2, L 330, T 1 | 126 | 0, 1, 2, 3, 4 | 0.0771 | 0.0743 | +0.0028 (-0.0116 .. +0.0172) | 3/5 |
| cyclical eps 1, L 330, T 1, explore 0.5 | 297 | 0, 1, 2, 3, 4 | 0.1016 | 0.0740 | +0.0276 (+0.0126 .. +0.0425) | 0/5 |
| cyclical eps 1, L 330, T 0.1 | 126 | 0, 1, 2, 3, 4 | 0.0717 | 0.0740 | -0.0023 (-0.0091 .. +0.0045) | 3/5 |
| cyclical eps 1, L 330, T 0.1, explore 0.5 | 297 | 0, 1, 2, 3, 4 | 0.0723 | 0.0740 | -0.0018 (-0.0111 .. +0.0075) | 4/5 |
| cyclical eps 1, L 330, T 0.01 | 126 | 5, 6, 7, 8, 9 | 0.0744 | 0.0754 | -0.0010 (-0.0036 .. +0.0016) | 2/5 |
| cyclical eps 1, L 165, T 1 | 209 | 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 | 0.0726 | 0.0754 | -0.0027 (-0.0081 .. +0.0026) | 5/10 |
| cyclical eps 1, L 165, T 0.1 (chosen) | 209 | 0, 1, 2, 3, 4, 5, 6, 7, 8, 9 | 0.0726 | 0.0754 | -0.0027 (-0.0054 .. -0.0001) | 7/10 |
| cyclical eps 1, L 110, T 0.1 | 319 | 5, 6, 7, 8, 9 | 0.0739 | 0.0740 | -0.0001 (-0.0034 .. +0.0032) | 3/5 |

The generator's budget was then chosen on the same split, seed 0, with the chosen sampler's 209 samples:
its 200-network ensemble matched the SGLD ensemble's validation accuracy, NLL and AUROCs from 250 generator
iterations on (SGLD: 96.7% / NLL 0.0703 / AUROC rotated 77.8 / noise 97.0; generator at 250 / 500 / 1 000 /
1 500 iterations: NLL 0.0681 / 0.0689 / 0.0703 / 0.0709, AUROC noise 97.0 / 97.0 / 97.0 / 97.0), but its
generated vectors' spread grew only slowly (per-coordinate std 0.002 / 0.006 / 0.016 / 0.017 against the
samples' 0.020): 1 001 iterations (91 epochs) is where the spread reaches 0.8x the samples' and stops growing
within the pilot. One seed's sampler and GAN took about 135 s on the shared machine, which sets the 5-seed
run at about 12 minutes.
"""


def _metrics(probs_fn, test) -> dict:
    x, y = test.tensors["input"], test.targets
    p = probs_fn(x)
    p_rot = probs_fn(torch.flip(x, dims=(-2, -1)))
    p_noise = probs_fn(torch.randn(x.shape, generator=torch.Generator().manual_seed(123)))
    h = predictive_entropy(p)
    return {"test acc (%)": 100.0 * float((p.argmax(-1) == y).float().mean()),
            "test NLL": float(-p[torch.arange(len(y)), y].clamp_min(1e-12).log().mean()),
            "AUROC rotated (%)": 100.0 * auroc(predictive_entropy(p_rot), h),
            "AUROC noise (%)": 100.0 * auroc(predictive_entropy(p_noise), h)}


def _params(quick: bool, sampler: dict | None = None) -> dict:
    run = QUICK if quick else dict(sample_epochs=SAMPLE_EPOCHS, gan_epochs=GAN_EPOCHS)
    return {**SAMPLER, "weight_decay": 1e-3, "max_samples": MAX_SAMPLES, **run, **(sampler or {})}


def _mlp(shape):
    return models.create("mlp", input_shape=shape, num_classes=10, hidden=(50,))


def _stages(method, which: slice, state=None):
    """``method`` cut to some of its stages (the SGD arm runs the sampler alone; the APD arm the GAN
    on the SGLD arm's samples), as run_stages expects of a method."""
    return SimpleNamespace(name=method.name, stages=lambda: method.stages()[which],
                           new_state=(lambda ctx: state) if state is not None else method.new_state)


def _run(method, ctx, label, context=None):
    student = seeded(ctx.seed, _mlp, ctx.shape) if context is None else context.student
    return run_stages(method, student=student, teacher=None, train=ctx.tr, val=None,
                      train_cfg=TrainConfig(epochs=1, log_every=1000), run_dir=None, seed=ctx.seed,
                      augment=None, progress=False, resume=False, label=label, num_classes=10,
                      context=context)


def _sgd_net(ctx, sampler=None):
    method = get_method("posterior_distillation", {**_params(ctx.quick, sampler), "noise": False})
    net, _ = _run(_stages(method, slice(0, 1)), ctx, "sgd")
    return net.eval()


def _sgld_samples(ctx, sampler=None):
    """The sampling stage alone; its StageContext (student template, samples) is left in ctx."""
    method = get_method("posterior_distillation", _params(ctx.quick, sampler))
    sc = StageContext(student=seeded(ctx.seed, _mlp, ctx.shape), teacher=None, train_data=ctx.tr,
                      num_classes=10, train_cfg=TrainConfig(epochs=1, log_every=1000), seed=ctx.seed)
    _run(_stages(method, slice(0, 1)), ctx, "sgld", context=sc)
    ctx.stage_ctx, ctx.method = sc, method
    return sc.student, sc.state.samples


def _sgd(ctx, eval_key="te"):
    net = _sgd_net(ctx)
    with torch.no_grad():
        return _metrics(lambda x: net(x).softmax(-1), ctx[eval_key])


def _sgld(ctx, eval_key="te"):
    """The SGLD chain alone (its samples stay in ctx for the APD arm)."""
    student, samples = _sgld_samples(ctx)
    with torch.no_grad():
        return _metrics(lambda x: ensemble_probs(student, samples, x), ctx[eval_key])


def _apd(ctx, eval_key="te"):
    """The GAN stage on the SGLD arm's samples; prediction averages the generated networks."""
    sc = ctx.stage_ctx
    ens, res = _run(_stages(ctx.method, slice(1, 2), sc.state), ctx, "apd", context=sc)
    ctx.ensemble, ctx.apd = ens, res["gan"].distiller
    with torch.no_grad():
        return _metrics(lambda x: ens(x).exp(), ctx[eval_key])


def generator_pilot(seed: int = 0, total: int = 1500, every: int = 250, sampler: dict | None = None) -> list[dict]:
    """The generator's budget, on the validation split only: one seed's SGLD samples (``sampler``,
    default the chosen one), then the GAN stage's distiller stepped ``total`` generator iterations
    with the stage's optimizers, its 200-network ensemble scored every ``every`` iterations (with
    the generated vectors' per-coordinate std; the SGD and SGLD rows come first)."""
    bundle = load("digits")
    tr, va, _ = protocol_splits(bundle, test_size=TEST)
    ctx = Context(seed=seed, quick=False, tr=tr, va=va, shape=bundle.input_shape)
    net = _sgd_net(ctx, sampler)
    student, samples = _sgld_samples(ctx, sampler)
    p = ctx.method.params
    rows = []
    with torch.no_grad():
        rows.append({"arm": "SGD", **_metrics(lambda x: net(x).softmax(-1), va)})
        rows.append({"arm": "SGLD", "std": float(samples.std(0).mean()),
                     **_metrics(lambda x: ensemble_probs(student, samples, x), va)})
    torch.manual_seed(seed)
    apd = APDDistiller(student, samples, p.z_dim, p.hidden, p.layers, p.n_critic, p.gp_weight, p.gan_batch,
                       p.gan_betas, p.standardize, p.num_predictive, seed)
    opts = [torch.optim.Adam(list(net_.parameters()), lr=p.gan_lr, betas=tuple(p.gan_betas))
            for net_ in (apd.generator, apd.critic)]
    apd.ctx = SimpleNamespace(optimizers=opts, backward=lambda loss: loss.backward(), step=lambda o: o.step())
    for it in range(1, total + 1):
        apd.training_step(None)
        if it % every == 0:
            with torch.no_grad():
                rows.append({"arm": f"APD {it}", "std": float(apd.ensemble.vectors().std(0).mean()),
                             **_metrics(lambda x: apd.ensemble(x).exp(), va)})
            print(rows[-1], flush=True)
    return rows


def pilot_markdown(out: dict[str, list[tuple]], seeds: dict[str, list[int]]) -> str:
    """``pilot``'s output as a markdown table: mean validation NLL of the ensemble and of SGD, the
    paired difference with its two-sided 95% t interval, and the seeds."""
    rows = ["| sampler setting | samples | seeds | val NLL ensemble | val NLL SGD | ensemble - SGD (95% t) "
            "| seeds ensemble better |", "|---|---|---|---|---|---|---|"]
    for name, res in out.items():
        cmp = compare_paired([r[0] for r in res], [r[1] for r in res], sign=-1)
        ens, sgd = (sum(r[i] for r in res) / len(res) for i in (0, 1))
        better = sum(r[0] < r[1] for r in res)
        rows.append(f"| {name} | {res[0][2]} | {', '.join(map(str, seeds[name]))} | {ens:.4f} | {sgd:.4f} | "
                    f"{cmp.mean:+.4f} ({cmp.interval[0]:+.4f} .. {cmp.interval[1]:+.4f}) | {better}/{len(res)} |")
    return "\n".join(rows)


def _nll(probs, y) -> float:
    return float(-probs[torch.arange(len(y)), y].clamp_min(1e-12).log().mean())


def pilot(settings: dict[str, dict], seeds=(0, 1, 2), quick: bool = False) -> dict[str, list[tuple]]:
    """The sampler's choice, on the validation split only: per setting and seed, (validation NLL of
    the SGLD samples' ensemble, of the SGD network run with the same schedule and the noise off,
    samples kept). ``settings``: name -> sampler overrides of ``_params``."""
    bundle = load("digits")
    tr, va, _ = protocol_splits(bundle, test_size=TEST)
    x, y = va.tensors["input"], va.targets
    out = {}
    for name, sampler in settings.items():
        out[name] = []
        for seed in seeds:
            ctx = Context(seed=seed, quick=quick, tr=tr, va=va, shape=bundle.input_shape)
            net = _sgd_net(ctx, sampler)
            student, samples = _sgld_samples(ctx, sampler)
            with torch.no_grad():
                out[name].append((_nll(ensemble_probs(student, samples, x), y),
                                  _nll(net(x).softmax(-1), y), len(samples)))
            print(name, seed, *(f"{v:.4f}" for v in out[name][-1][:2]), out[name][-1][2], flush=True)
    return out


@register_reproduction("posterior_distillation", default_seeds=5, quick_seeds=2,
                       doc="Wang et al. 2018: SGLD posterior distilled into a WGAN-GP weight generator (digits MLP)")
def reproduce_posterior_distillation(seeds: list[int], quick: bool, progress: bool) -> Study:
    p = _params(quick)

    bundle = load("digits")
    tr, va, te = protocol_splits(bundle, test_size=TEST)

    def shared(quick):
        return {"tr": tr, "va": va, "te": te, "shape": bundle.input_shape}

    batches = -(-len(tr) // 100)
    iters = p["sample_epochs"] * batches
    kept = min(p["max_samples"], _kept(p, iters))
    gen = p["gan_epochs"] * batches
    extra = (f"extra: the generator's {gen} iterations ({6 * gen} optimizer updates: 5 critic steps and 1 "
             f"generator step each) on top of the sampler's {iters}")
    claims = [
        Compare(f"The generator matches the SGLD sampler it distils on accuracy (no worse by more than "
                f"{ACC_MARGIN:g} point; paper: the generator's predictions stay close to the SGLD ensemble's).",
                APD, SGLD, metric="test acc (%)", margin=ACC_MARGIN, budget=extra),
        Compare(f"The generator matches the SGLD sampler on out-of-distribution detection (rotated digits; no "
                f"worse by more than {AUROC_MARGIN:g} AUROC points).", APD, SGLD, metric="AUROC rotated (%)",
                margin=AUROC_MARGIN, budget=extra),
        Compare(f"The generator matches the SGLD sampler on out-of-distribution detection (noise images; no worse "
                f"by more than {AUROC_MARGIN:g} AUROC points).", APD, SGLD, metric="AUROC noise (%)",
                margin=AUROC_MARGIN, budget=extra),
    ]
    for arm, what, budget in ((SGLD, "The SGLD posterior", ""), (APD, "The distilled generator", extra)):
        claims += [
            Compare(f"{what} beats the single SGD network on test NLL (paper: the Bayesian ensembles are better "
                    "calibrated than SGD).", arm, SGD, metric="test NLL", sign=-1, unit="nats", budget=budget),
            Compare(f"{what} beats the single SGD network at detecting rotated digits by predictive entropy "
                    "(paper: anomaly detection AUROC above SGD's).", arm, SGD, metric="AUROC rotated (%)",
                    budget=budget),
            Compare(f"{what} beats the single SGD network at detecting noise images by predictive entropy.",
                    arm, SGD, metric="AUROC noise (%)", budget=budget),
        ]

    def tables(res):
        spread = Table("Posterior spread and storage (per seed)", ["mean per-coordinate std", "stored floats"])
        for ctx in res["contexts"]:
            with torch.no_grad():
                samples, gen_vectors = ctx.apd.samples, ctx.ensemble.vectors()
            spread.add("SGLD samples", "mean per-coordinate std", float(samples.std(0).mean()))
            spread.add("SGLD samples", "stored floats", samples.numel())
            spread.add("APD generated vectors", "mean per-coordinate std", float(gen_vectors.std(0).mean()))
            spread.add("APD generated vectors", "stored floats",
                       sum(q.numel() for q in ctx.apd.generator.parameters()) + 2 * samples.shape[1])
            spread.add("SGD network", "stored floats", flatten_params(ctx.apd.student).numel())
        return [spread]

    gap = ("The generator's budget is far below the reference code's: the reference trains the GAN for 100 000 "
           f"generator iterations on 1 000 SGLD samples (MNIST); this run trains {gen} generator iterations (about "
           f"{100 * gen / 100_000:.1f}% of that) on {kept} samples from a {iters}-iteration chain. "
           "On validation (CHOICES) the generator matched the sampler's predictions from 250 iterations on, "
           "while the spread of its vectors reached 0.8x the samples' only by about 1 000.")
    cycles = iters // p["cycle_length"] if p["cycle_length"] else 0
    return Study(
        title="Adversarial Posterior Distillation",
        paper="Wang, Vicol, Lucas, Gu, Grosse & Zemel 2018, Adversarial Distillation of Bayesian Neural Network "
              "Posteriors, ICML",
        data=f"scikit-learn digits (8x8, standardised), its 1797 images pooled and split by `protocol_splits`: "
             f"{len(tr)} train, {len(va)} validation (the sampler's choice and the generator's budget), {len(te)} "
             f"test (read once). OOD inputs: the {len(te)} test digits rotated by 180 degrees, and {len(te)} N(0, 1) "
             "noise images.",
        budget=f"SGD and SGLD run the same sampler for the same {iters} iterations ({p['sample_epochs']} epochs of "
               f"batch 100) on the same step schedule; SGLD keeps every {p['thin']}th iterate of the sampling phases "
               f"after a burn-in of {p['burn_in']} ({kept} samples). The APD arm then trains the generator for {gen} "
               f"generator iterations ({p['gan_epochs']} epochs, 5 critic steps each) on those samples: its budget "
               "is the SGLD arm's plus the GAN's (stated in every APD claim); its measured updates and time are the "
               "GAN's alone.",
        choices=CHOICES,
        setup="Network: MLP 64-50-10 (3,760 parameters); every arm of a seed starts from the same initialisation "
              "and runs through joryu's engine with the registered `posterior_distillation` method (the SGD arm: "
              "its sampling stage with the noise off; the SGLD arm: its sampling stage; the APD arm: its GAN stage "
              f"on the SGLD arm's samples). Sampler: cyclical SGLD (cSG-MCMC, Zhang et al. 2020), {cycles} cycles "
              f"of {p['cycle_length']} iterations, step ε_k = (ε₀/2)(cos(π (k mod L)/L) + 1) with ε₀ = "
              f"{p['sgld_lr']:g} (the update θ ← θ − (ε_k/2)(∇ mean NLL + wd θ) + N(0, T ε_k/N)), the first "
              f"{p['explore']:g} of each cycle without noise (exploration), the rest sampled at temperature "
              f"T = {p['temperature']:g}; wd = 1e-3, N = {len(tr)}, batch 100. SGD: the same optimizer, schedule "
              "and prior with the noise off. APD: WGAN-GP, z ∈ R^32, generator and critic 3 x 100 ReLU layers, "
              "λ = 10, 5 critic steps per generator step, Adam 1e-4 (β = 0.5, 0.9), batch 100 vectors, "
              "coordinates standardised by the samples' mean/std; prediction averages 200 generated networks. "
              "AUROC (in %): predictive entropy separating the OOD inputs from the test digits.",
        arms=[Arm(SGD, _sgd), Arm(SGLD, _sgld), Arm(APD, _apd)], claims=claims, test_size=len(te),
        shared=shared, tables=tables, metrics=COLS,
        tried=("against SGD: 16 sampler settings on the validation split (CHOICES: constant steps, longer burn-in, "
               "temperatures 1 / 0.1 / 0.01, cyclical SG-MCMC with 5 to 30 cycles and two exploration fractions), "
               "the one whose ensemble beat SGD on validation NLL taken for the test run; the SGD arm follows the "
               "same step schedule with the noise off (a warm-restart SGD), so the claims compare a sampler and "
               "an optimizer of equal updates and steps. Against SGLD: " + gap),
        notes=[gap,
               "Storage: the generator holds ~|θ|·100 weights in its last layer, so it only saves space over many "
               "samples; the spread table counts stored floats."],
    )


def _kept(p: dict, iters: int) -> int:
    """Samples the sampling stage keeps in ``iters`` iterations (``SGLDDistiller.keeps``)."""
    return sum(1 for k in range(iters) if k + 1 > p["burn_in"] and (k + 1 - p["burn_in"]) % p["thin"] == 0
               and (p["cycle_length"] is None or in_sampling_phase(k, p["cycle_length"], p["explore"])))
