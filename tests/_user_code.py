"""A user's own code that fails: a Dataset, a factory, a transform and models (tests of whose
error it is: tests/test_user_code_errors.py)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class Shelf(Dataset):
    """64 vectors of 8 floats in 3 classes; reading sample ``bad`` raises. Feature 0 holds the
    sample's index (so a transform can fail on one sample)."""

    def __init__(self, n: int = 64, bad: int = -1):
        g = torch.Generator().manual_seed(n)
        self.x = torch.randn(n, 8, generator=g)
        self.x[:, 0] = torch.arange(n, dtype=torch.float32)
        self.y = torch.arange(n) % 3
        self.targets = self.y  # no pass over the samples to find the classes
        self.bad = bad

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        if i == self.bad:
            raise ValueError(f"the shelf has no book {i}")
        return self.x[i], int(self.y[i])


def shelves(bad: int = 7):
    return {"train": Shelf(64, bad), "test": Shelf(16)}


def flooded(bucket: str = "b"):
    raise RuntimeError(f"bucket {bucket!r} is flooded")


def picky(x):
    if int(x[0]) == 7:
        raise KeyError("seven")
    return x


class Stubborn(nn.Module):
    """Predicts in evaluation mode; its training forward raises."""

    def __init__(self, num_classes: int = 3):
        super().__init__()
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x):
        if self.training:
            raise ArithmeticError("no training today")
        return self.fc(x)
