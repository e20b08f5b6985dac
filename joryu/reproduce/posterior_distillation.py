"""Wang et al. (2018), Adversarial Posterior Distillation: SGD vs SGLD samples vs the distilled generator on digits."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from joryu import models
from joryu.config import TrainConfig
from joryu.data import load
from joryu.losses.posterior import auroc, ensemble_probs, flatten_params, predictive_entropy
from joryu.methods import get_method
from joryu.reproduce.claims import Table
from joryu.reproduce.common import protocol_splits, seeded
from joryu.reproduce.protocol import Arm, Compare, Study
from joryu.reproduce.registry import register_reproduction
from joryu.run.stages import run_stages

COLS = ["test acc (%)", "test NLL", "AUROC rotated (%)", "AUROC noise (%)"]
TEST = 600              # digits has 1797 images: 1078 train / 120 validation / 599 test (rounding)
# the budget (the previous version: 1000 sample epochs, burn-in 3000, thin 30, 125 GAN epochs; 2500 s for 3 seeds)
SAMPLE_EPOCHS, BURN_IN, THIN, GAN_EPOCHS, MAX_SAMPLES = 300, 1200, 15, 40, 1000
QUICK = dict(sample_epochs=60, burn_in=200, thin=10, gan_epochs=1)
ACC_MARGIN, AUROC_MARGIN = 1.0, 3.0   # stated before the run (the previous criterion: 1 point, 0.03 AUROC)
SGD, SGLD, APD = "SGD (SGLD with the noise off), 1 network", "SGLD samples' ensemble", "APD generator"
CHOICES = """
The budget is set by time, not tuned: the previous version (12 000 SGLD iterations, 300 samples, 1 500
generator iterations) took 2 500 s for 3 seeds. One pilot, seed 0, scored on the 120-image validation split
(the test split unread), at 3 300 SGLD iterations (burn-in 1 200, thin 15: 140 samples) and 275 generator
iterations: SGD 96.7% / NLL 0.082 / AUROC rotated 78.2 / noise 96.3; SGLD 96.7% / 0.121 / 75.3 / 93.8; APD
95.0% / 0.208 / 69.9 / 81.3, with the generated vectors' spread at 0.14x the samples' (0.047 vs 0.336), i.e.
the generator is under-trained at that budget. The sampler took 6 s and the GAN 51 s, so the generator
iterations were raised to 440 (40 epochs), the most the ~6-minute budget allows for 5 seeds; nothing was
chosen by the pilot's accuracies. The sampler's settings (ε = 0.5, wd 1e-3) are the previous version's.
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


def _params(quick: bool) -> dict:
    run = QUICK if quick else dict(sample_epochs=SAMPLE_EPOCHS, burn_in=BURN_IN, thin=THIN, gan_epochs=GAN_EPOCHS)
    return dict(sgld_lr=0.5, weight_decay=1e-3, max_samples=MAX_SAMPLES, **run)


def _mlp(shape):
    return models.create("mlp", input_shape=shape, num_classes=10, hidden=(50,))


def _sgd(ctx, eval_key="te"):
    sgd_method = get_method("posterior_distillation", {**_params(ctx.quick), "noise": False})
    only_sample = SimpleNamespace(name="sgd", stages=lambda m=sgd_method: m.stages()[:1],
                                  new_state=sgd_method.new_state)
    net, _ = run_stages(only_sample, student=seeded(ctx.seed, _mlp, ctx.shape), teacher=None, train=ctx.tr, val=None, train_cfg=TrainConfig(epochs=1, log_every=1000), run_dir=None, seed=ctx.seed, augment=None, progress=False, resume=False, label="sgd", num_classes=10)
    net.eval()
    with torch.no_grad():
        return _metrics(lambda x: net(x).softmax(-1), ctx[eval_key])


def _sgld(ctx, eval_key="te"):
    """One run of the method: the SGLD chain, then the GAN on its samples (the APD arm reads the generator)."""
    method = get_method("posterior_distillation", _params(ctx.quick))
    ens, res = run_stages(method, student=seeded(ctx.seed, _mlp, ctx.shape), teacher=None, train=ctx.tr, val=None, train_cfg=TrainConfig(epochs=1, log_every=1000), run_dir=None, seed=ctx.seed, augment=None, progress=False, resume=False, label="apd", num_classes=10)
    apd = res["gan"].distiller
    ctx.ensemble, ctx.apd = ens, apd
    with torch.no_grad():
        return _metrics(lambda x: ensemble_probs(apd.student, apd.samples, x), ctx[eval_key])


def _apd(ctx, eval_key="te"):
    with torch.no_grad():
        return _metrics(lambda x: ctx.ensemble(x).exp(), ctx[eval_key])


@register_reproduction("posterior_distillation", default_seeds=5, quick_seeds=2,
                       doc="Wang et al. 2018: SGLD posterior distilled into a WGAN-GP weight generator (digits MLP)")
def reproduce_posterior_distillation(seeds: list[int], quick: bool, progress: bool) -> Study:
    p = _params(quick)

    bundle = load("digits")
    tr, va, te = protocol_splits(bundle, test_size=TEST)

    def shared(quick):
        return {"tr": tr, "va": va, "te": te, "shape": bundle.input_shape}

    batches = -(-len(tr) // 100)
    claims = [
        Compare(f"The generator matches the SGLD sampler it distils on accuracy (no worse by more than "
                f"{ACC_MARGIN:g} point; paper: the generator's predictions stay close to the SGLD ensemble's).", APD, SGLD,
                metric="test acc (%)", margin=ACC_MARGIN),
        Compare(f"The generator matches the SGLD sampler on out-of-distribution detection (rotated digits; no "
                f"worse by more than {AUROC_MARGIN:g} AUROC points).", APD, SGLD, metric="AUROC rotated (%)",
                margin=AUROC_MARGIN),
        Compare(f"The generator matches the SGLD sampler on out-of-distribution detection (noise images; no worse "
                f"by more than {AUROC_MARGIN:g} AUROC points).", APD, SGLD, metric="AUROC noise (%)",
                margin=AUROC_MARGIN),
    ]
    for arm, what in ((SGLD, "The SGLD posterior"), (APD, "The distilled generator")):
        claims += [
            Compare(f"{what} beats the single SGD network on test NLL (paper: the Bayesian ensembles are better "
                    "calibrated than SGD).", arm, SGD, metric="test NLL", sign=-1, unit="nats"),
            Compare(f"{what} beats the single SGD network at detecting rotated digits by predictive entropy "
                    "(paper: anomaly detection AUROC above SGD's).", arm, SGD, metric="AUROC rotated (%)"),
            Compare(f"{what} beats the single SGD network at detecting noise images by predictive entropy.",
                    arm, SGD, metric="AUROC noise (%)"),
        ]

    def tables(res):
        spread = Table("Posterior spread and storage (per seed)", ["mean per-coordinate std", "stored floats"])
        for ctx in res["contexts"]:
            samples, gen = ctx.apd.samples, ctx.ensemble.vectors()
            spread.add("SGLD samples", "mean per-coordinate std", float(samples.std(0).mean()))
            spread.add("SGLD samples", "stored floats", samples.numel())
            spread.add("APD generated vectors", "mean per-coordinate std", float(gen.std(0).mean()))
            spread.add("APD generated vectors", "stored floats",
                       sum(q.numel() for q in ctx.apd.generator.parameters()) + 2 * samples.shape[1])
            spread.add("SGD network", "stored floats", flatten_params(ctx.apd.student).numel())
        return [spread]

    iters = p["sample_epochs"] * batches
    kept = min(p["max_samples"], max(0, (iters - p["burn_in"]) // p["thin"]))
    gen = p["gan_epochs"] * batches
    gap = ("The budget is far below the paper's and the reference code's: the reference trains the GAN for "
           f"100 000 generator iterations on 1 000 SGLD samples (MNIST); this run trains {gen} generator iterations "
           f"(about {100 * gen / 100_000:.1f}% of that) on {kept} samples from a {iters}-iteration chain (the previous "
           "version: 1 500 generator iterations, 300 samples, 12 000 iterations). docs/methods/posterior_distillation.md's "
           "calibration saw the generator approach SGLD on accuracy and noise AUROC only by about 6 000 iterations, so "
           "the APD-vs-SGLD claims are judged at a budget where the generator is known to be under-trained.")
    return Study(
        title="Adversarial Posterior Distillation",
        paper="Wang, Vicol, Lucas, Gu, Grosse & Zemel 2018, Adversarial Distillation of Bayesian Neural Network "
              "Posteriors, ICML",
        data=f"scikit-learn digits (8x8, standardised), its 1797 images pooled and split by `protocol_splits`: "
             f"{len(tr)} train, {len(va)} validation (pilot only), {len(te)} test (read once). OOD inputs: the "
             f"{len(te)} test digits rotated by 180 degrees, and {len(te)} N(0, 1) noise images.",
        budget=f"SGD and SGLD run the same sampler for the same {iters} iterations ({p['sample_epochs']} epochs of "
               f"batch 100); SGLD keeps every {p['thin']}th iterate after a burn-in of {p['burn_in']} ({kept} samples); "
               f"the generator then trains {p['gan_epochs'] * batches} generator iterations ({p['gan_epochs']} "
               "epochs, 5 critic steps each) on them. The SGLD arm's time includes the GAN training (one run of the "
               "method trains both); the APD arm only predicts.",
        choices=CHOICES,
        setup="Network: MLP 64-50-10 (3,760 parameters); every arm of a seed starts from the same initialisation "
              "and runs through joryu's engine with the registered `posterior_distillation` method. SGLD: ε = 0.5, "
              f"wd = 1e-3, N = {len(tr)}, batch 100. SGD: the same optimizer, schedule and prior with the noise off "
              "(plain SGD at lr ε/2). APD: WGAN-GP, z ∈ R^32, generator and critic 3 x 100 ReLU layers, λ = 10, 5 "
              "critic steps per generator step, Adam 1e-4 (β = 0.5, 0.9), batch 100 vectors, coordinates "
              "standardised by the samples' mean/std; prediction averages 200 generated networks. AUROC (in %): "
              "predictive entropy separating the OOD inputs from the test digits.",
        arms=[Arm(SGD, _sgd), Arm(SGLD, _sgld), Arm(APD, _apd)], claims=claims, test_size=len(te),
        shared=shared, tables=tables, metrics=COLS,
        tried=gap,
        notes=[gap,
               "Storage: the generator holds ~|θ|·100 weights in its last layer, so it only saves space over many "
               "samples; the spread table counts stored floats."],
    )
