"""Per-sample fields for any dataset from config: clean subset, hidden labels, label noise,
privileged / paired views (on tensors and on streamed data alike)."""

import pytest
import torch

from joryu.data import TensorData, as_source
from joryu.data.examples import Blobs
from joryu.data.fields import apply_fields
from joryu.data.imperfect import IGNORE_INDEX
from joryu.data.sources import StreamLoader
from joryu.errors import ConfigError


def tensors(n=200):
    b = Blobs(n, dim=4, classes=4)
    return TensorData({"input": b.x, "target": b.y}, 4, "blobs")


@pytest.mark.parametrize("kind", ["tensor", "stream"])
def test_clean_noise_and_hidden_labels(kind):
    data = tensors() if kind == "tensor" else as_source(Blobs(200, dim=4, classes=4))
    true = data.targets.clone()
    out = apply_fields(data, {"clean": {"per_class": 5, "seed": 1},
                              "noise": {"kind": "symmetric", "rate": 0.5, "seed": 2}}, 4)
    clean = out.tensors["clean"] if kind == "tensor" else out.fields["clean"]
    assert int(clean.sum()) == 20
    assert torch.equal(out.targets[clean], true[clean])  # verified rows keep their labels
    flipped = float((out.targets[~clean] != true[~clean]).float().mean())
    assert 0.35 < flipped < 0.65  # about half of the others moved
    again = apply_fields(data, {"clean": {"per_class": 5, "seed": 1},
                                "noise": {"kind": "symmetric", "rate": 0.5, "seed": 2}}, 4)
    assert torch.equal(again.targets, out.targets)  # seeded
    hidden = apply_fields(data, {"labels_per_class": {"per_class": 3, "seed": 0}}, 4)
    lab = hidden.tensors["labeled"] if kind == "tensor" else hidden.fields["labeled"]
    assert int(lab.sum()) == 12 and bool((hidden.targets[~lab] == IGNORE_INDEX).all())
    if kind == "stream":  # the fields reach the batches
        b = next(iter(StreamLoader(hidden, 50, shuffle=True).iterate(0)))
        assert torch.equal(b["labeled"], lab[b["index"]]) and torch.equal(b["target"], hidden.targets[b["index"]])


def test_noise_matrix_pairflip_and_index_file(tmp_path):
    data = tensors()
    m = torch.eye(4)[[1, 2, 3, 0]].tolist()  # every label moves to the next class
    out = apply_fields(data, {"noise": {"matrix": m}}, 4)
    assert torch.equal(out.targets, (data.targets + 1) % 4)
    f = tmp_path / "clean.txt"
    f.write_text("0\n5\n7\n")
    out = apply_fields(data, {"clean": {"index_file": str(f)}, "noise": {"kind": "pairflip", "rate": 1.0}}, 4)
    assert out.tensors["clean"].nonzero().flatten().tolist() == [0, 5, 7]
    keep = out.tensors["clean"]
    assert torch.equal(out.targets[~keep], (data.targets[~keep] + 1) % 4)


def test_privileged_view_by_transform_and_paired_input_from_a_second_dataset():
    x = torch.rand(30, 3, 8, 8)
    data = TensorData({"input": x, "target": torch.arange(30) % 3}, 3)
    out = apply_fields(data, {"privileged": {"transform": [{"resize": [4, 4]}]},
                              "input_b": {"factory": "tests.test_data_fields:second_modality"}}, 3)
    assert out.tensors["privileged"].shape == (30, 3, 4, 4)
    torch.testing.assert_close(out.tensors["input_b"], second_modality()[0])
    s = as_source(Blobs(40, dim=4, classes=4))
    sv = apply_fields(s, {"privileged": {"transform": [{"normalize": {"mean": [0.0], "std": [2.0]}}]}}, 4)
    sample = sv.sample(3, train=True)
    torch.testing.assert_close(sample["privileged"], sample["input"] / 2)


def second_modality():
    g = torch.Generator().manual_seed(9)
    return torch.rand(30, 5, generator=g), torch.arange(30) % 3


@pytest.mark.parametrize("spec, needle", [
    ({"dirty": {}}, "unknown field 'dirty'"),
    ({"clean": {"fraction": 0.1, "per_class": 2}}, "exactly one of"),
    ({"noise": {"matrix": [[0.5, 0.5], [0.5, 0.5]]}}, "noise matrix is 2 x 2"),
    ({"clean": {"index_file": "/nonexistent.txt"}}, "not found"),
    ({"privileged": {"factory": "tests.test_data_fields:second_modality"}}, "aligned by index"),
])
def test_bad_field_specs_are_config_errors(spec, needle):
    with pytest.raises(ConfigError, match=needle):
        apply_fields(tensors(), spec, 4)


def test_fields_through_a_config():
    from joryu.config import build_config
    from joryu.run.experiment import Experiment

    raw = {"name": "f", "baseline": False, "method": {"name": "noisy_label_distillation"},
           "data": {"name": "joryu.data.examples:blobs", "kwargs": {"kind": "tensors", "n": 300, "n_test": 100},
                    "fields": {"clean": {"per_class": 10}, "noise": {"kind": "pairflip", "rate": 0.3}}},
           "teacher": {"name": "mlp", "kwargs": {"hidden": [16]}, "train": {"epochs": 2, "batch_size": 32}},
           "student": {"name": "mlp", "kwargs": {"hidden": [8]}},
           "train": {"epochs": 2, "batch_size": 32, "device": "cpu"}}
    exp = Experiment(build_config(raw), progress=False, write=False)
    s = exp.run()
    assert "student + noisy_label_distillation" in s["rows"]
