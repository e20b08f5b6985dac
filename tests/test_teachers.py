import pytest
import torch
from torch import nn

from joryu.data import Augment, TensorLoader
from joryu.distiller import Distiller
from joryu.methods.kd import KDDistiller
from joryu.teachers import CachedTeacher, EnsembleTeacher, FrozenTeacher


def make_net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def test_frozen_teacher_is_eval_no_grad_and_invisible_to_the_optimizer(tiny_data):
    teacher_net, student = make_net(1), make_net(2)
    teacher_net.train()
    t = FrozenTeacher(teacher_net)
    d = KDDistiller(student, t, 4.0, 0.9, divergence="forward_kl", beta=0.5)
    # teacher parameters are not registered with the Distiller
    ids = {id(p) for p in d.parameters()}
    assert not any(id(p) in ids for p in teacher_net.parameters())
    assert "teacher" not in "".join(d.state_dict().keys())
    batch = next(iter(TensorLoader(tiny_data, 32)))
    out1, out2 = t(batch).logits, t(batch).logits
    assert not teacher_net.training
    torch.testing.assert_close(out1, out2)  # dropout off: deterministic
    assert not out1.requires_grad
    before = [p.clone() for p in teacher_net.parameters()]
    opt = torch.optim.SGD(d.parameters(), lr=1.0)
    d.training_step(batch)["loss"].backward()
    opt.step()
    assert all(p.grad is None for p in teacher_net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher_net.parameters()))


def test_ensemble_means():
    a, b = make_net(1), make_net(2)
    batch = {"input": torch.randn(5, 8)}
    la, lb = a.eval()(batch["input"]), b.eval()(batch["input"])
    e = EnsembleTeacher([a, b], mode="logits")(batch).logits
    torch.testing.assert_close(e, (la + lb) / 2)
    p = EnsembleTeacher([a, b], mode="probs")(batch).logits.softmax(-1)
    torch.testing.assert_close(p, (la.softmax(-1) + lb.softmax(-1)) / 2)


def test_cache_reuses_outputs_and_equals_uncached(tiny_data):
    net = make_net(3)
    calls = {"n": 0}
    net.register_forward_hook(lambda *a: calls.__setitem__("n", calls["n"] + 1))
    cached = CachedTeacher(FrozenTeacher(net), len(tiny_data))
    plain = FrozenTeacher(make_net(3))
    loader = TensorLoader(tiny_data, 64, shuffle=True, seed=1)
    for epoch in range(3):
        for batch in loader.iterate(epoch):
            torch.testing.assert_close(cached(batch).logits, plain(batch).logits)
    n_batches = len(loader)
    assert calls["n"] == n_batches  # only the first epoch ran the teacher
    assert cached.misses == len(tiny_data)
    assert cached.hits == 2 * len(tiny_data)


def test_cache_invalidated_by_teacher_change(tiny_data):
    net = make_net(4)
    cached = CachedTeacher(FrozenTeacher(net), len(tiny_data))
    loader = TensorLoader(tiny_data, 240, shuffle=False)
    batch = next(iter(loader))
    first = cached(batch).logits.clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    second = cached(batch).logits
    assert not torch.allclose(first, second)
    torch.testing.assert_close(second, net(batch["input"]))
    assert cached.misses == 2 * len(tiny_data)


def test_cache_invalidated_by_data_change_and_bypassed_by_augmentation(tiny_data):
    net = make_net(5)
    cached = CachedTeacher(FrozenTeacher(net), len(tiny_data))
    a = next(iter(TensorLoader(tiny_data, 240, shuffle=False)))
    cached(a)
    other = tiny_data.with_tensors(input=tiny_data.tensors["input"] * 2)
    b = next(iter(TensorLoader(other, 240, shuffle=False)))
    torch.testing.assert_close(cached(b).logits, net.eval()(b["input"]))  # not the stale outputs
    aug_batch = next(TensorLoader(tiny_data, 240, shuffle=True, augment=Augment(noise=0.5)).iterate(0))
    assert aug_batch["aug_id"] is not None
    torch.testing.assert_close(cached(aug_batch).logits, net(aug_batch["input"]))
    assert cached.bypassed == len(tiny_data)


def test_distiller_lists_cache_stats(tiny_data):
    d = KDDistiller(make_net(1), CachedTeacher(FrozenTeacher(make_net(2)), len(tiny_data)), 4.0, 0.9,
                    divergence="forward_kl", beta=0.5)
    assert isinstance(d, Distiller)
    assert set(d.extra_metrics()) == {"cache_hits", "cache_misses", "cache_bypassed"}


def test_full_cache_serves_slots_past_its_end_by_growing_or_refusing(tiny_data, tmp_path):
    # once every slot is stored, hits skip the per-slot look-up; a slot past the end must still
    # grow a memory cache (more augmentation draws) or be refused by a disk cache, as before
    net = make_net(6)
    batch = next(iter(TensorLoader(tiny_data, 240, shuffle=False)))
    beyond = {**batch, "aug_key": batch["index"] + len(tiny_data)}  # the second draw of each sample
    memory = CachedTeacher(FrozenTeacher(net), len(tiny_data))
    memory(batch)
    assert memory._full
    torch.testing.assert_close(memory(beyond).logits, net.eval()(batch["input"]))
    assert memory.draws == 2 and memory.misses == 2 * len(tiny_data)
    disk = CachedTeacher(FrozenTeacher(net), len(tiny_data), storage="disk", path=tmp_path)
    disk(batch)
    assert disk._full
    with pytest.raises(ValueError, match="asks for slot"):
        disk(beyond)
