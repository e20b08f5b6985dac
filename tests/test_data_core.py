import pytest
import torch

from joryu import data as jd
from joryu.data import (
    Augment,
    TensorData,
    TensorLoader,
    apply_augment,
    epoch_batches,
    split_validation,
)


def test_epoch_batches_deterministic_and_complete():
    a = epoch_batches(103, 10, seed=3, epoch=2)
    b = epoch_batches(103, 10, seed=3, epoch=2)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert sorted(torch.cat(a).tolist()) == list(range(103))
    c = epoch_batches(103, 10, seed=3, epoch=3)
    assert not torch.equal(torch.cat(a), torch.cat(c))


def test_epoch_batches_shard_equally_without_overlap():
    shards = [epoch_batches(101, 8, seed=0, epoch=0, rank=r, world_size=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1])
    s0, s1 = set(torch.cat(shards[0]).tolist()), set(torch.cat(shards[1]).tolist())
    assert not s0 & s1 and len(s0) == len(s1) == 50


def test_augment_deterministic_shapes_and_identity():
    x = torch.randn(6, 1, 12, 12)
    a = apply_augment(x, Augment(shift=2, flip=True), seed=5)
    b = apply_augment(x, Augment(shift=2, flip=True), seed=5)
    assert a.shape == x.shape and torch.equal(a, b)
    assert torch.equal(apply_augment(x, Augment(), 1), x)
    s = torch.randn(4, 40)
    assert apply_augment(s, Augment(shift=3), 0).shape == (4, 40)
    s3 = torch.randn(4, 1, 40)
    out = apply_augment(s3, Augment(shift=3), 0)
    # a shift moves the signal: every output row is a window of the zero-padded input
    padded = torch.nn.functional.pad(s3, (3, 3))
    for i in range(4):
        assert any(torch.equal(out[i, 0], padded[i, 0, o:o + 40]) for o in range(7))


def test_split_validation_is_stratified_and_disjoint():
    y = torch.arange(10).repeat(20)
    d = TensorData({"input": torch.arange(200).float().unsqueeze(1), "target": y}, 10)
    tr, va = split_validation(d, 0.1, seed=0)
    assert len(tr) == 180 and len(va) == 20
    assert torch.bincount(va.targets).tolist() == [2] * 10
    assert not set(tr.tensors["input"].flatten().tolist()) & set(va.tensors["input"].flatten().tolist())


def test_loader_batches_have_index_and_fingerprint(tiny_data):
    loader = TensorLoader(tiny_data, 50, shuffle=False)
    batches = list(loader.iterate(0))
    assert [len(b["index"]) for b in batches] == [50, 50, 50, 50, 40]
    torch.testing.assert_close(batches[1]["input"], tiny_data.tensors["input"][50:100])
    assert batches[0]["data_id"] == tiny_data.fingerprint() and batches[0]["aug_id"] is None
    resumed = list(loader.iterate(0, start=3))
    assert torch.equal(resumed[0]["index"], batches[3]["index"])


@pytest.mark.parametrize("name,shape,n_train,n_test", [
    ("mnist1d", (1, 40), 4000, 1000), ("digits", (1, 8, 8), 1297, 500),
    ("mnist5k", (1, 28, 28), 4000, 1000), ("synthetic", (3, 32, 32), 2048, 512)])
def test_builtin_datasets(name, shape, n_train, n_test):
    b = jd.load(name)
    assert b.input_shape == shape and len(b.train) == n_train and len(b.test) == n_test
    assert b.num_classes == 10
    assert int(b.train.targets.max()) == 9
    # fixed splits: loading twice gives the same data
    assert jd.load(name).train.fingerprint() == b.train.fingerprint()


def test_unknown_dataset_and_missing_path():
    from joryu.errors import ConfigError

    with pytest.raises(ConfigError, match="mnist1d"):
        jd.load("mnist1e")
    with pytest.raises(ConfigError, match="data.path"):
        jd.load("cifar10")


def test_cifar_registry_reads_files(tmp_path):
    import pickle

    import numpy as np

    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2]}, f)
    b = jd.load("cifar10", str(tmp_path))
    assert len(b.train) == 10 and b.input_shape == (3, 32, 32)
    batch = next(iter(TensorLoader(b.train, 4)))
    assert batch["input"].dtype == torch.float32


def test_image_folder_streams_through_the_engine(tmp_path):
    from PIL import Image

    from joryu.config import TrainConfig
    from joryu.data import StreamLoader
    from joryu.engine import Engine
    from joryu.methods.supervised import SupervisedDistiller
    from joryu.models import create

    g = torch.Generator().manual_seed(0)
    for c in range(3):
        (tmp_path / f"class{c}").mkdir()
        for i in range(6):
            arr = (torch.rand(10, 10, 3, generator=g) * 80 + c * 80).to(torch.uint8).numpy()
            Image.fromarray(arr).save(tmp_path / f"class{c}" / f"{i}.png")
    b = jd.load("image_folder", str(tmp_path), image_size=8, test_fraction=0.34)
    assert b.num_classes == 3 and b.input_shape == (3, 8, 8)
    assert len(b.train) + len(b.test) == 18
    loader = StreamLoader(b.train, 4, shuffle=True, augment=Augment(shift=1, flip=True))
    batches = list(loader.iterate(0))
    assert sum(len(x["index"]) for x in batches) == len(b.train)
    assert batches[0]["input"].shape[1:] == (3, 8, 8) and batches[0]["aug_id"] is not None
    d = SupervisedDistiller(create("mlp", num_classes=3, input_shape=(3, 8, 8), hidden=(16,)))
    eng = Engine(TrainConfig(epochs=2, batch_size=4), progress=False)
    res = eng.fit(d, b.train, b.test, augment=b.augment)
    assert len(res.history) == 2 and 0 <= res.val["val/acc"] <= 100
