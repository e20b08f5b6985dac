"""Lee, Kim & Song (2018), KD-SVD: CE vs KD vs KD-SVD for plain and strided 1-d CNN students on MNIST-1D."""

from __future__ import annotations

from torch import nn

from joryu.data import load
from joryu.reproduce.claims import Table
from joryu.reproduce.common import accuracy, predict, protocol_splits, seeded, train
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


@register_reproduction("svd_kd", default_seeds=5, quick_seeds=2,
                       doc="Lee et al. 2018: KD-SVD vs CE and KD for plain and strided 1-d CNN students (MNIST-1D)")
def reproduce_svd_kd(seeds: list[int], quick: bool, progress: bool) -> Study:
    def shared(quick):
        tr, va, te = protocol_splits(load("mnist1d", num_samples=SAMPLES))
        t_cfg = dict(epochs=_epochs(TEACHER_EPOCHS, quick), batch_size=128, optimizer="adam", lr=2e-3)
        t_net = train("supervised", seeded(100, StageCNN, 2), tr, t_cfg, 100)
        return {"tr": tr, "te": te, "teacher": FrozenTeacher(t_net),
                "teacher_acc": accuracy(predict(t_net, te), te.targets)}

    def arm(kind: str, row: str):
        method, params = ROWS[row]

        def run(ctx):
            cfg = dict(epochs=_epochs(STUDENT_EPOCHS, ctx.quick), batch_size=128, optimizer="sgd", lr=STUDENT_LR,
                       momentum=0.9, nesterov=True, weight_decay=1e-4)
            s = seeded(ctx.seed, StageCNN, 1, kind == "strided")
            s = train(method, s, ctx.tr, cfg, ctx.seed, teacher=ctx.teacher, params=params)
            return accuracy(predict(s, ctx.te), ctx.te.targets)
        return Arm(f"{kind} student, {row}", run)

    arms = [arm(kind, row) for kind in ("plain", "strided") for row in ROWS]
    claims = [Compare(f"KD-SVD improves the {kind} student over {other} {PAPER}.",
                      f"{kind} student, KD-SVD", f"{kind} student, {other}")
              for kind in ("plain", "strided") for other in ("CE only", "Hinton KD")]

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
