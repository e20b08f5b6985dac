"""Gao, Guo, Li & Nevatia 2017 (Knowledge Concentration): specialists over class verticals concentrated into
one small generalist, with self-paced weights and a structurally connected head (best-guess formulation)."""

from __future__ import annotations

import torch

from joryu import models
from joryu.config import TrainConfig
from joryu.data import load
from joryu.methods import get_method
from joryu.models.grouped import attach_vertical_head
from joryu.reproduce.claims import Table
from joryu.reproduce.common import accuracy, predict, protocol_splits, seeded, train
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


def within_vertical_accuracy(logits: torch.Tensor, targets: torch.Tensor, verticals) -> float:
    """Accuracy when each sample's prediction is restricted to the classes of its true vertical."""
    owner = torch.empty(C, dtype=torch.long)
    for k, v in enumerate(verticals):
        owner[v] = k
    mask = owner[None, :] == owner[targets][:, None]
    return accuracy(logits.masked_fill(~mask, -1e9), targets)


def build_study(evaluate: str = "test", settings: dict | None = None) -> Study:
    """The study; ``evaluate="val"`` scores every arm on the validation split (the pilot)."""
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
        params = {"num_verticals": K, "specialists": "train", "specialist_init": "scratch",
                  "specialist_epochs": ep(SPEC_EPOCHS)}
        throwaway = seeded(0, models.create, "mlp", input_shape=d.input_shape, num_classes=C, hidden=(HIDDEN,))
        _, res = run_stages(get_method("knowledge_concentration", params), student=throwaway, teacher=FrozenTeacher(proto), train=tr, val=None, train_cfg=TrainConfig(epochs=1, batch_size=128), run_dir=None, seed=0, augment=None, progress=False, resume=False, label="specialists", num_classes=C)
        specialists = res["distill"].distiller.teacher
        ev = te if evaluate == "test" else va
        x = ev.prepare_input(ev.tensors["input"])
        sp_logits = specialists({"input": x, "target": ev.targets}).logits
        return {"d": d, "tr": tr, "ev": ev, "cfg": cfg, "specialists": specialists,
                "spec_acc": within_vertical_accuracy(sp_logits, ev.targets, verticals)}

    def student(ctx, hidden=HIDDEN):
        return seeded(ctx.seed, models.create, "mlp", input_shape=ctx.d.input_shape, num_classes=C, hidden=(hidden,))

    def scores(net, ctx):
        logits = predict(net, ctx.ev)
        return {"test acc (%)": accuracy(logits, ctx.ev.targets), "params": models.count_parameters(net),
                "within-vertical acc (%)": within_vertical_accuracy(logits, ctx.ev.targets, verticals)}

    def ce(hidden=HIDDEN, head=False):
        def run(ctx):
            net = student(ctx, hidden)
            if head:
                attach_vertical_head(net, verticals, width=16)
            return scores(train("supervised", net, ctx.tr, ctx.cfg, ctx.seed), ctx)
        return run

    def kc(pace, head=False, hidden=HIDDEN):
        def run(ctx):
            params = {"num_verticals": K, "temperature": st["temperature"], "weight": st["weight"], "ce_weight": 1.0,
                      "pace": pace, "grouped_head": head, "specialists": "given"}
            net, _ = run_stages(get_method("knowledge_concentration", params), student=student(ctx, hidden), teacher=ctx.specialists, train=ctx.tr, val=None, train_cfg=ctx.cfg, run_dir=None, seed=ctx.seed, augment=None, progress=False, resume=False, label="kc", num_classes=C)
            return scores(net, ctx)
        return run

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
        title="Knowledge Concentration: Learning 100K Object Classifiers in a Single CNN",
        paper="Gao, Guo, Li & Nevatia 2017, arXiv:1711.07607",
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
        arms=[Arm(CE, ce()), Arm(KD, kc("none")), Arm(SP, kc("easy_first")), Arm(CE_HEAD, ce(head=True)),
              Arm(KC_HEAD, kc("easy_first", head=True)), Arm(CE_DENSE, ce(DENSE_HIDDEN)),
              Arm(KC_DENSE, kc("easy_first", hidden=DENSE_HIDDEN))],
        claims=[
            Compare("Concentrating the specialists' knowledge (each sample distilled from its vertical's specialist, "
                    "self-paced) gives a better generalist than the same network trained on the labels, at equal "
                    "size (paper: significant gains over the baseline generalist on OpenImage / EFT).", SP, CE),
            Compare("Multi-teacher distillation from the specialists alone (uniform λ) already helps the same "
                    "student.", KD, CE),
            Compare("Structurally connected layers add useful capacity at few parameters: with the same loss, "
                    "spending the extra parameters on the grouped head beats spending them densely (a dense student "
                    "of the same size).", KC_HEAD, KC_DENSE),
            Compare("Self-paced per-vertical weights improve on uniform weights (best-guess formulation).", SP, KD),
        ],
        test_size=2000,
        setup=("Knowledge concentration (registered `knowledge_concentration`, `specialists: given`): L = CE + λ_k T² "
               "KL(specialist ‖ student restricted to the sample's vertical); \"self-paced\" = easy-first λ_k (pace "
               "threshold from the median gap to all verticals over the first half of training); \"grouped head\" = "
               "logits = fc(h) + G(relu(W h)), W: 32 -> 5·16, G block-diagonal (16 units per vertical -> its 20 "
               "logits), which doubles the student (4,356 -> 8,696 parameters). The claims that do not involve the "
               "head compare students of equal size; the head claim compares it with a dense student of about its "
               "size (MLP 32-64-100, 8,612 parameters) trained with the same loss."),
        tried="the settings chosen on validation (above); the head and pace rules are best guesses of a paper whose "
              "full text was not available.",
        notes=["Only the paper's abstract was available (docs/methods/knowledge_concentration.md): the self-paced "
               "rule, the structurally connected layer and the loss are documented best guesses, not the paper's "
               "verified method. The paper works at 100K classes (OpenImage, EFT); this is a 100-class synthetic "
               "proxy."],
        tables=tables)


@register_reproduction("knowledge_concentration", default_seeds=5, quick_seeds=2,
                       doc="Gao et al. 2017: 5 specialists over 100 classes concentrated into a small MLP, "
                           "self-paced weights and a block-diagonal head (synthetic grouped mixture)")
def reproduce_knowledge_concentration(seeds: list[int], quick: bool, progress: bool) -> Study:
    return build_study()
