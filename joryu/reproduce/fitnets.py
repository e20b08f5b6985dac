"""Romero et al. (2015), FitNets: hints make a deep, thin student trainable where backprop and KD fail."""

from __future__ import annotations

from joryu import models
from joryu.data import load
from joryu.reproduce.claims import Table
from joryu.reproduce.common import accuracy, predict, protocol_splits, seeded, train
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


def _student(shape):
    return models.create("mlp", input_shape=shape, num_classes=10, hidden=(WIDTH,) * DEPTH, activation="tanh")


@register_reproduction("fitnets", default_seeds=5, quick_seeds=2,
                       doc="Romero et al. 2015: hint training vs scratch and KD for a deep thin MLP (MNIST-5000)")
def reproduce_fitnets(seeds: list[int], quick: bool, progress: bool) -> Study:
    ep = (lambda n: max(1, n // 10)) if quick else (lambda n: n)

    def shared(quick):
        mnist = load("mnist5k")
        tr, va, te = protocol_splits(mnist)
        t_net = seeded(100, models.create, "mlp", input_shape=mnist.input_shape, num_classes=10, hidden=(512, 512))
        t_net = train("supervised", t_net, tr, dict(epochs=ep(10), optimizer="adam", lr=1e-3), 100)
        return {"tr": tr, "te": te, "shape": mnist.input_shape, "teacher": FrozenTeacher(t_net),
                "teacher_acc": accuracy(predict(t_net, te), te.targets)}

    def arm(method, params, epochs, lr):
        def run(ctx):
            s = seeded(ctx.seed, _student, ctx.shape)
            s = train(method, s, ctx.tr, dict(epochs=epochs, optimizer="sgd", lr=lr), ctx.seed,
                      teacher=ctx.teacher, params=params)
            return {"test acc (%)": accuracy(predict(s, ctx.te), ctx.te.targets),
                    "train acc (%)": accuracy(predict(s, ctx.tr), ctx.tr.targets)}
        return run

    h, k = ep(HINT_EPOCHS), ep(KD_EPOCHS)
    arms = [Arm("scratch (backprop)", arm("supervised", {}, h + k, BASE_LR)),
            Arm("KD (tau=3, alpha=0.8)", arm("kd", {"temperature": 3.0, "alpha": 0.8}, h + k, BASE_LR)),
            Arm("FitNets (hint + KD)", arm("fitnets", {"hint_layer": "features.2", "guided_layer": GUIDED,
                                                       "hint_epochs": h, "hint_lr": HINT_LR}, k, FIT_LR))]
    claims = [Compare(f"Hint-based pre-training of the lower half lets a deep, thin student reach higher accuracy "
                      f"than {other.split(' (')[0]} at the same number of epochs (paper, CIFAR-10: FitNet-19 "
                      "91.61%, where backprop/KD students deeper than about 7 layers fail to train).",
                      "FitNets (hint + KD)", other)
              for other in ("scratch (backprop)", "KD (tau=3, alpha=0.8)")]

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
        arms=arms, claims=claims, test_size=2000, shared=shared, tables=tables,
        metrics=["test acc (%)", "train acc (%)"],
        tried="Depth and learning rates as in the settings; no change after the test split was read.",
        notes=["Earlier calibration (previous version, seed 0): with Adam every student trains and the gap vanishes "
               "(11 layers: scratch 78.7%, KD 79.5%, FitNets 49% test), as docs/methods/fitnets.md warns; with "
               "RMSProp at 13 layers all three fail (17%).",
               "The paper's students are convolutional (CIFAR-10) with maxout; this is an MLP analogue of the "
               "'deep and thin' regime where plain backprop struggles."],
    )
