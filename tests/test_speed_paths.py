"""Correctness of the speed paths: keyed augmentation draws, the cache over draws and on disk,
and the folded/inference-mode teacher. Each must equal the plain, eager computation."""

import pytest
import torch

from joryu.data import Augment, TensorData, TensorLoader, apply_augment_keyed
from joryu.models import create
from joryu.teachers import CachedTeacher, FastTeacher, FrozenTeacher, fold_batchnorm


def trained_bn_model(name, shape):
    torch.manual_seed(0)
    m = create(name, num_classes=10, input_shape=shape)
    m.train()
    with torch.no_grad():  # give BatchNorm non-trivial running statistics
        for _ in range(3):
            m(torch.randn(16, *shape) * 2 + 0.5)
    return m.eval()


@pytest.mark.parametrize("name,shape", [("resnet20", (3, 32, 32)), ("cnn1d", (1, 40)),
                                        ("mobilenetv2", (3, 32, 32)), ("vgg8", (3, 32, 32))])
def test_fast_teacher_equals_eager(name, shape):
    m = trained_bn_model(name, shape)
    x = torch.randn(8, *shape)
    eager = FrozenTeacher(m)({"input": x}).logits
    fast = FastTeacher(m)
    assert fast.folded > 0
    out = fast({"input": x}).logits
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-5)
    assert not torch.is_inference(out)  # usable as a saved loss target
    folded, n = fold_batchnorm(m)
    assert n == fast.folded
    bns = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)
    assert not any(isinstance(mm, bns) for mm in folded.modules())


def test_fast_teacher_channels_last_equals_eager():
    m = trained_bn_model("resnet8", (3, 32, 32))
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(FastTeacher(m, channels_last=True)({"input": x}).logits,
                               FrozenTeacher(m)({"input": x}).logits, rtol=1e-5, atol=1e-5)


def test_keyed_augmentation_is_a_function_of_the_key():
    x = torch.randn(6, 1, 10, 10)
    aug = Augment(shift=2, flip=True, draws=4)
    keys = torch.tensor([0, 1, 2, 3, 4, 5])
    a = apply_augment_keyed(x, aug, keys)
    b = apply_augment_keyed(x.flip(0), aug, keys.flip(0)).flip(0)  # order does not matter
    torch.testing.assert_close(a, b)
    assert not torch.equal(apply_augment_keyed(x, aug, keys + 100), a)
    with pytest.raises(ValueError, match="noise"):
        Augment(noise=0.1, draws=2)


def _data(n=96):
    g = torch.Generator().manual_seed(0)
    return TensorData({"input": torch.randn(n, 1, 40, generator=g), "target": torch.randint(0, 10, (n,), generator=g)}, 10)


@pytest.mark.parametrize("storage", ["memory", "disk"])
def test_cache_over_augmentation_draws_equals_uncached(storage, tmp_path):
    data = _data()
    aug = Augment(shift=3, draws=3)
    m = trained_bn_model("cnn1d", (1, 40))
    plain = FrozenTeacher(m)
    cached = CachedTeacher(FrozenTeacher(m), len(data), draws=3, storage=storage,
                           path=tmp_path / "c" if storage == "disk" else None)
    loader = TensorLoader(data, 32, shuffle=True, augment=aug, seed=2)
    seen = set()
    for epoch in range(8):
        for batch in loader.iterate(epoch):
            assert "aug_key" in batch and batch["aug_id"] is None
            seen |= set(batch["aug_key"].tolist())
            torch.testing.assert_close(cached(batch).logits, plain(batch).logits)
    assert cached.misses == len(seen) > 2 * len(data)  # each (sample, draw) computed once
    assert cached.hits == 8 * len(data) - cached.misses
    if storage == "disk":
        assert (tmp_path / "c" / "logits.npy").exists()


def test_cache_refuses_to_exceed_its_bound():
    data = _data()
    cached = CachedTeacher(FrozenTeacher(trained_bn_model("cnn1d", (1, 40))), len(data), max_bytes=100)
    batch = next(iter(TensorLoader(data, 32, shuffle=False)))
    with pytest.raises(MemoryError, match="max_bytes"):
        cached(batch)


def test_kd_with_draws_uses_the_cache(tmp_path):
    from joryu.config import TrainConfig
    from joryu.methods import get_method
    from joryu.run.stages import run_stages

    data = _data(128)
    teacher = FrozenTeacher(trained_bn_model("cnn1d", (1, 40)))
    student = create("mlp", num_classes=10, input_shape=(1, 40), hidden=(16,))
    _, res = run_stages(get_method("kd"), student=student, teacher=teacher, train=data, val=None, train_cfg=TrainConfig(epochs=6, batch_size=32), run_dir=None, seed=0, augment=Augment(shift=2, draws=2), progress=False)
    last = res["distill"].history[-1]
    loader = TensorLoader(data, 32, seed=0, augment=Augment(shift=2, draws=2))
    pairs = {int(i) * 2 + int(d) for e in range(6) for i, d in enumerate(loader.epoch_draws(e))}
    assert last["cache_misses"] == len(pairs) and last["cache_hits"] == 6 * 128 - len(pairs)


@pytest.mark.slow
def test_benchmark_smoke(tmp_path, capsys):
    """The benchmark runs end to end (tiny sizes; numbers are not checked: timings are not tests)."""
    from joryu.bench import main

    assert main(["--quick", "--steps", "2", "--threads", "1", "--out", str(tmp_path / "R.md")]) == 0
    out = capsys.readouterr().out
    assert "joryu kd + warm cache" in out and "DataLoader, per-sample augmentation" in out
    assert "joryu streamed image folder" in out and "ratio joryu / plain" in out
    assert "offline top-k KD (k=32)" in out and "offline top-k / student alone" in out
    assert not (tmp_path / "R.md").exists()  # --quick prints only


@pytest.mark.slow
def test_benchmark_lm_workload_alone_prints_and_writes_nothing(tmp_path, capsys):
    from joryu.bench import main

    assert main(["--workload", "lm", "--steps", "1", "--rounds", "1", "--threads", "1",
                 "--out", str(tmp_path / "R.md")]) == 0
    out = capsys.readouterr().out
    assert "student alone" in out and "online KD" in out and "joryu kd" not in out
    assert "top-k store, k=32" in out and "bucket" in out
    assert not (tmp_path / "R.md").exists()
