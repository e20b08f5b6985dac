"""Learning from noisy labels with distillation (Li et al. 2017): invariants of the method.
(docs/methods/noisy_label_distillation.md)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from joryu.data import TensorData, add_label_noise, clean_mask
from joryu.errors import ConfigError
from joryu.losses import noisy_label_loss, noisy_label_targets, propagate, relation_graph
from joryu.methods import get_method, listing
from joryu.methods.noisy_label_distillation import NoisyLabelDistiller, clean_subset
from joryu.reproduce.common import train
from joryu.teachers import FrozenTeacher


def _logits(n=10, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g), torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)


@pytest.mark.parametrize("lam", [0.0, 0.25, 0.7, 1.0])
def test_pseudo_labels_sum_to_one_and_mix_as_stated(lam):
    _, aux, y = _logits()
    t = noisy_label_targets(y, aux, lam, temperature=2.0)
    assert torch.allclose(t.sum(-1), torch.ones(len(y)))
    expect = lam * F.one_hot(y, 5).float() + (1 - lam) * F.softmax(aux / 2.0, -1)
    assert torch.allclose(t, expect)


def test_lambda_one_is_exactly_noisy_cross_entropy():
    z, aux, y = _logits()
    assert torch.equal(noisy_label_targets(y, aux, 1.0), F.one_hot(y, 5).float())
    assert torch.allclose(noisy_label_loss(z, aux, y, lam=1.0), F.cross_entropy(z, y))


def test_identity_graph_reduces_to_the_plain_variant():
    z, aux, y = _logits()
    g = relation_graph(5)
    assert torch.equal(g, torch.eye(5))
    assert torch.allclose(noisy_label_targets(y, aux, 0.4, graph=g), noisy_label_targets(y, aux, 0.4))
    assert torch.allclose(noisy_label_loss(z, aux, y, 0.4, graph=g), noisy_label_loss(z, aux, y, 0.4))


def test_graph_spreads_probability_within_a_group_only():
    p = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    g = relation_graph(4, groups=[[0, 1]], strength=0.5)
    s = propagate(p, g)
    assert torch.allclose(s, torch.tensor([[2 / 3, 1 / 3, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="outside"):
        relation_graph(4, groups=[[0, 7]])


def test_clean_rows_keep_their_true_labels():
    _, aux, y = _logits()
    clean = torch.zeros(10, dtype=torch.bool)
    clean[::3] = True
    t = noisy_label_targets(y, aux, 0.0, clean=clean, graph=relation_graph(5, [[0, 1, 2]]))
    assert torch.equal(t[clean], F.one_hot(y[clean], 5).float())
    assert not torch.allclose(t[~clean], F.one_hot(y[~clean], 5).float())


def _noisy_data(n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = x[:, :3].argmax(1)
    data = TensorData({"input": x, "target": y}, 3, "toy")
    return add_label_noise(data, "pairflip", 0.4, seed=seed, clean=clean_mask(y, per_class=10, seed=seed)), y


def test_distiller_uses_the_auxiliary_without_training_it():
    data, _ = _noisy_data()
    aux = nn.Linear(6, 3)
    before = [p.clone() for p in aux.parameters()]
    student = nn.Linear(6, 3)
    d = NoisyLabelDistiller(student, FrozenTeacher(aux), lam=0.3, temperature=1.0, graph=None)
    batch = {k: v[:32] for k, v in data.tensors.items()}
    out = d.training_step(batch)
    out["loss"].backward()
    assert all(p.grad is None for p in aux.parameters()) and student.weight.grad is not None
    expect = noisy_label_loss(student(batch["input"]), aux(batch["input"]), batch["target"], 0.3,
                              clean=batch["clean"])
    assert torch.allclose(out["loss"], expect)
    assert all(torch.equal(a, b) for a, b in zip(before, aux.parameters()))


def test_stages_train_an_auxiliary_on_the_clean_rows_then_the_student():
    assert any(n == "noisy_label_distillation" and s == "implemented" for n, _, s in listing())
    data, truth = _noisy_data()
    m = get_method("noisy_label_distillation", {"lam": 0.0, "pretrain_on_all": True, "aux_epochs": 5})
    assert [s.name for s in m.stages()] == ["pretrain", "auxiliary", "distill"]
    assert not m.needs_teacher
    assert get_method("noisy_label_distillation", {"use_teacher": True}).needs_teacher
    sub = clean_subset(data)
    assert len(sub) == 30 and bool(sub.tensors["clean"].all())
    assert torch.equal(sub.targets, truth[data.tensors["clean"]])

    from joryu.config import TrainConfig
    from joryu.run.stages import run_stages

    torch.manual_seed(0)
    student = nn.Linear(6, 3)
    init = [p.clone() for p in student.parameters()]
    net, results = run_stages(m, student=student, teacher=None, train=data, val=None, train_cfg=TrainConfig(epochs=3, lr=0.05, batch_size=32,
                                                                      device="cpu"), run_dir=None, seed=0, augment=None, progress=False)
    assert net is student and not all(torch.equal(a, b) for a, b in zip(init, student.parameters()))
    aux = results["distill"].distiller.auxiliary.models()[0]
    assert aux is not student
    # pretraining saw all 300 rows (10 steps per epoch); the auxiliary stage only the 30 clean rows
    # (one step per epoch at batch 32, for aux_epochs = 5)
    assert results["pretrain"].history[-1]["step"] == 30
    assert results["auxiliary"].history[-1]["step"] == 5


def test_missing_clean_mask_is_a_clear_error():
    x = torch.randn(20, 6)
    plain = TensorData({"input": x, "target": x[:, :3].argmax(1)}, 3)
    with pytest.raises(ConfigError, match="clean"):
        train("noisy_label_distillation", nn.Linear(6, 3), plain, dict(epochs=1, device="cpu"), 0)
    with pytest.raises(ConfigError, match="graph or groups"):
        get_method("noisy_label_distillation", {"graph": [[1.0]], "groups": [[0]]}).params.relation(3)


def test_quick_reproduction_reports_its_claims(tmp_path):
    from joryu.reproduce import run_reproduction

    md = run_reproduction("noisy_label_distillation", quick=True, out_dir=tmp_path, progress=False)
    text = md.read_text()
    assert "## Verdicts" in text and text.count("REPRODUCED") == 4


def test_example_config_runs(tmp_path):
    from joryu.run.experiment import Experiment

    exp = Experiment.from_yaml("configs/noisy_label_distillation_mnist1d.yaml",
                               ["train.epochs=1", "method.params.pretrain_epochs=1", "method.params.aux_epochs=1",
                                "data.kwargs.num_samples=1000", "data.kwargs.clean_per_class=5"],
                               run_dir=tmp_path, progress=False)
    rows = exp.run()["rows"]
    assert set(rows) == {"student alone", "student + noisy_label_distillation"}  # no teacher is trained
    assert (tmp_path / "noisy_label_distillation" / "auxiliary" / "done.json").is_file()


def test_default_auxiliary_is_trained_on_the_clean_rows_only():
    m = get_method("noisy_label_distillation")
    assert [s.name for s in m.stages()] == ["auxiliary", "distill"]  # no pretraining on the noisy rows
    data, _ = _noisy_data()
    from joryu.methods import StageContext

    ctx = StageContext(student=nn.Linear(6, 3), teacher=None, train_data=data, num_classes=3, train_cfg=None)
    ctx.state = m.new_state(ctx)
    aux_data = m.stages()[0].data(ctx)
    assert len(aux_data) == 30 and bool(aux_data.tensors["clean"].all())


def test_lambda_is_chosen_on_held_out_clean_rows():
    from joryu.config import TrainConfig
    from joryu.methods.noisy_label_distillation import heldout_accuracy, split_clean
    from joryu.run.stages import run_stages

    data, _ = _noisy_data()
    grid = [0.0, 0.5, 1.0]
    m = get_method("noisy_label_distillation", {"lam_grid": grid, "lam_holdout": 0.3, "aux_epochs": 5})
    assert [s.name for s in m.stages()] == ["auxiliary", "distill_lam1", "distill_lam0.5", "distill_lam0", "select"]
    torch.manual_seed(0)
    student = nn.Linear(6, 3)
    init = copy.deepcopy(student)
    cfg = TrainConfig(epochs=3, lr=0.05, batch_size=32, device="cpu")
    net, res = run_stages(m, student=student, teacher=None, train=data, val=None, train_cfg=cfg, run_dir=None, seed=0, augment=None, progress=False)
    keep, held = split_clean(data, 0.3, 0)
    assert len(held) == 9 and len(keep) == 291 and bool(data.tensors["clean"][held].all())
    # the auxiliary trained on the 21 remaining clean rows: one step per epoch at batch 32
    assert res["auxiliary"].history[-1]["step"] == 5
    # every candidate trained on the 291 kept rows (10 steps per epoch), from the same init
    for lam in grid:
        assert res[f"distill_lam{lam:g}"].history[-1]["step"] == 30
        assert res[f"distill_lam{lam:g}"].distiller.student is not student
    sel = res["select"].distiller
    held_data = data.subset(held)
    scores = {lam: heldout_accuracy(res[f"distill_lam{lam:g}"].distiller.student, held_data) for lam in grid}
    assert sel.scores == scores
    best = max(sorted(grid, reverse=True), key=lambda v: scores[v])
    assert sel.chosen == best
    chosen = res[f"distill_lam{best:g}"].distiller.student
    assert net is student and all(torch.equal(a, b) for a, b in zip(student.parameters(), chosen.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(student.parameters(), init.parameters()))
