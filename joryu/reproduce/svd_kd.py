"""Lee, Kim & Song (2018), KD-SVD: CE vs KD vs KD-SVD for plain and strided 1-d CNN students on MNIST-1D, and
for a 2-D CNN student of a ResNet-8 on mnist100 (feature maps of real spatial extent)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

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

WIDTHS = (32, 64, 64, 64)
SAMPLES = 5000          # mnist1d generator: 2700 train / 300 validation / 2000 test
TEACHER_EPOCHS = 20
STUDENT_EPOCHS = 8
STUDENT_LR = 0.03       # chosen on the validation split (see CHOICES)
ROWS = {"CE only": ("supervised", {}), "Hinton KD": ("kd", {"temperature": 4.0, "alpha": 0.9}),
        "KD-SVD": ("svd_kd", {})}
PAPER = "(paper, CIFAR-100 VGG: student 61.37 -> 65.05; VGG_stride 54.17 -> 61.15)"
CHOICES = f"""
One pilot, seed 0, scored on the 300-sample validation split (the test split unread): the students' SGD
learning rate at {STUDENT_EPOCHS} epochs, 0.01 (the previous setting) vs 0.03, for the CE and KD arms of
both students. 0.03 was better on validation for three of the four (plain CE 93.3 -> 94.7, plain KD 94.3 ->
94.3, strided CE 61.7 -> 77.0, strided KD 69.0 -> 87.7), so every student uses lr {STUDENT_LR}. KD-SVD's own
settings are the paper's defaults (not tuned). The epochs ({STUDENT_EPOCHS}) are set by the time budget, not
by a pilot.
"""


class StageCNN(nn.Module):
    """Four stages of ``convs`` conv-BN-ReLU layers each followed by max-pool 2 (the sensing points are
    ``stages.i``); ``strided=True`` replaces conv + max-pool by one stride-2 conv (the VGG_stride analogue)."""

    def __init__(self, convs: int = 1, strided: bool = False, num_classes: int = 10):
        super().__init__()
        stages, c = [], 1
        for w in WIDTHS:
            layers = []
            for j in range(convs):
                stride = 2 if strided and j == convs - 1 else 1
                layers += [nn.Conv1d(c, w, 3, stride=stride, padding=1), nn.BatchNorm1d(w), nn.ReLU()]
                c = w
            if not strided:
                layers.append(nn.MaxPool1d(2))
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.fc = nn.Linear(c, num_classes)
        self.feature_layers = [f"stages.{i}" for i in range(len(WIDTHS))]

    def forward(self, x):
        return self.fc(self.stages(x).mean(-1))


def _epochs(n: int, quick: bool) -> int:
    return max(1, n // 8) if quick else n


def _arm(name: str, row: str, student: Callable, points: dict | None = None) -> Arm:
    """Arm ``'name, row'``: ``student(ctx)`` trained by ``ROWS[row]`` from ``ctx.teacher`` on ``ctx.tr`` (with
    ``ctx.cfg`` and ``ctx.aug``), scored on ``ctx.ev``; ``points`` (the sensing points) go to KD-SVD."""
    method, params = ROWS[row]
    params = {**params, **(points or {})} if method == "svd_kd" else params

    def run(ctx):
        s = train(method, student(ctx), ctx.tr, ctx.cfg, ctx.seed, teacher=ctx.teacher, params=params, augment=ctx.aug)
        return accuracy(predict(s, ctx.ev), ctx.ev.targets)
    return Arm(f"{name}, {row}", run)


def _claims(name: str) -> list[Compare]:
    return [Compare(f"KD-SVD improves the {name} over {other} {PAPER}.", f"{name}, KD-SVD", f"{name}, {other}")
            for other in ("CE only", "Hinton KD")]


@register_reproduction("svd_kd", default_seeds=5, quick_seeds=2,
                       doc="Lee et al. 2018: KD-SVD vs CE and KD for plain and strided 1-d CNN students (MNIST-1D)")
def reproduce_svd_kd(seeds: list[int], quick: bool, progress: bool) -> Study:
    def shared(quick):
        tr, va, te = protocol_splits(load("mnist1d", num_samples=SAMPLES))
        t_cfg = dict(epochs=_epochs(TEACHER_EPOCHS, quick), batch_size=128, optimizer="adam", lr=2e-3)
        t_net = train("supervised", seeded(100, StageCNN, 2), tr, t_cfg, 100)
        cfg = dict(epochs=_epochs(STUDENT_EPOCHS, quick), batch_size=128, optimizer="sgd", lr=STUDENT_LR,
                   momentum=0.9, nesterov=True, weight_decay=1e-4)
        return {"tr": tr, "ev": te, "aug": None, "cfg": cfg, "teacher": FrozenTeacher(t_net),
                "teacher_acc": accuracy(predict(t_net, te), te.targets)}

    def student(kind):
        return lambda ctx: seeded(ctx.seed, StageCNN, 1, kind == "strided")

    arms = [_arm(f"{kind} student", row, student(kind)) for kind in ("plain", "strided") for row in ROWS]
    claims = [c for kind in ("plain", "strided") for c in _claims(f"{kind} student")]

    def tables(res):
        t = Table("Teacher (one, trained once for all seeds): 4 stages x 2 convs, widths 32-64-64-64",
                  ["test acc (%)"])
        t.add("teacher", "test acc (%)", res["contexts"][0]["teacher_acc"])
        return [t]

    te_ep, st_ep = _epochs(TEACHER_EPOCHS, quick), _epochs(STUDENT_EPOCHS, quick)
    return Study(
        title="Self-supervised Knowledge Distillation using SVD (KD-SVD)",
        paper="Lee, Kim & Song 2018, ECCV (arXiv:1807.06819)",
        data=f"MNIST-1D generator, {SAMPLES} samples pooled and split by `protocol_splits`: 2700 train, 300 "
             "validation (pilot only), 2000 test (read once, at the end). The signal length plays the role of "
             "the spatial axis.",
        budget=f"Every student arm trains {st_ep} epochs over the 2700 training samples (batch 128, SGD Nesterov "
               f"0.9, lr {STUDENT_LR}, weight decay 1e-4, cosine schedule; the paper's optimiser). One teacher "
               f"(4 stages x 2 conv-BN-ReLU, Adam 2e-3, {te_ep} epochs) is trained once and shared by every seed.",
        choices=CHOICES,
        setup=f"1-d CNNs with four stages of widths {WIDTHS} (equal at every sensing point, as KD-SVD requires); "
              "sensing points = the four stage outputs (after max-pool). Students: 1 conv per stage (plain), or 1 "
              "stride-2 conv per stage without pooling (strided, the analogue of the paper's VGG_stride). KD: T = "
              "4, alpha = 0.9. KD-SVD uses the paper's defaults: k = 1, student k + 1 candidates, RBF between "
              "consecutive points, sqrt(k), the loss summed over the batch, and the authors' final gradient rule "
              "g = grad CE + clip_by_norm(grad L_svd, ||grad CE|| * sigmoid(epoch)) per variable.",
        arms=arms, claims=claims, test_size=2000, shared=shared, tables=tables,
        tried="The previous version (2160 training samples, 20 epochs at lr 0.01, per-seed teachers, 600-sample "
              "test split) did not reproduce any of the four claims either; this version changes the data, the "
              "budget and the learning rate (chosen on validation for the CE/KD arms), not KD-SVD itself.",
        notes=["docs/methods/svd_kd.md expects at most about 2 points here: the invariant tests (loss 0 under "
               "negation, scaling and spatial permutation; no teacher gradient) are the firm test of the "
               "implementation. Previous verdicts (`git log results/svd_kd.md`): all four not reproduced, on a "
               "600-sample test split."],
    )


# --- mnist100 (issue 22): feature maps of real spatial extent ------------------------------------------------
# Teacher: the mnist100 teacher (ResNet-8, widths 16/32/64). Student: the zoo's convnet at width 16, depth 2, whose
# two conv stages have the teacher's first two widths; both are tapped where the maps are 16 x 14x28 and 32 x 7x14
# (the student's ReLU before each max-pool, the teacher's layer1 / layer2 outputs).
M100 = dict(student={"width": 16, "depth": 2}, teacher="resnet8", teacher_epochs=10, epochs=5,
            points={"student_points": ["stages.0.2", "stages.1.2"], "teacher_points": ["layer1", "layer2"]})
M100_NAME = "convnet width 16 student"
CHOICES_M100 = """
Student, teacher and optimiser are the mnist100 ones chosen on its validation split before any method ran
(docs/datasets/mnist100.md: ResNet-8 teacher; Adam 3e-3, cosine, batch 128, +-2 px shifts), except the student's
width: KD-SVD needs equal widths at every sensing point and the chosen width-8 student has 8 / 16 channels where
ResNet-8 has 16 / 32, so the student is the same convnet at width 16. Student epochs: EPOCHS (the mnist100 budget
is 10), set by the time budget, not by a pilot: a KD-SVD arm costs about seven CE arms here (four float64 SVDs
per batch; 74 vs 10 s of CPU for 5 epochs, one thread). KD (T = 4, alpha = 0.9) and KD-SVD (k = 1, the final clip rule) keep their defaults, as in the
MNIST-1D study. PILOT
"""
PILOT_M100 = ("Validation pilot before the test split was read (seed 0, this study with evaluate='val'; 185 s of "
              "CPU on one thread, 747 s wall on the loaded shared machine): teacher 96.60%, CE only 91.40%, Hinton "
              "KD 91.00%, KD-SVD 91.95% on validation. It checks the regime (the student alone 5 points under its "
              "teacher); nothing was chosen from it.")


def build_mnist100_study(evaluate: str = "test", settings: dict | None = None) -> Study:
    """KD-SVD's claims on mnist100; ``evaluate="val"`` scores on the validation split (a pilot)."""
    st = {**M100, **(settings or {})}

    def shared(quick):
        d, tr, va, te = mnist100_splits(quick)
        t_cfg = {**MNIST100_BUDGET, "epochs": 1 if quick else st["teacher_epochs"]}
        t_net = seeded(100, models.create, st["teacher"], input_shape=d.input_shape, num_classes=100)
        t_net = train("supervised", t_net, tr, t_cfg, 100, augment=d.augment)
        ev = te if evaluate == "test" else va
        return {"d": d, "tr": tr, "ev": ev, "aug": d.augment, "teacher": FrozenTeacher(t_net),
                "cfg": {**MNIST100_BUDGET, "epochs": 1 if quick else st["epochs"]},
                "teacher_acc": accuracy(predict(t_net, ev), ev.targets)}

    def student(ctx):
        return seeded(ctx.seed, models.create, "convnet", input_shape=ctx.d.input_shape, num_classes=100,
                      **st["student"])

    def tables(res):
        t = Table("Teacher (trained once for all seeds, seed 100; budget above)",
                  ["test acc (%)" if evaluate == "test" else "val acc (%)"])
        t.add(st["teacher"], t.columns[0], res["contexts"][0]["teacher_acc"])
        return [t]

    return Study(
        title="KD-SVD on mnist100: a 2-D CNN student of a ResNet-8",
        paper="Lee, Kim & Song 2018, ECCV (arXiv:1807.06819)",
        data=MNIST100_DATA,
        budget=(f"Every student arm: {st['epochs']} epochs over the 15000 training numbers (Adam 3e-3, cosine, batch "
                "128), the same optimizer updates; the KD and KD-SVD arms also ask the teacher about every training "
                "sample they see (teacher forward passes column), and KD-SVD computes the SVDs of both networks' "
                f"maps. Teacher: {st['teacher']}, {st['teacher_epochs']} epochs of the same optimiser, trained once "
                "and shared by every seed."),
        choices=CHOICES_M100.replace("EPOCHS", str(st["epochs"])).replace("PILOT", PILOT_M100),
        setup=(f"Student: convnet width {st['student']['width']} depth {st['student']['depth']} (two conv3x3-BN-ReLU "
               "stages with max-pool, widths 16 / 32, flattened linear head). Sensing points: the student's ReLU "
               "outputs before each max-pool (`stages.0.2`: 16 x 14x28, `stages.1.2`: 32 x 7x14) and the teacher's "
               "`layer1` (16 x 14x28) and `layer2` (32 x 7x14), so both SVDs see 392 and 98 spatial positions. KD: "
               "T = 4, alpha = 0.9. KD-SVD: the paper's defaults (k = 1, student k + 1 candidates, RBF between the "
               "two points, the loss summed over the batch, g = grad CE + clip_by_norm(grad L_svd, ||grad CE|| * "
               "sigmoid(epoch)) per variable)."),
        arms=[_arm(M100_NAME, row, student, st["points"]) for row in ROWS],
        claims=_claims(M100_NAME), test_size=5000, shared=shared, tables=tables,
        tried="the defaults above; nothing was tuned on mnist100.",
        notes=["The MNIST-1D study (`joryu reproduce svd_kd`) taps 1-d signals; here the SVD runs over real 2-D "
               "maps (392 and 98 positions), the setting of the paper."])


@register_reproduction("svd_kd_mnist100", default_seeds=5, quick_seeds=2,
                       doc="Lee et al. 2018 on mnist100: KD-SVD vs CE and KD, width-16 convnet <- ResNet-8 (2-D maps)")
def reproduce_svd_kd_mnist100(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_mnist100_study()
