"""Wang et al. (2018), progressive blockwise KD: a halved-filter student replaced block by block vs the same
student trained from scratch and with plain KD, at the same number of epochs (MNIST-1D)."""

from __future__ import annotations

import copy

from torch import nn

from joryu.data import load, split_validation
from joryu.methods.progressive_blockwise import blockwise_cost, blockwise_student
from joryu.reproduce.common import accuracy, predict, seeded, train
from joryu.reproduce.registry import Claim, Report, Table, fmt, mean_std, register_reproduction
from joryu.teachers import FrozenTeacher

WIDTHS = (32, 64, 64)
BLOCKS = ["block1", "block2", "block3"]


def _block(cin: int, c: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv1d(cin, c, 3, padding=1), nn.BatchNorm1d(c), nn.ReLU(),
                         nn.Conv1d(c, c, 3, padding=1), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(2))


class BlockCNN(nn.Module):
    """Three conv-BN-ReLU x2 + max-pool blocks, global average pooling, a linear head."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.block1 = _block(1, WIDTHS[0])
        self.block2 = _block(WIDTHS[0], WIDTHS[1])
        self.block3 = _block(WIDTHS[1], WIDTHS[2])
        self.fc = nn.Linear(WIDTHS[2], num_classes)

    def forward(self, x):
        return self.fc(self.block3(self.block2(self.block1(x))).mean(-1))


@register_reproduction("progressive_blockwise", default_seeds=3, quick_seeds=1,
                       doc="Wang et al. 2018: blockwise-replaced half-width student vs scratch and KD (MNIST-1D)")
def reproduce_progressive_blockwise(seeds: list[int], quick: bool, progress: bool) -> Report:
    d = load("mnist1d", num_samples=3000)
    tr, _ = split_validation(d.train, 0.1, seed=0)
    test = d.test
    step, ft = (1, 1) if quick else (5, 5)
    total = len(BLOCKS) * step + ft
    opt = dict(batch_size=128, optimizer="adam", lr=2e-3)
    t_epochs = 2 if quick else 20
    cols = ["test acc (%)", "MAC ratio (teacher/model)", "param ratio (teacher/model)"]
    tab = Table(f"Half-filter student, {total} epochs for every student setting", cols)
    for seed in seeds:
        t_net = seeded(seed, BlockCNN)
        t_net = train("supervised", t_net, tr, dict(epochs=t_epochs, **opt), seed)
        teacher = FrozenTeacher(t_net)
        x = test.tensors["input"][:1]
        tab.add("teacher", "test acc (%)", accuracy(predict(t_net, test), test.targets))
        tab.add("teacher", cols[1], 1.0)
        tab.add("teacher", cols[2], 1.0)
        # the student architecture with a fresh initialisation of every layer (head included)
        init = seeded(seed, lambda t=t_net: _reinit(blockwise_student(t, BLOCKS)))
        cost = blockwise_cost(t_net, init, x)
        runs = [("student from scratch", "supervised", {}, init, total),
                ("student + plain KD (T=4, alpha=0.9)", "kd", {"temperature": 4.0, "alpha": 0.9}, init, total)]
        for variant in ("output_kd", "local"):
            runs.append((f"progressive blockwise ({variant} steps, {step} epochs each) + {ft}-epoch KD fine-tune",
                         "progressive_blockwise", {"blocks": BLOCKS, "loss": variant, "step_epochs": step,
                                                   "finetune_epochs": ft, "finetune_loss": "kd"}, None, ft))
        for label, method, params, start, epochs in runs:
            model = copy.deepcopy(start) if start is not None else seeded(seed, BlockCNN)
            net = train(method, model, tr, dict(epochs=epochs, **opt), seed, teacher=teacher, params=params)
            c = blockwise_cost(t_net, net, x)
            tab.add(label, "test acc (%)", accuracy(predict(net, test), test.targets))
            tab.add(label, cols[1], c["mac_ratio"])
            tab.add(label, cols[2], c["param_ratio"])
            assert abs(c["mac_ratio"] - cost["mac_ratio"]) < 1e-9  # every student has the same architecture

    pb = tab.values(f"progressive blockwise (output_kd steps, {step} epochs each) + {ft}-epoch KD fine-tune")
    claims = []
    for other in ("student from scratch", "student + plain KD (T=4, alpha=0.9)"):
        base = tab.values(other)
        gain = [a - b for a, b in zip(pb, base)]
        m, s = mean_std(gain)
        claims.append(Claim(
            f"The progressively distilled half-filter student is more accurate than the same architecture trained "
            f"as '{other}' at the same number of epochs (paper: large speed-ups at a small accuracy loss).",
            "mean paired gain > 0 and larger than the standard deviation of the paired gains (docs/methods/progressive_blockwise.md: "
            "reproduced when the blockwise student beats both scratch and plain KD at the same budget)",
            m > 0 and m > s,
            f"blockwise {fmt(pb)}%, {other} {fmt(base)}%, paired gain {fmt(gain)} points; MAC ratio "
            f"{fmt(tab.values(other, cols[1]))}, parameter ratio {fmt(tab.values(other, cols[2]))}"))
    setup = f"""
MNIST-1D (3000 samples: 2400 train, 10% of them held out and unused; 600 test, measured once at the end).
Teacher: three blocks of (conv3-BN-ReLU) x 2 + max-pool 2, widths {WIDTHS}, global average pooling and a linear
head; Adam 2e-3, {t_epochs} epochs. Student: each block with every convolution's filters halved plus a 1x1
convolution restoring the block's output channels (built automatically by `blockwise_student`); the head is the
teacher's. All students have the same architecture and train for {total} epochs (Adam 2e-3, cosine, batch 128):

- scratch: cross-entropy from a fresh initialisation;
- plain KD: Hinton KD (T = 4, alpha = 0.9) from the same initialisation;
- progressive blockwise: blocks replaced one at a time from the input side, {step} epochs per block, earlier
  student blocks frozen, teacher parts frozen (in eval mode); step loss either KD at the hybrid's output
  (`output_kd`: T = 4, alpha = 0.9) or the local L2 between the student block's and the teacher block's
  outputs (`local`); then a {ft}-epoch fine-tune of the whole student with KD. The blockwise student starts from
  the teacher's head and fresh student blocks.
"""
    notes = ["The paper's step loss, freezing and fine-tuning are unverified (docs/methods/progressive_blockwise.md); the claim is "
             "judged on the output-KD variant with frozen earlier blocks and a KD fine-tune, chosen before the run "
             "from the calibration in docs/methods/progressive_blockwise.md (output-KD 93.95% vs local-L2 90.95% after fine-tuning at 2 epochs "
             "per step on MNIST-5000); the local variant is reported beside it.",
             "MACs count convolutions and linear layers for one sample; the ratios are exact for these architectures "
             "(tests/test_progressive_blockwise.py checks the formula)."]
    if quick:
        notes.insert(0, "QUICK smoke run: epochs cut; the numbers are not a reproduction.")
    return Report(title="Progressive Blockwise Knowledge Distillation",
                  paper="Wang, Zhao, Li & Tan 2018, IJCAI", setup=setup, tables=[tab], claims=claims, notes=notes)


def _reinit(net: nn.Module) -> nn.Module:
    for m in net.modules():
        if hasattr(m, "reset_parameters") and m is not net:
            m.reset_parameters()
    return net
