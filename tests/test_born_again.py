"""Born-Again Networks: the invariants of docs/methods/born_again.md."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from joryu.config import TrainConfig
from joryu.losses import confidence_weights, cwtm_loss, dkpp_target, ensemble_logits
from joryu.methods import get_method
from joryu.methods.born_again import born_again_loss
from joryu.run.stages import run_stages
from joryu.teachers.base import weights_fingerprint


def test_cwtm_with_equal_confidences_is_cross_entropy():
    z = torch.randn(12, 4)
    y = torch.randint(0, 4, (12,))
    t = torch.zeros(12, 4)
    t[torch.arange(12), torch.randint(0, 4, (12,))] = 3.0  # every sample: the same max probability
    w = confidence_weights(t)
    assert torch.allclose(w, torch.full((12,), 1 / 12))
    assert torch.allclose(cwtm_loss(z, t, y), F.cross_entropy(z, y), atol=1e-6)


def test_cwtm_weights_follow_teacher_confidence_and_sum_to_one():
    t = torch.tensor([[5.0, 0, 0], [1.0, 0, 0], [0.0, 0, 0]])
    w = confidence_weights(t)
    assert float(w.sum()) == pytest.approx(1.0) and w[0] > w[1] > w[2]


@pytest.mark.parametrize("seed", range(5))
def test_dkpp_target_keeps_argmax_multiset_and_sum(seed):
    g = torch.Generator().manual_seed(seed)
    p = F.softmax(3 * torch.randn(64, 10, generator=g), -1)
    q = dkpp_target(p, g)
    assert torch.equal(q.argmax(-1), p.argmax(-1))
    assert torch.equal(q.max(-1).values, p.max(-1).values)
    assert torch.equal(q.sort(-1).values, p.sort(-1).values)  # the same values, moved between classes
    assert torch.allclose(q.sum(-1), torch.ones(64))
    moved = (q != p).any(-1).float().mean()
    assert moved > 0.9  # classes are permuted (not samples: each row keeps its own values)


def test_bane_is_the_mean_of_softmaxes():
    a, b = torch.randn(2, 5, 3).unbind(0)
    assert torch.allclose(ensemble_logits([a, b]).exp(), (F.softmax(a, -1) + F.softmax(b, -1)) / 2, atol=1e-6)


def test_generation_one_is_cross_entropy_and_variants_differ():
    z, t, y = torch.randn(8, 4), torch.randn(8, 4), torch.randint(0, 4, (8,))
    assert torch.equal(born_again_loss("kd", z, None, y)["loss"], F.cross_entropy(z, y))
    vals = {v: float(born_again_loss(v, z, t, y)["loss"]) for v in ("kd", "kd_labels", "cwtm")}
    assert vals["kd_labels"] == pytest.approx(vals["kd"] + float(F.cross_entropy(z, y)), rel=1e-5)
    assert born_again_loss("kd", t.clone(), t, y)["loss"].abs() < 1e-6  # KD to itself is zero


def _net():
    return nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))


@pytest.mark.parametrize("variant", ["kd", "dkpp"])
def test_generations_chain(tiny_data, variant):
    torch.manual_seed(0)
    student = _net()
    init = weights_fingerprint(student)
    m = get_method("born_again", {"generations": 3, "variant": variant})
    cfg = TrainConfig(epochs=6, lr=0.02, batch_size=64)
    out, res = run_stages(m, student=student, teacher=None, train=tiny_data, val=tiny_data, train_cfg=cfg, run_dir=None, seed=0, augment=None, progress=False)
    assert list(res) == ["gen1", "gen2", "gen3"]
    d1, d2, d3 = (res[g].distiller for g in ("gen1", "gen2", "gen3"))
    assert d1.student is student and out is d3.student and out is not student
    # generation k's teacher is generation k-1's final weights, frozen and unchanged by training gen k
    fp1, fp2 = weights_fingerprint(d1.student), weights_fingerprint(d2.student)
    assert d2.teacher.fingerprint() == fp1 and d3.teacher.fingerprint() == fp2
    assert not d1.student.training and not any(p.requires_grad for p in d1.student.parameters())
    # fresh initialisations: every generation starts elsewhere (the built copies are seeded, not copies)
    assert len({init, fp1, fp2, weights_fingerprint(out)}) == 4
    # the optimizer of a generation sees only that generation's parameters
    opt_params = {id(p) for p in d3.trainable_parameters()}
    assert opt_params == {id(p) for p in d3.student.parameters()}
    # the teacher is in eval mode: dropout off, repeated calls agree
    b = {"input": tiny_data.tensors["input"][:16], "index": torch.arange(16), "data_id": "x", "aug_id": 1}
    assert torch.equal(d3.teacher(b).logits, d3.teacher(b).logits)
    val = res["gen3"].val
    assert {"val/student/acc", "val/gen1/acc", "val/gen2/acc", "val/gen3/acc", "val/bane/acc"} <= set(val)
    assert val["val/gen3/acc"] == val["val/student/acc"] and val["val/gen1/acc"] > 70
    assert val["val/gen2/acc"] > 60


def test_resume_rebuilds_the_same_generations(tiny_data, tmp_path):
    cfg = TrainConfig(epochs=3, lr=0.01, batch_size=64)
    m = get_method("born_again", {"generations": 2})
    torch.manual_seed(0)
    a, _ = run_stages(m, student=_net(), teacher=None, train=tiny_data, val=None, train_cfg=cfg, run_dir=tmp_path / "a", seed=0, augment=None, progress=False)
    torch.manual_seed(0)
    (tmp_path / "b").mkdir()
    b, _ = run_stages(m, student=_net(), teacher=None, train=tiny_data, val=None, train_cfg=cfg, run_dir=tmp_path / "b", seed=0, augment=None, progress=False)
    assert weights_fingerprint(a) == weights_fingerprint(b)
    torch.manual_seed(0)
    c, _ = run_stages(m, student=_net(), teacher=None, train=tiny_data, val=None, train_cfg=cfg, run_dir=tmp_path / "a", seed=0, augment=None, progress=False, resume=True)
    assert weights_fingerprint(c) == weights_fingerprint(a)


def test_born_again_reproduction_quick(tmp_path):
    import json

    from joryu.reproduce import run_reproduction

    md = run_reproduction("born_again", quick=True, out_dir=tmp_path, progress=False)
    data = json.loads(md.with_suffix(".json").read_text())
    assert len(data["claims"]) == 2 and all(c["verdict"] in ("reproduced", "not reproduced") for c in data["claims"])
    assert "QUICK smoke run" in md.read_text()


def test_born_again_mnist100_reproduction_quick(tmp_path):
    import json

    from joryu.reproduce import run_reproduction

    md = run_reproduction("born_again_mnist100", seeds=1, quick=True, out_dir=tmp_path, progress=False)
    data = json.loads(md.with_suffix(".json").read_text())
    assert [c["verdict"] for c in data["claims"]] == ["not reproduced"] * 2  # one seed never reproduces
    arms = data["tables"][0]["rows"]
    g1, g2 = arms["generation 1 (labels only)"], arms["generation 2 (BAN, KD only from generation 1, T = 1)"]
    # quick: 1500 training numbers, one epoch of batch 128 -> 12 updates per generation; generation 2 asks
    # generation 1 about every number it sees, generation 1 asks no teacher
    assert g1["optimizer updates"] == g2["optimizer updates"] == [12.0]
    assert g1["teacher forward passes"] == [0.0] and g2["teacher forward passes"] == [1500.0]
    assert "BANE of generations 1..3 (mean softmax)" in arms and "mnist100" in md.read_text()
