"""Wang et al. (2018), Dataset Distillation: ten images with fixed init, and the random-init regime, on digits."""

from __future__ import annotations

import copy
import time
from pathlib import Path

import torch

from joryu import models
from joryu.config import TrainConfig
from joryu.data import load
from joryu.data.distilled import DistilledSet, save_distilled, save_image_grid
from joryu.losses.dataset_distillation import (
    dataset_distillation_loss,
    model_state,
    saved_tensor_bytes,
)
from joryu.methods import get_method
from joryu.methods.dataset_distillation import reinit, train_on_distilled
from joryu.reproduce.claims import Table
from joryu.reproduce.common import accuracy, predict, protocol_splits, seeded
from joryu.reproduce.protocol import Arm, Compare, Study
from joryu.reproduce.registry import register_reproduction
from joryu.run.stages import run_stages
from joryu.stats import mean_score

LR_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)


def _distill(model, train, params: dict, outer_steps: int, seed: int, progress: bool):
    """Train a distilled set through the engine; returns (DistilledSet, theta_0 model, seconds)."""
    batches = -(-len(train) // 256)
    cfg = TrainConfig(epochs=max(1, outer_steps // batches), batch_size=256, optimizer="adam", lr=0.01,
                      scheduler="constant", log_every=1000)
    t = time.perf_counter()
    _, res = run_stages(get_method("dataset_distillation", params), student=model, teacher=None, train=train, val=None, train_cfg=cfg, run_dir=None, seed=seed, augment=None, progress=progress, resume=False, label="dataset_distillation", num_classes=train.num_classes)
    distiller = res["distill"].distiller
    return distiller.distilled(), copy.deepcopy(distiller.student), time.perf_counter() - t


def _acc_after(theta0, d: DistilledSet, data) -> float:
    net = train_on_distilled(copy.deepcopy(theta0), d)
    return accuracy(predict(net, data), data.targets)


def _fresh(theta0, key: int):
    return reinit(copy.deepcopy(theta0), "xavier", torch.Generator().manual_seed(key))


def _real_set(images: torch.Tensor, labels: torch.Tensor, epochs: int, lr: float) -> DistilledSet:
    steps = images.shape[0]
    return DistilledSet(images, labels, torch.full((steps * epochs,), lr), epochs, 10)


def _pick_images(train, per_step: int, steps: int, gen: torch.Generator):
    """``steps`` batches, each one random real image of every class (``per_step`` per class)."""
    x, y = train.tensors["input"], train.targets
    imgs = []
    for _ in range(steps):
        batch = []
        for c in range(train.num_classes):
            idx = torch.nonzero(y == c).flatten()
            batch.append(x[idx[torch.randperm(len(idx), generator=gen)[:per_step]]])
        imgs.append(torch.cat(batch))
    labels = torch.arange(train.num_classes).repeat_interleave(per_step).repeat(steps, 1)
    return torch.stack(imgs), labels


def _tuned(images, labels, epochs, inits, val) -> tuple[float, float]:
    """The fixed lr in LR_GRID with the best mean validation accuracy over ``inits``; (lr, val acc)."""
    best = (LR_GRID[0], -1.0)
    for lr in LR_GRID:
        d = _real_set(images, labels, epochs, lr)
        v = sum(_acc_after(m, d, val) for m in inits) / len(inits)
        if v > best[1]:
            best = (lr, v)
    return best


def _memory(model, train, steps: int, epochs: int) -> dict:
    """Autograd saved-tensor bytes and seconds of one outer step, without and with checkpointing."""
    x, y = train.tensors["input"][:256], train.targets[:256]
    out = {}
    for ck in (False, True):
        params, buffers = model_state(model)
        images = torch.randn(steps, 10, *train.input_shape, requires_grad=True)
        labels = torch.arange(10).repeat(steps, 1)
        lrs = torch.full((steps * epochs,), 0.02, requires_grad=True)
        t = time.perf_counter()
        loss, nbytes = saved_tensor_bytes(dataset_distillation_loss, model, params, images, labels, lrs, x, y,
                                          epochs, buffers, ck)
        loss.backward()
        out[ck] = (nbytes / 2**20, time.perf_counter() - t)
    return out


FIXED_STEPS, RANDOM_STEPS = 800, 200  # outer steps of the default run (set on validation, see choices)
EVAL = "te"  # the split the arms are scored on; a validation pilot sets "va"
# the BatchNorm network of the fixed-init BN arms (chosen on validation, BN_CHOICE)
BN_NET = {"width": 8, "depth": 2}
BN_CHOICE = ("The BatchNorm network was chosen on the 100-image validation split (seed 0, 800 outer steps, before "
             "the test split was read; 200 s on one thread of the shared machine) among convnets width 8 depth 2, "
             "width 16 depth 2 and width 8 depth 1, scoring the trained network with the carried running "
             "statistics and, to see whether they matter, with theta_0's: DD 84.0 / 24.0%, random real 24.8% (w8 "
             "d2); DD 79.0 / 74.0%, real 37.2% (w16 d2); DD 94.0 / 86.0%, real 32.4% (w8 d1). Width 8 depth 2 "
             "was chosen because there the carried statistics decide the result (60 points), which is what "
             "these arms exist to exercise; width 8 depth 1 gains slightly more over real images (61.6 vs 59.2 "
             "points) but barely depends on the statistics.")
STALE = "test acc with theta_0's BN statistics (%)"
DD_EXTRA = ("extra: the distillation's outer Adam steps (the optimizer updates measured for the DD arm) are the "
            "method's own cost; the evaluated network takes the same unrolled SGD steps in both arms, which the "
            "engine does not count")


def _with_buffers_of(net, theta0):
    """A copy of trained ``net`` with ``theta0``'s buffers (BatchNorm running statistics) put back:
    what evaluation would see if the inner steps' statistics were not carried."""
    out = copy.deepcopy(net)
    with torch.no_grad():
        for (_, b), (_, b0) in zip(out.named_buffers(), theta0.named_buffers()):
            b.copy_(b0)
    return out


@register_reproduction("dataset_distillation", default_seeds=5, quick_seeds=2,
                       doc="Wang et al. 2018: 10 distilled digits (fixed init) vs real images and class means; random init")
def reproduce_dataset_distillation(seeds: list[int], quick: bool, progress: bool, out_dir: Path | None = None) -> Study:
    fixed_steps = 20 if quick else FIXED_STEPS
    random_steps = 4 if quick else RANDOM_STEPS
    n_eval = 3 if quick else 10
    n_tune = 2 if quick else 3
    n_draws = 2 if quick else 5

    def shared(quick):
        bundle = load("digits")
        # all 1797 images pooled: 797 test, the rest 90/10 train/validation
        train, val, test = protocol_splits(bundle, test_size=797)
        return {"train": train, "va": val, "te": test, "shape": bundle.input_shape, "lrs": [], "secs": {}}

    def lenet(ctx):
        return models.create("lenet5", input_shape=ctx.shape, num_classes=10)

    def bn_net(ctx):
        return models.create("convnet", input_shape=ctx.shape, num_classes=10, **BN_NET)

    def bn_scores(theta0, d, ctx):
        net = train_on_distilled(copy.deepcopy(theta0), d)
        ev = ctx[EVAL]
        return {"test acc (%)": accuracy(predict(net, ev), ev.targets),
                STALE: accuracy(predict(_with_buffers_of(net, theta0), ev), ev.targets)}

    def dd_bn(ctx):
        net = seeded(ctx.seed, bn_net, ctx)
        ctx.d_bn, ctx.theta0_bn, secs = _distill(
            net, ctx.train, {"images_per_class": 1, "steps": 1, "epochs": 3, "random_init": False}, fixed_steps,
            ctx.seed, progress)
        ctx.secs.setdefault("bn", []).append(secs)
        return bn_scores(ctx.theta0_bn, ctx.d_bn, ctx)

    def real_bn(ctx):
        gen = torch.Generator().manual_seed(7000 + ctx.seed)
        accs = []
        for _ in range(n_draws):
            imgs, labels = _pick_images(ctx.train, 1, 1, gen)
            lr, _ = _tuned(imgs, labels, 3, [ctx.theta0_bn], ctx.va)
            accs.append(bn_scores(ctx.theta0_bn, _real_set(imgs, labels, 3, lr), ctx))
        return {k: mean_score([a[k] for a in accs]) for k in accs[0]}

    def acc_after(theta0, d, ctx):
        return _acc_after(theta0, d, ctx[EVAL])

    def dd_fixed(ctx):
        net = seeded(ctx.seed, lenet, ctx)
        ctx.d_fixed, ctx.theta0, secs = _distill(
            net, ctx.train, {"images_per_class": 1, "steps": 1, "epochs": 3, "random_init": False}, fixed_steps,
            ctx.seed, progress)
        ctx.secs.setdefault("fixed", []).append(secs)
        ctx.lrs.append([round(float(v), 3) for v in ctx.d_fixed.lrs])
        if ctx.seed == seeds[0] and out_dir is not None:
            ctx.d_fixed.source = "digits"
            save_distilled(Path(out_dir) / "dataset_distillation_fixed.safetensors", ctx.d_fixed)
            save_image_grid(ctx.d_fixed, Path(out_dir) / "dataset_distillation_fixed.png")
        return acc_after(ctx.theta0, ctx.d_fixed, ctx)

    def theta0_alone(ctx):
        return accuracy(predict(ctx.theta0, ctx[EVAL]), ctx[EVAL].targets)

    def real_fixed(ctx):
        gen = torch.Generator().manual_seed(5000 + ctx.seed)
        accs = []
        for _ in range(n_draws):
            imgs, labels = _pick_images(ctx.train, 1, 1, gen)
            lr, _ = _tuned(imgs, labels, 3, [ctx.theta0], ctx.va)
            accs.append(acc_after(ctx.theta0, _real_set(imgs, labels, 3, lr), ctx))
        return mean_score(accs)

    def means_fixed(ctx):
        tr = ctx.train
        means = torch.stack([tr.tensors["input"][tr.targets == c].mean(0) for c in range(10)])[None]
        mlabels = torch.arange(10)[None]
        lr, _ = _tuned(means, mlabels, 3, [ctx.theta0], ctx.va)
        return acc_after(ctx.theta0, _real_set(means, mlabels, 3, lr), ctx)

    def fixed_on_fresh(ctx):
        accs = [acc_after(_fresh(ctx.theta0, 20000 + 100 * ctx.seed + i), ctx.d_fixed, ctx) for i in range(n_eval)]
        return mean_score(accs)

    def dd_random(ctx):
        net = seeded(ctx.seed, lenet, ctx)
        ctx.d_rand, theta0, secs = _distill(
            net, ctx.train, {"images_per_class": 1, "steps": 10, "epochs": 3, "random_init": True}, random_steps,
            ctx.seed, progress)
        ctx.secs.setdefault("random", []).append(secs)
        ctx.rand_theta0 = theta0
        if ctx.seed == seeds[0] and out_dir is not None:
            ctx.d_rand.source = "digits"
            save_distilled(Path(out_dir) / "dataset_distillation_random.safetensors", ctx.d_rand)
            save_image_grid(ctx.d_rand, Path(out_dir) / "dataset_distillation_random.png")
        ctx.inits = [_fresh(theta0, 30000 + 100 * ctx.seed + i) for i in range(n_eval)]
        accs = [acc_after(m, ctx.d_rand, ctx) for m in ctx.inits]
        return mean_score(accs)

    def real_random(ctx):
        tune_inits = [_fresh(ctx.rand_theta0, 40000 + 100 * ctx.seed + i) for i in range(n_tune)]
        imgs, labels = _pick_images(ctx.train, 1, 10, torch.Generator().manual_seed(6000 + ctx.seed))
        lr, _ = _tuned(imgs, labels, 3, tune_inits, ctx.va)
        accs = [acc_after(m, _real_set(imgs, labels, 3, lr), ctx) for m in ctx.inits]
        return mean_score(accs)

    dd_f = "DD fixed init: 10 learned images + 3 lrs"
    real_f = "fixed init: 10 random real images, tuned lr"
    mean_f = "fixed init: per-class mean images, tuned lr"
    dd_bn_ = "DD fixed init, BatchNorm convnet: 10 learned images + 3 lrs"
    real_bn_ = "fixed init, BatchNorm convnet: 10 random real images, tuned lr"
    dd_r = f"DD random init: 100 learned images + 30 lrs, {n_eval} fresh inits"
    real_r = f"random init: 100 random real images, tuned lr, same {n_eval} inits"
    arms = [Arm(dd_f, dd_fixed), Arm("fixed init: theta_0 alone (no training)", theta0_alone),
            Arm(real_f, real_fixed), Arm(mean_f, means_fixed),
            Arm(f"fixed-init DD images on {n_eval} fresh inits (pitfall check)", fixed_on_fresh),
            Arm(dd_r, dd_random), Arm(real_r, real_random), Arm(dd_bn_, dd_bn), Arm(real_bn_, real_bn)]
    claims = [
        Compare("With a fixed initialisation, ten distilled images (one per class) and three learned SGD steps "
                "train LeNet to higher accuracy than ten random real images with the same steps (paper, MNIST: "
                "93.8% from a 12.9% init; random real far lower).", dd_f, real_f, budget=DD_EXTRA),
        Compare("The distilled images also beat the per-class mean images trained with the same steps and a "
                "tuned rate.", dd_f, mean_f, budget=DD_EXTRA),
        Compare("In the random-initialisation regime, 100 distilled images (10 steps x 3 epochs) train unseen "
                "initialisations better than 100 random real images with the same steps (paper, MNIST: "
                "79.5 ± 8.1% vs about 68.6%).", dd_r, real_r, budget=DD_EXTRA),
        Compare("With a BatchNorm network (the running statistics each inner step updates carried to the next "
                "and to evaluation, as the reference code's networks do), ten distilled images and three learned "
                "steps from a fixed initialisation still beat ten random real images with the same steps.",
                dd_bn_, real_bn_, budget=DD_EXTRA),
    ]

    def tables(res):
        first = res["contexts"][0] if res["contexts"] else {}
        mem = Table("Cost of one outer step (autograd saved-tensor memory, MiB; wall seconds), and whole runs",
                    ["saved MiB", "seconds"],
                    note="Saved-tensor memory counts every tensor autograd keeps for the backward pass (the "
                         "unrolled graph), measured with saved_tensors_hooks; it is what grows with T.")
        if first:
            for label, steps, key, n, build in (("fixed init, T = 3", 1, "fixed", fixed_steps, lenet),
                                                ("random init, T = 30", 10, "random", random_steps, lenet),
                                                ("BatchNorm convnet, fixed init, T = 3", 1, "bn", fixed_steps,
                                                 bn_net)):
                m = _memory(build(first), first["train"], steps, 3)
                for ck in (False, True):
                    row = f"{label}{', checkpointed' if ck else ''}"
                    mem.add(row, "saved MiB", m[ck][0])
                    mem.add(row, "seconds", m[ck][1])
                for s in first["secs"].get(key, []):
                    mem.add(f"{label}: whole distillation run ({n} outer steps)", "seconds", s)
        lrs = Table("Learned inner learning rates (fixed init), per seed", ["step 1", "step 2", "step 3"])
        for row in (first["lrs"] if first else []):
            for j, v in enumerate(row[:3]):
                lrs.add("learned lr", f"step {j + 1}", v)
        return [mem, lrs]

    notes = [f"The outer-step budgets ({fixed_steps} fixed init, {random_steps} random init) are cut from the "
             "earlier 4000 / 1000 to fit the protocol's time budget; the paper trains far longer, on MNIST with "
             "60k images."]
    return Study(
        title="Dataset Distillation", paper="Wang, Zhu, Torralba & Efros 2018, arXiv:1811.10959",
        data=("scikit-learn digits (8x8, standardised), all 1797 images pooled by `protocol_splits`: 797 test, "
              "900 train / 100 validation (stratified, fixed seed). digits is kept (not MNIST-5000 or MNIST-1D) "
              "because the unrolled LeNet-5 outer steps on 28x28 images do not fit the time budget and LeNet-5 "
              "is a 2-d network; the test split is as large as digits allows."),
        budget=(f"LeNet-5 (21.4k parameters, no BatchNorm), and for the BatchNorm arms convnet width "
                f"{BN_NET['width']} depth {BN_NET['depth']} (conv3x3-BN-ReLU stages, max pooling; BatchNorm "
                "momentum 0.1), xavier-normal theta_0 as the reference code. Every "
                "compared arm trains its network with the same number of SGD steps on 10 images per step: 3 "
                "steps (fixed init; 1 step x 3 epochs) or 30 steps (random init; 10 steps x 3 epochs). "
                f"Distillation: {fixed_steps} (fixed init) / {random_steps} (random init) outer Adam steps "
                "(lr 0.01, betas 0.5/0.999) on real batches of 256, initial inner lr 0.02, images from N(0, 1). "
                f"Real-image baselines: {n_draws} random draws per seed (fixed init) with one fixed lr chosen "
                f"per draw from {list(LR_GRID)}."),
        choices=(f"The baselines' fixed learning rate is chosen per draw from {list(LR_GRID)} on the validation "
                 f"split (random init: over {n_tune} initialisations not used for testing). The distillation's "
                 "own settings are the reference code's. The outer-step counts were set on the validation split "
                 "(seed 0, before the test split was read) to fit the time budget: at 400 / 80 steps the fixed-"
                 "init set reached 39.0% (random real 21.0%) but the random-init set only 15.5% (random real "
                 "40.5%); at 200 random-init steps with the paper's 10 steps x 3 epochs it reached 63.2% "
                 "(random real 41.4%), while 10 steps x 1 epoch at 600 steps (the same time) reached 39.8% "
                 "(random real 27.0%). So: 800 fixed-init and 200 random-init outer steps, the paper's "
                 "regime. " + BN_CHOICE + " Nothing was chosen on test numbers."),
        arms=arms, claims=claims, test_size=797, shared=shared, tables=tables, metrics=["test acc (%)", STALE],
        setup=("Figures for the first seed: ![fixed init](dataset_distillation_fixed.png) "
               "![random init](dataset_distillation_random.png) (rows = steps, labelled with that step's learned "
               "lr in each epoch); the sets themselves are in `dataset_distillation_fixed.safetensors` / "
               "`dataset_distillation_random.safetensors` (train on them with `data: {name: distilled, path: ...}`)."),
        tried=("The previous run used 4000 / 1000 outer steps on 3 seeds (2600 s); this one cuts them to fit the "
               "budget, so a claim that fails here may pass with more outer steps."),
        notes=notes)
