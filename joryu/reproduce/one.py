"""Lan, Zhu & Gong (2018), ONE: a branch of an on-the-fly native ensemble beats the same network trained alone."""

from __future__ import annotations

import copy

import torch
from accelerate.utils import set_seed

from joryu import models
from joryu.config import TrainConfig
from joryu.data import Augment, load
from joryu.experiment import run_stages
from joryu.methods import get_method
from joryu.reproduce.common import accuracy, predict, seeded, train
from joryu.reproduce.registry import Claim, Report, Table, fmt, mean_std, register_reproduction

WIDTH, DEPTH, TRUNK_END = 8, 4, "blocks.1"
N_TRAIN = 1600
# KL weight: the official code's ramp-up w(t) = exp(-5 (1 - t/R)^2) over R = the whole run (chosen on a
# validation split carved from the training set, seeds 0-1), and the paper's Eq. 7 with w = 1
VARIANTS = {"ONE as in the official code (KL ramp-up over the run)": 1.0, "ONE, paper's Eq. (w = 1)": 0.0}


@register_reproduction("one", default_seeds=5, quick_seeds=1,
                       doc="Lan et al. 2018: ONE branch 0 and ONE-E vs the same 1-D CNN alone (MNIST-1D, 1600 training signals)")
def reproduce_one(seeds: list[int], quick: bool, progress: bool) -> Report:
    epochs = 2 if quick else 30
    cfg = dict(epochs=epochs, batch_size=64, optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4,
               scheduler="onecycle")
    # a hard task (1600 training signals, as in the calibration in docs/methods/one.md) measured on a 2000-signal test
    # split, so that one test sample is 0.05 points rather than 0.25
    data = load("mnist1d", num_samples=10_000)
    tr, test = data.train.subset(torch.arange(N_TRAIN), "mnist1d/train1600"), data.test
    aug = Augment(shift=3)
    tab = Table(f"cnn1d width {WIDTH}, depth {DEPTH} on MNIST-1D ({N_TRAIN} train / {len(test)} test), {epochs} epochs",
                ["test acc (%)"])
    n_params = {}
    for seed in seeds:
        init = seeded(seed, models.create, "cnn1d", num_classes=10, width=WIDTH, depth=DEPTH)
        n_params["alone"] = models.count_parameters(init)
        alone = train("supervised", copy.deepcopy(init), tr, cfg, seed, augment=aug)
        tab.add("baseline: the network alone", "test acc (%)", accuracy(predict(alone, test), test.targets))

        for tag, ramp in VARIANTS.items():
            if quick and ramp == 0:
                continue
            m = get_method("one", {"trunk_end": TRUNK_END, "num_branches": 3, "temperature": 3.0,
                                   "rampup_epochs": ramp * epochs})
            set_seed(seed)
            student, res = run_stages(m, copy.deepcopy(init), None, tr, None, TrainConfig(**cfg), None, seed, aug,
                                      False, "one", 10)
            d = res["one"]["distiller"]
            n_params["one"] = models.count_parameters(student)
            n_params["one_train"] = models.count_parameters(d)
            ev = _evaluate(d, test)
            tab.add(f"{tag}: branch 0 alone (ONE, deployed, original size)", "test acc (%)", ev["one"])
            tab.add(f"{tag}: ONE-E, mean of the 3 branches' logits", "test acc (%)", ev["one_e"])
            tab.add(f"{tag}: gated ensemble (the training teacher)", "test acc (%)", ev["gated"])
            tab.add(f"{tag}: mean of the single branches", "test acc (%)",
                    sum(ev[f"branch{i}"] for i in range(3)) / 3)

    base = tab.values("baseline: the network alone")
    claims = []
    for tag, ramp in VARIANTS.items():
        if quick and ramp == 0:
            continue
        one = tab.values(f"{tag}: branch 0 alone (ONE, deployed, original size)")
        one_e = tab.values(f"{tag}: ONE-E, mean of the 3 branches' logits")
        gain = [a - b for a, b in zip(one, base)]
        mb, mo, me = mean_std(base)[0], mean_std(one)[0], mean_std(one_e)[0]
        claims.append(Claim(
            "Training a network as one branch of an on-the-fly native ensemble makes it better than the same "
            "network trained alone, and the branch ensemble (ONE-E) is better still (paper, CIFAR-100 "
            f"ResNet-32: 31.18% -> 26.61% error). Setting: {tag}.",
            "mean(ONE) - mean(baseline) >= 1 point and mean(ONE-E) >= mean(ONE) (docs/methods/one.md)",
            (mo - mb) >= 1.0 and me >= mo,
            f"baseline {fmt(base)}%, ONE {fmt(one)}% (paired gain {fmt(gain)} points), ONE-E {fmt(one_e)}%"))
    setup = f"""
MNIST-1D generated with num_samples = 10000: the first 1600 of its 8000 training signals are the
training set (the calibration's hard, 1600-signal task) and its 2000 test signals the test set,
measured once, at the end; nothing is tuned on it. Network: joryu's `cnn1d`, width {WIDTH}, depth {DEPTH}
(conv5 -> conv3/2 | conv3/2 -> conv3/2 -> GAP -> FC), {n_params.get('alone', 0)} parameters. ONE
shares the trunk up to `{TRUNK_END}` and gives each of the m = 3 branches its own copy of the rest
(the gate reads the shared features); the training network has {n_params.get('one_train', 0)}
parameters, the deployed branch 0 has {n_params.get('one', 0)}, the same as the baseline. Both are
trained through joryu's engine with the same initialisation of the shared network, the same budget and
the same data order: SGD lr 0.1, momentum 0.9, weight decay 1e-4, one-cycle schedule, batch 64,
{epochs} epochs, random shifts of up to ±3 samples. ONE: the registered `one` method, T = 3, once
with the official code's ramp-up of the KL weight (w(t) = exp(-5 (1 - t/{epochs})^2), here over the
whole run; the code ramps over 80 of its 300 epochs) and once with the paper's equation (w = 1).
"""
    notes = ["The calibration in docs/methods/one.md (2 seeds, 400 test signals): baseline 92.5 ± 0.3%, ONE branch 0 94.5 ± 0.8%, "
             "ONE-E 94.8 ± 0.5%.",
             "A first run of this reproduction used the calibration's split exactly (num_samples = 2000: 1600 train / "
             "400 test) and did not reproduce the claim: baseline 93.55 ± 1.11%, ONE 93.60 ± 1.49% (paired gain "
             "0.05 ± 1.32), ONE-E 93.65 ± 1.75% over 5 seeds. With 400 test signals one sample is 0.25 points, so "
             "the test split was enlarged to 2000 signals (same training-set size, same models and budget) and "
             "the reproduction rerun: ONE with w = 1 was then *worse* than the baseline (91.62 ± 0.86% alone, "
             "90.43 ± 1.57% ONE, 90.36 ± 1.53% ONE-E). This tiny network underfits (training accuracy close to "
             "test accuracy), and on a validation split carved from the training set (seeds 0 and 1) the full-"
             "strength KL from the first epoch hurt one seed badly (85.9% vs 92.5% alone) while the official "
             "code's ramp-up did not (92.2%). This file is the third run, with both settings; the test split "
             "played no part in the choice."]
    if quick:
        notes.insert(0, "QUICK smoke run: 2 epochs, one seed; the numbers are not a reproduction.")
    return Report(title="On-the-Fly Native Ensemble (ONE)",
                  paper="Lan, Zhu & Gong 2018, Knowledge Distillation by On-the-Fly Native Ensemble, NeurIPS",
                  setup=setup, tables=[tab], claims=claims, notes=notes)


def _evaluate(distiller, test) -> dict:
    from joryu.engine import Engine

    out = Engine(TrainConfig(), None, progress=False).evaluate(distiller, test, "test")
    return {k.split("/")[1]: v for k, v in out.items() if k.count("/") == 2 and k.endswith("/acc")}
