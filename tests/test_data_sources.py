"""Any data in: user Datasets, IterableDatasets, DataLoaders and Hugging Face datasets."""

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

import joryu
from joryu.config import TrainConfig
from joryu.data import StreamData, StreamLoader, as_source, split_any
from joryu.engine import Engine
from joryu.errors import ConfigError, DataError
from joryu.methods.supervised import SupervisedDistiller


def xy(n=240, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    return x, y


class Pairs(Dataset):
    """Samples as (input, target) tuples with a python int target."""

    def __init__(self, n=240):
        self.x, self.y = xy(n)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


class Dicts(Pairs):
    def __getitem__(self, i):
        return {"features": self.x[i], "label": self.y[i]}


class Stream(IterableDataset):
    def __init__(self, n=240):
        self.x, self.y = xy(n)

    def __len__(self):
        return len(self.x)

    def __iter__(self):
        for i in range(len(self.x)):
            yield {"input": self.x[i], "target": self.y[i]}


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))


def teacher():
    t = net(5)
    x, y = xy()
    opt = torch.optim.Adam(t.parameters(), 1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(t(x), y).backward()
        opt.step()
    return t


def hf_dataset():
    datasets = pytest.importorskip("datasets")
    x, y = xy()
    ds = datasets.Dataset.from_dict({"x": x.tolist(), "label": y.tolist()})
    return ds


@pytest.mark.parametrize("kind", ["map_tuple", "map_dict", "iterable", "loader", "hf"])
def test_distill_accepts_any_source(kind):
    data = {"map_tuple": lambda: Pairs(), "map_dict": lambda: Dicts(), "iterable": lambda: Stream(),
            "loader": lambda: DataLoader(Pairs(), batch_size=24, shuffle=True),
            "hf": hf_dataset}[kind]()
    before = Engine(TrainConfig(), None, progress=False).evaluate(SupervisedDistiller(net()), Pairs())["val/acc"]
    student, m = joryu.distill(teacher(), net(), data, "kd", epochs=6, lr=0.01, batch_size=24,
                               progress=False, device="cpu")
    assert m["distill"]["val"]["val/acc"] > before + 15, (kind, before, m["distill"]["val"])


def test_stream_batches_match_tensor_batches():
    """The same samples batch to the same dict the tensor path gives (input, target, index)."""
    x, y = xy(50)
    s = as_source(Pairs(50))
    assert isinstance(s, StreamData) and s.num_classes == 3 and len(s) == 50
    batches = list(StreamLoader(s, 16, shuffle=True, seed=3).iterate(1))
    idx = torch.cat([b["index"] for b in batches])
    assert sorted(idx.tolist()) == list(range(50))
    for b in batches:
        torch.testing.assert_close(b["input"], x[b["index"]])
        assert torch.equal(b["target"], y[b["index"]])


def test_batch_order_is_a_function_of_seed_and_epoch_with_workers():
    s = as_source(Pairs(60))
    order = lambda loader, e: torch.cat([b["index"] for b in loader.iterate(e)]).tolist()  # noqa: E731
    a = StreamLoader(s, 8, shuffle=True, seed=1)
    b = StreamLoader(as_source(s, loader={"num_workers": 2}), 8, shuffle=True, seed=1)
    assert b.num_workers == 2
    assert order(a, 0) == order(b, 0) and order(a, 1) == order(b, 1)
    assert order(a, 0) != order(a, 1)
    # resuming at batch 3 gives the rest of the same epoch
    assert torch.cat([x["index"] for x in b.iterate(1, 3)]).tolist() == order(a, 1)[3 * 8:]


def test_iterable_split_and_workers_cover_the_stream_once():
    s = as_source(Stream(100))
    tr, va = split_any(s, 0.2, seed=0)
    assert len(tr) + len(va) == 100 and 10 < len(va) < 30
    loader = StreamLoader(as_source(tr, loader={"num_workers": 2}), 7, shuffle=True)
    batches = list(loader.iterate(0))
    assert len(batches) == len(loader)
    assert sorted(torch.cat([b["index"] for b in batches]).tolist()) == list(range(len(tr)))


def test_map_split_is_seeded_and_stratified_where_targets_are_known():
    s = as_source(Dicts(90))  # no targets attribute: a seeded split without reading every sample
    tr, va = split_any(s, 0.2, seed=4)
    tr2, va2 = split_any(s, 0.2, seed=4)
    assert torch.equal(va.positions, va2.positions) and len(va) == 18
    assert len(set(tr.positions.tolist()) & set(va.positions.tolist())) == 0
    assert len(tr) + len(va) == 90
    d = Dicts(90)
    d.targets = d.y
    tr, va = split_any(as_source(d), 0.2, seed=4)
    for c in range(3):
        assert int((va.targets == c).sum()) == round(0.2 * int((d.y == c).sum()))


class Bad(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return "not a sample"


class Ragged(Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.zeros(3 + i % 2), 0


def test_bad_sources_are_one_line_errors():
    with pytest.raises(DataError, match="samples must be"):
        as_source(Bad())
    with pytest.raises(ConfigError, match="cannot be a int"):
        as_source(42)
    with pytest.raises(DataError, match=r"shape .* add a resize"):
        list(StreamLoader(as_source(Ragged()), 4, shuffle=False).iterate(0))
    with pytest.raises(DataError, match="without 'target'"):
        as_source([{"input": torch.zeros(2)}])
    with pytest.raises(ConfigError, match="rows but targets"):
        as_source((torch.zeros(3, 2), torch.zeros(4)))


def test_dataloader_keeps_its_settings():
    dl = DataLoader(Pairs(40), batch_size=5, shuffle=False, drop_last=True)
    s = as_source(dl)
    assert s.batch_size == 5 and not s.shuffle and s.drop_last
    loader = StreamLoader(s, 999, shuffle=True)
    assert len(loader) == 8
    assert torch.cat([b["index"] for b in loader.iterate(0)]).tolist() == list(range(40))


# ---------------------------------------------------------------------- through a config
def _exp(data: dict, **changes):
    from joryu.config import build_config
    from joryu.run.experiment import Experiment

    raw = {"name": "u", "data": data, "baseline": False,
           "teacher": {"name": "mlp", "kwargs": {"hidden": [32]},
                       "train": {"epochs": 4, "batch_size": 32, "lr": 0.01}},
           "student": {"name": "mlp", "kwargs": {"hidden": [8]}},
           "train": {"epochs": 4, "batch_size": 32, "lr": 0.01, "device": "cpu"}}
    raw.update(changes)
    return Experiment(build_config(raw), progress=False, write=False)


@pytest.mark.parametrize("kind", ["dataset", "iterable", "loader", "hf", "tensors"])
def test_config_names_a_factory_by_import_path(kind):
    if kind == "hf":
        pytest.importorskip("datasets")
    s = _exp({"name": "joryu.data.examples:blobs", "kwargs": {"kind": kind, "n": 300, "n_test": 100}}).run()
    assert s["data"] == "blobs"
    assert s["rows"]["student + kd"]["test_acc"] > 60  # 4 classes: chance is 25


def test_config_test_split_from_its_own_factory():
    s = _exp({"name": "joryu.data.examples:blobs", "kwargs": {"kind": "train_only", "n": 300},
              "test": "joryu.data.examples:blobs_test", "test_kwargs": {"n": 80}}).run()
    assert s["rows"]["student + kd"]["test_acc"] > 50


@pytest.mark.parametrize("data, needle", [
    ({"name": "joryu.data.examples:blobs", "kwargs": {"kind": "train_only"}}, "no test split"),
    ({"name": "joryu.data.examples:_blobs", "kwargs": {"n": 5, "dim": 2, "classes": 2, "seed": 0},
      "test": "joryu.data.examples:blobs_test"}, r"shape \(2,\) but test inputs have \(16,\)"),
    ({"name": "joryu.data.examples:nope"}, "cannot be imported"),
    ({"name": "os:getcwd"}, "not a dataset"),
    ({"name": "joryu.data.examples:blobs", "transform": ["blur"]}, "unknown transform 'blur'"),
    ({"name": "digits", "transform": ["hflip"]}, "in-memory tensor data"),
])
def test_bad_data_configs_are_one_line_config_errors(data, needle):
    with pytest.raises((ConfigError, DataError), match=needle) as e:
        _exp(data).run()
    assert "\n" not in str(e.value)


def test_hf_image_dataset_with_classlabel_and_pil_images():
    datasets = pytest.importorskip("datasets")
    import numpy as np
    from PIL import Image

    from joryu.data import build_transform

    imgs = [Image.fromarray(np.full((10 + i % 3, 12, 3), 40 * (i % 3), np.uint8)) for i in range(12)]
    feats = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(num_classes=3)})
    ds = datasets.Dataset.from_dict({"image": imgs, "label": [i % 3 for i in range(12)]}, features=feats)
    s = as_source(ds, transform=build_transform(["hflip", {"resize": [8, 8]}]))
    assert s.num_classes == 3 and s.input_shape == (3, 8, 8)  # evaluation: the non-random steps
    b = next(iter(StreamLoader(s, 12, shuffle=True).iterate(0)))
    assert b["input"].shape == (12, 3, 8, 8) and b["input"].dtype == torch.float32
    assert torch.equal(b["target"], b["index"] % 3)
