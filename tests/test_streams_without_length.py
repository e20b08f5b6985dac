"""Streams without a length: an IterableDataset with no ``__len__`` (possibly endless) trains on a
budget given in steps (``train.max_steps``, ``train.steps_per_epoch``), checkpoints and resumes
exactly mid-stream; without a budget the error names both options."""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest
import torch
from torch import nn
from torch.utils.data import IterableDataset

import joryu
from joryu.config import TrainConfig
from joryu.data import as_source
from joryu.engine import Engine
from joryu.errors import ConfigError
from joryu.methods.supervised import SupervisedDistiller


class Endless(IterableDataset):
    """An endless stream of (x, y): y is 1 when the first two features sum above zero. Sample k
    is a pure function of k, so a pass is reproducible; no __len__."""

    num_classes = 2

    def __init__(self, limit: int | None = None):
        self.limit = limit  # a stream that ends after ``limit`` samples (None: never)

    def __iter__(self):
        for k in itertools.count() if self.limit is None else range(self.limit):
            g = torch.Generator().manual_seed(k)
            x = torch.randn(6, generator=g)
            yield x, int(x[0] + x[1] > 0)


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))


def digest(d) -> str:
    return hashlib.sha1(b"".join(p.detach().numpy().tobytes() for p in d.parameters())).hexdigest()


class Crash(Exception):
    pass


def test_an_endless_stream_trains_for_max_steps_updates(tmp_path):
    d = SupervisedDistiller(model())
    cfg = TrainConfig(max_steps=30, batch_size=16, optimizer="adam", lr=0.01, device="cpu",
                      grad_accum=2)
    res = Engine(cfg, tmp_path, seed=0, progress=False).fit(d, as_source(Endless()))
    assert res.steps == 60  # 30 updates x 2 accumulated batches
    state = json.loads(sorted((tmp_path / "checkpoints").glob("step-*"))[-1].joinpath("state.json").read_text())
    assert state["updates"] == 30 and state["seen"] == 60 * 16
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1 and rows[0]["step"] == 60  # one "epoch": the stream never ended
    # it learnt the rule: accuracy on fresh samples of the stream, well above chance
    x = torch.stack([x for x, _ in itertools.islice(Endless(), 2000, 2400)])
    y = torch.tensor([y for _, y in itertools.islice(Endless(), 2000, 2400)])
    acc = (d.student(x).argmax(1) == y).float().mean().item()
    assert acc > 0.8, acc


def test_an_endless_stream_resumes_exactly_after_a_kill(tmp_path):
    cfg = TrainConfig(max_steps=12, batch_size=8, optimizer="sgd", lr=0.1, checkpoint_every=5,
                      device="cpu", log_every=1)
    ref = SupervisedDistiller(model())
    Engine(cfg, tmp_path / "ref", seed=1, progress=False).fit(ref, as_source(Endless()))

    class Crashing(SupervisedDistiller):
        n = 0

        def training_step(self, batch):
            Crashing.n += 1
            if Crashing.n == 8:  # after the step-5 checkpoint, mid-stream
                raise Crash
            return super().training_step(batch)

    with pytest.raises(Crash):
        Engine(cfg, tmp_path / "run", seed=1, progress=False).fit(Crashing(model()), as_source(Endless()))
    last = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    assert json.loads((last / "state.json").read_text())["step_in_epoch"] == 5

    class Counting(SupervisedDistiller):
        n = 0

        def training_step(self, batch):
            Counting.n += 1
            return super().training_step(batch)

    resumed = Counting(model())
    Engine(cfg, tmp_path / "run", seed=1, progress=False).fit(resumed, as_source(Endless()), resume=True)
    assert Counting.n == 12 - 5  # only the batches after the checkpoint (the first five skipped)
    assert digest(resumed) == digest(ref)


def test_a_stream_that_ends_gives_epochs_of_passes_with_steps_per_epoch(tmp_path):
    # 100 samples, batch 16: 7 batches per pass; steps_per_epoch=5 ends each epoch after 5
    d = SupervisedDistiller(model())
    cfg = TrainConfig(epochs=3, steps_per_epoch=5, batch_size=16, device="cpu")
    res = Engine(cfg, tmp_path, seed=0, progress=False).fit(d, as_source(Endless(limit=100)))
    assert res.steps == 15
    # max_steps over a stream that ends: passes until the updates are spent (epochs ignored)
    d = SupervisedDistiller(model())
    cfg = TrainConfig(epochs=1, max_steps=17, batch_size=16, device="cpu", grad_accum=2)
    res = Engine(cfg, None, seed=0, progress=False).fit(d, as_source(Endless(limit=100)))
    # a pass is 7 batches = 4 updates (the last window of one batch is flushed at the stream's end)
    assert res.steps == 7 * 4 + 2  # four passes of 4 updates, then one more update (2 batches)


def test_without_a_budget_the_error_names_both_options(tmp_path):
    d = SupervisedDistiller(model())
    with pytest.raises(ConfigError, match="train.max_steps.*train.steps_per_epoch"):
        Engine(TrainConfig(epochs=2, device="cpu"), None, progress=False).fit(d, as_source(Endless()))


def test_distill_takes_an_endless_stream_with_max_steps():
    student = model()
    teacher = nn.Sequential(nn.Linear(6, 2))
    val = as_source(Endless(limit=64), num_classes=2)
    out = joryu.distill(teacher, student, Endless(), val_data=Endless(limit=64), max_steps=5,
                        batch_size=8, progress=False, method="kd")
    assert out is not None and val.num_classes == 2
    with pytest.raises(ConfigError, match="max_steps.*steps_per_epoch"):
        joryu.distill(teacher, model(), Endless(), val_data=Endless(limit=64), batch_size=8,
                      progress=False, epochs=1)
    with pytest.raises(ConfigError, match="val_data"):  # no split of an endless stream
        joryu.distill(teacher, model(), Endless(), max_steps=5, batch_size=8, progress=False)
