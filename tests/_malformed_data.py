"""Data factories for the malformed-input tests: datasets that are wrong in the ways users' are."""

import torch
from torch.utils.data import Dataset


def _xy(n, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 40, generator=g)
    return x, torch.arange(n) % k


def empty_train():
    x, y = _xy(30)
    return {"train": (x[:0], y[:0]), "test": (x, y)}


def empty_test():
    x, y = _xy(30)
    return {"train": (x, y), "test": (x[:0], y[:0])}


class Samples(Dataset):
    """A map-style dataset of ``(input, target)`` pairs; ``targets`` lists every target (as
    torchvision's datasets do), so labels are checked without reading the samples."""

    def __init__(self, x, targets):
        self.x, self.targets = x, targets

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def string_targets():
    x, y = _xy(30)
    names = ["cat", "dog", "ant"]
    return {"train": Samples(x, [names[int(v)] for v in y]), "test": (x, y)}


def multi_label_targets():
    x, y = _xy(30)
    return {"train": (x, torch.nn.functional.one_hot(y, 3)), "test": (x, y), "num_classes": 3}


def test_label_out_of_range():
    x, y = _xy(30)
    y_test = y.clone()
    y_test[4] = 7
    return {"train": (x, y), "test": (x, y_test), "num_classes": 3}


def negative_label():
    x, y = _xy(30)
    y = y.clone()
    y[2] = -3
    return {"train": (x, y), "test": _xy(30)}


def train_label_out_of_range():
    x, y = _xy(30)
    y = y.clone()
    y[5] = 3
    return {"train": (x, y), "test": _xy(30), "num_classes": 3}


def stream_label_out_of_range():
    x, y = _xy(30)
    t = [int(v) for v in y]
    t[6] = 5
    return {"train": Samples(x, t), "test": _xy(30), "num_classes": 3}


def float_targets():
    x, y = _xy(30)
    return {"train": (x, y.float() + 0.5), "test": _xy(30)}


class Endless(torch.utils.data.IterableDataset):
    """An endless stream (no __len__) of ``dim``-feature samples in 3 classes."""

    num_classes = 3

    def __init__(self, dim=40):
        self.dim = dim

    def __iter__(self):
        k = 0
        while True:
            g = torch.Generator().manual_seed(k)
            yield torch.randn(self.dim, generator=g), k % 3
            k += 1


def endless():
    x, y = _xy(30)
    return {"train": Endless(), "val": (x, y), "test": (x, y)}


def empty_val():
    x, y = _xy(30)
    return {"train": (x, y), "test": (x, y), "val": (x[:0], y[:0])}


def val_label_out_of_range():
    x, y = _xy(30)
    y_val = y.clone()
    y_val[1] = 9
    return {"train": (x, y), "test": (x, y), "val": (x, y_val), "num_classes": 3}
