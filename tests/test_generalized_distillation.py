"""Generalized distillation (Gong et al. 2018): invariants of docs/methods/generalized_distillation.md."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from joryu.data import IGNORE_INDEX, TensorData, hide_labels
from joryu.losses import gd_targets, generalized_distillation_loss, masked_cross_entropy
from joryu.methods import get_method, listing
from joryu.methods.generalized_distillation import (
    GeneralizedDistiller,
    LapRLS,
    gd_lap_rls,
    knn_laplacian,
    one_hot_labeled,
)
from joryu.reproduce.common import train
from joryu.teachers import FrozenTeacher


def _batch(n=12, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    lab = torch.rand(n, generator=g) < 0.5
    lab[0], lab[1] = True, False
    hidden = torch.where(lab, y, torch.full_like(y, IGNORE_INDEX))
    return torch.randn(n, c, generator=g), torch.randn(n, c, generator=g), hidden, lab


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_rows_of_P_sum_to_one_and_follow_the_mix(lam):
    _, t, y, lab = _batch()
    s = F.softmax(t, -1)
    p = gd_targets(y, s, lab, lam)
    assert torch.allclose(p.sum(-1), torch.ones(len(p)))
    y1 = F.one_hot(y[lab], 4).float()
    assert torch.allclose(p[lab], (1 - lam) * y1 + lam * s[lab])
    assert torch.allclose(p[~lab], s[~lab])


def test_loss_is_the_papers_sum_of_label_and_imitation_terms():
    z, t, y, lab = _batch()
    z.requires_grad_(True)
    lam, temp = 0.3, 2.0
    s = F.softmax(t / temp, -1)
    logq = F.log_softmax(z, -1)
    ce_y = -logq[lab].gather(1, y[lab].unsqueeze(1)).squeeze(1)
    ce_s = -(s * logq).sum(-1)
    expect = ((1 - lam) * ce_y + lam * ce_s[lab]).sum() + ce_s[~lab].sum()
    got = generalized_distillation_loss(z, t, y, lab, lam, temp)
    assert torch.allclose(got, expect / len(z))
    got.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_lambda_zero_with_unlabelled_rows_masked_is_the_base_learner():
    z, t, y, lab = _batch()
    got = generalized_distillation_loss(z, t, y, lab, imitation=0.0, unlabeled_weight=0.0)
    assert torch.allclose(got, masked_cross_entropy(z, y, lab))
    # and a batch with no labelled row is finite (0), not NaN
    none = generalized_distillation_loss(z, t, torch.full_like(y, IGNORE_INDEX),
                                         torch.zeros_like(lab), 0.5, unlabeled_weight=0.0)
    assert float(none) == 0.0


def test_laprls_lambda_zero_with_unlabelled_rows_masked_reproduces_laprls_exactly():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    xp = x + 0.1 * torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    lab = torch.zeros(60, dtype=torch.bool)
    lab[:12] = True
    base = LapRLS(1e-2, 1e-2, k=5).fit(x, one_hot_labeled(y, lab, 4), lab.double())
    gd, teacher, p = gd_lap_rls(x, xp, y, lab, 4, imitation=0.0, k=5, unlabeled_weight=0.0)
    assert torch.allclose(gd.alpha, base.alpha, atol=1e-10)
    assert torch.allclose(p.sum(-1), torch.ones(60, dtype=p.dtype))
    # with the teacher, the student's targets change on the unlabelled rows only (lambda = 0)
    gd2, _, p2 = gd_lap_rls(x, xp, y, lab, 4, imitation=0.0, k=5)
    assert torch.allclose(p2[lab], one_hot_labeled(y, lab, 4)[lab])
    assert not torch.allclose(gd2.alpha, base.alpha)


def test_laplacian_is_symmetric_psd():
    x = torch.randn(30, 3, dtype=torch.float64)
    lap = knn_laplacian(x, k=4)
    assert torch.allclose(lap, lap.T)
    assert float(torch.linalg.eigvalsh(lap).min()) > -1e-8


def _privileged_data(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    priv = torch.randn(n, 6, generator=g)
    y = priv[:, :3].argmax(1)
    x = priv[:, :3] + 1.0 * torch.randn(n, 3, generator=g)  # a noisy view of what matters
    data = TensorData({"input": x, "privileged": priv, "target": y}, 3)
    lab = torch.zeros(n, dtype=torch.bool)
    lab[:12] = True
    return hide_labels(data, lab)


def test_student_never_reads_privileged_and_teacher_gets_no_gradient():
    data = _privileged_data()
    teacher_net = nn.Linear(6, 3)
    before = [p.clone() for p in teacher_net.parameters()]
    student = nn.Linear(3, 3)
    d = GeneralizedDistiller(student, FrozenTeacher(teacher_net, input_key="privileged"), 0.5, 2.0, 1.0)
    batch = {k: v[:16] for k, v in data.tensors.items()}
    out = d.training_step(batch)
    out["loss"].backward()
    assert all(p.grad is None for p in teacher_net.parameters())
    assert student.weight.grad is not None
    shuffled = dict(batch, privileged=torch.randn_like(batch["privileged"]))
    assert torch.equal(d.eval_logits(batch)["student"], d.eval_logits(shuffled)["student"])
    assert all(torch.equal(a, b) for a, b in zip(before, teacher_net.parameters()))


def test_method_trains_through_the_engine_and_is_listed():
    assert ("generalized_distillation", ) == tuple(n for n, _, s in listing()
                                                    if n == "generalized_distillation" and s == "implemented")
    data = _privileged_data()
    torch.manual_seed(0)
    teacher = train("supervised", nn.Linear(6, 3), data, dict(epochs=20, lr=0.05, batch_size=16, device="cpu"), 0,
                    params={"input_key": "privileged"})
    student = train("generalized_distillation", nn.Linear(3, 3), data,
                    dict(epochs=3, lr=0.05, batch_size=16, device="cpu"), 0,
                    teacher=FrozenTeacher(teacher, "privileged"), params={"imitation": 0.5, "temperature": 2.0})
    assert all(torch.isfinite(p).all() for p in student.parameters())
    with pytest.raises(Exception, match="imitation"):
        get_method("generalized_distillation", {"imitation": 1.5})


def test_example_config_runs_with_a_privileged_teacher(tmp_path):
    from joryu.run.experiment import Experiment

    exp = Experiment.from_yaml("configs/generalized_distillation_digits.yaml",
                               ["train.epochs=1", "teacher.train.epochs=1"], run_dir=tmp_path, progress=False)
    summary = exp.run()
    rows = summary["rows"]
    assert {"teacher", "student alone", "student + generalized_distillation"} <= set(rows)
    assert rows["student alone"]["params"] == rows["student + generalized_distillation"]["params"]
    assert rows["teacher"]["params"] != rows["student alone"]["params"]  # 64 privileged inputs vs 16


def test_quick_reproduction_reports_its_claims(tmp_path):
    from joryu.reproduce import run_reproduction

    md = run_reproduction("generalized_distillation", quick=True, out_dir=tmp_path, progress=False)
    text = md.read_text()
    assert "## Verdicts" in text and text.count("- **") == 2 and "QUICK smoke run" in text


@pytest.mark.parametrize("lam", [0.2, 0.5, 0.8])
def test_imitation_parameter_sets_the_labelled_rows_optimum_where_s_differs_from_y(lam):
    # At T = 0.1 the LapRLS teacher's S equals Y on labelled rows to 1e-3, so lambda cannot show.
    # Here S is soft (T = 2) and disagrees with Y: the student's optimum on a labelled row is
    # softmax(z*) = (1 - lambda) Y + lambda S, which moves with lambda.
    g = torch.Generator().manual_seed(3)
    t = torch.randn(4, 5, generator=g)
    y = (t.argmax(1) + 1) % 5  # labels the teacher does not favour
    lab = torch.ones(4, dtype=torch.bool)
    s = F.softmax(t / 2.0, -1)
    assert float((s - F.one_hot(y, 5).float()).abs().max()) > 0.5
    z = torch.zeros(4, 5, requires_grad=True)
    opt = torch.optim.LBFGS([z], lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = generalized_distillation_loss(z, t, y, lab, lam, 2.0)
        loss.backward()
        return loss

    opt.step(closure)
    want = (1 - lam) * F.one_hot(y, 5).float() + lam * s
    torch.testing.assert_close(F.softmax(z.detach(), -1), want, atol=2e-4, rtol=0)


def test_laprls_student_moves_from_labels_to_teacher_as_lambda_grows():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 5, generator=g, dtype=torch.float64)
    xp = x + 0.8 * torch.randn(80, 5, generator=g, dtype=torch.float64)  # a teacher that errs
    y = (x[:, 0] > 0).long() + 2 * (x[:, 1] > 0).long()
    lab = torch.zeros(80, dtype=torch.bool)
    lab[:20] = True
    d_y, d_s = [], []
    for lam in (0.0, 0.25, 0.5, 0.75, 1.0):
        student, teacher, p = gd_lap_rls(x, xp, y, lab, 4, imitation=lam, temperature=1.0, k=5)
        s = F.softmax(teacher.decision() / 1.0, -1)
        f = student.decision()[lab]
        d_y.append(float((f - F.one_hot(y[lab], 4).double()).pow(2).sum()))
        d_s.append(float((f - s[lab]).pow(2).sum()))
    assert all(a < b for a, b in zip(d_y, d_y[1:]))  # further from Y
    assert all(a > b for a, b in zip(d_s, d_s[1:]))  # closer to S
    assert d_y[-1] > 2 * d_y[0]
