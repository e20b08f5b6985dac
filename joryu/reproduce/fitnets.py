"""Romero et al. (2015), FitNets: hints make a deep, thin student trainable where backprop and KD fail
(MNIST-5000 MLP); and, on mnist100, whether hints still help a deep thin CNN student that trains without them."""

from __future__ import annotations

from collections.abc import Callable

from joryu import models
from joryu.data import load
from joryu.reproduce.claims import Table
from joryu.reproduce.common import (
    MNIST100_BUDGET,
    MNIST100_DATA,
    accuracy,
    mnist100_splits,
    predict,
    protocol_splits,
    seeded,
    train,
)
from joryu.reproduce.protocol import Arm, Compare, Study
from joryu.reproduce.registry import register_reproduction
from joryu.teachers import FrozenTeacher

DEPTH, WIDTH = 16, 32
HINT_EPOCHS, KD_EPOCHS = 10, 20
TOTAL = HINT_EPOCHS + KD_EPOCHS
BASE_LR, HINT_LR, FIT_LR = 0.005, 1e-2, 0.02    # chosen on validation (see CHOICES)
GUIDED = f"features.{2 + 2 * (DEPTH // 2)}"     # the tanh after hidden layer DEPTH//2 + 1 (the middle)
CHOICES = f"""
The learning rates are fixed to the values the previous version of this reproduction picked on its validation
split (10% of the MNIST-5000 training images, never the test split) by a per-seed search over scratch / KD lr in
{{0.005, 0.02, 0.05}} and FitNets (stage-1 lr, stage-2 lr) in {{1e-3, 1e-2}} x {{0.02, 0.05}}: the search chose the
same values on all three seeds, scratch {BASE_LR}, KD {BASE_LR}, FitNets {HINT_LR:g} / {FIT_LR}, so they are fixed
here instead of searched per seed (which would triple the budget). Depth {DEPTH} comes from the same version's
validation-only calibration (at 11 layers the scratch student trained fine; at 16 it stayed at chance for lr
0.02/0.05/0.1 while FitNets reached 74.5% validation accuracy on seed 0).
"""
SCRATCH, KD, FIT = "scratch (backprop)", "KD (tau=3, alpha=0.8)", "FitNets (hint + KD)"
KD_PARAMS = {"temperature": 3.0, "alpha": 0.8}
METRICS = ["test acc (%)", "train acc (%)"]


def _student(shape):
    return models.create("mlp", input_shape=shape, num_classes=10, hidden=(WIDTH,) * DEPTH, activation="tanh")


def _arm(method: str, params: dict, cfg: dict, student: Callable) -> Callable:
    """``student(ctx)`` trained by ``method`` from ``ctx.teacher`` with ``cfg`` (and ``ctx.aug``); scored on
    ``ctx.ev`` and on its training split."""
    def run(ctx):
        s = train(method, student(ctx), ctx.tr, cfg, ctx.seed, teacher=ctx.teacher, params=params,
                  augment=ctx.get("aug"))
        return dict(zip(METRICS, [accuracy(predict(s, ctx.ev), ctx.ev.targets),
                                  accuracy(predict(s, ctx.tr), ctx.tr.targets)]))
    return run


def _claims() -> list[Compare]:
    return [Compare(f"Hint-based pre-training of the lower half lets a deep, thin student reach higher accuracy "
                    f"than {other.split(' (')[0]} at the same number of epochs (paper, CIFAR-10: FitNet-19 "
                    "91.61%, where backprop/KD students deeper than about 7 layers fail to train).", FIT, other)
            for other in (SCRATCH, KD)]


@register_reproduction("fitnets", default_seeds=5, quick_seeds=2,
                       doc="Romero et al. 2015: hint training vs scratch and KD for a deep thin MLP (MNIST-5000)")
def reproduce_fitnets(seeds: list[int], quick: bool, progress: bool) -> Study:
    ep = (lambda n: max(1, n // 10)) if quick else (lambda n: n)

    def shared(quick):
        mnist = load("mnist5k")
        tr, va, te = protocol_splits(mnist)
        t_net = seeded(100, models.create, "mlp", input_shape=mnist.input_shape, num_classes=10, hidden=(512, 512))
        t_net = train("supervised", t_net, tr, dict(epochs=ep(10), optimizer="adam", lr=1e-3), 100)
        return {"tr": tr, "ev": te, "shape": mnist.input_shape, "teacher": FrozenTeacher(t_net),
                "teacher_acc": accuracy(predict(t_net, te), te.targets)}

    def student(ctx):
        return seeded(ctx.seed, _student, ctx.shape)

    def sgd(epochs, lr):
        return dict(epochs=epochs, optimizer="sgd", lr=lr)

    h, k = ep(HINT_EPOCHS), ep(KD_EPOCHS)
    arms = [Arm(SCRATCH, _arm("supervised", {}, sgd(h + k, BASE_LR), student)),
            Arm(KD, _arm("kd", KD_PARAMS, sgd(h + k, BASE_LR), student)),
            Arm(FIT, _arm("fitnets", {"hint_layer": "features.2", "guided_layer": GUIDED, "hint_epochs": h,
                                      "hint_lr": HINT_LR}, sgd(k, FIT_LR), student))]

    def tables(res):
        t = Table("Teacher (trained once for all seeds)", ["test acc (%)"])
        t.add("MLP 512-512 ReLU, Adam, 10 epochs", "test acc (%)", res["contexts"][0]["teacher_acc"])
        return [t]

    return Study(
        title="FitNets: Hints for Thin Deep Nets", paper="Romero et al. 2015, arXiv:1412.6550",
        data="MNIST-5000 (joryu's 5000-image MNIST subset, train and test pooled and split by `protocol_splits`: "
             "2700 train, 300 validation (unused here; see the settings), 2000 test read once at the end).",
        budget=f"Every student trains {h + k} epochs in total (batch 128, SGD momentum 0.9, cosine schedule): "
               f"scratch and KD {h + k} epochs at lr {BASE_LR}; FitNets {h} hint epochs (stage 1, lr {HINT_LR:g}) + "
               f"{k} KD epochs (stage 2, lr {FIT_LR}). Teacher MLP 784-512-512-10 (ReLU), Adam 1e-3, {ep(10)} "
               "epochs, trained once and shared by every seed.",
        choices=CHOICES,
        setup=f"Student: MLP with {DEPTH} hidden layers of {WIDTH} tanh units, no batch norm, PyTorch default init "
              f"(about 39k parameters). KD: Hinton KD, T = 3, alpha = 0.8 on the soft term. FitNets: stage 1 = hint "
              f"training of the student up to `{GUIDED}` (hidden layer {DEPTH // 2 + 1} of {DEPTH}) through a linear "
              "regressor with ReLU to the teacher's first hidden layer (`features.2`); stage 2 = KD with tau = 3 and "
              "the official lambda schedule (held at 4, then decayed towards 1; no tau^2).",
        arms=arms, claims=_claims(), test_size=2000, shared=shared, tables=tables, metrics=METRICS,
        tried="Depth and learning rates as in the settings; no change after the test split was read.",
        notes=["Earlier calibration (previous version, seed 0): with Adam every student trains and the gap vanishes "
               "(11 layers: scratch 78.7%, KD 79.5%, FitNets 49% test), as docs/methods/fitnets.md warns; with "
               "RMSProp at 13 layers all three fail (17%).",
               "The paper's students are convolutional (CIFAR-10) with maxout; this is an MLP analogue of the "
               "'deep and thin' regime where plain backprop struggles."],
    )


# --- mnist100 (issue 22): a deep thin CNN student that trains without hints ---------------------------------
# Teacher: the mnist100 teacher (ResNet-8). Student: the zoo's convnet at width 8 (8 / 16 channels) with 4 convs per
# stage, 8 conv layers deep (ResNet-8 has 7): deeper and thinner than its teacher, with batch norm, so backprop
# alone trains it. Hint: the teacher's middle stage (layer2, 32 x 7x14); guided: the student's first stage (after
# 4 of its 8 convs and the max-pool, 8 x 7x14), the middle of each network (the method's default layers).
M100 = dict(student={"width": 8, "depth": 2, "convs": 4}, teacher="resnet8", teacher_epochs=10, epochs=10,
            hint_epochs=2, lr=0.05, hint_lr=1e-4)  # hint_lr (and the student) chosen on validation (CHOICES_M100)
TRAINS_AT = 10.0  # an arm "trains" on a seed when its test accuracy exceeds this (chance is 1%), fixed in advance
CHOICES_M100 = (
    "Optimiser: SGD momentum 0.9 (the MNIST-5000 study's), lr 0.05, cosine, batch 128, the mnist100 student budget "
    "of 10 epochs; lr 0.05 was set, not searched (a pilot of 0.01 and 0.2 was stopped for time), and the student "
    "alone trains at it. Hint epochs: 2 of the 10, set, not piloted. Pilot on the 2000-number validation split "
    "before the test split was read (seed 0, this study with evaluate='val'; the ResNet-8 teacher 96.60%): student "
    "width 8 (4 convs per stage): scratch 94.90% (train 100%), KD 94.75%, FitNets with the stage-1 lr equal to the "
    "run's 0.05 26.30% (train 25.56%: at that lr the hint stage left the lower half untrainable), with stage-1 lr "
    "1e-3 93.00%, with 1e-4 93.10%; student width 4 (4 convs per stage): scratch 93.90%, FitNets (stage-1 lr "
    "1e-3) 91.25%. Chosen: the width-8 student and stage-1 lr 1e-4, the setting where FitNets did best on "
    "validation.")


def build_mnist100_study(evaluate: str = "test", settings: dict | None = None) -> Study:
    """FitNets' claims on mnist100; ``evaluate="val"`` scores on the validation split (a pilot)."""
    st = {**M100, **(settings or {})}
    opt = {**MNIST100_BUDGET, "optimizer": "sgd", "lr": st["lr"], "momentum": 0.9}

    def shared(quick):
        d, tr, va, te = mnist100_splits(quick)
        t_net = seeded(100, models.create, st["teacher"], input_shape=d.input_shape, num_classes=100)
        t_net = train("supervised", t_net, tr, {**MNIST100_BUDGET, "epochs": 1 if quick else st["teacher_epochs"]},
                      100, augment=d.augment)
        ev = te if evaluate == "test" else va
        return {"d": d, "tr": tr, "ev": ev, "aug": d.augment, "teacher": FrozenTeacher(t_net),
                "teacher_acc": accuracy(predict(t_net, ev), ev.targets)}

    def student(ctx):
        return seeded(ctx.seed, models.create, "convnet", input_shape=ctx.d.input_shape, num_classes=100,
                      **st["student"])

    def arm(method, params, fit=False):
        def run(ctx):
            total = 2 if ctx.quick else st["epochs"]
            h = 1 if ctx.quick else st["hint_epochs"]
            p = {**params, "hint_epochs": h} if fit else params
            return _arm(method, p, {**opt, "epochs": total - h if fit else total}, student)(ctx)
        return run

    score = "test acc (%)" if evaluate == "test" else "val acc (%)"

    def tables(res):
        t = Table("Teacher (trained once for all seeds, seed 100; budget above)", [score])
        t.add(st["teacher"], score, res["contexts"][0]["teacher_acc"])
        col = f"trains ({score[:-4]} > {TRAINS_AT:g}%): 1 yes, 0 no"
        f = Table("Which seeds train (the mean is the fraction of seeds on which the arm beats chance, 1%, clearly)",
                  [col], note=f"An arm trains on a seed when its {score[:-4]} exceeds {TRAINS_AT:g}% (ten times "
                              "chance), a threshold fixed before the run; the per-seed column lists 1 or 0.")
        for name, r in res["results"].items():
            for v in r["test acc (%)"]:
                f.add(name, col, float(v > TRAINS_AT))
        return [t, f]

    w, c = st["student"]["width"], st["student"]["convs"]
    return Study(
        title="FitNets on mnist100: a deep thin CNN student that trains without hints",
        paper="Romero et al. 2015, arXiv:1412.6550",
        data=MNIST100_DATA,
        budget=(f"Every student trains {st['epochs']} epochs in total over the 15000 training numbers (batch 128, SGD "
                f"momentum 0.9, lr {st['lr']:g}, cosine schedule per stage), the same optimizer updates: scratch and "
                f"KD {st['epochs']} epochs; FitNets {st['hint_epochs']} hint epochs (stage 1, the student's lower "
                f"half and the regressor only) + {st['epochs'] - st['hint_epochs']} KD epochs (stage 2). The KD and "
                "FitNets arms ask the teacher about every training sample they see (teacher forward passes column). "
                f"Teacher: {st['teacher']}, the mnist100 teacher budget ({st['teacher_epochs']} epochs, Adam 3e-3, "
                "cosine), trained once and shared by every seed."),
        choices=CHOICES_M100,
        setup=(f"Student: the zoo's convnet at width {w} (channels {w} / {2 * w}), {c} conv3x3-BN-ReLU per stage, "
               f"two stages with max-pool, flattened head: {2 * c} conv layers, deeper and thinner than the ResNet-8 "
               "teacher (7 conv layers, 16-64 channels). With batch norm and SGD momentum it trains without hints, "
               "so the claims test whether hints still help where the baselines train (the MNIST-5000 study's "
               "baselines stay at chance). KD: Hinton KD, T = 3, alpha = 0.8. FitNets: stage 1 = hint training of "
               "the student up to `stages.0` (8 x 7x14, after 4 of its 8 convs) through the paper's regressor (a "
               "conv whose kernel N_g - N_h + 1 is 1x1 here, then the hint's ReLU) to the teacher's `layer2` "
               "(32 x 7x14), the middle of both networks (the method's default layers); stage 2 = KD with tau = 3 "
               "and the official lambda schedule (held at 4, then decayed towards 1; no tau^2)."),
        arms=[Arm(SCRATCH, arm("supervised", {})), Arm(KD, arm("kd", KD_PARAMS)),
              Arm(FIT, arm("fitnets", {"hint_layer": "layer2", "guided_layer": "stages.0", "hint_lr": st["hint_lr"]},
                           fit=True))],
        claims=_claims(), test_size=5000, shared=shared, tables=tables, metrics=METRICS,
        tried="the settings in the choices above.")


@register_reproduction("fitnets_mnist100", default_seeds=5, quick_seeds=2,
                       doc="Romero et al. 2015 on mnist100: hints vs scratch and KD for a deep thin convnet "
                           "(8 convs) of a ResNet-8")
def reproduce_fitnets_mnist100(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_mnist100_study()
