"""Training throughput of KD: joryu against a minimal hand-written loop, the student alone and
torchdistill, measured side by side in one process (contenders alternate A B C ... every round;
the table reports each contender's median samples/s and the ratios).

    python benchmarks/speed.py                 # all workloads, writes benchmarks/RESULTS.md (run from the repo root)
    python benchmarks/speed.py --quick         # a smoke run (few steps), prints only
    python benchmarks/speed.py --workload lm   # only the language-model workload (joryu/bench_lm.py), prints only
    joryu bench                                 # the same as the first line

torchdistill is measured when it is importable; ``benchmarks/setup_env.sh`` builds an environment
with torch 2.14.1, torchvision 0.29.1, torchdistill 1.1 and joryu so that every contender runs on
the same torch. Run the benchmark on an otherwise idle machine: it measures wall time.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F

import joryu
from joryu.atomic import atomic_write_text
from joryu.bench_lm import (
    STORE_K,
    LMWorkload,
    fidelity_pair,
    format_errors,
    lm_contenders,
    lm_data,
    storage_rows,
    truncation_errors,
)
from joryu.config import TrainConfig
from joryu.data import Augment, TensorData, TensorLoader, as_source, build_transform, load
from joryu.data.files import ImageFolderDataset
from joryu.engine import Engine
from joryu.methods.kd import KDDistiller
from joryu.methods.supervised import SupervisedDistiller
from joryu.models import create
from joryu.teachers import CachedTeacher, FastTeacher, FrozenTeacher

T, ALPHA, LR = 4.0, 0.9, 0.05


@dataclass
class Workload:
    name: str
    teacher: str
    student: str
    data: TensorData
    batch_size: int
    teacher_kw: dict
    student_kw: dict


MNIST1D_STEPS_FACTOR = 20


def make_workloads(steps: int) -> list[Workload]:
    def synthetic(batch):
        b = load("synthetic", num_samples=steps * batch, num_test=16, shape=(3, 32, 32))
        return b.train

    # an MNIST-1D MLP step takes about 1 ms against 50-200 ms for the ResNets: its rounds get
    # MNIST1D_STEPS_FACTOR times the steps, so one round lasts long enough to time steadily
    mn_steps = steps * MNIST1D_STEPS_FACTOR
    mn = load("mnist1d", num_samples=max(4000, int(mn_steps * 128 / 0.8) + 1))
    mn_train = mn.train.subset(torch.arange(mn_steps * 128), "mnist1d/bench")
    return [
        Workload("resnet20 -> resnet8 (CIFAR-shaped synthetic, batch 64)", "resnet20", "resnet8",
                 synthetic(64), 64, {}, {}),
        Workload("resnet56 -> resnet20 (CIFAR-shaped synthetic, batch 64)", "resnet56", "resnet20",
                 synthetic(64), 64, {}, {}),
        Workload("cnn1d -> mlp (MNIST-1D, batch 128)", "cnn1d", "mlp", mn_train, 128,
                 {"width": 64}, {"hidden": (256, 256)}),
    ]


def build(w: Workload, which: str, seed: int = 0):
    torch.manual_seed(seed)
    kw = w.teacher_kw if which == "teacher" else w.student_kw
    m = create(w.teacher if which == "teacher" else w.student, num_classes=10,
               input_shape=w.data.input_shape, **kw)
    if which == "teacher":  # non-trivial BatchNorm statistics, as a trained teacher has
        m.train()
        with torch.no_grad():
            for i in range(2):
                m(w.data.tensors["input"][i * 64:(i + 1) * 64])
        m.eval()
    return m


# ----------------------------------------------------------------------------- contenders
def plain_kd(w: Workload, teacher_on: bool = True, precomputed: bool = False) -> Callable[[], float]:
    """The reference: a minimal hand-written loop over on-device tensors (teacher in eval under
    no_grad, KL * T^2 + CE, SGD). ``precomputed``: the teacher's logits of every sample computed
    once before timing and indexed per batch, the floor any teacher cache can reach with this loss."""
    teacher, student = build(w, "teacher"), build(w, "student")
    for p in teacher.parameters():
        p.requires_grad_(False)
    opt = torch.optim.SGD(student.parameters(), lr=LR, momentum=0.9)
    x_all, y_all = w.data.tensors["input"], w.data.tensors["target"]
    n, bs = len(x_all), w.batch_size
    zt_all = None
    if precomputed:
        with torch.no_grad():
            zt_all = torch.cat([teacher(x_all[i:i + 256]) for i in range(0, n, 256)])

    def run() -> float:
        student.train()
        order = torch.randperm(n)
        t0 = time.perf_counter()
        for i in range(0, n - bs + 1, bs):
            idx = order[i:i + bs]
            x, y = x_all[idx], y_all[idx]
            if zt_all is not None:
                zt = zt_all[idx]
            elif teacher_on:
                with torch.no_grad():
                    zt = teacher(x)
            z = student(x)
            loss = F.cross_entropy(z, y)
            if teacher_on:
                kl = F.kl_div(F.log_softmax(z / T, -1), F.log_softmax(zt / T, -1), reduction="batchmean",
                              log_target=True) * T * T
                loss = ALPHA * kl + (1 - ALPHA) * loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return (n // bs) * bs / (time.perf_counter() - t0)

    return run


def joryu_kd(w: Workload, fast: bool = False, cached: bool = False) -> Callable[[], float]:
    """``method: kd`` through joryu's engine: Engine.fit for one epoch of the workload per round."""
    teacher_model, student = build(w, "teacher"), build(w, "student")
    teacher = FastTeacher(teacher_model) if fast else FrozenTeacher(teacher_model)
    if cached:
        teacher = CachedTeacher(teacher, len(w.data))
    distiller = KDDistiller(student, teacher, T, ALPHA, divergence="forward_kl", beta=0.5)
    cfg = TrainConfig(epochs=1, batch_size=w.batch_size, optimizer="sgd", lr=LR, momentum=0.9,
                      scheduler="constant", log_every=10_000, threads=torch.get_num_threads())
    if cached:  # warm the cache: one untimed pass
        Engine(cfg, progress=False).fit(distiller, w.data)

    def run() -> float:
        res = Engine(cfg, progress=False).fit(distiller, w.data)
        return res.history[-1]["samples_per_s"]

    return run


def joryu_student_only(w: Workload) -> Callable[[], float]:
    student = build(w, "student")
    d = SupervisedDistiller(student)
    cfg = TrainConfig(epochs=1, batch_size=w.batch_size, optimizer="sgd", lr=LR, scheduler="constant",
                      log_every=10_000, threads=torch.get_num_threads())

    def run() -> float:
        return Engine(cfg, progress=False).fit(d, w.data).history[-1]["samples_per_s"]

    return run


def torchdistill_kd(w: Workload) -> Callable[[], float] | None:
    """torchdistill 1.1's own KD (DistillationBox + WeightedSumLoss(KDLoss)) on the same models
    and data (a TensorDataset through its DataLoader)."""
    try:
        from torchdistill.core.distillation import get_distillation_box
    except ImportError:
        return None
    from torch.utils.data import RandomSampler, TensorDataset

    teacher, student = build(w, "teacher"), build(w, "student")
    dataset = TensorDataset(w.data.tensors["input"], w.data.tensors["target"])
    train_config = {
        "num_epochs": 1,
        "train_data_loader": {"dataset_id": "train", "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
                              "kwargs": {"batch_size": w.batch_size, "num_workers": 0, "drop_last": True}},
        "teacher": {"sequential": [], "forward_hook": {"input": [], "output": []}, "requires_grad": False,
                    "forward_proc": "forward_batch_only"},
        "student": {"sequential": [], "forward_hook": {"input": [], "output": []}, "requires_grad": True,
                    "forward_proc": "forward_batch_only"},
        "optimizer": {"key": "SGD", "kwargs": {"lr": LR, "momentum": 0.9}},
        "criterion": {"key": "WeightedSumLoss", "kwargs": {"sub_terms": {"kd": {
            "criterion": {"key": "KDLoss", "kwargs": {
                "student_module_path": ".", "student_module_io": "output", "teacher_module_path": ".",
                "teacher_module_io": "output", "temperature": T, "alpha": 1 - ALPHA, "beta": ALPHA,
                "reduction": "batchmean"}},
            "weight": 1.0}}}},
    }
    box = get_distillation_box(teacher, student, {"train": dataset}, train_config, torch.device("cpu"),
                               None, False, 1)

    def run() -> float:
        box.pre_epoch_process(epoch=0)
        t0 = time.perf_counter()
        n = 0
        for sample_batch, targets, supp_dict in box.train_data_loader:
            loss = box.forward_process(sample_batch, targets, supp_dict)
            box.post_forward_process(loss=loss)
            n += len(targets)
        return n / (time.perf_counter() - t0)

    return run


# ------------------------------------------------------------- on-device data vs DataLoader
class PerSampleShift(torch.utils.data.Dataset):
    """The usual way: a Dataset that augments one sample at a time on the CPU."""

    def __init__(self, data: TensorData, shift: int):
        self.x, self.y, self.shift = data.tensors["input"], data.tensors["target"], shift

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        s = int(torch.randint(-self.shift, self.shift + 1, ()))
        x = F.pad(self.x[i], (self.shift, self.shift))[..., self.shift + s:self.shift + s + self.x.shape[-1]]
        return x, self.y[i]


def data_path_contender(data: TensorData, on_device: bool, batch: int = 128) -> Callable[[], float]:
    torch.manual_seed(0)
    student = create("mlp", num_classes=10, input_shape=data.input_shape, hidden=(256, 256))
    opt = torch.optim.SGD(student.parameters(), lr=LR)
    aug = Augment(shift=3)
    loader = TensorLoader(data, batch, augment=aug) if on_device else torch.utils.data.DataLoader(
        PerSampleShift(data, 3), batch_size=batch, shuffle=True, num_workers=0)
    state = {"epoch": 0}

    def run() -> float:
        t0, n = time.perf_counter(), 0
        it = loader.iterate(state["epoch"]) if on_device else loader
        state["epoch"] += 1
        for b in it:
            x, y = (b["input"], b["target"]) if on_device else b
            loss = F.cross_entropy(student(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
        return n / (time.perf_counter() - t0)

    return run


# ------------------------------------------------------------- streamed image folder vs DataLoader
IMAGE_TF = [{"resize": [32, 32]}, "hflip", {"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}]


def write_image_folder(root: Path, n: int, classes: int = 4, seed: int = 0) -> Path:
    """``n`` PNGs of mixed sizes (28..44 px a side) in ``classes`` folders (generated, offline)."""
    import numpy as np
    from PIL import Image

    g = np.random.default_rng(seed)
    for i in range(n):
        c = i % classes
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        h, w = (int(v) for v in g.integers(28, 45, 2))
        base = np.full(3, 60.0)
        base[c % 3] += 40 * (1 + c // 3)
        arr = np.clip(g.normal(base, 30, (h, w, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"{i:05d}.png")
    return root


class _PlainImages(torch.utils.data.Dataset):
    """What a user writes by hand: decode with PIL, apply the transforms, return (x, y)."""

    def __init__(self, folder, transform):
        self.samples, self.transform = folder.samples, transform
        self._load = folder._load

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        path, target = self.samples[i]
        return self.transform(self._load(path)), target


def image_folder_contender(root: Path, through_joryu: bool, workers: int = 2, batch: int = 32) -> Callable[[], float]:
    """One epoch over the image folder (decode, transforms, ``workers`` loader workers) training a
    small student: joryu's streamed path through ``Engine.fit``, or a plain DataLoader loop over
    the same decode and the same transform objects."""
    torch.manual_seed(0)
    folder = ImageFolderDataset(root)
    classes = len(folder.classes)
    student = create("mlp", num_classes=classes, input_shape=(3, 32, 32), hidden=(128,))
    tf = build_transform(IMAGE_TF)
    if through_joryu:
        data = as_source(folder, transform=tf, eval_transform=tf.deterministic(),
                         loader={"num_workers": workers})
        d = SupervisedDistiller(student)
        cfg = TrainConfig(epochs=1, batch_size=batch, optimizer="sgd", lr=LR, scheduler="constant",
                          log_every=10_000, threads=torch.get_num_threads(), device="cpu")

        def run() -> float:
            return Engine(cfg, progress=False).fit(d, data).history[-1]["samples_per_s"]

        return run
    loader = torch.utils.data.DataLoader(_PlainImages(folder, tf), batch_size=batch, shuffle=True,
                                         num_workers=workers)
    opt = torch.optim.SGD(student.parameters(), lr=LR)

    def run() -> float:
        t0, n = time.perf_counter(), 0
        for x, y in loader:
            loss = F.cross_entropy(student(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
        return n / (time.perf_counter() - t0)

    return run


def measure_image_folder(n: int, rounds: int, workers: int = 2) -> dict[str, float]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="joryu-bench-images-") as tmp:
        root = write_image_folder(Path(tmp), n)
        return measure({"joryu streamed image folder": image_folder_contender(root, True, workers),
                        "plain DataLoader loop": image_folder_contender(root, False, workers)}, rounds)


# ------------------------------------------------------------------------------- runner
def measure(contenders: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    for fn in contenders.values():  # warm-up round, not counted
        fn()
    results = {k: [] for k in contenders}
    names = list(contenders)
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]  # A B C, C B A, ...
        for k in order:
            results[k].append(contenders[k]())
    return {k: statistics.median(v) for k, v in results.items()}


def measure_lm(steps: int, rounds: int, threads: int, fidelity_sequences: int) -> dict:
    """The LM workload (joryu/bench_lm.py): tokens/s of its contenders, storage and KL error."""
    w = LMWorkload(steps=steps)
    data = lm_data(w, steps * w.batch_size)
    with tempfile.TemporaryDirectory(prefix="joryu-bench-lm-") as d:
        tokens = measure(lm_contenders(w, data, d, threads=threads), rounds)
    errors = truncation_errors(*fidelity_pair(w, fidelity_sequences))
    return {"name": w.name, "vocab": w.vocab, "tokens": tokens, "storage": storage_rows(w.vocab),
            "errors": errors}


def lm_ratios(lm: dict) -> dict[str, float]:
    t = lm["tokens"]
    alone = t["student alone"]
    k32 = next(r for r in lm["storage"] if r[0].endswith(f"k={STORE_K}"))
    return {"offline top-k / student alone": t[f"offline top-k KD (k={STORE_K})"] / alone,
            "online / student alone": t["online KD"] / alone,
            f"storage dense float32 / top-k k={STORE_K}": k32[2]}


def print_lm(lm: dict) -> None:
    print(f"\n{lm['name']}")
    alone = lm["tokens"]["student alone"]
    for k, v in lm["tokens"].items():
        print(f"  {k:<28} {v:10.0f} tokens/s   {v / alone:.3f} x student alone")
    print("  bytes stored per position:")
    for what, b, ratio in lm["storage"]:
        print(f"    {what:<24} {b:7d} B   dense / this {ratio:6.1f}")
    r = lm_ratios(lm)
    print(f"  ratios: offline top-k / student alone {r['offline top-k / student alone']:.3f} [>= 0.9]; "
          f"online / student alone {r['online / student alone']:.3f}; dense / top-k (k={STORE_K}) "
          f"{r[f'storage dense float32 / top-k k={STORE_K}']:.0f}x [>= 100]")
    print("  top-k KL error against the dense forward KL (T = 1, store built per k):")
    for line in format_errors(lm["errors"], lm["vocab"]):
        print("    " + line)


WORKLOADS = ("all", "classification", "lm")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="joryu bench", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few steps and rounds; print only")
    ap.add_argument("--workload", choices=WORKLOADS, default="all",
                    help="all (default; the only one that writes --out), classification (the image and "
                         "MNIST-1D KD workloads, data path, image folder) or lm (the GPT-2 pair: student "
                         "alone, online KD, offline top-k KD)")
    ap.add_argument("--steps", type=int, default=None, help="steps per round and contender")
    ap.add_argument("--rounds", type=int, default=None)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--out", default="benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    steps = args.steps or (3 if args.quick else 12)
    rounds = args.rounds or (1 if args.quick else 5)
    t_start = time.time()
    lines, dp, img, have_td, n_images = [], None, None, False, 0
    if args.workload in ("all", "classification"):
        lines, dp, img, have_td, n_images = measure_classification(args, steps, rounds)
    lm = None
    if args.workload in ("all", "lm"):
        lm_steps = args.steps or (2 if args.quick else 6)
        lm = measure_lm(lm_steps, rounds, args.threads, 4 if args.quick else 16)
        print_lm(lm)
    wall = time.time() - t_start
    if args.quick or args.workload != "all":
        return 0
    write_results(Path(args.out), lines, dp, steps, rounds, args.threads, wall, have_td, img, n_images, lm)
    print(f"\nwrote {args.out}")
    return 0


def measure_classification(args, steps: int, rounds: int):
    """The image and MNIST-1D KD workloads, the data path and the streamed image folder (printed)."""
    lines = []
    have_td = torchdistill_kd is not None
    for w in make_workloads(steps):
        contenders = {
            "plain": plain_kd(w),
            "student-only": plain_kd(w, teacher_on=False),
            "joryu kd": joryu_kd(w),
            "joryu kd + fast teacher": joryu_kd(w, fast=True),
            "joryu kd + warm cache": joryu_kd(w, fast=True, cached=True),
            "plain, precomputed teacher": plain_kd(w, precomputed=True),
        }
        td = torchdistill_kd(w)
        have_td = td is not None
        if td is not None:
            contenders["torchdistill kd"] = td
        med = measure(contenders, rounds)
        print(f"\n{w.name}")
        for k, v in med.items():
            print(f"  {k:<26} {v:10.0f} samples/s   {v / med['plain']:.3f} x plain")
        lines.append((w.name, med))

    mn = load("mnist1d", num_samples=5000).train
    dp = measure({"on-device, batch-wise augmentation": data_path_contender(mn, True),
                  "DataLoader, per-sample augmentation": data_path_contender(mn, False)}, rounds)
    print("\nMNIST-1D data path (MLP 256-256 student, CE, batch 128, shift 3)")
    for k, v in dp.items():
        print(f"  {k:<38} {v:10.0f} samples/s")
    n_images = 240 if args.quick else 2000
    img = measure_image_folder(n_images, rounds, workers=2)
    print(f"\nImage folder, {n_images} PNGs of mixed sizes (resize 32, hflip, normalize; 2 workers; "
          "MLP student, batch 32)")
    for k, v in img.items():
        print(f"  {k:<38} {v:10.0f} images/s")
    print(f"  ratio joryu / plain: {img['joryu streamed image folder'] / img['plain DataLoader loop']:.3f}")
    return lines, dp, img, have_td, n_images


def write_results(path: Path, lines, dp, steps, rounds, threads, wall, have_td, img=None,
                  n_images=0, lm=None) -> None:
    def r(a, b):
        return f"{a / b:.3f}"

    out = ["# Speed benchmark", "",
           f"Generated by `python benchmarks/speed.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}: "
           f"{platform.machine()} {platform.system()}, {os.cpu_count()} cores, torch {torch.__version__}, "
           f"{threads} threads, joryu {joryu.__version__}"
           + (", torchdistill " + __import__("torchdistill").__version__ if have_td else ", torchdistill not installed")
           + f". {steps} steps per round ({steps * MNIST1D_STEPS_FACTOR} on MNIST-1D), median of {rounds} rounds, "
           "contenders alternating each round; "
           f"{wall:.0f} s in all. Do not edit by hand: rerun the command.", "",
           "Samples per second (training, teacher forward included):", "",
           "| workload | plain | student-only | joryu kd | + fast teacher | + warm cache | plain, precomputed "
           "teacher | torchdistill |",
           "|---|---|---|---|---|---|---|---|"]
    for name, m in lines:
        td = f"{m['torchdistill kd']:.0f}" if "torchdistill kd" in m else "—"
        out.append(f"| {name} | {m['plain']:.0f} | {m['student-only']:.0f} | {m['joryu kd']:.0f} | "
                   f"{m['joryu kd + fast teacher']:.0f} | {m['joryu kd + warm cache']:.0f} | "
                   f"{m['plain, precomputed teacher']:.0f} | {td} |")
    out += ["", "Ratios (targets in brackets):", "",
            "| workload | joryu kd / plain [>= 0.97] | joryu kd / torchdistill [>= 1.1] | "
            "warm cache / plain [>= 1.7 on resnet56] | warm cache / student-only [>= 0.9] | "
            "precomputed teacher / student-only (the floor) | warm cache / precomputed teacher |",
            "|---|---|---|---|---|---|---|"]
    for name, m in lines:
        td = r(m["joryu kd + fast teacher"], m["torchdistill kd"]) if "torchdistill kd" in m else "—"
        pre = m["plain, precomputed teacher"]
        out.append(f"| {name} | {r(m['joryu kd'], m['plain'])} (fast teacher: "
                   f"{r(m['joryu kd + fast teacher'], m['plain'])}) | {td} | "
                   f"{r(m['joryu kd + warm cache'], m['plain'])} | {r(m['joryu kd + warm cache'], m['student-only'])} | "
                   f"{r(pre, m['student-only'])} | {r(m['joryu kd + warm cache'], pre)} |")
    on, off = dp["on-device, batch-wise augmentation"], dp["DataLoader, per-sample augmentation"]
    out += ["", "Data path on MNIST-1D (MLP 256-256 student, CE, batch 128, random shift 3):", "",
            "| on-device, batch-wise augmentation | DataLoader, per-sample augmentation | ratio [>= 2] |",
            "|---|---|---|", f"| {on:.0f} | {off:.0f} | {on / off:.2f} |", ""]
    if img:
        j, p = img["joryu streamed image folder"], img["plain DataLoader loop"]
        out += [f"Streamed image folder ({n_images} PNGs of mixed sizes; resize 32, hflip, normalize; "
                "2 loader workers; MLP student, batch 32), images per second:", "",
                "| joryu (Engine.fit over the streamed folder) | plain DataLoader loop | ratio [>= 0.97] |",
                "|---|---|---|", f"| {j:.0f} | {p:.0f} | {j / p:.3f} |", ""]
    if lm:
        out += lm_markdown(lm)

    atomic_write_text(path, "\n".join(out) + "\n" + NOTES)


def lm_markdown(lm: dict) -> list[str]:
    """The LM workload's tables for RESULTS.md."""
    t = lm["tokens"]
    names = list(t)
    r = lm_ratios(lm)
    out = [f"Language model: {lm['name']}, random weights and tokens; tokens per second (training):", "",
           "| " + " | ".join(names) + " |", "|" + "---|" * len(names),
           "| " + " | ".join(f"{t[k]:.0f}" for k in names) + " |", "",
           "Ratios (targets in brackets):", "",
           f"| offline top-k / student alone [>= 0.9] | online / student alone | dense float32 / top-k "
           f"(k={STORE_K}) bytes [>= 100] |", "|---|---|---|",
           f"| {r['offline top-k / student alone']:.3f} | {r['online / student alone']:.3f} | "
           f"{r[f'storage dense float32 / top-k k={STORE_K}']:.0f} |", "",
           "Bytes stored per position:", "", "| what | bytes | dense / this |", "|---|---|---|"]
    out += [f"| {what} | {b} | {ratio:.1f} |" for what, b, ratio in lm["storage"]]
    out += ["", "KL error of the top-k truncations against the dense forward KL (T = 1; the teacher's logits "
            "sharpened by a factor, a random GPT-2 being near uniform):", "",
            "| teacher logits x | k | dense KL | bucket KL (error) | renormalize KL (error) | mean rest mass |",
            "|---|---|---|---|---|---|"]
    for e in lm["errors"]:
        out.append(f"| {e['sharpen']:g} | {e['k']} | {e['dense']:.4f} | {e['bucket']:.4f} "
                   f"({100 * (e['bucket'] - e['dense']) / e['dense']:+.1f}%) | {e['renormalize']:.4f} "
                   f"({100 * (e['renormalize'] - e['dense']) / e['dense']:+.1f}%) | {e['rest']:.3f} |")
    return out + [""]


NOTES = """
## What the contenders are
- **plain**: a minimal hand-written PyTorch loop over the same on-device tensors: teacher in eval
  under `no_grad`, `kl_div(batchmean) * T^2` plus CE, SGD. The reference for "no overhead".
- **student-only**: the same loop without the teacher: the limit a cached teacher approaches.
- **plain, precomputed teacher**: the plain loop with every sample's teacher logits computed once
  before timing and indexed per batch: the floor of any teacher cache with this loss (the KD loss
  itself still runs each step). Where it is below 0.9 of student-only, that target cannot be met
  by a cache: what is left is the loss.
- **joryu kd**: `KDDistiller` (the `kd` method) through `joryu.engine.Engine.fit`, with the eager
  `FrozenTeacher`. **+ fast teacher**: `FastTeacher` (BatchNorm folded into the convolutions,
  `inference_mode`), the `kd` method's default. **+ warm cache**: `CachedTeacher` after one pass.
- **torchdistill kd**: torchdistill's `DistillationBox` with `WeightedSumLoss(KDLoss)`, its own
  DataLoader over a `TensorDataset`, same models, batch size, optimizer and thread count.
- **Language model** (`joryu/bench_lm.py`): GPT-2s from transformers configs, random weights,
  AdamW, all through `Engine.fit`: the student alone (`supervised`, next-token CE), online KD (`kd`
  at T = 1, teacher called every batch) and offline top-k KD (`kd` with `teacher_store`, k = 32,
  bucket truncation; the store is built once before the rounds, untimed).
"""


if __name__ == "__main__":
    sys.exit(main())
