"""A timm teacher and student on an image folder with torchvision.transforms.v2 transforms.

Runs where torchvision and timm import (the vision environment: ``bash tests/vision/run.sh``);
skips cleanly elsewhere."""

import json

import numpy as np
import pytest
import yaml

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

V2 = "torchvision.transforms.v2"
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]  # the ImageNet statistics timm models use


def write_images(root, per_class=16):
    """Three colour classes of mixed sizes (PNG), so the pipeline's resize is needed."""
    from PIL import Image

    g = np.random.default_rng(0)
    sizes = [(40, 52), (36, 36), (48, 40)]
    for c in range(3):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            h, w = sizes[i % 3]
            base = np.zeros(3)
            base[c] = 170
            arr = np.clip(g.normal(base + 40, 35, (h, w, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / f"class{c}" / f"{i}.png")
    return root


def config(tmp_path, root):
    norm = {f"{V2}:Normalize": {"mean": MEAN, "std": STD}}
    raw = {
        "name": "timm-pair", "output_dir": str(tmp_path / "runs"), "seed": 0,
        "data": {
            "name": "image_folder", "path": str(root), "kwargs": {"test_fraction": 0.25},
            "val_fraction": 0.15,
            # the student: 32x32 crops; the teacher: its own 48x48 view of the same sample
            "transform": [{f"{V2}:RandomResizedCrop": {"size": [32, 32], "scale": [0.6, 1.0],
                                                        "antialias": True}},
                          {f"{V2}:RandomHorizontalFlip": {"p": 0.5}}, norm],
            "eval_transform": [{f"{V2}:Resize": {"size": [32, 32], "antialias": True}}, norm],
            "views": {"input_teacher": {
                "train": [{f"{V2}:RandomResizedCrop": {"size": [48, 48], "scale": [0.6, 1.0],
                                                        "antialias": True}}, norm],
                "eval": [{f"{V2}:Resize": {"size": [48, 48], "antialias": True}}, norm]}},
            "loader": {"num_workers": 2, "persistent_workers": True},
        },
        "teacher": {"name": "timm:create_model", "input_key": "input_teacher",
                    "kwargs": {"model_name": "resnet10t", "pretrained": False, "num_classes": 3},
                    "train": {"epochs": 3, "batch_size": 12, "optimizer": "adam", "lr": 0.002}},
        "student": {"name": "timm:create_model",
                    "kwargs": {"model_name": "test_resnet", "pretrained": False,
                               "num_classes": 3}},
        "method": {"name": "kd", "params": {"temperature": 4.0, "alpha": 0.5}},
        "train": {"epochs": 4, "batch_size": 12, "optimizer": "adam", "lr": 0.002, "device": "cpu"},
        "baseline": True,
    }
    path = tmp_path / "timm.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def test_timm_teacher_and_student_on_an_image_folder_with_v2_transforms(tmp_path, capsys):
    from joryu.cli import main

    root = write_images(tmp_path / "imgs")
    code = main(["run", config(tmp_path, root)])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    print(out.out[-1500:])
    rows = json.loads((tmp_path / "runs" / "timm-pair" / "results.json").read_text())["rows"]
    assert set(rows) == {"teacher", "student alone", "student + kd"}
    for name, r in rows.items():
        print(f"VISION {name}: test_acc={r['test_acc']:.2f} params={r['params']}")
    assert rows["teacher"]["test_acc"] > 50 and rows["student + kd"]["test_acc"] > 50  # chance: 33
