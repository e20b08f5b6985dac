"""Data for imperfect supervision: labeled mask, privileged input, label noise, clean mask."""

import pytest
import torch
from torch import nn

from joryu.config import TrainConfig
from joryu.data import (
    IGNORE_INDEX,
    TensorData,
    TensorLoader,
    add_label_noise,
    check_noise_matrix,
    clean_mask,
    hide_labels,
    inject_noise,
    labeled_per_class,
    load,
    mark_clean,
    noise_matrix,
    observed_noise_matrix,
)
from joryu.engine import Engine
from joryu.losses import masked_cross_entropy
from joryu.methods.supervised import SupervisedDistiller


# ------------------------------------------------------------------ noise matrices and injection
@pytest.mark.parametrize("kind", ["symmetric", "pairflip"])
@pytest.mark.parametrize("rate", [0.0, 0.2, 0.45, 1.0])
def test_noise_matrices_are_row_stochastic_with_the_stated_diagonal(kind, rate):
    t = noise_matrix(kind, 10, rate)
    assert t.shape == (10, 10)
    assert torch.allclose(t.sum(1), torch.ones(10, dtype=t.dtype))
    assert torch.allclose(t.diagonal(), torch.full((10,), 1 - rate, dtype=t.dtype))
    assert (t >= 0).all()


def test_pairflip_moves_only_to_the_next_class_and_symmetric_spreads_evenly():
    p = noise_matrix("pairflip", 5, 0.3)
    for i in range(5):
        off = [j for j in range(5) if j != i and p[i, j] > 0]
        assert off == [(i + 1) % 5] and abs(float(p[i, (i + 1) % 5]) - 0.3) < 1e-12
    s = noise_matrix("symmetric", 5, 0.4)
    assert torch.allclose(s[0, 1:], torch.full((4,), 0.1, dtype=s.dtype))


def test_bad_noise_matrices_are_rejected():
    with pytest.raises(ValueError, match="sum to 1"):
        check_noise_matrix([[0.5, 0.4], [0.0, 1.0]])
    with pytest.raises(ValueError, match="square"):
        check_noise_matrix([[1.0, 0.0]])
    with pytest.raises(ValueError, match="negative"):
        check_noise_matrix([[1.5, -0.5], [0.0, 1.0]])
    with pytest.raises(ValueError, match="unknown noise kind"):
        noise_matrix("asymmetric-ish", 3, 0.1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        noise_matrix("symmetric", 3, 1.5)


def test_injection_is_reproducible_and_matches_the_matrix():
    y = torch.arange(10).repeat(2000)
    t = noise_matrix("pairflip", 10, 0.3)
    a, b = inject_noise(y, t, seed=3), inject_noise(y, t, seed=3)
    assert torch.equal(a, b)
    assert not torch.equal(a, inject_noise(y, t, seed=4))
    emp = observed_noise_matrix(y, a, 10)
    assert (emp - t).abs().max() < 0.04
    # a class-dependent matrix: class 0 always becomes 2, the rest are untouched
    m = torch.eye(3, dtype=torch.float64)
    m[0] = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    out = inject_noise(torch.tensor([0, 1, 2, 0]), m, seed=0)
    assert out.tolist() == [2, 1, 2, 2]


def test_clean_mask_is_stratified_and_clean_rows_keep_their_labels():
    y = torch.arange(5).repeat(40)
    m = clean_mask(y, per_class=6, seed=1)
    assert m.sum() == 30 and all(int(m[y == c].sum()) == 6 for c in range(5))
    assert torch.equal(m, clean_mask(y, per_class=6, seed=1))
    assert int(clean_mask(y, fraction=0.25, seed=0).sum()) == 50
    data = TensorData({"input": torch.randn(200, 3), "target": y}, 5)
    noisy = add_label_noise(data, "symmetric", 1.0, seed=0, clean=m)
    assert torch.equal(noisy.targets[m], y[m])
    assert bool((noisy.targets[~m] != y[~m]).all())  # rate 1: every other label changes
    assert torch.equal(noisy.tensors["clean"], m)


def test_mark_clean_accepts_indices_and_checks_length():
    data = TensorData({"input": torch.randn(6, 2), "target": torch.zeros(6, dtype=torch.long)}, 2)
    assert mark_clean(data, [1, 4]).tensors["clean"].tolist() == [False, True, False, False, True, False]
    with pytest.raises(ValueError, match="6 samples"):
        mark_clean(data, torch.ones(5, dtype=torch.bool))


# ------------------------------------------------------------------ semi-supervised and privileged data
def test_hide_labels_sets_the_mask_and_ignore_index():
    y = torch.arange(4).repeat(5)
    data = TensorData({"input": torch.randn(20, 3), "target": y}, 4)
    lab = labeled_per_class(y, 2, seed=0)
    semi = hide_labels(data, lab)
    assert torch.equal(semi.tensors["labeled"], lab)
    assert torch.equal(semi.targets[lab], y[lab])
    assert bool((semi.targets[~lab] == IGNORE_INDEX).all())


def test_builtin_datasets_carry_the_new_keys():
    b = load("digits_privileged")
    tr = b.train
    assert int(tr.tensors["labeled"].sum()) == 30
    assert tuple(tr.tensors["input"].shape[1:]) == (1, 4, 4) and tuple(tr.tensors["privileged"].shape[1:]) == (1, 8, 8)
    assert "privileged" in b.test.tensors and bool((b.test.targets >= 0).all())
    # a different label draw picks different samples
    assert not torch.equal(load("digits_privileged", label_seed=1).train.tensors["labeled"], tr.tensors["labeled"])
    n = load("mnist1d_noisy", num_samples=1000, rate=0.5, clean_per_class=5)
    assert int(n.train.tensors["clean"].sum()) == 50
    truth = load("mnist1d", num_samples=1000).train.targets
    wrong = (n.train.targets != truth)
    assert not wrong[n.train.tensors["clean"]].any() and 0.4 < float(wrong.float().mean()) < 0.6


def test_loader_normalises_privileged_like_input():
    x = torch.randint(0, 256, (8, 1, 2, 2), dtype=torch.uint8)
    data = TensorData({"input": x, "privileged": x.clone(), "target": torch.zeros(8, dtype=torch.long)}, 2,
                      mean=0.5, std=0.25)
    batch = next(iter(TensorLoader(data, 8, shuffle=False)))
    assert torch.equal(batch["input"], batch["privileged"]) and batch["privileged"].dtype == torch.float32


# ------------------------------------------------------------------ losses and metrics on partly labelled data
def test_masked_cross_entropy_skips_hidden_labels_and_never_divides_by_zero():
    torch.manual_seed(0)
    z = torch.randn(6, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    assert torch.equal(masked_cross_entropy(z, y), nn.functional.cross_entropy(z, y))
    lab = torch.tensor([True, False, True, False, False, False])
    expect = nn.functional.cross_entropy(z[lab], y[lab])
    assert torch.allclose(masked_cross_entropy(z, y, lab), expect)
    hidden = torch.where(lab, y, torch.full_like(y, IGNORE_INDEX))
    assert torch.allclose(masked_cross_entropy(z, hidden), expect)
    none = masked_cross_entropy(z, torch.full_like(y, IGNORE_INDEX))
    assert float(none.detach()) == 0.0
    none.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_engine_scores_only_labelled_rows_and_survives_an_unlabelled_split():
    x = torch.randn(10, 4)
    y = torch.tensor([0, 1] * 5)
    model = nn.Linear(4, 2)
    with torch.no_grad():
        pred = model(x).argmax(1)
    lab = torch.zeros(10, dtype=torch.bool)
    lab[:4] = True
    data = hide_labels(TensorData({"input": x, "target": y}, 2), lab)
    eng = Engine(TrainConfig(epochs=1, device="cpu"), None, progress=False)
    out = eng.evaluate(SupervisedDistiller(model), data, "val")
    assert abs(out["val/acc"] - 100.0 * float((pred[:4] == y[:4]).float().mean())) < 1e-4
    empty = hide_labels(TensorData({"input": x, "target": y}, 2), torch.zeros(10, dtype=torch.bool))
    out = eng.evaluate(SupervisedDistiller(model), empty, "val")
    assert out["val/acc"] == 0.0 and out["val/loss"] == 0.0


def test_supervised_training_on_few_labels_is_finite_and_uses_only_them():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = (x[:, 0] > 0).long()
    lab = torch.zeros(64, dtype=torch.bool)
    lab[:2] = True  # most batches of 8 hold no label at all
    data = hide_labels(TensorData({"input": x, "target": y}, 2), lab)
    model = nn.Linear(4, 2)
    eng = Engine(TrainConfig(epochs=2, batch_size=8, device="cpu"), None, progress=False)
    fit = eng.fit(SupervisedDistiller(model), data)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert fit.history[-1]["train/loss"] >= 0
