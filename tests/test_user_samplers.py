"""A user's sampler is kept: a DataLoader built with its own sampler (a WeightedRandomSampler for
imbalanced classes) or batch sampler (batches grouped by length) trains as given; a resume
mid-epoch is exact when the sampler has its own seeded generator, and says so in one line when
it draws from the global one."""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset, WeightedRandomSampler

import joryu
from joryu.config import TrainConfig
from joryu.data import as_source
from joryu.engine import Engine
from joryu.errors import ConfigError
from joryu.methods.supervised import SupervisedDistiller


def imbalanced(n=400, minority=0.1):
    """Feature 0 is the class (so a recorder can see which class a training sample is)."""
    g = torch.Generator().manual_seed(0)
    y = (torch.rand(n, generator=g) < minority).long()
    x = torch.randn(n, 4, generator=g)
    x[:, 0] = y.float()
    return x, y


class Recorder(nn.Module):
    """A student that remembers the class feature of every sample it trains on."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        if self.training:
            self.seen.append(x[:, 0].detach().clone())
        return self.fc(x)


def minority_rate(student) -> float:
    return torch.cat(student.seen).mean().item()


def test_weighted_sampler_draws_the_minority_class_at_the_weighted_rate_through_distill():
    x, y = imbalanced()
    freq = torch.bincount(y).float() / len(y)
    weights = (1.0 / freq)[y]  # each class drawn half the time
    teacher = nn.Linear(4, 2)
    rates = {}
    for name, loader in {
        "weighted": DataLoader(TensorDataset(x, y), batch_size=32, sampler=WeightedRandomSampler(
            weights, num_samples=len(y), replacement=True, generator=torch.Generator().manual_seed(1))),
        "shuffled": DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True),
    }.items():
        student = Recorder()
        joryu.distill(teacher, student, loader, val_data=(x, y), epochs=3, progress=False)
        rates[name] = minority_rate(student)
    n = 3 * len(y)
    se = (0.25 / n) ** 0.5  # binomial standard error at p = 0.5
    assert abs(rates["weighted"] - 0.5) < 4 * se, rates
    assert abs(rates["shuffled"] - float(freq[1])) < 0.01, rates  # the plain loader: the data's own rate


class ByLength(Dataset):
    """Samples of three lengths (4, 6, 8): a batch can only be stacked within one length."""

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.items = [(torch.randn(4 + 2 * (i % 3), generator=g), i % 2) for i in range(60)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


class GroupByLength(Sampler):
    """Batches of indices of one length, groups in a seeded random order."""

    def __init__(self, data, batch_size, generator):
        self.groups = {}
        for i, (x, _) in enumerate(data.items):
            self.groups.setdefault(len(x), []).append(i)
        self.batch_size, self.generator = batch_size, generator

    def __iter__(self):
        batches = [g[k:k + self.batch_size] for g in self.groups.values()
                   for k in range(0, len(g), self.batch_size)]
        for j in torch.randperm(len(batches), generator=self.generator).tolist():
            yield batches[j]

    def __len__(self):
        return sum(-(-len(g) // self.batch_size) for g in self.groups.values())


class Pool(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(1, 2)
        self.lengths: list[int] = []

    def forward(self, x):
        if self.training:
            self.lengths.append(x.shape[1])
        return self.fc(x.mean(1, keepdim=True))


def test_a_batch_sampler_grouping_by_length_trains_as_given(tmp_path):
    data = ByLength()
    loader = DataLoader(data, batch_sampler=GroupByLength(data, 8, torch.Generator().manual_seed(0)))
    student = Pool()
    Engine(TrainConfig(epochs=2, device="cpu"), tmp_path, progress=False).fit(
        SupervisedDistiller(student), as_source(loader))
    assert len(student.lengths) == 2 * len(loader)  # every batch of the sampler, and only those
    assert sorted(set(student.lengths)) == [4, 6, 8]  # each batch stacked within one length


class Crash(Exception):
    pass


def _fit(tmp_path, loader, crash_at=None, resume=False):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))

    class D(SupervisedDistiller):
        n = 0

        def training_step(self, batch):
            D.n += 1
            if D.n == crash_at:
                raise Crash
            return super().training_step(batch)

    d = D(net)
    cfg = TrainConfig(epochs=2, optimizer="sgd", lr=0.1, checkpoint_every=4, device="cpu")
    Engine(cfg, tmp_path, seed=2, progress=False).fit(d, as_source(loader), resume=resume)
    return hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in net.parameters())).hexdigest()


def _weighted(generator):
    x, y = imbalanced(200)
    w = (1.0 / (torch.bincount(y).float() / len(y)))[y]
    return DataLoader(TensorDataset(x, y), batch_size=16,
                      sampler=WeightedRandomSampler(w, len(y), generator=generator))


def test_resume_with_a_seeded_sampler_is_exact(tmp_path):
    ref = _fit(tmp_path / "ref", _weighted(torch.Generator().manual_seed(7)))
    with pytest.raises(Crash):  # 13 batches per epoch: crash in epoch 2, after the step-16 checkpoint
        _fit(tmp_path / "run", _weighted(torch.Generator().manual_seed(7)), crash_at=18)
    resumed = _fit(tmp_path / "run", _weighted(torch.Generator().manual_seed(7)), resume=True)
    assert resumed == ref


def test_resume_with_a_global_generator_sampler_says_so_in_one_line(tmp_path, capsys):
    with pytest.raises(Crash):
        _fit(tmp_path, _weighted(None), crash_at=18)
    capsys.readouterr()
    _fit(tmp_path, _weighted(None), resume=True)
    lines = [x for x in capsys.readouterr().err.splitlines() if "WeightedRandomSampler" in x]
    assert len(lines) == 1 and "generator=torch.Generator().manual_seed" in lines[0], lines


def test_a_validation_split_cannot_be_carved_from_under_a_sampler():
    x, y = imbalanced()
    loader = DataLoader(TensorDataset(x, y), batch_size=32,
                        sampler=WeightedRandomSampler(torch.ones(len(y)), len(y)))
    with pytest.raises(ConfigError, match="val_data"):
        joryu.distill(nn.Linear(4, 2), nn.Linear(4, 2), loader, epochs=1, progress=False)
