"""Li et al. 2017 (learning from noisy labels with distillation): MNIST-1D with systematic pair-flip noise."""

from __future__ import annotations

import copy

from joryu import models
from joryu.config import TrainConfig
from joryu.data import load
from joryu.data.fields import apply_fields
from joryu.methods import get_method
from joryu.methods.noisy_label_distillation import clean_subset
from joryu.reproduce.claims import Table
from joryu.reproduce.common import (
    MNIST100_BUDGET,
    MNIST100_DATA,
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

LAM_GRID = (0.0, 0.25, 0.5)  # lambda chosen from these on held-out clean rows, fixed before any run
GROUPS = [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]  # the hand-made "knowledge graph" (see choices)
CLEAN_PER_CLASS, RATE = 40, 0.4
EVAL = "te"  # the split the arms are scored on; a validation pilot sets "va"


# The method's own stages (the auxiliary model on the clean rows, the pretraining and one student per
# lambda of the grid, the choice made on held-out clean rows) cost more updates than one baseline run.
NLD_EXTRA = ("extra: the auxiliary model on the clean rows and the lambda grid (one student per lambda, "
             "chosen on held-out clean rows); each baseline trains one network")


def _selected(net, data, cfg, seed, params, progress=False, augment=None):
    """The method's full pipeline through the engine; returns (student, chosen lambda)."""
    from accelerate.utils import set_seed

    set_seed(seed)
    student, res = run_stages(get_method("noisy_label_distillation", params), student=net, teacher=None,
                              train=data, val=None, train_cfg=TrainConfig(**cfg), run_dir=None, seed=seed,
                              augment=augment, progress=progress, resume=False, label="distill (lam_grid)",
                              num_classes=data.num_classes)
    return student, res["select"].distiller.chosen


def _noisy_split(clean_tr, seed: int, per_class: int, classes: int) -> dict:
    """A seed's training split: ``per_class`` rows per class marked clean, the others pair-flipped
    y -> (y + 1) mod C at ``RATE``; with the clean subset and the share of noisy-row labels that are wrong."""
    spec = {"clean": {"per_class": per_class, "seed": seed}, "noise": {"kind": "pairflip", "rate": RATE, "seed": seed}}
    tr = apply_fields(clean_tr, spec, classes)
    noisy_rows = ~tr.tensors["clean"]
    wrong = 100.0 * float((tr.targets != clean_tr.targets)[noisy_rows].float().mean())
    return {"tr": tr, "clean": clean_subset(tr), "wrong": wrong, "chosen": {}}


def _tables(res):
    t = Table("Per seed: noise and the lambda the method chose on its held-out clean rows", ["value"])
    for ctx in res["contexts"]:
        t.add("share of noisy-row labels that are wrong (%)", "value", ctx.wrong)
        t.add("lambda chosen, plain", "value", ctx.chosen.get("plain", float("nan")))
        t.add("lambda chosen, with G", "value", ctx.chosen.get("graph", float("nan")))
    return [t]


@register_reproduction("noisy_label_distillation", default_seeds=5, quick_seeds=2,
                       doc="Li et al. 2017: distillation from a clean-set model vs noisy, clean-only and "
                           "fine-tuning on MNIST-1D with pair-flip noise; the knowledge-graph variant")
def reproduce_noisy(seeds: list[int], quick: bool, progress: bool) -> Study:
    ep = (lambda n: max(1, n // 10)) if quick else (lambda n: n)
    full = dict(epochs=ep(15), batch_size=128, optimizer="adam", lr=3e-3, weight_decay=1e-4, scheduler="cosine")
    small = dict(epochs=ep(60), batch_size=32, optimizer="adam", lr=3e-3, weight_decay=1e-4, scheduler="cosine")
    tune = dict(epochs=ep(30), batch_size=32, optimizer="adam", lr=1e-3, weight_decay=1e-4, scheduler="cosine")
    grid = list(LAM_GRID) if not quick else [0.0, 0.5]
    nld = {"lam_grid": grid, "lam_holdout": 0.25, "aux_epochs": small["epochs"], "aux_batch_size": 32}

    def shared(quick):
        bundle = load("mnist1d", num_samples=8000)
        tr, va, te = protocol_splits(bundle)
        return {"clean_tr": tr, "va": va, "te": te, "shape": bundle.input_shape}

    def per_seed(ctx):
        return _noisy_split(ctx.clean_tr, ctx.seed, CLEAN_PER_CLASS, 10)

    def net(ctx):
        return seeded(ctx.seed, models.create, "cnn1d", input_shape=ctx.shape, num_classes=10, width=32)

    def score(ctx, model):
        data = ctx[EVAL]
        return accuracy(predict(model, data), data.targets)

    def noisy_ce(ctx):
        ctx.noisy_net = train("supervised", net(ctx), ctx.tr, full, ctx.seed)
        return score(ctx, ctx.noisy_net)

    def clean_only(ctx):
        return score(ctx, train("supervised", net(ctx), ctx.clean, small, ctx.seed))

    def fine_tune(ctx):
        return score(ctx, train("supervised", copy.deepcopy(ctx.noisy_net), ctx.clean, tune, ctx.seed))

    def distill(ctx):
        s, lam = _selected(net(ctx), ctx.tr, full, ctx.seed, nld)
        ctx.chosen["plain"] = lam
        return score(ctx, s)

    def graph(ctx):
        s, lam = _selected(net(ctx), ctx.tr, full, ctx.seed, {**nld, "groups": GROUPS})
        ctx.chosen["graph"] = lam
        return score(ctx, s)

    headline = "distillation (auxiliary on clean rows, lambda on held-out clean)"
    with_graph = "distillation + label graph G"
    arms = [Arm("noisy + clean, CE (student alone)", noisy_ce), Arm("clean only", clean_only),
            Arm("fine-tune the noisy model on clean", fine_tune), Arm(headline, distill), Arm(with_graph, graph)]
    claims = [
        Compare("Distillation from an auxiliary model of the clean set beats training on the noisy labels "
                "(the paper's main result on its noisy-label benchmarks).",
                headline, "noisy + clean, CE (student alone)", budget=NLD_EXTRA),
        Compare("Distillation beats training on the clean set alone.", headline, "clean only", budget=NLD_EXTRA),
        Compare("Distillation beats fine-tuning the noisy model on the clean set.",
                headline, "fine-tune the noisy model on clean", budget=NLD_EXTRA),
        Compare("Adding the knowledge-graph label relations G to the auxiliary's soft labels improves "
                "distillation further (the paper's knowledge-graph variant).", with_graph, headline),
    ]

    return Study(
        title="Learning from Noisy Labels with Distillation",
        paper="Li, Yang, Song, Cao, Luo & Li 2017, ICCV (arXiv:1703.02391)",
        data=("MNIST-1D, 8000 samples pooled and split by `protocol_splits`: 5400 train / 600 validation / "
              f"2000 test (clean labels in validation and test). Per seed, {CLEAN_PER_CLASS} training samples "
              f"per class (400) are marked verified clean and keep their labels; every other training label "
              f"passes through pair-flip noise y -> (y+1) mod 10 at rate {RATE}, drawn with the seed."),
        budget=(f"Every network is the cnn1d of width 32 from the same seeded initialisation. Noisy + clean CE "
                f"and every distillation student: {full['epochs']} epochs over the training rows, batch 128, "
                f"Adam 3e-3, weight decay 1e-4, cosine. Clean only and each auxiliary: {small['epochs']} "
                f"epochs of the clean rows, batch 32. Fine-tuning: {tune['epochs']} more epochs on the 400 clean "
                f"rows at Adam 1e-3. The method chooses lambda from {grid} by training one student per value "
                f"(so {len(grid)}x the student updates of the CE baseline, plus the auxiliary) and keeping the "
                "one most accurate on 25% of the clean rows it holds out (never trained on)."),
        choices=("No test number was read to choose anything. lambda is chosen by the method itself on "
                 "held-out clean training rows (`lam_grid`); the grid stops at 0.5 because at T = 1 any "
                 "lambda >= 0.5 makes the noisy label the soft label's top class, so the auxiliary could never "
                 "correct a label. The auxiliary is trained on the clean rows only (the method's default, "
                 "`pretrain_on_all: false`). Epochs, learning rates, noise rate and clean-set size are the "
                 "earlier calibration's (docs/methods/noisy_label_distillation.md), with the students cut "
                 "from 20 to 15 epochs to fit the time budget. The label graph G has no knowledge base on "
                 "MNIST-1D: it is fixed a priori as the default `graph_strength` 0.5 between the class pairs "
                 f"{GROUPS}, i.e. links between classes the noise confuses (2k -> 2k+1), the kind of relation "
                 "the paper's DBpedia graph supplies; no other graph was tried. One validation pilot (seed 0, "
                 "scored on the 600 validation samples) only checked the arms and the time: CE 77.3, clean "
                 "only 90.0, fine-tuning 92.3, distillation 87.0, with G 90.0; nothing was changed after it."),
        arms=arms, claims=claims, test_size=2000, shared=shared, per_seed=per_seed, tables=_tables,
        tried=("The earlier version distilled from the fine-tuned noisy model at a lambda fixed in advance; "
               "here the auxiliary is the paper's (clean rows only) and lambda is chosen on held-out clean "
               "rows. No setting was changed after the test split was read."),
        notes=["Li et al.'s benchmarks (Sports, Species, Artifacts with real noise, a DBpedia label graph) are "
               "not available offline; this tests the mechanism at small scale with synthetic systematic noise.",
               "Budgets are not equal by construction: the method trains an auxiliary and one student per lambda "
               "candidate; the CE baseline trains one student for the same epochs (training it 3x longer on "
               "noisy labels would only fit the noise more)."])


# --- on mnist100 (issue 22): 100 classes, the noise between neighbouring numbers, G from the tens digit ----------
M100_CLEAN_PER_CLASS = 10  # 1000 verified rows of the 15000 (6.7%), about the MNIST-1D study's 7.4%
M100_LAM_GRID = (0.25, 0.5)  # the values the MNIST-1D study chose on every seed (0 never was): fixed before any run
M100_GROUPS = [list(range(10 * t, 10 * t + 10)) for t in range(10)]  # numbers sharing their tens digit


@register_reproduction("noisy_label_distillation_mnist100", default_seeds=5, quick_seeds=2,
                       doc="Li et al. 2017 on mnist100: 40% pair-flip noise y -> y+1 over 100 classes, "
                           "1000 clean rows; distillation vs CE, clean only and fine-tuning; G from the tens digit")
def reproduce_noisy_mnist100(seeds: list[int], quick: bool, progress: bool) -> Study:
    full = dict(MNIST100_BUDGET, epochs=1 if quick else MNIST100_BUDGET["epochs"])
    small = dict(full, epochs=2 if quick else 40, batch_size=32)  # the clean rows only: 1000 numbers
    tune = dict(small, epochs=1 if quick else 20, lr=1e-3)
    nld = {"lam_grid": list(M100_LAM_GRID), "lam_holdout": 0.25, "aux_epochs": small["epochs"],
           "aux_batch_size": small["batch_size"]}

    def shared(quick):
        d, tr, va, te = mnist100_splits(quick)
        return {"d": d, "clean_tr": tr, "te": te}

    def per_seed(ctx):
        return _noisy_split(ctx.clean_tr, ctx.seed, M100_CLEAN_PER_CLASS, 100)

    def net(ctx):
        return seeded(ctx.seed, models.create, "convnet", input_shape=ctx.d.input_shape, num_classes=100,
                      width=MNIST100_STUDENT["width"], depth=MNIST100_STUDENT["depth"])

    def score(ctx, model):
        return accuracy(predict(model, ctx.te), ctx.te.targets)

    def noisy_ce(ctx):
        ctx.noisy_net = train("supervised", net(ctx), ctx.tr, full, ctx.seed, augment=ctx.d.augment)
        return score(ctx, ctx.noisy_net)

    def clean_only(ctx):
        return score(ctx, train("supervised", net(ctx), ctx.clean, small, ctx.seed, augment=ctx.d.augment))

    def fine_tune(ctx):
        return score(ctx, train("supervised", copy.deepcopy(ctx.noisy_net), ctx.clean, tune, ctx.seed,
                                augment=ctx.d.augment))

    def distill(ctx, key, extra):
        s, lam = _selected(net(ctx), ctx.tr, full, ctx.seed, {**nld, **extra}, augment=ctx.d.augment)
        ctx.chosen[key] = lam
        return score(ctx, s)

    alone = "noisy + clean, CE (student alone)"
    headline = "distillation (auxiliary on clean rows, lambda on held-out clean)"
    with_graph = "distillation + label graph G (tens digit)"
    arms = [Arm(alone, noisy_ce), Arm("clean only", clean_only),
            Arm("fine-tune the noisy model on clean", fine_tune),
            Arm(headline, lambda ctx: distill(ctx, "plain", {})),
            Arm(with_graph, lambda ctx: distill(ctx, "graph", {"groups": M100_GROUPS}))]
    claims = [
        Compare("Distillation from an auxiliary model of the clean set beats training on the noisy labels "
                "(the paper's main result), here over 100 classes.", headline, alone, budget=NLD_EXTRA),
        Compare("Distillation beats training on the clean set alone.", headline, "clean only", budget=NLD_EXTRA),
        Compare("Distillation beats fine-tuning the noisy model on the clean set.",
                headline, "fine-tune the noisy model on clean", budget=NLD_EXTRA),
        Compare("Adding label relations G from the class structure (numbers sharing their tens digit) to the "
                "auxiliary's soft labels improves distillation further (the paper's knowledge-graph variant).",
                with_graph, headline),
    ]

    return Study(
        title="Learning from Noisy Labels with Distillation, on mnist100",
        paper="Li, Yang, Song, Cao, Luo & Li 2017, ICCV (arXiv:1703.02391)",
        data=(MNIST100_DATA + f" Per seed, {M100_CLEAN_PER_CLASS} training numbers per class (1000) are marked "
              f"verified clean and keep their labels; every other training label passes through pair-flip "
              f"noise y -> (y+1) mod 100 at rate {RATE} (a number mistaken for the next one), drawn with the seed. "
              "Validation and test labels are clean."),
        budget=(f"Every network is the mnist100 student (convnet width {MNIST100_STUDENT['width']}, depth "
                f"{MNIST100_STUDENT['depth']}) from the same seeded initialisation, with the dataset's shifts. "
                f"Noisy + clean CE and every distillation student: {full['epochs']} epochs over the 15000 training "
                f"numbers, batch {full['batch_size']}, Adam {full['lr']:g}, cosine (the dataset's chosen budget). "
                f"Clean only and each auxiliary: {small['epochs']} epochs of the clean rows, batch 32. Fine-tuning: "
                f"{tune['epochs']} more epochs on the clean rows at Adam 1e-3. The method chooses lambda from "
                f"{list(M100_LAM_GRID)} by training one student per value ({len(M100_LAM_GRID)}x the student "
                "updates of the CE baseline, plus the auxiliary) and keeping the one most accurate on 25% of the "
                "clean rows it holds out."),
        choices=("Fixed before any run, from the MNIST-1D study and the dataset's documentation; no validation "
                 "pilot and no test number was read to choose anything. The noise rate and the pair-flip model "
                 "are the MNIST-1D study's; the clean share is about the same (6.7% against 7.4%). The lambda "
                 "grid keeps the two values the MNIST-1D study chose on its seeds (0 never was), to fit the time "
                 "budget. The auxiliary's and fine-tuning's epochs give the 1000 clean rows about as many "
                 "sample passes as the MNIST-1D study's 400 rows got, relative to the full budget. G links the "
                 "ten numbers that share a tens digit at the default graph_strength 0.5 (the class structure "
                 "of mnist100; pair-flip noise mostly stays inside a tens group), no other graph was tried."),
        arms=arms, claims=claims, test_size=5000, shared=shared, per_seed=per_seed, tables=_tables,
        tried="one configuration, fixed in advance (see choices).",
        notes=["Budgets are not equal by construction: the method trains an auxiliary and one student per lambda "
               "candidate; the CE baseline trains one student for the same epochs."])
