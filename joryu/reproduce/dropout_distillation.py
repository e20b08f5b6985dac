"""Rota Bulò et al. 2016: a distilled deterministic net approaches MC dropout better than weight scaling."""

from __future__ import annotations

import copy

import torch

from joryu import models
from joryu.data import load
from joryu.losses import predictive_kl
from joryu.reproduce.common import accuracy, predict, seeded, train
from joryu.reproduce.registry import Claim, Report, Table, fmt, mean_std, register_reproduction
from joryu.teachers import MCDropoutTeacher, weight_scaled


@torch.no_grad()
def mc_probs(model, data, samples: int, seed: int) -> torch.Tensor:
    """The ``samples``-mask MC-dropout predictive of ``model`` on every sample of ``data``."""
    t = MCDropoutTeacher(copy.deepcopy(model), samples=samples, chunk=200_000)
    x = data.prepare_input(data.tensors["input"])
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return t.mean_probs({"input": x})


@register_reproduction("dropout_distillation", default_seeds=5, quick_seeds=1,
                       doc="Rota Bulò et al. 2016: dropout distillation vs weight scaling vs MC dropout (MNIST-1D)")
def reproduce_dropout_distillation(seeds: list[int], quick: bool, progress: bool) -> Report:
    d = load("mnist1d")
    tr, test = d.train, d.test
    ep = (lambda n: max(1, n // 20)) if quick else (lambda n: n)
    t_cfg = dict(epochs=ep(100), batch_size=128, optimizer="adam", lr=1e-3, scheduler="constant")
    s_cfg = dict(epochs=ep(30), batch_size=128, optimizer="adam", lr=1e-4, scheduler="constant")
    mc_n = 20 if quick else 200
    params = {"samples_per_step": 1, "input_noise": 0.05, "init_from_teacher": True}
    cols = ["test acc (%)", f"KL(p̄_MC{mc_n} ‖ ·) x 1000"]
    tab = Table("MNIST-1D, MLP 40-512-512-10 with dropout (0.2 input, 0.5 hidden)", cols,
                note=f"KL is measured on the test split against a {mc_n}-mask MC-dropout predictive drawn with "
                     "its own seed; the 'MC dropout' row is a second, independent draw of the same size, so its "
                     "KL is the Monte-Carlo noise floor. Test cost per sample: weight scaling and the distilled "
                     f"student 1 forward pass, MC dropout {mc_n}.")
    for seed in seeds:
        net = seeded(seed, models.create, "mlp", input_shape=d.input_shape, num_classes=10, hidden=(512, 512),
                     dropout=0.5, input_dropout=0.2)
        net = train("supervised", net, tr, t_cfg, seed, progress=progress, label="dropout teacher")
        ref = mc_probs(net, test, mc_n, 10_000 + seed)
        mc = mc_probs(net, test, mc_n, 20_000 + seed)
        std_logits = predict(weight_scaled(net), test)
        student = seeded(seed, models.create, "mlp", input_shape=d.input_shape, num_classes=10,
                         hidden=(512, 512), dropout=0.5, input_dropout=0.2)
        student = train("dropout_distillation", student, tr, s_cfg, seed, teacher=net, params=params,
                        progress=progress, label="dropout distillation")
        dd_logits = predict(student, test)
        y = test.targets
        rows = {"standard dropout (weight scaling)": std_logits,
                f"MC dropout ({mc_n} masks)": mc.clamp_min(1e-12).log(),
                "dropout distillation (deterministic)": dd_logits}
        for name, logits in rows.items():
            tab.add(name, cols[0], accuracy(logits, y))
            tab.add(name, cols[1], 1000 * float(predictive_kl(ref, logits)))

    std_name, dd_name = "standard dropout (weight scaling)", "dropout distillation (deterministic)"
    mc_name = f"MC dropout ({mc_n} masks)"
    kl_std, kl_dd = tab.values(std_name, cols[1]), tab.values(dd_name, cols[1])
    ratio = [a / b for a, b in zip(kl_dd, kl_std)]
    c1 = Claim(
        "The distilled deterministic network approximates the MC-dropout predictive much better than "
        "standard dropout (weight scaling) does, at the same test cost.",
        "mean over seeds of KL_DD / KL_std < 0.5 (docs/methods/dropout_distillation.md, primary criterion)",
        mean_std(ratio)[0] < 0.5,
        f"KL_std x 1000 = {fmt(kl_std)}, KL_DD x 1000 = {fmt(kl_dd)}, ratio {fmt(ratio, 3)}")
    acc_std, acc_dd, acc_mc = tab.values(std_name), tab.values(dd_name), tab.values(mc_name)
    gain = [a - b for a, b in zip(acc_dd, acc_std)]
    c2 = Claim(
        "Dropout distillation is at least as accurate as standard dropout at equal test cost.",
        "mean paired accuracy gain of DD over weight scaling >= 0 (docs/methods/dropout_distillation.md, secondary)",
        mean_std(gain)[0] >= 0,
        f"standard {fmt(acc_std)}%, DD {fmt(acc_dd)}%, paired gain {fmt(gain)} points; "
        f"MC dropout ({mc_n} passes) {fmt(acc_mc)}%")
    setup = f"""
MNIST-1D (generated offline: 4000 train / 1000 test). Per seed, one teacher and one student, both
through joryu's engine (`supervised`, then `dropout_distillation`):

- Teacher: MLP 40-512-512-10, dropout 0.2 on the input and 0.5 after each hidden layer, Adam 1e-3,
  {t_cfg['epochs']} epochs, batch 128.
- Standard dropout: the teacher in eval mode (PyTorch's inverted dropout = weight scaling).
- Dropout distillation: the same architecture without dropout, initialised from the teacher, trained on
  CE against one fresh-mask teacher softmax per sample per step, inputs + N(0, 0.05²) noise, Adam 1e-4,
  {s_cfg['epochs']} epochs. No labels.
- Measured once on the test split: accuracy and KL(p̄ ‖ softmax(predictor)) with p̄ the {mc_n}-mask
  MC-dropout predictive.
"""
    notes = ["The paper's numbers (CIFAR / MNIST, reconstructed from reviews) are unverified; this is the "
             "calibrated CPU proxy of docs/methods/dropout_distillation.md. KL is the primary measure: accuracy gaps here "
             "are about one point, inside the seed spread."]
    if quick:
        notes.insert(0, "QUICK smoke run: epochs cut 20x and 20 MC masks; the numbers are not a reproduction.")
    return Report(title="Dropout Distillation", paper="Rota Bulò, Porzi & Kontschieder 2016, ICML",
                  setup=setup, tables=[tab], claims=[c1, c2], notes=notes)
