"""The offline top-k teacher store: round trip, reads keyed by sample index, stale stores refused,
and KD from a store (classification and a tiny GPT-2)."""

import json
import pickle

import pytest
import torch
from torch import nn

import joryu
from joryu.data import TensorLoader
from joryu.errors import ConfigError
from joryu.losses.lm import token_divergence
from joryu.losses.topk import topk_from_logits
from joryu.methods.kd import KDDistiller, StoreKDDistiller
from joryu.outputs import declare_inputs, forward
from joryu.teachers import FrozenTeacher
from joryu.teachers.store import TopKStore, build_store, bytes_per_position

FAST = dict(batch_size=32, optimizer="adam", progress=False)


def mlp(seed, width=32):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3))


def teacher_logits(teacher, data, idx):
    with torch.no_grad():
        return teacher(data.tensors["input"][idx])


def test_round_trip_keeps_the_top_k_of_every_sample_across_shards(tiny_data, tmp_path):
    teacher = mlp(0)
    store = build_store(teacher, tiny_data, tmp_path / "s", k=2, batch_size=50, shard_mb=60 * 16 / 2**20,
                        progress=False)
    assert len(store.manifest["shards"]) == 4  # 240 samples at 60 per shard
    assert store.num_samples == len(tiny_data) and store.k == 2 and store.positions == ()
    idx = torch.arange(len(tiny_data))
    got = store.get(idx)
    ind, lp, rest = topk_from_logits(teacher_logits(teacher, tiny_data, idx), 2)
    assert torch.equal(got.indices, ind)
    assert got.logprobs.dtype == torch.float16
    torch.testing.assert_close(got.logprobs.float(), lp, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(got.rest, rest)
    assert store.manifest["bytes_per_position"] == bytes_per_position(2) == 2 * 6 + 4


def test_shuffled_batches_read_their_own_rows_and_survive_pickling(tiny_data, tmp_path):
    teacher = mlp(1)
    store = build_store(teacher, tiny_data, tmp_path / "s", k=3, value_dtype="float32", batch_size=64,
                        shard_mb=50 * 28 / 2**20, progress=False)
    store = pickle.loads(pickle.dumps(store))  # as a DataLoader worker receives it
    loader = TensorLoader(tiny_data, 37, shuffle=True, seed=5)
    seen = 0
    for batch in loader.iterate(1):
        got = store.get(batch["index"])
        ind, lp, rest = topk_from_logits(teacher(batch["input"]).detach(), 3)
        assert torch.equal(got.indices, ind)
        torch.testing.assert_close(got.logprobs, lp)
        seen += len(batch["index"])
    assert seen == len(tiny_data)


def test_fewer_classes_than_stored_move_the_tail_into_the_rest(tiny_data, tmp_path):
    store = build_store(mlp(2), tiny_data, tmp_path / "s", k=3, value_dtype="float32", progress=False)
    idx = torch.tensor([5, 0, 239])
    full, one = store.get(idx), store.get(idx, k=1)
    assert torch.equal(one.indices[:, 0], full.indices[:, 0])
    torch.testing.assert_close(one.rest, 1 - full.logprobs[:, 0].exp())
    with pytest.raises(ConfigError, match="topk = 4 but teacher store .* holds k = 3"):
        store.get(idx, k=4)


def test_stale_or_mismatched_stores_are_refused_in_one_line(tiny_data, tmp_path):
    teacher = mlp(3)
    path = tmp_path / "s"
    store = build_store(teacher, tiny_data, path, k=2, progress=False)
    store.check(teacher, tiny_data)  # the same teacher and data pass
    changed = mlp(3)
    with torch.no_grad():
        changed[0].weight[0, 0] += 1
    errors = []
    for kw in (dict(teacher=changed), dict(data=tiny_data.subset(range(200)))):
        with pytest.raises(ConfigError) as e:
            store.check(**kw)
        errors.append(str(e.value))
    assert "other teacher weights" in errors[0] and "other data" in errors[1]
    assert all(len(m.splitlines()) == 1 for m in errors)
    with pytest.raises(ConfigError, match="exists: pass overwrite=True"):
        build_store(teacher, tiny_data, path, k=2, progress=False)
    with pytest.raises(ConfigError, match="k = 4 exceeds the teacher's 3 classes"):
        build_store(teacher, tiny_data, tmp_path / "t", k=4, progress=False)
    (path / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="unfinished build"):
        TopKStore(path)


def test_a_run_with_a_stale_store_stops_before_training_with_one_line(tiny_data, tmp_path):
    teacher, other = mlp(4), mlp(5)
    build_store(other, tiny_data, tmp_path / "s", k=3, progress=False)
    with pytest.raises(ConfigError, match="other teacher weights") as e:
        joryu.distill(teacher, mlp(6, 8), tiny_data, val_fraction=0, teacher_store=str(tmp_path / "s"),
                      epochs=1, temperature=1.0, **FAST)
    assert len(str(e.value).splitlines()) == 1
    with pytest.raises(ConfigError, match="truncation: renormalize"):
        joryu.distill(other, mlp(6, 8), tiny_data, val_fraction=0, teacher_store=str(tmp_path / "s"),
                      epochs=1, temperature=4.0, **FAST)
    with pytest.raises(ConfigError, match="topk applies to a teacher store"):
        joryu.distill(other, mlp(6, 8), tiny_data, val_fraction=0, topk=2, epochs=1, **FAST)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_kd_from_a_full_store_equals_dense_kd_on_a_batch(tiny_data, tmp_path, divergence):
    teacher = mlp(7)
    store = build_store(teacher, tiny_data, tmp_path / "s", k=3, temperature=4.0, value_dtype="float32",
                        progress=False)
    batch = TensorLoader(tiny_data, 64, shuffle=True, seed=1).batch(torch.randperm(240)[:64])
    student = mlp(8, 8)
    dense = KDDistiller(student, FrozenTeacher(teacher), 4.0, 0.7, divergence=divergence, beta=0.5)
    for trunc in ("bucket", "renormalize"):
        ours = StoreKDDistiller(student, store, 4.0, 0.7, divergence=divergence, beta=0.5, topk=None,
                                truncation=trunc)
        a, b = dense.training_step(batch), ours.training_step(batch)
        for key in ("kd", "ce", "loss"):
            torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature,alpha", [(4.0, 0.9), (1.0, 0.5)])  # T = 1: the CE from the bucket's pass
def test_kd_run_from_a_full_store_reproduces_the_dense_kd_run(tiny_data, tmp_path, temperature, alpha):
    teacher = mlp(9)
    build_store(teacher, tiny_data, tmp_path / "s", k=3, temperature=temperature, value_dtype="float32",
                progress=False)
    kw = dict(val_fraction=0, epochs=2, temperature=temperature, alpha=alpha, **FAST)
    dense, _ = joryu.distill(teacher, mlp(10, 8), tiny_data, teacher_cache=False, **kw)
    stored, _ = joryu.distill(teacher, mlp(10, 8), tiny_data, teacher_store=str(tmp_path / "s"), **kw)
    for p, q in zip(dense.parameters(), stored.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5)


transformers = pytest.importorskip("transformers")

INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}


def _lm_pair(vocab=64):
    from joryu.data import load
    from joryu.models.hf import gpt2_lm

    b = load("synthetic_lm", num_samples=96, test_samples=16, vocab_size=vocab, max_len=16)
    torch.manual_seed(0)
    teacher = gpt2_lm(vocab_size=vocab, hidden_size=32, layers=2, max_len=16)
    with torch.no_grad():  # a peaked random teacher (its logits x 20), so there is something to learn
        teacher.transformer.ln_f.weight.mul_(20)
    student = gpt2_lm(vocab_size=vocab, hidden_size=16, layers=1, max_len=16)
    return b, teacher, student


def test_store_on_token_logits_keeps_positions_and_matches_the_dense_kd_loss_at_k_equal_v(tmp_path):
    b, teacher, student = _lm_pair(vocab=40)
    store = build_store(teacher, b.train, tmp_path / "s", k=40, inputs=INPUTS, value_dtype="float32",
                        batch_size=32, progress=False)
    assert store.positions == (16,) and store.num_classes == 40
    manifest = json.loads((tmp_path / "s" / "manifest.json").read_text())
    assert manifest["positions"] == [16] and manifest["num_samples"] == len(b.train)
    batch = TensorLoader(b.train, 24, shuffle=True, seed=3).batch(torch.randperm(len(b.train))[:24])
    declare_inputs(student, INPUTS)
    dense = KDDistiller(student, FrozenTeacher(teacher, INPUTS), 1.0, 0.7, divergence="forward_kl", beta=0.5)
    ours = StoreKDDistiller(student, store, 1.0, 0.7, divergence="forward_kl", beta=0.5, topk=None,
                            truncation="bucket")
    a, b = dense.training_step(batch), ours.training_step(batch)
    for key in ("kd", "ce", "loss"):
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6)
    grad_dense = torch.autograd.grad(a["loss"], list(student.parameters()))
    grad_store = torch.autograd.grad(b["loss"], list(student.parameters()))
    for gs, gd in zip(grad_store, grad_dense):
        torch.testing.assert_close(gs, gd, rtol=1e-4, atol=1e-6)


def test_tiny_gpt2_trains_from_a_top_k_store_about_as_well_as_from_the_dense_teacher(tmp_path):
    b, teacher, _ = _lm_pair()
    build_store(teacher, b.train, tmp_path / "s", k=8, inputs=INPUTS, batch_size=48, progress=False)
    batch = TensorLoader(b.test, 16, shuffle=False).batch(torch.arange(16))

    def kl(student):
        with torch.no_grad():
            return float(token_divergence(forward(student, batch, INPUTS), forward(teacher, batch, INPUTS),
                                          target=batch["target"]))

    kw = dict(val_data=b.test, inputs=INPUTS, epochs=4, lr=1e-2, temperature=1.0, alpha=1.0, batch_size=16,
              optimizer="adam", progress=False)
    student = declare_inputs(_lm_pair()[2], INPUTS)
    before = kl(student)
    stored, metrics = joryu.distill(teacher, student, b.train, teacher_store=str(tmp_path / "s"), topk=8,
                                    truncation="bucket", **kw)
    kd = [h["train/kd"] for h in metrics["distill"]["history"]]
    assert kd[-1] < kd[0]
    assert kl(stored) < 0.7 * before  # the dense KL to the teacher falls, with 8 of 64 classes stored
    dense, _ = joryu.distill(teacher, _lm_pair()[2], b.train, teacher_cache=False, **kw)
    assert abs(kl(stored) - kl(dense)) < 0.1 * kl(dense)  # and lands near the dense teacher's run
