"""Deep Mutual Learning: the invariants of docs/methods/dml.md."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from joryu.losses import dml_loss, mutual_kl
from joryu.methods import get_method
from joryu.methods.dml import DMLDistiller, build_cohort
from joryu.models.reinit import fresh_copy


class FakeCtx:
    """The two calls a manual-optimization Distiller makes, without the engine."""

    def __init__(self, optimizers):
        self.optimizers = optimizers

    def backward(self, loss):
        loss.backward()

    def step(self, opt):
        opt.step()
        opt.zero_grad(set_to_none=True)


def net(seed, d=8, c=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, c))


def batch(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"input": torch.randn(n, 8, generator=g), "target": torch.randint(0, 3, (n,), generator=g)}


def cohort(nets, update="sequential", lr=0.5):
    d = DMLDistiller(nets, update=update, temperature=1.0)
    opts = d.configure_optimizers(lambda ps: torch.optim.SGD(ps, lr=lr))
    d.ctx = FakeCtx(opts)
    return d


def test_kl_is_zero_for_identical_outputs():
    z = torch.randn(16, 5)
    assert float(mutual_kl(z, [z.clone(), z.clone()])) == pytest.approx(0.0, abs=1e-6)
    loss, ce, kl = dml_loss(z, [z.clone()], torch.randint(0, 5, (16,)))
    assert float(kl) == pytest.approx(0.0, abs=1e-6) and torch.allclose(loss, ce)


def test_k1_reduces_to_cross_entropy():
    z = torch.randn(16, 5)
    y = torch.randint(0, 5, (16,))
    loss, ce, kl = dml_loss(z, [], y)
    assert torch.equal(loss, F.cross_entropy(z, y)) and float(kl) == 0.0


def test_mutual_kl_is_the_mean_over_peers_of_kl_peer_to_self():
    z, a, b = torch.randn(3, 10, 4).unbind(0)
    expect = sum((F.softmax(p, -1) * (F.log_softmax(p, -1) - F.log_softmax(z, -1))).sum(-1).mean() for p in (a, b)) / 2
    assert torch.allclose(mutual_kl(z, [a, b]), expect, atol=1e-6)


def test_no_gradient_from_one_networks_loss_reaches_its_peer():
    n1, n2 = net(0), net(1)
    b = batch()
    z1, z2 = n1(b["input"]), n2(b["input"])
    loss, _, _ = dml_loss(z1, [z2], b["target"])  # z2 passed without detaching
    loss.backward()
    assert all(p.grad is None for p in n2.parameters())
    assert all(p.grad is not None for p in n1.parameters())


def test_sequential_target_is_the_post_update_output_of_network_1():
    n1, n2 = net(0), net(1)
    before = copy.deepcopy(n1)
    d = cohort([n1, n2], "sequential")
    b = batch()
    d.training_step(b)
    with torch.no_grad():
        post = n1(b["input"])
        pre = before(b["input"])
    target_of_2 = d.last_targets[1][0]
    assert torch.allclose(target_of_2, post, atol=1e-6)
    assert not torch.allclose(target_of_2, pre, atol=1e-3)  # the update did move network 1


def test_simultaneous_targets_are_the_pre_update_outputs():
    n1, n2 = net(0), net(1)
    before = copy.deepcopy(n1)
    d = cohort([n1, n2], "simultaneous")
    b = batch()
    d.training_step(b)
    with torch.no_grad():
        assert torch.allclose(d.last_targets[1][0], before(b["input"]), atol=1e-6)


def test_sequential_step_equals_manual_algorithm_1():
    """One step of the Distiller equals Alg. 1 written out by hand (K = 3)."""
    nets = [net(s) for s in range(3)]
    ref = copy.deepcopy(nets)
    b = batch()
    cohort(nets, "sequential", lr=0.3).training_step(b)
    opts = [torch.optim.SGD(m.parameters(), lr=0.3) for m in ref]
    for k in range(3):
        with torch.no_grad():
            peers = [ref[j](b["input"]) for j in range(3) if j != k]
        loss, _, _ = dml_loss(ref[k](b["input"]), peers, b["target"])
        opts[k].zero_grad()
        loss.backward()
        opts[k].step()
    for a, r in zip(nets, ref):
        for p, q in zip(a.parameters(), r.parameters()):
            assert torch.allclose(p, q, atol=1e-6)


def test_cohort_of_different_architectures_trains_and_reports_every_member(tiny_data):
    from joryu.config import TrainConfig
    from joryu.run.stages import run_stages

    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    m = get_method("dml", {"peers": [{"name": "mlp", "kwargs": {"hidden": [16]}}, {"name": "mlp"}]})
    cfg = TrainConfig(epochs=15, lr=0.01, batch_size=32)
    out, res = run_stages(m, student=student, teacher=None, train=tiny_data, val=tiny_data, train_cfg=cfg, run_dir=None, seed=0, augment=None, progress=False)
    assert out is student
    val = res["mutual"].val
    assert {"val/net1/acc", "val/net2/acc", "val/net3/acc", "val/ensemble/acc"} <= set(val)
    assert val["val/acc"] == val["val/net1/acc"] and val["val/net1/acc"] > 70
    d = res["mutual"].distiller
    assert len(d.cohort) == 3 and d.cohort[1].fc.in_features == 16  # mlp hidden (16,)


def test_default_peers_are_fresh_copies():
    s = net(0)
    nets = build_cohort(s, get_method("dml", {"cohort_size": 3}).params, 3, (8,))
    assert nets[0] is s and len(nets) == 3
    w = [n[0].weight for n in nets]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert torch.equal(fresh_copy(s, 5)[0].weight, fresh_copy(s, 5)[0].weight)  # seeded


def test_dml_reproduction_quick(tmp_path):
    import json

    from joryu.reproduce import run_reproduction

    md = run_reproduction("dml", quick=True, out_dir=tmp_path, progress=False)
    data = json.loads(md.with_suffix(".json").read_text())
    assert len(data["claims"]) == 1 and "QUICK smoke run" in md.read_text()
    assert "independent: the two networks trained alone" in md.read_text() and "network 1 (%)" in md.read_text()
