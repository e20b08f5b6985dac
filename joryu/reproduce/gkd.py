"""On-policy vs off-policy distillation of a byte-level LM on the Python standard library (GKD).

The claim of Agarwal et al. (2024), stated before the run: a student distilled on sequences it
generates itself (on-policy, lambda = 1) is, at inference, where it generates, closer to the teacher
than the same student distilled on the data's sequences (off-policy, supervised KD, lambda = 0),
because it has been trained on the states it actually meets (the train-inference mismatch of
Sec. 3 of the paper). Measured: the mean per-token JSD(0.5) between teacher and student over the
continuations each student samples for held-out prompts; lower is better. Same data, divergence,
initialisation and number of student updates for both arms; only where the continuations come
from differs.
"""

from __future__ import annotations

import math
import sys

import torch

from joryu import models
from joryu.data import TensorData, TensorLoader
from joryu.data.text import byte_windows, split_files, stdlib_files
from joryu.methods.gkd import generated_batch, gkd_divergence
from joryu.outputs import declare_inputs, forward
from joryu.reproduce.claims import Claim, Report, Table, fmt
from joryu.reproduce.common import bits_per_byte, seeded, train
from joryu.reproduce.protocol import judge
from joryu.reproduce.registry import register_reproduction
from joryu.teachers import FrozenTeacher

LN2 = math.log(2)

# Every setting below was fixed before the test split was read (the pass rule and metric too).
LENGTH, PROMPT = 64, 32  # bytes per window; the first PROMPT are the prompt, the rest the continuation
FULL = dict(student_windows=4096, test_windows=1024, teacher_epochs=1, student_epochs=3,
            teacher=dict(width=96, layers=4), student=dict(width=32, layers=2))
QUICK = dict(student_windows=128, test_windows=64, teacher_epochs=1, student_epochs=1,
             teacher=dict(width=24, layers=2), student=dict(width=12, layers=1))
TEACHER_CFG = dict(batch_size=64, optimizer="adamw", lr=3e-3, scheduler="cosine", warmup_epochs=0.05)
STUDENT_CFG = dict(batch_size=32, optimizer="adamw", lr=3e-3, scheduler="cosine", warmup_epochs=0.05)
GKD = dict(beta=0.5, temperature=1.0, generation_temperature=1.0, max_new_tokens=LENGTH - PROMPT)
ARMS = (("off-policy (lambda = 0)", 0.0), ("on-policy (lambda = 1)", 1.0))
CLAIM = ("On-policy distillation (the student trained on its own sampled continuations) leaves the student "
         "closer to the teacher on the continuations it generates for held-out prompts (lower per-token "
         "JSD(0.5)) than off-policy supervised KD at equal student updates.")
TEST_TABLE = "Test prompts (files never seen in training)"
JSD_COL = "JSD(0.5) to the teacher on own samples (millinats/token)"


def judge_tables(tables: list[Table]) -> list[Claim]:
    """The claim, judged by the protocol's rule from the result's tables (a fresh run's, or a stored
    file's, for ``python -m joryu.reproduce.rejudge``): on-policy's divergence lower, paired by seed."""
    by = {t.title: t for t in tables}
    off, on = (by[TEST_TABLE].values(a, JSD_COL) for a, _ in ARMS)
    claim = judge(CLAIM, on, off, sign=-1, unit="millinats per token", names=("on-policy", "off-policy"))
    claim.evidence = f"on-policy {fmt(on, 2)}, off-policy {fmt(off, 2)} ({JSD_COL}); {claim.evidence}"
    return [claim]


def with_prompts(data: TensorData) -> TensorData:
    """Byte windows with a ``prompt_length`` column: the first ``PROMPT`` bytes are the prompt."""
    t = dict(data.tensors)
    t["prompt_length"] = torch.full((len(t["input_ids"]),), PROMPT, dtype=torch.long)
    return TensorData(t, data.num_classes, data.name)


@torch.no_grad()
def on_own_samples(student, teacher, test: TensorData, seed: int) -> tuple[float, float]:
    """(mean per-token JSD(0.5) between teacher and student, teacher cross-entropy in bits per byte) on
    the continuations ``student`` samples (T = 1) for the prompts of ``test``; sampling seeded."""
    student.eval()
    gen = torch.random.fork_rng()
    with gen:
        torch.manual_seed(10_000 + seed)
        jsd = nll = n = 0.0
        for batch in TensorLoader(test, 256, shuffle=False).iterate(0):
            new = generated_batch(student, batch, GKD["max_new_tokens"], 1.0, pad=0, eos=None)
            s, t = forward(student, new).float(), forward(teacher, new).float()
            valid = new["target"] != -100
            k = int(valid.sum())
            jsd += float(gkd_divergence(s, t, new["target"], 0.5)) * k
            nll += float(torch.nn.functional.cross_entropy(t[valid], new["target"][valid], reduction="sum"))
            n += k
    return 1000 * jsd / n, nll / n / LN2


@register_reproduction("gkd", default_seeds=5, quick_seeds=2,
                       doc="GKD on a byte-level LM (Python stdlib source): on-policy vs off-policy distillation")
def reproduce_gkd(seeds: list[int], quick: bool, progress: bool) -> Report:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    s = QUICK if quick else FULL
    files = stdlib_files()
    parts = split_files(files, seed=0)
    teacher_train = byte_windows(parts["train"], LENGTH)
    if quick:
        teacher_train = teacher_train.subset(torch.arange(0, len(teacher_train), 32))
    transfer = with_prompts(byte_windows(parts["train"], LENGTH, max_windows=s["student_windows"], seed=1))
    test = with_prompts(byte_windows(parts["test"], LENGTH, max_windows=s["test_windows"], seed=2))
    # the test split is read only below, after every network is trained

    teacher_cfg = dict(TEACHER_CFG, epochs=s["teacher_epochs"])
    student_cfg = dict(STUDENT_CFG, epochs=s["student_epochs"])
    t_net = declare_inputs(seeded(0, models.create, "byte_conv_lm", num_classes=257, **s["teacher"]), "input_ids")
    t_net = train("supervised", t_net, teacher_train, teacher_cfg, 0, progress=progress, label="teacher")
    teacher = FrozenTeacher(t_net)

    nets = {}
    for seed in seeds:
        for label, lmbda in ARMS:
            net = declare_inputs(seeded(seed, models.create, "byte_conv_lm", num_classes=257, **s["student"]),
                                 "input_ids")
            nets[(label, seed)] = train("gkd", net, transfer, student_cfg, seed, teacher=teacher,
                                        params={**GKD, "lmbda": lmbda}, progress=progress,
                                        label=f"{label} (seed {seed})")

    bpb_col, judged_col = "test bits per byte (data continuations)", "teacher bits per byte of own samples"
    table = Table(TEST_TABLE, [JSD_COL, judged_col, bpb_col],
                  note="JSD(0.5): the training divergence, per continuation token of the student's own "
                       "samples (T = 1, full distribution, the same sampling seed for both arms of a seed). "
                       "Teacher bits per byte: the teacher's cross-entropy of those samples (how likely the "
                       "teacher finds them). Test bits per byte: the student's cross-entropy on the data's "
                       "own test windows (teacher forcing). Only the first column is judged.")
    for (label, seed), net in nets.items():
        jsd, t_bpb = on_own_samples(net, t_net, test, seed)
        table.add(label, JSD_COL, jsd)
        table.add(label, judged_col, t_bpb)
        table.add(label, bpb_col, bits_per_byte(net, test)[0])
    teacher_tab = Table("Teacher", ["test bits per byte (data continuations)"])
    teacher_tab.add("teacher (trained once, seed 0)", "test bits per byte (data continuations)",
                    bits_per_byte(t_net, test)[0])
    off, on = (table.values(a, JSD_COL) for a, _ in ARMS)
    paired = Table("Paired effect (per seed)", ["reduction in JSD (off - on), millinats/token"],
                   note="Positive = the on-policy student is closer to the teacher on its own samples.")
    for a, b in zip(off, on):
        paired.add("off-policy - on-policy", "reduction in JSD (off - on), millinats/token", a - b)
    claims = judge_tables([teacher_tab, table])
    setup = f"""
Data: the {len(files)} top-level `*.py` files of this machine's Python {sys.version.split()[0]} standard
library, split by file with a fixed seed ({len(parts['train'])} train, {len(parts['val'])} validation,
{len(parts['test'])} test), as in `joryu reproduce text_lm`. Windows of {LENGTH} bytes: the first
{PROMPT} are the prompt (`prompt_length` column), the other {LENGTH - PROMPT} the data's continuation.

- Teacher: `byte_conv_lm` width {s['teacher']['width']}, {s['teacher']['layers']} blocks, trained once
  ({teacher_cfg['epochs']} epoch over {len(teacher_train)} training windows, AdamW 3e-3, cosine).
- Students: `byte_conv_lm` width {s['student']['width']}, {s['student']['layers']} blocks, the same
  initialisation per seed in both arms, {student_cfg['epochs']} epochs over {len(transfer)} training
  windows, batch 32, AdamW 3e-3, cosine: the same number of student updates in both arms. Method
  `gkd` with JSD(beta = {GKD['beta']}) at T = {GKD['temperature']} on the continuation positions only.
  Off-policy: lambda = 0 (the data's continuations, supervised KD). On-policy: lambda = 1 (every batch's
  continuations are {GKD['max_new_tokens']} bytes sampled from the current student at temperature
  {GKD['generation_temperature']}, full distribution). On-policy pays {GKD['max_new_tokens']} extra student
  forward passes per batch for sampling; the budget equalised is student updates, not compute.
- Test: {len(test)} windows from the test files; their prompts are continued by each student and
  scored once, after all training.
- Settings, the metric and the pass rule were fixed before the run; nothing was tuned on validation.
"""
    notes = ["The teacher is trained once (seed 0) and shared by every seed.",
             "The judged metric is the paper's mechanism (distance to the teacher where the student "
             "generates), not a downstream task score; the other two columns are reported, not judged."]
    if quick:
        notes.insert(0, "QUICK smoke run: tiny models and data; the numbers are not a result.")
    return Report(title="On-policy vs off-policy distillation of a byte-level LM (GKD, Python stdlib source)",
                  paper="Agarwal et al. 2024, On-Policy Distillation of Language Models (ICLR 2024, "
                        "arXiv:2306.13649)",
                  setup=setup, tables=[teacher_tab, table, paired], claims=claims, notes=notes)
