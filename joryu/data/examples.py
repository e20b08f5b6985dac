"""Small dataset factories to show (and test) ``data.name: package.module:factory`` in a config.

``configs/user_dataset.yaml`` trains on ``joryu.data.examples:blobs``. A factory may return a
torch Dataset, an IterableDataset, a DataLoader, a Hugging Face dataset, ``(inputs, targets)``
tensors, a ``DataBundle`` or a dict ``{"train": ..., "test": ..., "val": ...}``.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

from joryu.errors import ConfigError

__all__ = ["Blobs", "BlobStream", "blobs", "blobs_test"]


def _blobs(n: int, dim: int, classes: int, seed: int):
    g = torch.Generator().manual_seed(1234)  # the class centres are shared by every split
    centres = 2.0 * torch.randn(classes, dim, generator=g)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = centres[y] + torch.randn(n, dim, generator=g)
    return x, y


class Blobs(Dataset):
    """Gaussian blobs; a sample is ``{"features": x, "label": y}`` (a dict, as many datasets give)."""

    def __init__(self, n: int = 600, dim: int = 16, classes: int = 4, seed: int = 0):
        self.x, self.y = _blobs(n, dim, classes, seed)
        self.classes = list(range(classes))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i):
        return {"features": self.x[i], "label": int(self.y[i])}


class BlobStream(IterableDataset):
    """The same blobs as a stream of ``(x, y)`` tuples (with a length: samples per epoch)."""

    def __init__(self, n: int = 600, dim: int = 16, classes: int = 4, seed: int = 0):
        self.x, self.y = _blobs(n, dim, classes, seed)

    def __len__(self) -> int:
        return len(self.x)

    def __iter__(self):
        for i in range(len(self.x)):
            yield self.x[i], int(self.y[i])


def blobs(kind: str = "dataset", n: int = 600, n_test: int = 200, dim: int = 16, classes: int = 4,
          seed: int = 0):
    """Train and test splits of Gaussian blobs as ``kind``: dataset, iterable, loader, hf, tensors."""
    if kind == "dataset":
        return {"train": Blobs(n, dim, classes, seed), "test": Blobs(n_test, dim, classes, seed + 1)}
    if kind == "iterable":
        return {"train": BlobStream(n, dim, classes, seed), "test": BlobStream(n_test, dim, classes, seed + 1)}
    if kind == "loader":
        return {"train": DataLoader(Blobs(n, dim, classes, seed), batch_size=32, shuffle=True),
                "test": Blobs(n_test, dim, classes, seed + 1)}
    if kind == "hf":
        import datasets

        def hf(m, s):
            x, y = _blobs(m, dim, classes, s)
            return datasets.Dataset.from_dict({"features": x.tolist(), "label": y.tolist()})

        return {"train": hf(n, seed), "test": hf(n_test, seed + 1)}
    if kind == "tensors":
        return {"train": _blobs(n, dim, classes, seed), "test": _blobs(n_test, dim, classes, seed + 1)}
    if kind == "train_only":
        return Blobs(n, dim, classes, seed)
    raise ConfigError(f"data.kwargs.kind must be dataset, iterable, loader, hf, tensors or train_only, "
                      f"not {kind!r}")


def blobs_test(n: int = 200, dim: int = 16, classes: int = 4, seed: int = 1) -> Blobs:
    """A test split for ``blobs(kind="train_only")`` (``data.test: joryu.data.examples:blobs_test``)."""
    return Blobs(n, dim, classes, seed)
