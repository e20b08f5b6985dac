"""Hinton, Vinyals & Dean (2015): three claims of Sec. 3 (MNIST) and Sec. 4 (3% of the data)."""

from __future__ import annotations

import torch

from joryu import models
from joryu.data import Augment, load
from joryu.reproduce.claims import Table
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
from joryu.teachers import FrozenTeacher

OMIT = 3
PER_CLASS = 12          # labelled samples per class in the "3% of the data" claim
T_OMIT, T_FEW = 8.0, 4.0
T_1D, ALPHA_1D = 2.0, 0.5     # chosen on validation (see PILOT)
EPOCHS = dict(teacher=30, student=30, few=200, teacher_1d=30, student_1d=40)
CHOICES = """
Pilot on the validation splits only (seed 0, the test splits unread):
(a) the class-3 bias rule is fixed on the *validation* inputs (no labels): the bias that makes 10% of the
validation predictions 3s, then applied unchanged to the test split (the rule itself, not a tuned value);
(b) 3% of the labels: soft-target temperature T = 4 vs T = 8 on MNIST-5000 validation accuracy;
(c) MNIST-1D: KD (T = 4, alpha = 0.9) vs (T = 2, alpha = 0.5) on MNIST-1D validation accuracy.
PILOT_RESULT
"""
PILOT = ("Pilot result (validation accuracy, seed 0, one run each): few-label students T = 4 84.00%, T = 8 83.33% "
         "-> T = 4; MNIST-1D (T = 4, alpha = 0.9) 59.83%, (T = 2, alpha = 0.5) 60.83% -> (2, 0.5), the better on "
         "validation (the previous version used (4, 0.9)). T = 8 for the omitted-class transfer is the paper's "
         "setting (not piloted).")


def bias_for_fraction(logits: torch.Tensor, cls: int, fraction: float) -> float:
    """Smallest bias added to class ``cls`` so that at least ``fraction`` of predictions are ``cls``."""
    lo, hi = -50.0, 50.0
    for _ in range(60):
        mid = (lo + hi) / 2
        z = logits.clone()
        z[:, cls] += mid
        if float((z.argmax(-1) == cls).float().mean()) >= fraction:
            hi = mid
        else:
            lo = mid
    return hi


def class_recall(logits: torch.Tensor, targets: torch.Tensor, cls: int, bias: float = 0.0) -> float:
    z = logits.clone()
    z[:, cls] += bias
    mask = targets.cpu() == cls
    return 100.0 * float((z[mask].argmax(-1) == cls).float().mean())


def _ep(key: str, quick: bool) -> int:
    return max(1, EPOCHS[key] // 10) if quick else EPOCHS[key]


def _shared(quick: bool) -> dict:
    mnist = load("mnist5k")
    tr, va, te = protocol_splits(mnist)
    shape, k = mnist.input_shape, mnist.num_classes
    # one teacher for all seeds: MLP 1200-1200, dropout, +-2 px jitter, all classes
    t_net = seeded(100, models.create, "mlp", input_shape=shape, num_classes=k, hidden=(1200, 1200),
                   dropout=0.5, input_dropout=0.2)
    t_net = train("supervised", t_net, tr, dict(epochs=_ep("teacher", quick), batch_size=128, optimizer="adam",
                                                lr=1e-3, scheduler="cosine"), 100, augment=Augment(shift=2))
    keep = torch.nonzero(tr.targets != OMIT).flatten()
    d1 = load("mnist1d", num_samples=8000)
    tr1, va1, te1 = protocol_splits(d1)
    t1 = seeded(100, models.create, "cnn1d", input_shape=d1.input_shape, num_classes=10, width=32)
    t1 = train("supervised", t1, tr1, dict(epochs=_ep("teacher_1d", quick), lr=3e-3, weight_decay=1e-4), 100)
    return {"shape": shape, "k": k, "tr": tr, "va": va, "te": te, "transfer": tr.subset(keep, "mnist5k/no-3"),
            "teacher": FrozenTeacher(t_net), "teacher_acc": accuracy(predict(t_net, te), te.targets),
            "shape1d": d1.input_shape, "tr1": tr1, "va1": va1, "te1": te1, "teacher1d": FrozenTeacher(t1),
            "teacher1d_acc": accuracy(predict(t1, te1), te1.targets)}


def _student(ctx, seed):
    return seeded(seed, models.create, "mlp", input_shape=ctx.shape, num_classes=ctx.k, hidden=(800, 800))


def _omitted(method: str, params: dict, eval_key: str = "te"):
    def run(ctx):
        cfg = dict(epochs=_ep("student", ctx.quick), batch_size=128, optimizer="adam", lr=1e-3, scheduler="cosine")
        s = train(method, _student(ctx, ctx.seed), ctx.transfer, cfg, ctx.seed, teacher=ctx.teacher, params=params)
        ev = ctx[eval_key]
        tl, vl = predict(s, ev), predict(s, ctx.va)
        b = bias_for_fraction(vl, OMIT, 0.10)   # set on the validation inputs, no labels
        return {"test acc (%)": accuracy(tl, ev.targets), "test 3s correct (%)": class_recall(tl, ev.targets, OMIT),
                "test 3s correct after bias (%)": class_recall(tl, ev.targets, OMIT, b)}
    return run


def _few(method: str, params: dict, eval_key: str = "te"):
    def run(ctx):
        g = torch.Generator().manual_seed(1000 + ctx.seed)
        idx = torch.cat([torch.nonzero(ctx.tr.targets == c).flatten()[
            torch.randperm(int((ctx.tr.targets == c).sum()), generator=g)[:PER_CLASS]] for c in range(ctx.k)])
        small = ctx.tr.subset(idx, "mnist5k/few")
        cfg = dict(epochs=_ep("few", ctx.quick), batch_size=32, optimizer="adam", lr=1e-3, scheduler="cosine")
        s = train(method, _student(ctx, ctx.seed), small, cfg, ctx.seed, teacher=ctx.teacher, params=params)
        ev = ctx[eval_key]
        return accuracy(predict(s, ev), ev.targets)
    return run


def _mnist1d(method: str, params: dict, eval_key: str = "te1"):
    def run(ctx):
        s = seeded(ctx.seed, models.create, "mlp", input_shape=ctx.shape1d, num_classes=10, hidden=(64, 64))
        s = train(method, s, ctx.tr1, dict(epochs=_ep("student_1d", ctx.quick), lr=2e-3), ctx.seed,
                  teacher=ctx.teacher1d, params=params)
        ev = ctx[eval_key]
        return accuracy(predict(s, ev), ev.targets)
    return run


ARM_OMIT_HARD, ARM_OMIT_SOFT = "no 3s: hard labels", f"no 3s: soft targets T={T_OMIT:g}"
ARM_FEW_HARD, ARM_FEW_SOFT = "12 labels/class: hard labels", f"12 labels/class: soft targets T={T_FEW:g}"
ARM_1D_ALONE, ARM_1D_KD = "MNIST-1D MLP 64-64 alone", f"MNIST-1D MLP 64-64 + KD (T={T_1D:g}, alpha={ALPHA_1D:g})"


@register_reproduction("kd", default_seeds=5, quick_seeds=2,
                       doc="Hinton et al. 2015: omitted-class transfer, 3% of the labels, KD vs alone on MNIST-1D")
def reproduce_kd(seeds: list[int], quick: bool, progress: bool) -> Study:
    arms = [Arm(ARM_OMIT_HARD, _omitted("supervised", {})),
            Arm(ARM_OMIT_SOFT, _omitted("kd", {"temperature": T_OMIT, "alpha": 1.0})),
            Arm(ARM_FEW_HARD, _few("supervised", {})),
            Arm(ARM_FEW_SOFT, _few("kd", {"temperature": T_FEW, "alpha": 1.0})),
            Arm(ARM_1D_ALONE, _mnist1d("supervised", {})),
            Arm(ARM_1D_KD, _mnist1d("kd", {"temperature": T_1D, "alpha": ALPHA_1D}))]
    claims = [
        Compare("A student distilled on a transfer set with no 3s still recognises the test 3s once the class-3 "
                "bias is raised, which a student trained on the same set's hard labels cannot (paper: 98.6% of "
                "3s after a +3.5 bias).", ARM_OMIT_SOFT, ARM_OMIT_HARD, metric="test 3s correct after bias (%)"),
        Compare("Soft targets carry much more information per sample than hard labels: with a few percent of "
                "the labels, a student trained on the full-data teacher's soft targets generalises far better "
                "(paper, speech, 3% of the data: 57.0% vs 44.5%).", ARM_FEW_SOFT, ARM_FEW_HARD),
        Compare("A small student trained with KD beats the same student trained alone with the same budget "
                "(paper, MNIST: 74 vs 146 test errors).", ARM_1D_KD, ARM_1D_ALONE),
    ]

    def tables(res):
        ctx = res["contexts"][0]
        t = Table("Teachers (one per dataset, trained once for all seeds)", ["test acc (%)"])
        t.add("MNIST-5000 teacher, MLP 1200-1200 + dropout + jitter", "test acc (%)", ctx["teacher_acc"])
        t.add("MNIST-1D teacher, cnn1d width 32", "test acc (%)", ctx["teacher1d_acc"])
        return [t]

    ep = {k: _ep(k, quick) for k in EPOCHS}
    return Study(
        title="Distilling the Knowledge in a Neural Network (KD)",
        paper="Hinton, Vinyals & Dean 2015, arXiv:1503.02531",
        data="MNIST-5000 (joryu's 5000-image MNIST subset, train and test pooled and split by `protocol_splits`: "
             "2700 train, 300 validation, 2000 test; the omitted-class transfer set is the training split without "
             "its 3s; the few-label set is 12 training images per class, drawn per seed) and MNIST-1D (8000 "
             "generated samples: 5400 train, 600 validation, 2000 test). Claims 1-2 use the MNIST-5000 test split, "
             "claim 3 the MNIST-1D one.",
        budget=f"Paired arms have equal budgets: omitted-class students {ep['student']} epochs over the transfer set "
               f"(batch 128, Adam 1e-3, cosine); few-label students {ep['few']} epochs over their 120 images (batch "
               f"32); MNIST-1D students {ep['student_1d']} epochs (Adam 2e-3). Teachers, trained once: MNIST-5000 "
               f"MLP 784-1200-1200-10 with dropout 0.5 (0.2 on the input) and +-2 px shifts, {ep['teacher']} "
               f"epochs; MNIST-1D cnn1d width 32, {ep['teacher_1d']} epochs, Adam 3e-3.",
        choices=CHOICES.replace("PILOT_RESULT", PILOT),
        setup="Students: MLP 784-800-800-10 without regularisation (MNIST-5000), MLP 40-64-64-10 (MNIST-1D). "
              "Soft-target students use the soft loss only (alpha = 1) as in the paper's omitted-class and 3% "
              "experiments; the MNIST-1D student mixes hard and soft losses.",
        arms=arms, claims=claims, test_size=2000, shared=_shared, tables=tables,
        metrics=["test acc (%)", "test 3s correct (%)", "test 3s correct after bias (%)"],
        tried="Temperatures and alpha were piloted on validation only (see the settings); no change after the test "
              "split was read.",
        notes=["The paper's MNIST numbers come from 60k images and long training; this is a 2700-image, "
               "minutes-long analogue, so absolute errors are higher.",
               "The previous version judged claim 1 by a fixed threshold (>= 70% of 3s after the bias) and claims "
               "2-3 by per-claim rules on 1000-sample test splits; here every claim is a paired comparison under "
               "the shared rule."],
    )


# --- claim 3 on mnist100: a student that can follow the teacher -----------------------------------------------
# the mnist100 student and teacher chosen on validation (docs/datasets/mnist100.md); T and alpha are the kd
# method's defaults (results/defaults/kd.md), not piloted on mnist100
M100 = dict(student={k: MNIST100_STUDENT[k] for k in ("width", "depth")}, teacher="resnet8",
            **{k: MNIST100_STUDENT[k] for k in ("epochs", "lr", "batch_size")}, temperature=4.0, alpha=0.9)
ARM_100_ALONE = "mnist100 convnet width 8 alone"
ARM_100_KD = f"mnist100 convnet width 8 + KD from ResNet-8 (T={M100['temperature']:g}, alpha={M100['alpha']:g})"


def build_mnist100_study(evaluate: str = "test") -> Study:
    """KD's third claim on mnist100; ``evaluate="val"`` scores on the validation split (a pilot)."""

    def shared(quick):
        d, tr, va, te = mnist100_splits(quick)
        cfg = dict(epochs=1 if quick else M100["epochs"], batch_size=M100["batch_size"], optimizer="adam",
                   lr=M100["lr"], scheduler="cosine")
        t_net = seeded(100, models.create, M100["teacher"], input_shape=d.input_shape, num_classes=100)
        t_net = train("supervised", t_net, tr, cfg, 100, augment=d.augment)
        ev = te if evaluate == "test" else va
        return {"d": d, "tr": tr, "ev": ev, "cfg": cfg, "teacher": FrozenTeacher(t_net),
                "teacher_acc": accuracy(predict(t_net, ev), ev.targets)}

    def arm(method, params):
        def run(ctx):
            s = seeded(ctx.seed, models.create, "convnet", input_shape=ctx.d.input_shape, num_classes=100,
                       **M100["student"])
            s = train(method, s, ctx.tr, ctx.cfg, ctx.seed, teacher=ctx.teacher, params=params,
                      augment=ctx.d.augment)
            return {"test acc (%)": accuracy(predict(s, ctx.ev), ctx.ev.targets),
                    "train acc (%)": accuracy(predict(s, ctx.tr), ctx.tr.targets)}
        return run

    def tables(res):
        t = Table("Teacher (trained once for all seeds, seed 100)", ["test acc (%)"])
        t.add(f"{M100['teacher']}, the mnist100 budget", "test acc (%)", res["contexts"][0]["teacher_acc"])
        return [t]

    return Study(
        title="KD, claim 3 on mnist100: a student that can follow its teacher",
        paper="Hinton, Vinyals & Dean 2015, arXiv:1503.02531",
        data=("mnist100 (built in, docs/datasets/mnist100.md): 100 classes of two-digit numbers at 1x14x28 from "
              "disjoint MNIST digit pools, its own splits 15000 train / 2000 validation / 5000 test; +-2 px shifts."),
        budget=(f"Both arms: convnet width 8 depth 2, {M100['epochs']} epochs over the 15000 training numbers "
                f"(Adam {M100['lr']:g}, cosine, batch {M100['batch_size']}), the same optimizer updates; the KD arm "
                "also asks the teacher about every training sample it sees (the method's input, counted in the "
                f"teacher forward passes column). Teacher: {M100['teacher']} with the same budget, trained once."),
        choices=("Student, teacher and budget chosen on the validation split before any method ran "
                 "(docs/datasets/mnist100.md: the width-8 convnet underfits at 90.4 +- 0.9 val, 94.6% train, under "
                 "ResNet-8's 95.5). T = 4 and alpha = 0.9 are the kd method's defaults (results/defaults/kd.md); "
                 "they were not piloted on mnist100 in this revision."),
        shared=shared, tables=tables, metrics=["test acc (%)", "train acc (%)"],
        arms=[Arm(ARM_100_ALONE, arm("supervised", {})),
              Arm(ARM_100_KD, arm("kd", {"temperature": M100["temperature"], "alpha": M100["alpha"]}))],
        claims=[Compare("A small student trained with KD beats the same student trained alone with the same "
                        "budget (paper, MNIST: 74 vs 146 test errors), here with a convolutional student that "
                        "underfits its convolutional teacher on 100 classes.", ARM_100_KD, ARM_100_ALONE)],
        test_size=5000, tried="the kd defaults only (no pilot on mnist100 in this revision).")


@register_reproduction("kd_mnist100", default_seeds=5, quick_seeds=2,
                       doc="Hinton et al. 2015, claim 3 on mnist100: width-8 convnet + KD from ResNet-8 vs alone")
def reproduce_kd_mnist100(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_mnist100_study()
