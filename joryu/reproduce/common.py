"""Small helpers the reproductions share: train through the engine, predict, score."""

from __future__ import annotations

import math

import torch
from accelerate.utils import set_seed

from joryu.config import TrainConfig
from joryu.data import Augment, TensorData, TensorLoader, load, split_validation
from joryu.engine import Engine
from joryu.methods import get_method
from joryu.methods.supervised import SupervisedDistiller
from joryu.outputs import forward
from joryu.run.stages import run_stages
from joryu.stats import SampledScore


def train(method: str, model, data: TensorData, cfg: TrainConfig | dict, seed: int, teacher=None,
          params: dict | None = None, augment: Augment | None = None, val: TensorData | None = None,
          progress: bool = False, label: str | None = None):
    """Train ``model`` with ``method`` through the engine (no files written); returns the network."""
    cfg = cfg if isinstance(cfg, TrainConfig) else TrainConfig(**cfg)
    m = get_method(method, params or {})
    set_seed(seed)
    net, _ = run_stages(m, student=model, teacher=teacher, train=data, val=val, train_cfg=cfg, run_dir=None, seed=seed, augment=augment, progress=progress, resume=False, label=label or method, num_classes=data.num_classes)
    return net


@torch.no_grad()
def predict(model, data: TensorData, batch_size: int = 2000, input_key: str = "input") -> torch.Tensor:
    """Logits of ``model`` on every sample of ``data``, in order."""
    was = model.training
    model.eval()
    device = next(model.parameters()).device
    loader = TensorLoader(data, batch_size, shuffle=False, device=device)
    out = torch.cat([forward(model, b, input_key).float().cpu() for b in loader.iterate(0)])
    model.train(was)
    return out


def accuracy(logits: torch.Tensor, targets: torch.Tensor) -> SampledScore:
    """Accuracy in points, keeping each sample's 0/100 so the protocol can add test-set sampling
    error to a claim's uncertainty (``joryu.stats.test_sampling_se``)."""
    correct = (logits.argmax(-1) == targets.cpu()).double().mul(100.0)
    return SampledScore(correct.numpy())


def seeded(seed: int, factory, *args, **kwargs):
    """Build a model with ``seed`` fixed, so runs that share a seed share the initialisation."""
    set_seed(seed)
    return factory(*args, **kwargs)


def protocol_splits(bundle, test_size: int = 2000, val_fraction: float = 0.1, seed: int = 0):
    """Train / validation / test splits for the protocol: pool a bundle's train and test data, hold
    out a class-stratified test split of ``test_size`` samples (fixed ``seed``), and carve a
    validation split off the rest. Returns ``(train, val, test)`` TensorData.

    A bundle with its own validation split (e.g. ``mnist100``, whose splits are built from disjoint
    source images) keeps its three splits as they are: pooling them would mix the pools."""
    if bundle.val is not None:
        return bundle.train, bundle.val, bundle.test
    tr, te = bundle.train, bundle.test
    keys = [k for k in tr.tensors if k in te.tensors]
    pooled = TensorData({k: torch.cat([tr.tensors[k], te.tensors[k]]) for k in keys}, bundle.num_classes,
                        name=bundle.name, mean=tr.mean, std=tr.std)
    if test_size >= len(pooled):
        raise ValueError(f"{bundle.name} has {len(pooled)} samples; a test split of {test_size} leaves none to train on")
    rest, test = split_validation(pooled, test_size / len(pooled), seed=seed)
    train_, val = split_validation(rest, val_fraction, seed=seed + 1)
    return train_, val, test


# mnist100 (docs/datasets/mnist100.md): the student (convnet width 8 depth 2) and its budget chosen on
# its validation split before any method ran, and the words a study's ``data`` uses for it
MNIST100_STUDENT = {"width": 8, "depth": 2, "epochs": 10, "lr": 3e-3, "batch_size": 128}
MNIST100_BUDGET = dict(epochs=MNIST100_STUDENT["epochs"], batch_size=MNIST100_STUDENT["batch_size"],
                       optimizer="adam", lr=MNIST100_STUDENT["lr"], scheduler="cosine")
MNIST100_DATA = ("mnist100 (built in, docs/datasets/mnist100.md): 100 classes of two-digit numbers at 1x14x28 from "
                 "disjoint MNIST digit pools, its own splits 15000 train / 2000 validation / 5000 test; +-2 px "
                 "shifts (the dataset's default augmentation).")


def mnist100_splits(quick: bool):
    """``(bundle, train, val, test)`` of mnist100; a quick (smoke) run keeps a tenth of the training numbers."""
    d = load("mnist100")
    tr, va, te = protocol_splits(d)
    if quick:
        tr = tr.subset(torch.arange(0, len(tr), 10), "mnist100/quick")
    return d, tr, va, te


def bits_per_byte(model, data) -> tuple[float, float]:
    """(cross-entropy in bits per byte, next-byte accuracy %) of a byte-level LM on ``data``: the
    engine's scores (one pass), the loss in nats divided by ln 2."""
    ev = Engine(TrainConfig(eval_batch_size=256, device="cpu"), None, progress=False).evaluate(
        SupervisedDistiller(model), data, "test")
    return ev["test/loss"] / math.log(2), ev["test/acc"]
