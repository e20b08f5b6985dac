"""Gao, Guo, Li & Nevatia 2017 (Knowledge Concentration): specialists over class verticals concentrated into
one small generalist, with self-paced weights and a structurally connected head (best-guess formulation)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from joryu import models
from joryu.config import TrainConfig
from joryu.data import load
from joryu.data.mnist100 import tens_verticals
from joryu.methods import get_method
from joryu.models.grouped import attach_vertical_head
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
from joryu.run.stages import run_stages
from joryu.teachers import FrozenTeacher, contiguous_verticals

C, K = 100, 5
HIDDEN, DENSE_HIDDEN = 32, 64  # the student MLP 32-32-100 (4,356 parameters); 32-64-100 (8,612) ~ with the head (8,696)
SETTINGS = {"temperature": 4.0, "weight": 3.0, "epochs": 40}  # chosen on validation (CHOICES)
SPEC_EPOCHS = 80

CHOICES = (
    "The distillation temperature T and weight λ of every distilled arm, on the validation split (600 samples; the "
    "test split was not read), seeds 0-1, judged by the equal-size self-paced student (the first claim's arm): "
    "(T, λ) = (1, 1) / (2, 1) / (4, 1) / (2, 3) / (4, 3) gave 76.6 / 78.8 / 79.7 / 80.7 / 81.9% (CE alone 74.3%), "
    "so T = 4, λ = 3. On the same pilot the head arms were 84.4 / 85.4 / 86.2 / 85.3 / 85.6% and the dense "
    "student of equal size with the same loss 89.1 / 89.8 / 89.6 / 88.1 / 89.3%: no setting tried brought the head "
    "near the dense student. The students, the head width (16 per vertical), the 40 epochs and the specialists are "
    "the previous reproduction's, not tuned.")


# mnist100: the verticals are the class structure, the tens digit (10 verticals of 10 classes, 10k..10k+9),
# given through the method's `verticals` parameter. The student and budget are the mnist100 ones chosen on
# validation (docs/datasets/mnist100.md); the teacher is the ResNet-8 of kd_mnist100, trained once, and each
# specialist starts from it (the method's default specialist_init) for the run's epochs (the default
# specialist_epochs) on its vertical's numbers. T, λ and the pace are the method's defaults when the pilot ran
# (T = 2, λ = 1), held fixed here so a later change of the defaults does not change the study.
MNIST100 = {**MNIST100_STUDENT, "teacher": "resnet8"}
CHOICES_MNIST100 = (
    "Student, teacher and budget chosen on the validation split before any method ran (docs/datasets/mnist100.md: "
    "the convnet width 8 depth 2 underfits at 90.4 +- 0.9 val, 94.6% train, under ResNet-8's 95.5; 10 epochs, Adam "
    "3e-3 cosine, batch 128, +-2 px shifts). The verticals are not chosen: they are the dataset's class structure "
    "(the tens digit). The specialists follow the method's defaults (initialised from the teacher, trained for the "
    "run's epochs with cross-entropy over their vertical's classes), and so do T = {T:g}, λ = {W:g}, the label "
    "weight 1 and the easy-first pace. Pilot on the 2000-number validation split before the test split "
    "was read (seed 0, this study with evaluate='val' and a third arm, KD with uniform λ; 665 s on one thread of "
    "the shared machine at load about 7): teacher 96.60%, specialists 97.55% within their vertical; CE 89.30% "
    "(within-vertical 94.65%), uniform-λ KD 90.55% (95.70%), self-paced KD 90.60% (95.85%). Nothing was varied "
    "after it. The uniform-λ arm was first left out for time, not for its result; a later revision added it "
    "back with the paper's two claims that need it (KD vs CE, self-paced vs uniform λ), before any test number "
    "of that arm was read; the CE and self-paced arms and their claim are unchanged.")


def _train_specialists(params: dict, student, teacher, tr, cfg: TrainConfig, augment, num_classes: int):
    """The specialists, trained by the method's own specialist stages (then a one-epoch distillation of a
    throwaway ``student``, the method's last stage, discarded), as one frozen SpecialistTeacher."""
    _, res = run_stages(get_method("knowledge_concentration", {**params, "specialists": "train"}), student=student,
                        teacher=teacher, train=tr, val=None, train_cfg=cfg, run_dir=None, seed=0, augment=augment,
                        progress=False, resume=False, label="specialists", num_classes=num_classes)
    return res["distill"].distiller.teacher


def within_vertical_accuracy(logits: torch.Tensor, targets: torch.Tensor, verticals) -> float:
    """Accuracy when each sample's prediction is restricted to the classes of its true vertical."""
    owner = torch.empty(sum(len(v) for v in verticals), dtype=torch.long)
    for k, v in enumerate(verticals):
        owner[v] = k
    mask = owner[None, :] == owner[targets][:, None]
    return accuracy(logits.masked_fill(~mask, -1e9), targets)


def _specialist_accuracy(specialists, ev, verticals) -> float:
    x = ev.prepare_input(ev.tensors["input"])
    return within_vertical_accuracy(specialists({"input": x, "target": ev.targets}).logits, ev.targets, verticals)


def _scores(net, ctx, verticals) -> dict:
    logits = predict(net, ctx.ev)
    return {"test acc (%)": accuracy(logits, ctx.ev.targets), "params": models.count_parameters(net),
            "within-vertical acc (%)": within_vertical_accuracy(logits, ctx.ev.targets, verticals)}


def _ce_arm(make, verticals, head=False):
    """The student ``make(ctx)`` trained on the labels alone (with the grouped head attached if ``head``)."""
    def run(ctx):
        net = make(ctx)
        if head:
            attach_vertical_head(net, verticals, width=16)
        return _scores(train("supervised", net, ctx.tr, ctx.cfg, ctx.seed, augment=ctx.aug), ctx, verticals)
    return run


def _kc_arm(make, verticals, params: dict):
    """The student ``make(ctx)`` distilled from the shared specialists (``specialists: given``)."""
    def run(ctx):
        m = get_method("knowledge_concentration", {**params, "specialists": "given"})
        net, _ = run_stages(m, student=make(ctx), teacher=ctx.specialists, train=ctx.tr, val=None,
                            train_cfg=ctx.cfg, run_dir=None, seed=ctx.seed, augment=ctx.aug, progress=False,
                            resume=False, label="kc", num_classes=C)
        return _scores(net, ctx, verticals)
    return run


CLAIM_SP = ("Concentrating the specialists' knowledge (each sample distilled from its vertical's specialist, "
            "self-paced) gives a better generalist than the same network trained on the labels, at equal size "
            "(paper: significant gains over the baseline generalist on OpenImage / EFT).")
CLAIM_KD = "Multi-teacher distillation from the specialists alone (uniform λ) already helps the same student."
CLAIM_HEAD = ("Structurally connected layers add useful capacity at few parameters: with the same loss, spending "
              "the extra parameters on the grouped head beats spending them densely (a dense student of the same "
              "size).")
CLAIM_PACE = "Self-paced per-vertical weights improve on uniform weights (best-guess formulation)."
PAPER = "Gao, Guo, Li & Nevatia 2017, arXiv:1711.07607"
TITLE = "Knowledge Concentration: Learning 100K Object Classifiers in a Single CNN"
LOSS = ("L = CE + λ_k T² KL(specialist ‖ student restricted to the sample's vertical); \"self-paced\" = easy-first "
        "λ_k (pace threshold from the median gap to all verticals over the first half of training)")
ABSTRACT_ONLY = ("Only the paper's abstract was available (docs/methods/knowledge_concentration.md): the self-paced "
                 "rule, the structurally connected layer and the loss are documented best guesses, not the paper's "
                 "verified method.")


def build_study(evaluate: str = "test", settings: dict | None = None, bench: str = "grouped_mixture") -> Study:
    """The study; ``evaluate="val"`` scores every arm on the validation split (the pilot).
    ``bench="mnist100"``: the tens-digit verticals of mnist100 (MNIST100 above)."""
    if bench == "mnist100":
        return _mnist100_study(evaluate, {**MNIST100, **(settings or {})})
    st = {**SETTINGS, **(settings or {})}
    verticals = contiguous_verticals(C, K)

    def shared(quick):
        d = load("grouped_mixture", num_classes=C, num_groups=K)
        tr, va, te = protocol_splits(d)
        ep = (lambda n: max(1, n // 10)) if quick else (lambda n: n)
        cfg = TrainConfig(epochs=ep(st["epochs"]), batch_size=128, optimizer="adam", lr=3e-3)
        # the specialists: 5 MLPs 32-256-100 from scratch, one per vertical, trained once by the method's own
        # specialist stages (CE over the vertical's classes) and shared by every seed and arm (a fixed teacher)
        proto = seeded(1000, models.create, "mlp", input_shape=d.input_shape, num_classes=C, hidden=(256,))
        params = {"num_verticals": K, "specialist_init": "scratch", "specialist_epochs": ep(SPEC_EPOCHS)}
        throwaway = seeded(0, models.create, "mlp", input_shape=d.input_shape, num_classes=C, hidden=(HIDDEN,))
        specialists = _train_specialists(params, throwaway, FrozenTeacher(proto), tr,
                                         TrainConfig(epochs=1, batch_size=128), None, C)
        ev = te if evaluate == "test" else va
        return {"d": d, "tr": tr, "ev": ev, "cfg": cfg, "aug": None, "specialists": specialists,
                "spec_acc": _specialist_accuracy(specialists, ev, verticals)}

    def mlp(hidden=HIDDEN):
        return lambda ctx: seeded(ctx.seed, models.create, "mlp", input_shape=ctx.d.input_shape, num_classes=C,
                                  hidden=(hidden,))

    def kc(pace, head=False, hidden=HIDDEN):
        return _kc_arm(mlp(hidden), verticals, {"num_verticals": K, "temperature": st["temperature"],
                                                "weight": st["weight"], "ce_weight": 1.0, "pace": pace,
                                                "grouped_head": head})

    def tables(r):
        t = Table("Specialists (fixed, shared by every seed): accuracy within the true vertical",
                  ["within-vertical acc (%)"],
                  note="Each prediction is restricted to the classes of the sample's true vertical; the specialists "
                       "are routed by the true label, as during distillation. The arms table gives the same measure "
                       "for every student.")
        t.add("specialists (MLP 32-256-100, one per vertical of 20 classes)", "within-vertical acc (%)",
              r["contexts"][0]["spec_acc"])
        return [t]

    CE, CE_HEAD, CE_DENSE = ("CE (student alone, MLP 32-32-100)", "CE + grouped head (MLP 32-32-100 + head)",
                             "CE, dense MLP 32-64-100 (the size of student + head)")
    KD, SP = "multi-teacher KD (uniform λ, MLP 32-32-100)", "KD + self-paced λ (MLP 32-32-100)"
    KC_HEAD = "knowledge concentration: self-paced λ + grouped head (MLP 32-32-100 + head)"
    KC_DENSE = "KD + self-paced λ, dense MLP 32-64-100 (the size of student + head)"
    return Study(
        title=TITLE,
        paper=PAPER,
        data=("Synthetic grouped mixture (`grouped_mixture`: 100 classes in 5 groups of 20 contiguous classes, "
              "32-dim inputs, each class a mixture of 3 Gaussians near its group's centre); the verticals are the 5 "
              "groups. Train and test pooled and re-split by `protocol_splits`: 5400 train / 600 validation / 2000 "
              "test (class-stratified)."),
        budget=(f"Every student: {st['epochs']} epochs over the 5400 training samples (batch 128, Adam 3e-3), the "
                "same initialisation per seed for students of the same architecture. Specialists (the teacher): 5 "
                f"MLPs 32-256-100 from scratch, {SPEC_EPOCHS} epochs each on its vertical's samples with CE over "
                "its 20 classes, trained once and shared by every seed (a fixed teacher)."),
        choices=CHOICES,
        shared=shared,
        metrics=["test acc (%)", "params", "within-vertical acc (%)"],
        arms=[Arm(CE, _ce_arm(mlp(), verticals)), Arm(KD, kc("none")), Arm(SP, kc("easy_first")),
              Arm(CE_HEAD, _ce_arm(mlp(), verticals, head=True)), Arm(KC_HEAD, kc("easy_first", head=True)),
              Arm(CE_DENSE, _ce_arm(mlp(DENSE_HIDDEN), verticals)),
              Arm(KC_DENSE, kc("easy_first", hidden=DENSE_HIDDEN))],
        claims=[Compare(CLAIM_SP, SP, CE), Compare(CLAIM_KD, KD, CE), Compare(CLAIM_HEAD, KC_HEAD, KC_DENSE),
                Compare(CLAIM_PACE, SP, KD)],
        test_size=2000,
        setup=("Knowledge concentration (registered `knowledge_concentration`, `specialists: given`): " + LOSS +
               "; \"grouped head\" = "
               "logits = fc(h) + G(relu(W h)), W: 32 -> 5·16, G block-diagonal (16 units per vertical -> its 20 "
               "logits), which doubles the student (4,356 -> 8,696 parameters). The claims that do not involve the "
               "head compare students of equal size; the head claim compares it with a dense student of about its "
               "size (MLP 32-64-100, 8,612 parameters) trained with the same loss."),
        tried="the settings chosen on validation (above); the head and pace rules are best guesses of a paper whose "
              "full text was not available.",
        notes=[ABSTRACT_ONLY + " The paper works at 100K classes (OpenImage, EFT); this is a 100-class synthetic "
               "proxy."],
        tables=tables)


def _mnist100_study(evaluate: str, st: dict) -> Study:
    verticals = tens_verticals()
    kc_defaults = SimpleNamespace(temperature=2.0, weight=1.0)  # the defaults the pilot ran with (see above)

    def student(seed, shape):
        return seeded(seed, models.create, "convnet", input_shape=shape, num_classes=C, width=st["width"],
                      depth=st["depth"])

    def convnet(ctx):
        return student(ctx.seed, ctx.d.input_shape)

    def shared(quick):
        d, tr, va, te = mnist100_splits(quick)
        ep = 1 if quick else st["epochs"]
        opt = dict(batch_size=st["batch_size"], optimizer="adam", lr=st["lr"], scheduler="cosine")
        cfg = TrainConfig(epochs=ep, **opt)
        # the teacher of kd_mnist100 (trained once, seed 100); the 10 specialists start from it, one per tens
        # digit, trained by the method's own specialist stages and shared by every seed and arm
        t_net = seeded(100, models.create, st["teacher"], input_shape=d.input_shape, num_classes=C)
        t_net = train("supervised", t_net, tr, cfg, 100, augment=d.augment)
        specialists = _train_specialists({"verticals": verticals, "specialist_epochs": ep},
                                          student(0, d.input_shape),
                                          FrozenTeacher(t_net), tr, TrainConfig(epochs=1, **opt), d.augment, C)
        ev = te if evaluate == "test" else va
        return {"d": d, "tr": tr, "ev": ev, "cfg": cfg, "aug": d.augment, "specialists": specialists,
                "spec_acc": _specialist_accuracy(specialists, ev, verticals),
                "teacher_acc": accuracy(predict(t_net, ev), ev.targets)}

    def tables(r):
        c = r["contexts"][0]
        t = Table("Teacher and specialists (trained once, shared by every seed)",
                  ["test acc (%)", "within-vertical acc (%)"],
                  note="Within-vertical: each prediction restricted to the classes of the sample's true vertical "
                       "(its tens digit); the specialists are routed by the true label, as during distillation. "
                       "The arms table gives the same measure for every student.")
        t.add(f"{st['teacher']} teacher (all 100 classes; the specialists' initialisation)", "test acc (%)",
              c["teacher_acc"])
        t.add(f"specialists ({st['teacher']}, one per tens digit, 10 classes each)", "within-vertical acc (%)",
              c["spec_acc"])
        return [t]

    net = f"convnet width {st['width']}"
    CE, SP, KD = f"CE (student alone, {net})", f"KD + self-paced λ ({net})", f"KD, uniform λ ({net})"
    kc = {"verticals": verticals, "temperature": kc_defaults.temperature, "weight": kc_defaults.weight}
    choices = CHOICES_MNIST100.format(T=kc_defaults.temperature, W=kc_defaults.weight)
    return Study(
        title=TITLE + " (mnist100, tens-digit verticals)",
        paper=PAPER,
        data=("mnist100 (built in, docs/datasets/mnist100.md): 100 classes, two-digit numbers at 1x14x28 from "
              "disjoint MNIST digit pools, its own splits 15000 train / 2000 validation / 5000 test; +-2 px shifts. "
              "The verticals are the class structure: the tens digit, 10 verticals of 10 classes (10k..10k+9)."),
        budget=(f"All three students: {net} depth {st['depth']}, {st['epochs']} epochs over the 15000 training numbers "
                f"(Adam {st['lr']:g}, cosine, batch {st['batch_size']}, +-2 px shifts), the same initialisation and "
                "the same optimizer updates per seed (measured below); the distilled arms also ask one specialist "
                "about every training sample it sees (the teacher forward passes column). Teacher: "
                f"{st['teacher']} with the same budget on all 100 classes, trained once (seed 100), as in "
                f"kd_mnist100. Specialists: 10 copies of it, each trained for {st['epochs']} epochs on its vertical's "
                "1500 numbers with CE over its 10 classes, trained once and shared by every seed and arm."),
        choices=choices,
        shared=shared,
        metrics=["test acc (%)", "params", "within-vertical acc (%)"],
        arms=[Arm(CE, _ce_arm(convnet, verticals)), Arm(KD, _kc_arm(convnet, verticals, {**kc, "pace": "none"})),
              Arm(SP, _kc_arm(convnet, verticals, {**kc, "pace": "easy_first"}))],
        claims=[Compare(CLAIM_SP, SP, CE), Compare(CLAIM_KD, KD, CE), Compare(CLAIM_PACE, SP, KD)],
        test_size=5000,
        setup=(f"Knowledge concentration (registered `knowledge_concentration`, `verticals` = the ten tens-digit "
               f"groups, `specialists: given` the shared specialists): {LOSS}; T = {kc_defaults.temperature:g}, "
               f"λ = {kc_defaults.weight:g}. The claim compares students of equal size (the mnist100 student, which "
               "alone underfits: below the ResNet-8 teacher on validation and on its own training numbers)."),
        tried="the method's defaults only (see the settings).",
        notes=[ABSTRACT_ONLY,
               "Three of the synthetic study's four claims are run here. The head claim needs two more arms and a "
               "dense convnet matched to the head's parameters; a distilled student costs about 3.5 times a "
               "student alone (every training number also goes through a ResNet-8 specialist), so it was left out "
               "for time, before any run of this study on the test split."],
        tables=tables)


@register_reproduction("knowledge_concentration", default_seeds=5, quick_seeds=2,
                       doc="Gao et al. 2017: 5 specialists over 100 classes concentrated into a small MLP, "
                           "self-paced weights and a block-diagonal head (synthetic grouped mixture)")
def reproduce_knowledge_concentration(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_study()


@register_reproduction("knowledge_concentration_mnist100", default_seeds=5, quick_seeds=2,
                       doc="Gao et al. 2017: 10 ResNet-8 specialists over the tens digits of mnist100 concentrated "
                           "into a width-8 convnet (self-paced) vs the convnet alone")
def reproduce_knowledge_concentration_mnist100(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_study(bench="mnist100")
