"""Dataset file loaders, tested on tiny files written in the exact on-disk formats."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch

from joryu.data.files import ImageFolderDataset, load_cifar, load_idx, read_idx
from joryu.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------------
# CIFAR writers
# --------------------------------------------------------------------------------------------


def _cifar_rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _dump(path, obj, protocol=2):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def write_cifar10(folder, n=4, str_keys=False):
    """data_batch_1..5 and test_batch, each n images, like the official python archive."""
    os.makedirs(folder, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        data = _cifar_rows(n, i)
        labels = [(i + j) % 10 for j in range(n)]
        d = {
            b"batch_label": f"batch {i}".encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img_{i}_{j}.png".encode() for j in range(n)],
        }
        if str_keys:
            d = {k.decode(): v for k, v in d.items()}
        _dump(os.path.join(folder, name), d)
        batches[name] = (data, labels)
    return batches


def write_cifar100(folder, n_train=6, n_test=3):
    os.makedirs(folder, exist_ok=True)
    out = {}
    for i, (name, n) in enumerate((("train", n_train), ("test", n_test))):
        data = _cifar_rows(n, 10 + i)
        fine = [(37 * j + 99 * i) % 100 for j in range(n)]
        _dump(
            os.path.join(folder, name),
            {
                b"filenames": [b"x.png"] * n,
                b"batch_label": b"training batch 1 of 1",
                b"fine_labels": fine,
                b"coarse_labels": [f // 5 for f in fine],
                b"data": data,
            },
        )
        out[name] = (data, fine)
    return out


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def test_cifar10_shapes_layout_and_labels(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar10(folder)
    train, test = load_cifar(folder, 10)

    assert train["input"].shape == (20, 3, 32, 32) and train["input"].dtype == torch.uint8
    assert train["target"].shape == (20,) and train["target"].dtype == torch.int64
    assert test["input"].shape == (4, 3, 32, 32) and test["target"].dtype == torch.int64

    # row layout: 1024 red, 1024 green, 1024 blue, each a row-major 32x32 plane
    data3, labels3 = batches["data_batch_3"]
    i, c, h, w = 1, 2, 5, 7
    flat = data3[i, c * 1024 + h * 32 + w]
    assert train["input"][2 * 4 + i, c, h, w].item() == flat
    assert torch.equal(train["input"][8:12].reshape(4, -1), torch.from_numpy(data3))
    assert train["target"][8:12].tolist() == labels3
    assert test["target"].tolist() == batches["test_batch"][1]


def test_cifar10_parent_folder_and_str_keys(tmp_path):
    batches = write_cifar10(tmp_path / "cifar-10-batches-py", str_keys=True)
    train, test = load_cifar(str(tmp_path), 10)
    assert train["input"].shape[0] == 20
    assert torch.equal(test["input"].reshape(4, -1), torch.from_numpy(batches["test_batch"][0]))


def test_cifar10_highest_protocol_pickle(tmp_path):
    write_cifar10(tmp_path)
    data = _cifar_rows(4, 99)
    _dump(tmp_path / "test_batch", {b"data": data, b"labels": [1, 2, 3, 4]}, protocol=5)
    _, test = load_cifar(tmp_path, 10)
    assert torch.equal(test["input"].reshape(4, -1), torch.from_numpy(data))


def py2_batch_bytes(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch as Python 2 cPickle (protocol 2) wrote the official archive: str -> BINSTRING."""
    raw = data.tobytes()
    n = data.shape[0]
    return (
        b"\x80\x02}(U\x04data"
        b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R"
        b"(K\x01" + b"M" + struct.pack("<H", n) + b"M\x00\x0c\x86"
        b"cnumpy\ndtype\nU\x02u1K\x00K\x01\x87R"
        b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb"
        b"U\x06labels](" + b"".join(b"K" + bytes([v]) for v in labels) + b"eu."
    )


def test_cifar10_python2_pickles(tmp_path):
    write_cifar10(tmp_path)
    data = _cifar_rows(4, 7)
    (tmp_path / "data_batch_4").write_bytes(py2_batch_bytes(data, [6, 9, 9, 4]))
    train, _ = load_cifar(tmp_path, 10)
    assert torch.equal(train["input"][12:16].reshape(4, -1), torch.from_numpy(data))
    assert train["target"][12:16].tolist() == [6, 9, 9, 4]
    assert train["input"][13, 1, 0, 2].item() == data[1, 1024 + 2]


def test_cifar100(tmp_path):
    out = write_cifar100(tmp_path / "cifar-100-python")
    for root in (tmp_path, tmp_path / "cifar-100-python"):
        train, test = load_cifar(root, 100)
        assert train["input"].shape == (6, 3, 32, 32) and train["input"].dtype == torch.uint8
        assert test["input"].shape == (3, 3, 32, 32)
        assert train["target"].tolist() == out["train"][1]
        assert test["target"].dtype == torch.int64
        assert test["input"][2, 1, 31, 0].item() == out["test"][0][2, 1024 + 31 * 32]


def test_cifar_bad_num_classes(tmp_path):
    with pytest.raises(ConfigError):
        load_cifar(tmp_path, 7)


def test_cifar_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="does not exist") as e:
        load_cifar(missing, 10)
    assert str(missing) in str(e.value) and "cifar-10-python.tar.gz" in str(e.value)


def test_cifar_no_batches(tmp_path):
    with pytest.raises(DataError) as e:
        load_cifar(tmp_path, 10)
    msg = str(e.value)
    assert str(tmp_path) in msg and "data_batch_1..5 and test_batch" in msg
    assert "data.path" in msg
    with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
        load_cifar(tmp_path, 100)


def test_cifar_wrong_dataset_hint(tmp_path):
    write_cifar100(tmp_path)
    with pytest.raises(DataError, match="looks like CIFAR-100"):
        load_cifar(tmp_path, 10)


def test_cifar_missing_one_batch(tmp_path):
    write_cifar10(tmp_path)
    os.remove(tmp_path / "data_batch_3")
    with pytest.raises(DataError, match="data_batch_3") as e:
        load_cifar(tmp_path, 10)
    assert str(tmp_path) in str(e.value)


def test_cifar_archive_not_extracted(tmp_path):
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"\x1f\x8b not really")
    with pytest.raises(DataError, match="extract") as e:
        load_cifar(archive, 10)
    assert str(archive) in str(e.value)


def test_cifar_truncated_pickle(tmp_path):
    write_cifar10(tmp_path)
    p = tmp_path / "data_batch_2"
    p.write_bytes(p.read_bytes()[:500])
    with pytest.raises(DataError, match="truncated or corrupt") as e:
        load_cifar(tmp_path, 10)
    assert str(p) in str(e.value)


def test_cifar_garbage_file(tmp_path):
    write_cifar10(tmp_path)
    p = tmp_path / "test_batch"
    p.write_bytes(b"<html>404 not found</html>")
    with pytest.raises(DataError) as e:
        load_cifar(tmp_path, 10)
    assert str(p) in str(e.value)


@pytest.mark.parametrize(
    "batch, fragment",
    [
        ({b"data": np.zeros((4, 3000), np.uint8), b"labels": [0] * 4}, "N x 3072"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0] * 3}, "4 integer labels"),
        ({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 10]}, "0..9"),
        ({b"data": np.full((4, 3072), 0.5), b"labels": [0] * 4}, "uint8"),
        ({b"data": np.zeros((4, 3072), np.uint8)}, "'labels'"),
        ([1, 2, 3], "holds a list"),
    ],
)
def test_cifar_bad_contents(tmp_path, batch, fragment):
    write_cifar10(tmp_path)
    p = tmp_path / "data_batch_5"
    _dump(p, batch)
    with pytest.raises(DataError, match=fragment) as e:
        load_cifar(tmp_path, 10)
    assert str(p) in str(e.value)


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())


def test_cifar_pickle_cannot_run_code(tmp_path):
    write_cifar10(tmp_path)
    p = tmp_path / "data_batch_1"
    _dump(p, {b"data": _Evil(), b"labels": []})
    with pytest.raises(DataError, match="Refusing") as e:
        load_cifar(tmp_path, 10)
    assert str(p) in str(e.value)


# --------------------------------------------------------------------------------------------
# IDX writer
# --------------------------------------------------------------------------------------------

_IDX_CODE = {"u1": 0x08, "i1": 0x09, "i2": 0x0B, "i4": 0x0C, "f4": 0x0D, "f8": 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr)
    code = _IDX_CODE[arr.dtype.kind + str(arr.dtype.itemsize)]
    header = bytes([0, 0, code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path, arr, gz=False):
    data = idx_bytes(arr)
    with open(path, "wb") as f:
        f.write(gzip.compress(data) if gz else data)


def write_mnist(folder, n_train=5, n_test=3, h=4, w=3, gz=False, dotted=False):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(n_train, dtype=np.uint8) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, h, w), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test, dtype=np.uint8) + 7) % 10,
    }
    for name, arr in arrays.items():
        fname = name.replace("-idx", ".idx") if dotted else name
        write_idx(os.path.join(folder, fname + (".gz" if gz else "")), arr, gz=gz)
    return arrays


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["u1", "i1", ">i2", ">i4", ">f4", ">f8"])
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, dtype, gz):
    arr = (np.arange(24).reshape(2, 3, 4) - 5).astype(dtype)
    p = tmp_path / "x.idx"
    write_idx(p, arr, gz=gz)
    out = read_idx(p)
    assert out.shape == (2, 3, 4) and out.dtype.kind == np.dtype(dtype).kind
    assert out.dtype.isnative and out.dtype.itemsize == np.dtype(dtype).itemsize
    np.testing.assert_array_equal(out, arr)


def test_read_idx_exact_bytes(tmp_path):
    # hand-written: int32 shape (2,), values 1 and 258, big-endian
    p = tmp_path / "hand"
    p.write_bytes(b"\x00\x00\x0c\x01" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x01\x00\x00\x01\x02")
    np.testing.assert_array_equal(read_idx(p), [1, 258])


def test_read_idx_gzip_detected_by_magic_not_name(tmp_path):
    arr = np.arange(6, dtype=np.uint8).reshape(2, 3)
    gz_no_suffix = tmp_path / "labels-idx1-ubyte"
    gz_no_suffix.write_bytes(gzip.compress(idx_bytes(arr)))
    raw_with_suffix = tmp_path / "raw.gz"
    raw_with_suffix.write_bytes(idx_bytes(arr))
    np.testing.assert_array_equal(read_idx(gz_no_suffix), arr)
    np.testing.assert_array_equal(read_idx(raw_with_suffix), arr)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"\x00\x00", "truncated"),
        (b"\x01\x00\x08\x01\x00\x00\x00\x01\x05", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x05", "bad magic"),
        (b"<!DOCTYPE html><html>", "bad magic"),
        (b"\x00\x00\x08\x00", "0 dimensions"),
        (b"\x00\x00\x08\x03\x00\x00\x00\x02", "header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x04\x01\x02", "truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x01\x01\x02", "longer than"),
        (b"\x00\x00\x0b\x01\x00\x00\x00\x02\x00\x01\x00", "truncated"),
    ],
)
def test_read_idx_corrupt(tmp_path, content, fragment):
    p = tmp_path / "bad-idx1-ubyte"
    p.write_bytes(content)
    with pytest.raises(DataError, match=fragment) as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_corrupt_gzip(tmp_path):
    p = tmp_path / "t.gz"
    p.write_bytes(gzip.compress(idx_bytes(np.zeros((50, 50), np.uint8)))[:30])
    with pytest.raises(DataError, match="gzip") as e:
        read_idx(p)
    assert str(p) in str(e.value)


def test_read_idx_missing(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        read_idx(tmp_path / "nothing")
    assert str(tmp_path / "nothing") in str(e.value)


@pytest.mark.parametrize("gz, dotted", [(False, False), (True, False), (False, True), (True, True)])
def test_load_idx(tmp_path, gz, dotted):
    arrays = write_mnist(tmp_path, gz=gz, dotted=dotted)
    train, test = load_idx(tmp_path)
    assert train["input"].shape == (5, 1, 4, 3) and train["input"].dtype == torch.uint8
    assert test["input"].shape == (3, 1, 4, 3)
    assert train["target"].dtype == torch.int64 and test["target"].dtype == torch.int64
    imgs = arrays["train-images-idx3-ubyte"]
    assert train["input"][2, 0, 3, 1].item() == imgs[2, 3, 1]
    assert torch.equal(train["input"][:, 0], torch.from_numpy(imgs))
    assert test["target"].tolist() == [7, 8, 9]


def test_load_idx_missing_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        load_idx(tmp_path / "mnist")
    assert str(tmp_path / "mnist") in str(e.value)


def test_load_idx_missing_file(tmp_path):
    write_mnist(tmp_path)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte")
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte") as e:
        load_idx(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_load_idx_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte"
    write_idx(labels, np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="5 images but .* 4 labels") as e:
        load_idx(tmp_path)
    assert str(labels) in str(e.value)


def test_load_idx_swapped_files(tmp_path):
    write_mnist(tmp_path)
    images = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(images, np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="N x H x W") as e:
        load_idx(tmp_path)
    assert str(images) in str(e.value)


def test_load_idx_bad_magic(tmp_path):
    write_mnist(tmp_path, gz=True)
    p = tmp_path / "train-images-idx3-ubyte.gz"
    p.write_bytes(gzip.compress(b"\x00\x01\x08\x03" + bytes(20)))
    with pytest.raises(DataError, match="bad magic") as e:
        load_idx(tmp_path)
    assert str(p) in str(e.value)


# --------------------------------------------------------------------------------------------
# Image folder
# --------------------------------------------------------------------------------------------


def write_image_folder(root, classes=("cat", "ant", "bee"), per_class=2, w=5, h=4):
    from PIL import Image

    for ci, cls in enumerate(classes):
        os.makedirs(root / cls, exist_ok=True)
        for j in range(per_class):
            arr = np.zeros((h, w, 3), np.uint8)
            arr[1, 3] = (10 * ci + j, 100, 200)  # pixel at row 1, column 3
            Image.fromarray(arr).save(root / cls / f"{j}.png")
    return root


def test_image_folder(tmp_path):
    root = write_image_folder(tmp_path / "imgs")
    (root / "ant" / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(root)
    assert ds.classes == ["ant", "bee", "cat"]
    assert len(ds) == 6
    assert ds.samples[0] == (str(root / "ant" / "0.png"), 0)
    assert ds.targets.dtype == torch.int64 and ds.targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert ds.input_shape == (3, 4, 5)

    item = ds[5]  # cat/1.png; "cat" was written with ci=0
    assert item["target"] == 2 and item["index"] == 5 and isinstance(item["target"], int)
    x = item["input"]
    assert x.shape == (3, 4, 5) and x.dtype == torch.float32
    assert 0.0 <= x.min().item() and x.max().item() <= 1.0
    assert torch.allclose(x[:, 1, 3], torch.tensor([1.0, 100.0, 200.0]) / 255)
    assert x[:, 0, 0].sum().item() == 0.0

    batch = torch.utils.data.default_collate([ds[i] for i in range(len(ds))])
    assert batch["input"].shape == (6, 3, 4, 5)


def test_image_folder_resize_and_grayscale(tmp_path):
    from PIL import Image

    root = write_image_folder(tmp_path)
    Image.fromarray(np.full((7, 9), 128, np.uint8), mode="L").save(root / "bee" / "gray.png")
    ds = ImageFolderDataset(root, image_size=8)
    assert ds.input_shape == (3, 8, 8)
    assert all(ds[i]["input"].shape == (3, 8, 8) for i in range(len(ds)))
    gray = ds.samples.index((str(root / "bee" / "gray.png"), 1))
    assert torch.allclose(ds[gray]["input"], torch.full((3, 8, 8), 128 / 255))
    assert ImageFolderDataset(root, image_size=(6, 2)).input_shape == (3, 6, 2)
    with pytest.raises(ConfigError):
        ImageFolderDataset(root, image_size=(0, 3))


def test_image_folder_missing_root(tmp_path):
    with pytest.raises(DataError, match="does not exist") as e:
        ImageFolderDataset(tmp_path / "nope")
    assert str(tmp_path / "nope") in str(e.value)


def test_image_folder_no_class_folders(tmp_path):
    (tmp_path / "loose.png").write_bytes(b"")
    with pytest.raises(DataError, match="no class sub-folders") as e:
        ImageFolderDataset(tmp_path)
    assert str(tmp_path) in str(e.value)


def test_image_folder_empty_class(tmp_path):
    root = write_image_folder(tmp_path)
    (root / "dog").mkdir()
    (root / "dog" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="holds no images") as e:
        ImageFolderDataset(root)
    assert str(root / "dog") in str(e.value)


def test_image_folder_unreadable_image(tmp_path):
    root = write_image_folder(tmp_path)
    bad = root / "bee" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    ds = ImageFolderDataset(root)
    i = ds.samples.index((str(bad), 1))
    with pytest.raises(DataError, match="Cannot read image") as e:
        ds[i]
    assert str(bad) in str(e.value)


def test_image_folder_walks_a_symlink_loop_once_and_keeps_each_file_once(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=3)
    (root / "ant" / "loop").symlink_to(root / "ant")  # ant/loop/loop/... would never end
    (root / "ant" / "again.png").symlink_to(root / "ant" / "0.png")  # the same file twice
    (root / "cat" / "copy.png").write_bytes((root / "cat" / "1.png").read_bytes())  # a copy
    ds = ImageFolderDataset(root)
    assert len(ds) == 9 and ds.duplicates == 2
    assert len({os.path.realpath(p) for p, _ in ds.samples}) == 9
