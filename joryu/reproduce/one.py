"""Lan, Zhu & Gong (2018), ONE: a branch of an on-the-fly native ensemble beats the same network trained alone."""

from __future__ import annotations

import copy

import torch
from accelerate.utils import set_seed

from joryu import models
from joryu.config import TrainConfig
from joryu.data import Augment, load
from joryu.engine import Engine
from joryu.methods import get_method
from joryu.reproduce.common import (
    MNIST100_STUDENT,
    accuracy,
    mnist100_splits,
    predict,
    protocol_splits,
    seeded,
    train,
)
from joryu.reproduce.protocol import Arm, Compare, Study
from joryu.reproduce.registry import register_reproduction
from joryu.run.stages import run_stages

# chosen on the validation split (CHOICES)
SETTINGS = {"width": 32, "depth": 4, "trunk_end": "blocks.1", "epochs": 30, "shift": 3, "rampup": 0.0,
            "temperature": 3.0, "n_train": 1600}

CHOICES = ("Pilot on the 600-signal validation split (seed 0, this study with evaluate='val'). cnn1d width 32, "
           "depth 4 (the earlier width-8 network underfitted) fits its training set: with all 5400 training signals "
           "99.5% train accuracy, but the task saturates (alone 99.17%, ONE branch 0 99.50%, ONE-E 99.50% on "
           "validation); with the first 1600 of them 99.1% train accuracy, alone 97.17%, ONE 97.50%, ONE-E 97.67%. "
           "The 1600-signal training set was chosen to stay clear of the ceiling. T = 3, 3 branches, w = 1 are the "
           "method's defaults (kept by the defaults check) and the paper's equation.")

# mnist100: the network is the mnist100 student chosen on validation (docs/datasets/mnist100.md) with its
# budget; ONE keeps the method's defaults (3 branches, T = 3, w = 1). The convnet's first conv stage is
# the shared trunk, each branch its own copy of the second stage and the head (the paper shares the
# early stages and copies the last stage + FC).
MNIST100 = {**MNIST100_STUDENT, "trunk_end": "stages.0", "rampup": 0.0, "temperature": 3.0}
CHOICES_MNIST100 = ("The network and its budget are the mnist100 student chosen on the validation split before any "
                    "method ran (docs/datasets/mnist100.md: convnet width 8 depth 2 alone at 90.4 +- 0.9 val, 94.6% "
                    "train, below the ResNet-8 teacher's 95.5; 10 epochs, Adam 3e-3 cosine, batch 128, +-2 px "
                    "shifts). T = 3, 3 branches, w = 1 are the method's defaults and the paper's equation; the "
                    "trunk ends after the first of the two conv stages (the paper shares the early stages). Pilot on "
                    "the 2000-number validation split before the test split was read (seed 0, this study with "
                    "evaluate='val'; 186 s of training on one thread of the shared machine at load about 7): the "
                    "network alone 89.30% (train 94.28%), ONE branch 0 89.10% (train 93.95%), ONE-E 90.15%, the "
                    "gated ensemble 90.25%. Nothing was varied after it (the time budget of this revision): it checks "
                    "the regime rather than choosing among settings.")

METRICS = ["test acc (%)", "train acc (%)"]


def _evaluate(distiller, data) -> dict:
    out = Engine(TrainConfig(), None, progress=False).evaluate(distiller, data, "ev")
    return {k.split("/")[1]: v for k, v in out.items() if k.count("/") == 2 and k.endswith("/acc")}


def build_study(evaluate: str = "test", settings: dict | None = None, bench: str = "mnist1d") -> Study:
    """The study; ``evaluate="val"`` scores every arm on the validation split (the pilot).
    ``bench="mnist100"``: the network is the mnist100 student (MNIST100 above)."""
    many = bench == "mnist100"
    st = {**(MNIST100 if many else SETTINGS), **(settings or {})}

    def shared(quick):
        ep = max(1, st["epochs"] // 10) if quick else st["epochs"]
        if many:
            d, tr, va, te = mnist100_splits(quick)
            cfg = TrainConfig(epochs=ep, batch_size=st["batch_size"], optimizer="adam", lr=st["lr"],
                              scheduler="cosine")
            return {"d": d, "tr": tr, "ev": te if evaluate == "test" else va, "cfg": cfg, "aug": d.augment}
        d = load("mnist1d", num_samples=8000)
        tr, va, te = protocol_splits(d)
        if st["n_train"]:
            tr = tr.subset(torch.arange(st["n_train"]), f"mnist1d/train{st['n_train']}")
        cfg = TrainConfig(epochs=ep, batch_size=64, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
                          scheduler="onecycle")
        return {"d": d, "tr": tr, "ev": te if evaluate == "test" else va, "cfg": cfg,
                "aug": Augment(shift=st["shift"]) if st["shift"] else None}

    def init(ctx):
        if many:
            return seeded(ctx.seed, models.create, "convnet", input_shape=ctx.d.input_shape,
                          num_classes=ctx.d.num_classes, width=st["width"], depth=st["depth"])
        return seeded(ctx.seed, models.create, "cnn1d", num_classes=10, width=st["width"], depth=st["depth"])

    def alone(ctx):
        net = train("supervised", init(ctx), ctx.tr, ctx.cfg, ctx.seed, augment=ctx.aug)
        return {"test acc (%)": accuracy(predict(net, ctx.ev), ctx.ev.targets),
                "train acc (%)": accuracy(predict(net, ctx.tr), ctx.tr.targets)}

    def one(ctx):
        m = get_method("one", {"trunk_end": st["trunk_end"], "num_branches": 3, "temperature": st["temperature"],
                               "rampup_epochs": st["rampup"] * ctx.cfg.epochs})
        set_seed(ctx.seed)
        student, res = run_stages(m, student=copy.deepcopy(init(ctx)), teacher=None, train=ctx.tr, val=None, train_cfg=ctx.cfg, run_dir=None, seed=ctx.seed, augment=ctx.aug, progress=False, resume=False, label="one",
                                  num_classes=ctx.d.num_classes)
        d = res["one"].distiller
        ctx.ev_one, ctx.tr_one = _evaluate(d, ctx.ev), _evaluate(d, ctx.tr)
        return {"test acc (%)": ctx.ev_one["one"], "train acc (%)": ctx.tr_one["one"]}

    def one_e(ctx):  # the same trained network: its branch ensemble
        return {"test acc (%)": ctx.ev_one["one_e"], "train acc (%)": ctx.tr_one["one_e"]}

    def gated(ctx):
        return {"test acc (%)": ctx.ev_one["gated"], "train acc (%)": ctx.tr_one["gated"]}

    ALONE = "the network alone"
    ONE = "ONE branch 0 (deployed, the original size)"
    ONE_E = "ONE-E: mean of the 3 branches' logits (same training run)"
    GATED = "ONE gated ensemble (the training-time teacher, same run), reported only"
    ramp = ("w = 1 (the paper's Eq. 7)" if not st["rampup"] else
            f"the official code's ramp-up w(t) = exp(-5 (1 - t/R)^2) over R = {st['rampup']:g} × the run")
    arms = [Arm(ALONE, alone), Arm(ONE, one), Arm(ONE_E, one_e), Arm(GATED, gated)]
    claims = [
        Compare("Training a network as one branch of an on-the-fly native ensemble makes it better than the "
                "same network trained alone (paper, CIFAR-100 ResNet-32: 31.18% -> 26.82% error).", ONE, ALONE),
        Compare("The branch ensemble (ONE-E) is better still than the single deployed branch (paper, CIFAR-100 "
                "ResNet-32: 26.82% -> 26.61%).", ONE_E, ONE,
                budget="ONE-E trains nothing itself: it is read from the ONE arm's network, whose optimizer "
                       "updates are counted in the ONE row (0 in its own); it deploys the 3 branches instead of 1"),
    ]
    paper = "Lan, Zhu & Gong 2018, Knowledge Distillation by On-the-Fly Native Ensemble, NeurIPS"
    one_setup = (f"ONE (the registered `one` method) shares the trunk up to `{st['trunk_end']}` and gives each of "
                 f"the m = 3 branches its own copy of the rest (the gate reads the shared features); "
                 f"T = {st['temperature']:g}, KL weight {ramp}. Branch 0 is the deployed network, the same size as "
                 "the baseline.")
    if many:
        return Study(
            title="On-the-Fly Native Ensemble (ONE) on mnist100",
            paper=paper,
            data=("mnist100 (built in, docs/datasets/mnist100.md): 100 classes, two-digit numbers at 1x14x28 from "
                  "disjoint MNIST digit pools, its own splits 15000 train / 2000 validation / 5000 test. Random "
                  "shifts of up to 2 px (the dataset's default augmentation)."),
            budget=(f"Both trainings: {st['epochs']} epochs over the 15000 training numbers (Adam {st['lr']:g}, "
                    f"cosine, batch {st['batch_size']}, +-2 px shifts), the mnist100 student budget, the same "
                    "initialisation of the shared network and the same data order: the same optimizer updates "
                    "(measured below). ONE's extra branches are extra compute per update, not extra updates. "
                    "ONE-E and the gated ensemble are read from the ONE run (no extra training)."),
            choices=CHOICES_MNIST100, shared=shared, metrics=METRICS, arms=arms, claims=claims, test_size=5000,
            setup=(f"Network: the mnist100 student, convnet width {st['width']} depth {st['depth']} (conv-BN-ReLU, "
                   "a flattened head), which alone underfits (below the ResNet-8 teacher on validation and on its "
                   "own training numbers). " + one_setup),
            tried="the settings in the choices above.")
    return Study(
        title="On-the-Fly Native Ensemble (ONE)",
        paper=paper,
        data=("MNIST-1D generated with num_samples = 8000, train and test pooled and re-split by `protocol_splits`: "
              "5400 train / 600 validation / 2000 test (class-stratified); the first "
              f"{st['n_train'] or 5400} training signals are the training set."),
        budget=(f"Both trainings: {st['epochs']} epochs over the {st['n_train'] or 5400} training signals (SGD lr 0.1, momentum 0.9, "
                f"weight decay 1e-4, one-cycle, batch 64, random shifts up to ±{st['shift']} samples), the same "
                "initialisation of the shared network and the same data order. ONE-E and the gated ensemble are "
                "read from the ONE run (no extra training)."),
        choices=CHOICES,
        shared=shared,
        metrics=METRICS,
        arms=arms,
        claims=claims,
        test_size=2000,
        setup=(f"Network: joryu's `cnn1d`, width {st['width']}, depth {st['depth']}. " + one_setup),
        tried="the settings in the choices above.")


@register_reproduction("one", default_seeds=5, quick_seeds=2,
                       doc="Lan et al. 2018: ONE branch 0 and ONE-E vs the same 1-D CNN alone (MNIST-1D)")
def reproduce_one(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_study()


@register_reproduction("one_mnist100", default_seeds=5, quick_seeds=2,
                       doc="Lan et al. 2018: ONE branch 0 and ONE-E vs the same width-8 convnet alone (mnist100)")
def reproduce_one_mnist100(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_study(bench="mnist100")
