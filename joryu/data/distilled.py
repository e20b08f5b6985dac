"""A distilled dataset on disk: synthetic inputs, their labels and the learned per-step learning rates.

File format (safetensors): ``images`` (S, n, *input_shape), ``labels`` (S, n), ``lrs`` (S·E,), and
metadata ``epochs`` (E), ``num_classes``, ``source`` (the dataset whose test split evaluates it) and
``source_kwargs`` (JSON). Registered as the dataset ``distilled`` (``data.path`` = the file), so
``joryu run`` can train any model on the S·n images; ``joryu.methods.dataset_distillation.
train_on_distilled`` replays the exact learned step sequence instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor

from joryu._optional import require
from joryu.atomic import atomic_path
from joryu.data.core import TensorData
from joryu.data.registry import DataBundle, load, register_dataset
from joryu.errors import DataError


@dataclass
class DistilledSet:
    images: Tensor  # (S, n, *input_shape)
    labels: Tensor  # (S, n)
    lrs: Tensor  # (S * epochs,)
    epochs: int
    num_classes: int
    source: str | None = None
    source_kwargs: dict = field(default_factory=dict)

    @property
    def steps(self) -> int:
        return int(self.images.shape[0])

    def as_tensor_data(self) -> TensorData:
        x = self.images.reshape(-1, *self.images.shape[2:])
        return TensorData({"input": x, "target": self.labels.reshape(-1).long()}, self.num_classes, "distilled")


def save_distilled(path: str | Path, d: DistilledSet) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {"images": d.images.detach().cpu().contiguous(), "labels": d.labels.detach().cpu().long().contiguous(),
               "lrs": d.lrs.detach().cpu().contiguous()}
    meta = {"epochs": str(d.epochs), "num_classes": str(d.num_classes), "source": d.source or "",
            "source_kwargs": json.dumps(d.source_kwargs)}

    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_distilled(path: str | Path) -> DistilledSet:
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise DataError(f"distilled dataset file {path} not found")
    t = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    missing = {"images", "labels", "lrs"} - set(t)
    if missing:
        raise DataError(f"{path} is not a distilled dataset: missing tensors {sorted(missing)}")
    return DistilledSet(t["images"], t["labels"], t["lrs"], int(meta.get("epochs", 1)),
                        int(meta.get("num_classes", int(t["labels"].max()) + 1)), meta.get("source") or None,
                        json.loads(meta.get("source_kwargs", "{}")))


@register_dataset("distilled", needs_path=True)
def distilled(path: str, test_data: str | None = None, **test_kwargs) -> DataBundle:
    """A distilled set (safetensors from dataset_distillation) to train on; tested on its source's test split."""
    d = load_distilled(path)
    source = test_data or d.source
    if not source:
        raise DataError(f"{path} names no source dataset; set data.kwargs.test_data")
    test = load(source, **(test_kwargs or d.source_kwargs)).test
    train = d.as_tensor_data()
    return DataBundle("distilled", train, test, d.num_classes, tuple(d.images.shape[2:]))


def save_image_grid(d: DistilledSet, path: str | Path, max_steps: int = 10) -> Path:
    """A PNG: one row per step (up to ``max_steps``), one column per image, titled with its label;
    the row label gives that step's learned lr(s) over the epochs. 1-D inputs are drawn as curves."""
    require("matplotlib", "drawing the distilled images").use("Agg")
    import matplotlib.pyplot as plt

    imgs = d.images.detach().cpu().float()
    steps, n = min(d.steps, max_steps), imgs.shape[1]
    fig, axes = plt.subplots(steps, n, figsize=(1.1 * n, 1.25 * steps), squeeze=False, dpi=100)
    lrs = d.lrs.detach().cpu().view(d.epochs, d.steps)
    for s in range(steps):
        for j in range(n):
            ax = axes[s][j]
            x = imgs[s, j]
            if x.dim() == 3 and x.shape[0] in (1, 3):
                x = x.permute(1, 2, 0)
                x = (x - x.min()) / (x.max() - x.min() + 1e-8)
                ax.imshow(x.squeeze(-1) if x.shape[-1] == 1 else x, cmap="gray")
            elif x.dim() == 2:
                ax.imshow(x, cmap="gray")
            else:
                ax.plot(x.flatten().numpy(), lw=0.8)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(str(int(d.labels[s, j])), fontsize=7)
            if j == 0:
                ax.set_ylabel("lr " + "/".join(f"{float(v):.2g}" for v in lrs[:, s]), fontsize=6)
    fig.tight_layout()
    path = Path(path)

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
