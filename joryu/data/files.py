"""Loaders for dataset files that a user already has on disk.

* :func:`load_cifar` - the CIFAR-10 / CIFAR-100 "python version" pickle batches.
* :func:`read_idx` / :func:`load_idx` - the MNIST IDX format (MNIST, Fashion-MNIST, KMNIST, ...).
* :class:`ImageFolderDataset` - one sub-folder of images per class.

Every problem with the files (missing, truncated, corrupt, wrong shape) raises
:class:`joryu.errors.DataError` with a message that says what was expected, the full path,
and how to obtain or fix the data. No raw pickle/struct/zlib traceback escapes.
"""

from __future__ import annotations

import gzip
import importlib
import os
import pickle
import zlib
from collections.abc import Iterable

import numpy as np
import torch
from torch.utils.data import Dataset

from joryu.errors import ConfigError, DataError

__all__ = ["load_cifar", "read_idx", "load_idx", "ImageFolderDataset"]

_FIX_PATH = "Pass the folder that holds them as data.path."


def _abs(path: str | os.PathLike) -> str:
    return os.path.abspath(os.fspath(path))


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------

_CIFAR = {
    10: {
        "name": "CIFAR-10",
        "subdir": "cifar-10-batches-py",
        "train": [f"data_batch_{i}" for i in range(1, 6)],
        "test": ["test_batch"],
        "label_key": "labels",
        "expected": "data_batch_1..5 and test_batch",
        "archive": "the 'CIFAR-10 python version' archive, cifar-10-python.tar.gz, "
        "from the CIFAR site (https://www.cs.toronto.edu/~kriz/cifar.html), extracted",
    },
    100: {
        "name": "CIFAR-100",
        "subdir": "cifar-100-python",
        "train": ["train"],
        "test": ["test"],
        "label_key": "fine_labels",
        "expected": "train and test",
        "archive": "the 'CIFAR-100 python version' archive, cifar-100-python.tar.gz, "
        "from the CIFAR site (https://www.cs.toronto.edu/~kriz/cifar.html), extracted",
    },
}

# The only globals a CIFAR batch pickle (from Python 2 or 3, any numpy) needs. Anything else
# is refused, so that opening a dataset file cannot run arbitrary code.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _BatchUnpickler(pickle.Unpickler):
    def __init__(self, f, path: str):
        super().__init__(f, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) not in _PICKLE_ALLOWED:
            raise DataError(
                f"Refusing to load {self._path}: the pickle references {module}.{name}, which a "
                "CIFAR batch file never contains (only numpy arrays, lists, bytes and ints). "
                "Re-download the official archive and pass its extracted folder as data.path."
            )
        if module.startswith("numpy.core"):
            # numpy >= 2 renamed numpy.core to numpy._core; avoid its deprecation shim.
            try:
                importlib.import_module("numpy._core")
                module = "numpy._core" + module[len("numpy.core") :]
            except ImportError:
                pass
        return getattr(importlib.import_module(module), name)


def _dict_get(d: dict, key: str):
    """Look up ``key`` as bytes (encoding="bytes" pickles) or as str."""
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise KeyError(key)


def _read_cifar_batch(path: str, spec: dict, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    name = spec["name"]
    refetch = f"Re-extract it from {spec['archive']}."
    try:
        with open(path, "rb") as f:
            obj = _BatchUnpickler(f, path).load()
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"Cannot read {name} batch {path}: {e}. {refetch}") from None
    except Exception as e:  # EOFError, UnpicklingError, ValueError, ... from a corrupt file
        raise DataError(
            f"{name} batch {path} is truncated or corrupt (unpickling failed: "
            f"{type(e).__name__}: {e}); expected a pickled dict with 'data' and "
            f"'{spec['label_key']}'. {refetch}"
        ) from None

    if not isinstance(obj, dict):
        raise DataError(
            f"{name} batch {path} holds a {type(obj).__name__}, expected a pickled dict with "
            f"'data' and '{spec['label_key']}'. {refetch}"
        )
    try:
        data = _dict_get(obj, "data")
        labels = _dict_get(obj, spec["label_key"])
    except KeyError as e:
        keys = sorted(k.decode() if isinstance(k, bytes) else str(k) for k in obj)
        raise DataError(
            f"{name} batch {path} has no '{e.args[0]}' entry (keys: {keys}); expected 'data' "
            f"and '{spec['label_key']}'. Is this a {name} file? {refetch}"
        ) from None

    try:
        data = np.asarray(data)
        labels = np.asarray(labels)
    except Exception:
        data = labels = np.empty(0, dtype=object)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(
            f"{name} batch {path}: 'data' has shape {tuple(data.shape)}, expected N x 3072 "
            f"(32x32 RGB, channel planes in row-major order). {refetch}"
        )
    if data.dtype != np.uint8:
        ok = data.dtype.kind in "iu" and (data.size == 0 or (data.min() >= 0 and data.max() <= 255))
        if not ok:
            raise DataError(
                f"{name} batch {path}: 'data' has dtype {data.dtype}, expected uint8 pixel "
                f"values 0..255. {refetch}"
            )
        data = data.astype(np.uint8)
    n = data.shape[0]
    if labels.ndim != 1 or labels.shape[0] != n or (n and labels.dtype.kind not in "iu"):
        raise DataError(
            f"{name} batch {path}: '{spec['label_key']}' has shape {tuple(labels.shape)} and "
            f"dtype {labels.dtype}, expected {n} integer labels (one per image). {refetch}"
        )
    labels = labels.astype(np.int64)
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{name} batch {path}: labels range over {labels.min()}..{labels.max()}, expected "
            f"0..{num_classes - 1}. Check num_classes (10 for CIFAR-10, 100 for CIFAR-100) "
            f"matches the files. {refetch}"
        )
    return data, labels


def _find_cifar_dir(root: str, spec: dict, other: dict) -> str:
    name = spec["name"]
    how = f"({spec['archive']}). {_FIX_PATH}"
    if not os.path.exists(root):
        raise DataError(
            f"{name} folder {root} does not exist: expected a folder holding "
            f"{spec['expected']} {how}"
        )
    if not os.path.isdir(root):
        hint = ""
        if root.endswith((".tar.gz", ".tgz", ".tar")):
            hint = f" It looks like the archive itself; extract it (tar xzf {root}) first."
        raise DataError(
            f"{name} path {root} is a file, expected a folder holding {spec['expected']}."
            f"{hint} {how}"
        )
    wanted = spec["train"] + spec["test"]
    for cand in (root, os.path.join(root, spec["subdir"])):
        if not os.path.isdir(cand):
            continue
        present = [f for f in wanted if os.path.isfile(os.path.join(cand, f))]
        if not present:
            continue
        missing = [f for f in wanted if f not in present]
        if missing:
            raise DataError(
                f"{name} files missing in {cand}: {', '.join(missing)} (expected "
                f"{spec['expected']}); the archive may be only partly extracted. "
                f"Re-extract {spec['archive']}."
            )
        return cand
    hint = ""
    for cand in (root, os.path.join(root, other["subdir"])):
        if all(os.path.isfile(os.path.join(cand, f)) for f in other["train"] + other["test"]):
            hint = (
                f" {cand} looks like {other['name']} instead; set num_classes to "
                f"{10 if other is _CIFAR[10] else 100} or point at {name}."
            )
            break
    raise DataError(
        f"{name} batches not found in {root}: expected {spec['expected']} there or in "
        f"{os.path.join(root, spec['subdir'])} {how}{hint}"
    )


def load_cifar(root: str | os.PathLike, num_classes: int) -> tuple[dict, dict]:
    """Load CIFAR-10 (``num_classes=10``) or CIFAR-100 (``num_classes=100``) python batches.

    ``root`` is the folder holding the batch files (``data_batch_1..5``/``test_batch``, or
    ``train``/``test``) or its parent containing ``cifar-10-batches-py``/``cifar-100-python``.

    Returns ``(train, test)``, each ``{"input": uint8 N x 3 x 32 x 32, "target": int64 N}``.
    CIFAR-100 targets are the fine (100-class) labels.
    """
    if num_classes not in _CIFAR:
        raise ConfigError(
            f"CIFAR num_classes must be 10 (CIFAR-10) or 100 (CIFAR-100), got {num_classes!r}."
        )
    spec = _CIFAR[num_classes]
    other = _CIFAR[100 if num_classes == 10 else 10]
    folder = _find_cifar_dir(_abs(root), spec, other)

    def split(files: Iterable[str]) -> dict:
        parts = [_read_cifar_batch(os.path.join(folder, f), spec, num_classes) for f in files]
        data = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32))
        return {"input": torch.from_numpy(images), "target": torch.from_numpy(labels)}

    return split(spec["train"]), split(spec["test"])


# --------------------------------------------------------------------------------------------
# IDX (MNIST)
# --------------------------------------------------------------------------------------------

_IDX_TYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_IDX_HOW = (
    "Re-download it (e.g. the MNIST files train-images-idx3-ubyte.gz etc. from a MNIST mirror, "
    "or Fashion-MNIST from its GitHub page); .gz files may be passed as they are."
)


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"Cannot read IDX file {path}: {e}. {_IDX_HOW}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(
                f"IDX file {path} is gzip-compressed but the gzip data is truncated or corrupt "
                f"({e}). {_IDX_HOW}"
            ) from None
    return raw


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read one IDX file (raw or gzip, detected by magic bytes) into a native-endian array."""
    path = _abs(path)
    if not os.path.isfile(path):
        what = "is a folder" if os.path.isdir(path) else "does not exist"
        raise DataError(f"IDX file {path} {what}: expected an IDX data file. {_IDX_HOW}")
    raw = _read_bytes(path)
    expected_magic = (
        "expected the IDX magic: two zero bytes, a type byte (0x08 ubyte, 0x09 sbyte, "
        "0x0B short, 0x0C int, 0x0D float, 0x0E double) and a dimension count"
    )
    if len(raw) < 4:
        raise DataError(
            f"IDX file {path} is truncated: {len(raw)} bytes, {expected_magic}. {_IDX_HOW}"
        )
    if raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DataError(
            f"IDX file {path} has bad magic {raw[:4].hex(' ')}: {expected_magic}. Is it an "
            f"IDX file (not an archive or HTML page)? {_IDX_HOW}"
        )
    dtype = _IDX_TYPES[raw[2]]
    ndim = raw[3]
    if ndim == 0:
        raise DataError(f"IDX file {path} declares 0 dimensions, expected at least 1. {_IDX_HOW}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"IDX file {path} is truncated inside its header: {len(raw)} bytes, expected "
            f"{header} for {ndim} dimension sizes. {_IDX_HOW}"
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    have = len(raw) - header
    if have != want:
        kind = "truncated" if have < want else "longer than its header says"
        raise DataError(
            f"IDX file {path} is {kind}: header declares shape {shape} of {dtype.name} "
            f"({want} data bytes), found {have}. {_IDX_HOW}"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="))  # native byte order, writable copy


_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _find_idx_file(root: str, name: str) -> str:
    dotted = name.replace("-idx", ".idx")
    candidates = [name, name + ".gz", dotted, dotted + ".gz"]
    for c in candidates:
        p = os.path.join(root, c)
        if os.path.isfile(p):
            return p
    raise DataError(
        f"IDX file {name} not found in {root}: expected one of {', '.join(candidates)} "
        f"(MNIST-style files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
        f"t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, optionally .gz). {_IDX_HOW} "
        "Pass the folder that holds them (for a torchvision download, MNIST/raw) as data.path."
    )


def load_idx(root: str | os.PathLike) -> tuple[dict, dict]:
    """Load an MNIST-style dataset of four IDX files found in ``root``.

    Returns ``(train, test)``, each ``{"input": uint8 N x 1 x H x W, "target": int64 N}``.
    """
    root = _abs(root)
    if not os.path.isdir(root):
        what = "is a file" if os.path.exists(root) else "does not exist"
        raise DataError(
            f"IDX dataset folder {root} {what}: expected a folder holding "
            f"train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
            f"t10k-labels-idx1-ubyte (optionally .gz). {_IDX_HOW} {_FIX_PATH}"
        )
    paths = {k: _find_idx_file(root, v) for k, v in _IDX_FILES.items()}

    def split(prefix: str) -> dict:
        ip, lp = paths[f"{prefix}_images"], paths[f"{prefix}_labels"]
        images, labels = read_idx(ip), read_idx(lp)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(
                f"IDX image file {ip} holds {images.dtype} data of shape {images.shape}, "
                f"expected unsigned bytes of shape N x H x W. Did you swap image and label "
                f"files? {_IDX_HOW}"
            )
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DataError(
                f"IDX label file {lp} holds {labels.dtype} data of shape {labels.shape}, "
                f"expected N integer labels. Did you swap image and label files? {_IDX_HOW}"
            )
        if images.shape[0] != labels.shape[0]:
            raise DataError(
                f"IDX files disagree: {ip} has {images.shape[0]} images but {lp} has "
                f"{labels.shape[0]} labels; expected the same count. The files probably come "
                f"from different datasets or downloads. {_IDX_HOW}"
            )
        return {
            "input": torch.from_numpy(np.ascontiguousarray(images[:, None])),
            "target": torch.from_numpy(labels.astype(np.int64)),
        }

    return split("train"), split("test")


# --------------------------------------------------------------------------------------------
# Image folder
# --------------------------------------------------------------------------------------------

_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def file_identities(paths: list[str]) -> list[tuple]:
    """What makes image files the same, one key per path: the size, and where two files have the
    same size, the SHA-1 of the bytes (so a symlink, a hard link and a copy are one image; only
    files whose sizes collide are read)."""
    import hashlib
    from collections import Counter

    sizes = []
    for path in paths:
        try:
            sizes.append(os.stat(path).st_size)
        except OSError as e:
            raise DataError(f"Cannot read image {path} ({e.strerror or e}): a broken link or an "
                            "unreadable file. Replace or delete it.") from None
    counts = Counter(sizes)
    keys = []
    for path, size in zip(paths, sizes):
        digest = None
        if counts[size] > 1:
            with open(path, "rb") as f:
                digest = hashlib.sha1(f.read()).hexdigest()
        keys.append((size, digest))
    return keys


def _size_hw(image_size) -> tuple[int, int] | None:
    if image_size is None:
        return None
    if isinstance(image_size, int) and not isinstance(image_size, bool):
        hw = (image_size, image_size)
    else:
        try:
            hw = tuple(int(s) for s in image_size)
        except TypeError:
            hw = ()
    if len(hw) != 2 or min(hw) <= 0:
        raise ConfigError(
            f"image_size must be a positive int or an (height, width) pair, got {image_size!r}."
        )
    return hw


class ImageFolderDataset(Dataset):
    """Images laid out as ``root/<class name>/<image>``; classes are the sorted folder names.

    Items are ``{"input": float32 3 x H x W in [0, 1] (RGB), "target": int, "index": i}``.
    ``image_size`` (int or (H, W)) resizes every image; without it all images should share
    one size if they are to be batched.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        image_size: int | tuple[int, int] | None = None,
        extensions: Iterable[str] = _IMAGE_EXTS,
    ):
        self.root = _abs(root)
        self.image_size = _size_hw(image_size)
        exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
        self.extensions = exts
        layout = (
            "expected one sub-folder per class, each holding images "
            f"({', '.join(exts)}), e.g. {os.path.join(self.root, 'cat', '0001.png')}"
        )
        if not os.path.isdir(self.root):
            what = "is a file" if os.path.exists(self.root) else "does not exist"
            raise DataError(f"Image folder {self.root} {what}: {layout}. {_FIX_PATH}")
        self.classes = sorted(
            e.name for e in os.scandir(self.root) if e.is_dir() and not e.name.startswith(".")
        )
        if not self.classes:
            raise DataError(
                f"Image folder {self.root} has no class sub-folders: {layout}. Move the images "
                f"into one folder per class."
            )
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples: list[tuple[str, int]] = []
        self.duplicates = 0  # files seen again (a link, a copy) and kept once
        seen_dirs: set[tuple[int, int]] = set()
        for idx, cls in enumerate(self.classes):
            folder = os.path.join(self.root, cls)
            found = []
            for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
                st = os.stat(dirpath)
                if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop, or a folder linked twice
                    dirnames[:] = []
                    continue
                seen_dirs.add((st.st_dev, st.st_ino))
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                for fn in sorted(filenames):
                    if not fn.startswith(".") and fn.lower().endswith(exts):
                        found.append(os.path.join(dirpath, fn))
            if not found:
                raise DataError(
                    f"Class folder {folder} holds no images: expected files ending in "
                    f"{', '.join(exts)}. Add images to it or remove the folder."
                )
            self.samples.extend((p, idx) for p in found)
        self.samples = self._once(self.samples)
        self.targets = torch.tensor([t for _, t in self.samples], dtype=torch.int64)
        self._input_shape: tuple[int, int, int] | None = None

    def _once(self, samples: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """Each file once: the same file reached twice (a link) or a byte-identical copy is kept
        at its first place; one that sits in two classes is refused (its label is ambiguous)."""
        kept: list[tuple[str, int]] = []
        first: dict[object, tuple[str, int]] = {}
        for (path, idx), key in zip(samples, file_identities([p for p, _ in samples])):
            if key in first:
                other, other_idx = first[key]
                if other_idx != idx:
                    raise DataError(f"Image {path} (class {self.classes[idx]!r}) is the same file as "
                                    f"{other} (class {self.classes[other_idx]!r}); an image belongs to one "
                                    "class: delete one of them")
                self.duplicates += 1
                continue
            first[key] = (path, idx)
            kept.append((path, idx))
        return kept

    def __len__(self) -> int:
        return len(self.samples)

    def _load(self, path: str) -> torch.Tensor:
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - pillow ships with matplotlib
            raise DataError(
                f"Reading {path} needs Pillow; install it with `pip install pillow`."
            ) from None
        try:
            with Image.open(path) as im:
                im = im.convert("RGB")
                if self.image_size is not None:
                    h, w = self.image_size
                    if im.size != (w, h):
                        im = im.resize((w, h), Image.BILINEAR)
                arr = np.asarray(im, dtype=np.uint8)
        except Exception as e:  # UnidentifiedImageError, OSError, truncated data, bombs, ...
            raise DataError(
                f"Cannot read image {path} ({type(e).__name__}: {e}): expected a readable "
                f"image file. Replace or delete it."
            ) from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)

    def __getitem__(self, i: int) -> dict:
        path, target = self.samples[i]
        return {"input": self._load(path), "target": target, "index": i}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the first image after resizing."""
        if self._input_shape is None:
            self._input_shape = tuple(self._load(self.samples[0][0]).shape)
        return self._input_shape
