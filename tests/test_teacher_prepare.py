"""One teacher-preparation policy (joryu.teachers.prepare): served outputs follow in-place changes
of the teacher, no second resident copy, and a cache per (sample, draw) for every method."""

import copy

import pytest
import torch
from torch import nn

from joryu.config import TrainConfig
from joryu.data import Augment, TensorData, TensorLoader, add_label_noise, clean_mask, hide_labels
from joryu.methods import StageContext, get_method
from joryu.models import create
from joryu.run.stages import run_stages
from joryu.teachers import CachedTeacher, FastTeacher, FrozenTeacher, prepare


def bn_cnn(seed=0):
    torch.manual_seed(seed)
    m = create("cnn1d", num_classes=3, input_shape=(1, 24))
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 1, 24) * 2 + 0.3)
    return m.eval()


def _data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 24, generator=g)
    return TensorData({"input": x, "target": x[:, 0, :3].argmax(1)}, 3, "prep")


def _eager(model, batch):
    return FrozenTeacher(model)({"input": batch["input"]}).logits


def test_kd_default_teacher_follows_in_place_changes():
    data = _data()
    model = bn_cnn(0)
    ctx = StageContext(student=create("cnn1d", num_classes=3, input_shape=(1, 24)), teacher=FrozenTeacher(model),
                       train_data=data, num_classes=3, train_cfg=TrainConfig(epochs=1))
    d = get_method("kd").stages()[0].build(ctx)
    assert isinstance(d.teacher, CachedTeacher) and isinstance(d.teacher.teacher, FastTeacher)
    batch = next(iter(TensorLoader(data, 32, shuffle=False)))
    torch.testing.assert_close(d.teacher(batch).logits, _eager(model, batch), rtol=1e-5, atol=1e-5)
    d.teacher(batch)  # now served from the cache

    other = bn_cnn(1)
    changes = {
        "load_state_dict": lambda: model.load_state_dict(other.state_dict()),
        "p.add_": lambda: _add_(model),
        "new BN statistics": lambda: _new_bn_stats(model),
    }
    for name, change in changes.items():
        before = d.teacher(batch).logits.clone()
        change()
        want = _eager(model, batch)
        assert not torch.allclose(before, want, atol=1e-4), name  # the change matters
        torch.testing.assert_close(d.teacher(batch).logits, want, rtol=1e-5, atol=1e-5, msg=name)


def _add_(model):
    with torch.no_grad():
        next(model.parameters()).add_(0.05)


def _new_bn_stats(model):
    model.train()
    with torch.no_grad():
        model(torch.randn(32, 1, 24) * 3 - 1)
    model.eval()


def test_folding_keeps_one_resident_copy():
    model = bn_cnn(0)
    own = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers())}
    fast = FastTeacher(model)
    assert fast.folded > 0
    extra = [t for t in list(fast.fast.parameters()) + list(fast.fast.buffers()) if t.data_ptr() not in own]
    # only the folded convolutions' weight and bias are new
    assert len(extra) == 2 * fast.folded
    assert fast.models() == [model]
    plain = FastTeacher(model, fold_bn=False)
    assert plain.fast is model
    # the user's model is not modified by folding
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def test_prepare_policy():
    model = bn_cnn(0)
    t = prepare(model, num_samples=10, augment=Augment(shift=1, draws=3))
    assert isinstance(t, CachedTeacher) and t.draws == 3 and isinstance(t.teacher, FastTeacher)
    tapped = FrozenTeacher(model, features={"h": "blocks.0"})
    assert prepare(tapped, num_samples=10) is tapped  # taps: never folded
    assert isinstance(prepare(model), FastTeacher)  # no size: no cache
    assert isinstance(prepare(model, fold=False, cache=False), FrozenTeacher)


def test_cache_grows_when_a_batch_has_more_draws_than_it_was_sized_for():
    data = _data(16)
    model = bn_cnn(0)
    cached = CachedTeacher(FrozenTeacher(model), len(data), draws=1)
    loader = TensorLoader(data, 8, shuffle=True, augment=Augment(shift=1, draws=3), seed=0)
    for epoch in range(2):
        for batch in loader.iterate(epoch, 0) if hasattr(loader, "iterate") else loader:
            out = cached(batch)
            assert out.logits.shape == (len(batch["input"]), 3)
    assert cached.draws == 3


def _mlp(seed, n_in=24):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.mark.parametrize("method,params", [
    ("fitnets", {"hint_layer": "1", "guided_layer": "1", "hint_epochs": 1}),
    ("born_again", {"generations": 2}),
    ("generalized_distillation", {}),
    ("noisy_label_distillation", {"aux_epochs": 1}),
])
def test_methods_run_with_fixed_augmentation_draws(method, params):
    # each raised on the first batch when augment.draws > 1 (the cache was sized for one draw)
    data = _data(48)
    teacher = FrozenTeacher(_mlp(1))
    if method == "generalized_distillation":
        lab = torch.zeros(48, dtype=torch.bool)
        lab[:12] = True
        data = hide_labels(TensorData({**data.tensors, "privileged": data.tensors["input"].flatten(1)}, 3), lab)
        teacher = FrozenTeacher(_mlp(1), input_key="privileged")
    if method == "noisy_label_distillation":
        y = data.targets
        data = add_label_noise(data, "pairflip", 0.3, seed=0, clean=clean_mask(y, per_class=4, seed=0))
        teacher = None
    cfg = TrainConfig(epochs=1, batch_size=16, lr=0.01, device="cpu")
    net, res = run_stages(get_method(method, params), student=_mlp(0), teacher=teacher, train=data, val=None, train_cfg=cfg, run_dir=None, seed=0, augment=Augment(shift=1, draws=2), progress=False)
    assert net is not None and res


def test_born_again_teacher_is_a_copy_free_fast_teacher():
    m = bn_cnn(0)
    t = prepare(copy.deepcopy(m), num_samples=8)
    assert isinstance(t.teacher, FastTeacher)


def test_tapped_teachers_are_cached_only_when_asked():
    tapped = FrozenTeacher(bn_cnn(0), features={"h": "blocks.0"})
    assert prepare(tapped, num_samples=10) is tapped
    assert isinstance(prepare(tapped, num_samples=10, cache_features=True), CachedTeacher)
