"""Image pipelines: transforms by name or import path, mixed sizes, bad files, per-model views."""

import json

import numpy as np
import pytest
import torch
import yaml

from joryu.data import build_transform
from joryu.data.files import ImageFolderDataset
from joryu.data.sources import StreamLoader, as_source
from joryu.errors import ConfigError, DataError


def gen(seed=0):
    import random

    return random.Random(seed)


def test_named_transforms_shapes_and_invariants():
    x = torch.rand(3, 20, 30, generator=torch.Generator().manual_seed(0))
    assert build_transform([{"resize": 10}])(x).shape == (3, 10, 15)  # shorter side, aspect kept
    assert build_transform([{"resize": [8, 9]}])(x).shape == (3, 8, 9)
    assert build_transform([{"center_crop": 12}])(x).shape == (3, 12, 12)
    torch.testing.assert_close(build_transform([{"center_crop": [20, 30]}])(x), x)
    rrc = build_transform([{"random_resized_crop": {"size": 16, "scale": [0.3, 1.0]}}])
    assert rrc.random and rrc(x, gen(1)).shape == (3, 16, 16)
    torch.testing.assert_close(rrc(x, gen(1)), rrc(x, gen(1)))  # the same draw, the same crop
    flip = build_transform([{"hflip": 1.0}])
    torch.testing.assert_close(flip(x, gen()), x.flip(-1))
    cj = build_transform([{"color_jitter": {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4}}])
    y = cj(x, gen(2))
    assert y.shape == x.shape and float(y.min()) >= 0 and float(y.max()) <= 1
    norm = build_transform([{"normalize": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}])
    torch.testing.assert_close(norm(x), (x - 0.5) / 0.25)
    assert not norm.random and norm.deterministic() is not None
    pipe = build_transform(["hflip", {"resize": [8, 8]}, "to_tensor"])
    assert [type(s).__name__ for s in pipe.deterministic().steps] == ["Resize", "ToTensor"]


def test_pil_and_uint8_inputs_become_float_tensors():
    from PIL import Image

    arr = (np.arange(4 * 5 * 3) % 255).astype(np.uint8).reshape(4, 5, 3)
    t = build_transform(["to_tensor"])(Image.fromarray(arr))
    assert t.shape == (3, 4, 5) and t.dtype == torch.float32
    torch.testing.assert_close(t, torch.from_numpy(arr).permute(2, 0, 1).float() / 255)


def test_transform_by_import_path_and_bad_names():
    x = torch.rand(3, 6, 6, generator=torch.Generator().manual_seed(0))
    t = build_transform([{"joryu.data.transforms:HFlip": {"p": 1.0}}])
    torch.testing.assert_close(t(x, gen()), x.flip(-1))
    with pytest.raises(ConfigError, match="unknown transform 'hflp' .*did you mean hflip"):
        build_transform(["hflp"])
    with pytest.raises(ConfigError, match="cannot be imported"):
        build_transform(["nowhere.module:Thing"])
    with pytest.raises(ConfigError, match="rejected its arguments"):
        build_transform([{"resize": {"width": 3}}])


def write_images(root, sizes=((10, 14), (16, 12), (9, 9)), per_class=6, bad=None):
    from PIL import Image

    g = np.random.default_rng(0)
    for c in range(3):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[(c + i) % len(sizes)]
            arr = np.clip(g.normal(60 + 70 * c, 20, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / f"c{c}" / f"{i}.png")
    if bad:
        (root / "c1" / bad).write_bytes(b"not an image at all")
    return root


def test_mixed_sizes_without_resize_name_a_file_and_the_fix(tmp_path):
    root = write_images(tmp_path / "imgs")
    s = as_source(ImageFolderDataset(root))
    with pytest.raises(DataError, match=r"image .*\.png has 'input' of shape .* add a resize") as e:
        list(StreamLoader(s, 6, shuffle=False).iterate(0))
    assert "\n" not in str(e.value)
    ok = as_source(ImageFolderDataset(root), transform=build_transform([{"resize": [8, 8]}]))
    assert all(b["input"].shape[1:] == (3, 8, 8) for b in StreamLoader(ok, 6, shuffle=True).iterate(0))


def test_undecodable_file_is_named_even_from_a_worker(tmp_path):
    root = write_images(tmp_path / "imgs", bad="broken.png")
    s = as_source(ImageFolderDataset(root), transform=build_transform([{"resize": [8, 8]}]),
                  loader={"num_workers": 2})
    with pytest.raises(DataError, match=r"Cannot read image .*broken\.png") as e:
        list(StreamLoader(s, 4, shuffle=True).iterate(0))
    assert "\n" not in str(e.value)


def test_random_transforms_are_seeded_per_sample_not_per_worker(tmp_path):
    root = write_images(tmp_path / "imgs", sizes=((12, 12),))
    tf = build_transform([{"random_resized_crop": {"size": 8}}, "hflip"])
    batches = {}
    for workers in (0, 2):
        s = as_source(ImageFolderDataset(root), transform=tf, loader={"num_workers": workers})
        batches[workers] = list(StreamLoader(s, 5, shuffle=True, seed=3).iterate(2))
    for a, b in zip(batches[0], batches[2]):
        assert torch.equal(a["index"], b["index"])
        torch.testing.assert_close(a["input"], b["input"])
    other = list(StreamLoader(as_source(ImageFolderDataset(root), transform=tf), 5, shuffle=True,
                              seed=3).iterate(3))
    assert not torch.equal(other[0]["input"], batches[0][0]["input"])  # a new epoch, new draws


def image_config(tmp_path, root, teacher_key="input_teacher", **data):
    raw = {
        "name": "imgs", "output_dir": str(tmp_path / "runs"), "baseline": False,
        "data": {"name": "image_folder", "path": str(root), "kwargs": {"test_fraction": 0.25},
                 "val_fraction": 0.2,
                 "transform": [{"resize": [12, 12]}, "hflip",
                               {"normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}],
                 "eval_transform": [{"resize": [12, 12]},
                                    {"normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}],
                 "views": {"input_teacher": {
                     "train": [{"random_resized_crop": {"size": 16, "scale": [0.6, 1]}},
                               {"normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}],
                     "eval": [{"resize": [16, 16]}, {"normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}]}},
                 "loader": {"num_workers": 2, "persistent_workers": True}, **data},
        "teacher": {"name": "lenet5", "input_key": teacher_key,
                    "train": {"epochs": 2, "batch_size": 8, "lr": 0.003}},
        "student": {"name": "mlp", "kwargs": {"hidden": [16]}},
        "train": {"epochs": 2, "batch_size": 8, "lr": 0.003, "threads": 1},
    }
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_image_folder_with_transforms_views_and_workers_through_the_cli(tmp_path, capsys):
    """Mixed sizes go through resize; the teacher reads its own 16x16 view, the student 12x12."""
    from joryu.cli import main

    root = write_images(tmp_path / "imgs")
    code = main(["run", image_config(tmp_path, root), "--quiet"])
    out = capsys.readouterr()
    assert code == 0, out.err[-2000:]
    rows = json.loads((tmp_path / "runs" / "imgs" / "results.json").read_text())["rows"]
    assert set(rows) == {"teacher", "student + kd"}
    assert all(0 <= r["test_acc"] <= 100 for r in rows.values())


def test_image_folder_mixed_sizes_without_resize_through_the_cli(tmp_path, capsys):
    from joryu.cli import main

    root = write_images(tmp_path / "imgs")
    code = main(["run", image_config(tmp_path, root, "input", transform=["hflip"], eval_transform=None, views={}),
                 "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "add a resize" in err and ".png" in err and len(err.splitlines()) == 1


def test_distill_api_on_an_image_folder_with_transforms_and_a_validation_folder(tmp_path):
    import joryu
    from joryu.models import create

    train = ImageFolderDataset(write_images(tmp_path / "train"))
    val = ImageFolderDataset(write_images(tmp_path / "val", per_class=3))
    norm = {"normalize": {"mean": [0.5] * 3, "std": [0.25] * 3}}
    student, m = joryu.distill(
        create("lenet5", num_classes=3, input_shape=(3, 12, 12)), create("mlp", num_classes=3,
                                                                         input_shape=(3, 12, 12)),
        train, "kd", val_data=val, epochs=2, batch_size=6, progress=False, device="cpu",
        transform=[{"random_resized_crop": {"size": 12, "scale": [0.5, 1]}}, "hflip", norm],
        eval_transform=[{"resize": [12, 12]}, norm])
    assert 0 <= m["distill"]["val"]["val/acc"] <= 100
    with pytest.raises(ConfigError, match="apply to streamed data"):
        joryu.distill(create("mlp", num_classes=3, input_shape=(4,)), create("mlp", num_classes=3,
                                                                             input_shape=(4,)),
                      (torch.zeros(8, 4), torch.arange(8) % 3), "kd", transform=["hflip"], progress=False)


def test_counter_based_draws_are_deterministic_and_uniform():
    from joryu.data.transforms import Draws

    a, b = Draws(7), Draws(7)
    xs = [a.random() for _ in range(20000)]
    assert xs[:5] == [b.random() for _ in range(5)]
    assert abs(sum(xs) / len(xs) - 0.5) < 0.01 and 0 <= min(xs) and max(xs) < 1
    counts = [0] * 4
    for _ in range(4000):
        counts[a.randint(0, 3)] += 1
    assert min(counts) > 850  # each of 4 values about 1000 times
    assert sorted(Draws(3).sample(range(5), 5)) == list(range(5))
    assert Draws(1).random() != Draws(2).random()
