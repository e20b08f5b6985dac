import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from joryu.config import TrainConfig
from joryu.data import TensorLoader
from joryu.losses import Discriminator, discriminator_loss, generator_loss, pool_to, similarity_loss
from joryu.methods import get_method
from joryu.methods.meal import MEALDistiller
from joryu.reproduce import run_reproduction
from joryu.run.stages import run_stages
from joryu.teachers import EnsembleTeacher, FrozenTeacher

MEAL_DEFAULTS = {k: v for k, v in get_method("meal").params.model_dump().items() if k != "num_teachers"}


def net(seed, width=16):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, width), nn.ReLU(), nn.Linear(width, 3))


class RecordingCtx:
    """Stands in for the engine's StepContext and records the gradients each optimizer steps on."""

    def __init__(self, optimizers, distiller):
        self.optimizers = optimizers
        self.d = distiller
        self.log = []

    def backward(self, loss):
        loss.backward()

    def step(self, opt):
        which = "student" if opt is self.optimizers[0] else "disc"
        self.log.append((which,
                         [None if p.grad is None else p.grad.clone() for p in self.d.student.parameters()],
                         [None if p.grad is None else p.grad.clone()
                          for p in (self.d.discriminators.parameters() if self.d.discriminators else [])]))
        opt.step()
        opt.zero_grad(set_to_none=True)


def make(adversarial=True, k=3, layers=True):
    teachers = [net(10 + i, 32) for i in range(k)]
    kw = dict(student_layers=["1"], teacher_layers=["1"], pooled_dim=8) if layers else {}
    p = {**MEAL_DEFAULTS, "adversarial": adversarial, "label_weight": 0.0, **kw}  # the paper's loss
    d = MEALDistiller(net(0), teachers, 3, seed=1, **p)
    opts = d.configure_optimizers(lambda ps: torch.optim.SGD(ps, lr=0.1))
    d.ctx = RecordingCtx(opts, d)
    return d, teachers


def test_similarity_is_minimised_at_s_equal_t_and_pooling_has_fixed_size():
    t = torch.randn(6, 5)
    s = t.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(similarity_loss(s, t), s)
    assert float(g.abs().max()) < 1e-6
    assert float(similarity_loss(t + 0.3 * torch.randn(6, 5), t)) > float(similarity_loss(t, t))
    for kind in ("l1", "l2"):
        assert float(similarity_loss(t, t, kind)) == 0.0
    assert pool_to(torch.randn(4, 64, 7, 7), 16).shape == (4, 16)
    assert pool_to(torch.randn(4, 10), None).shape == (4, 10)
    torch.testing.assert_close(pool_to(torch.ones(2, 6, 3), 3), torch.ones(2, 3))


def test_discriminator_step_sees_the_student_detached_and_the_student_step_leaves_d_alone():
    d, teachers = make()
    batch = {"input": torch.randn(32, 8), "target": torch.zeros(32, dtype=torch.long)}
    d_before = [p.clone() for p in d.discriminators.parameters()]
    out = d.training_step(batch)
    (w1, s_grads1, d_grads1), (w2, s_grads2, d_grads2) = d.ctx.log
    assert (w1, w2) == ("disc", "student")
    assert all(g is None for g in s_grads1)  # D's loss did not reach the student
    assert all(g is not None for g in d_grads1)
    assert all(g is not None for g in s_grads2)
    # the student's adversarial gradient on D was dropped, not applied
    assert all(p.grad is None for p in d.discriminators.parameters())
    assert any(not torch.equal(p0, p) for p0, p in zip(d_before, d.discriminators.parameters()))
    assert {"loss", "sim", "adv", "d_loss"} <= set(out)


def test_discriminator_loss_gradient_matches_the_recorded_one():
    d, _ = make(layers=False)
    batch = {"input": torch.randn(16, 8)}
    torch.manual_seed(0)
    gen_state = d.chooser.generator.get_state()
    pairs, _ = d.blocks(batch)
    d.chooser.generator.set_state(gen_state)
    D = d.discriminators[0]
    s, t = pairs[0]
    want = torch.autograd.grad(discriminator_loss(D(t), D(s.detach())), list(D.parameters()))
    d.training_step(batch)
    for a, b in zip(want, d.ctx.log[0][2]):
        torch.testing.assert_close(a, b)


def test_teachers_unchanged_and_chosen_uniformly():
    d, teachers = make(adversarial=False)
    before = [[p.clone() for p in t.parameters()] for t in teachers]
    batch = {"input": torch.randn(8, 8)}
    for _ in range(600):
        d.training_step(batch)
    for t, b in zip(teachers, before):
        assert all(torch.equal(x, y) for x, y in zip(t.parameters(), b))
        assert not t.training
    counts = d.chooser.counts
    assert sum(counts) == 600 and all(abs(c / 600 - 1 / 3) < 0.06 for c in counts)
    assert d.discriminators is None and len(d.ctx.optimizers) == 1


def test_meal_trains_missing_teachers_then_distils_through_the_engine(tiny_data):
    m = get_method("meal", {"num_teachers": 3, "adversarial": True, "student_layers": ["1"], "teacher_layers": ["1"],
                            "pooled_dim": 4})
    given = EnsembleTeacher([net(5, 32), net(6, 32)])
    before = [p.clone() for p in given.models()[0].parameters()]
    student, res = run_stages(m, student=net(0), teacher=given, train=tiny_data, val=None, train_cfg=TrainConfig(epochs=2, batch_size=40), run_dir=None, seed=0, augment=None, progress=False)
    assert list(res) == ["teacher2", "teacher3", "distill"]
    assert res["teacher2"].skipped and res["teacher2"].distiller is None  # already given: not trained
    assert not res["teacher3"].skipped
    assert len(res["teacher3"].history) == 2  # trained
    assert all(torch.equal(a, b) for a, b in zip(before, given.models()[0].parameters()))
    hist = res["distill"].history[-1]
    assert {"train/sim", "train/adv", "train/d_loss"} <= set(hist)
    assert hist["teacher0_share"] + hist["teacher1_share"] + hist["teacher2_share"] == pytest.approx(1.0)
    loader = TensorLoader(tiny_data, 240, shuffle=False)
    assert student(next(iter(loader))["input"]).shape == (240, 3)


def test_block_counts_are_checked():
    with pytest.raises(Exception, match="pair"):
        get_method("meal", {"student_layers": ["1"]})
    with pytest.raises(Exception, match="gammas"):
        MEALDistiller(net(0), [net(1)], 3, **{**MEAL_DEFAULTS, "gammas": [1.0, 1.0]})
    assert isinstance(FrozenTeacher(net(1)), FrozenTeacher)


@pytest.mark.parametrize("name", ["meal", "meal_mnist100"])
def test_quick_reproduction_reports_its_claims(name, tmp_path):
    """Both claims are judged: the discriminator's own updates are stated as the method's extra budget."""
    md = run_reproduction(name, quick=True, out_dir=tmp_path, progress=False)
    assert md.read_text().count("- **") >= 2
    data = json.loads(md.with_suffix(".json").read_text())
    assert [c["verdict"] in ("reproduced", "not reproduced") for c in data["claims"]] == [True, True]
    assert all("budgets differ as the claim states" in c["evidence"] for c in data["claims"])


def _teacher_student_logits(num_classes, n, seed):
    """Confident teacher logits (a scaled one-hot plus noise) and diffuse student logits."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(num_classes, (n,), generator=g)
    t = 6.0 * F.one_hot(y, num_classes).float() + 0.5 * torch.randn(n, num_classes, generator=g)
    s = 1.0 * F.one_hot(y, num_classes).float() + 0.5 * torch.randn(n, num_classes, generator=g)
    return t, s


@pytest.mark.parametrize("num_classes", [3, 10])
def test_discriminator_learns_to_separate_teacher_from_student_outputs(num_classes):
    # The old halving widths (3 -> 1 -> 1 -> 1 with ReLU) collapse to a constant at chance.
    for seed in range(3):
        torch.manual_seed(seed)
        D = Discriminator(num_classes)
        opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
        for step in range(300):
            t, s = _teacher_student_logits(num_classes, 64, 100 * seed + step)
            opt.zero_grad()
            discriminator_loss(D(t), D(s)).backward()
            opt.step()
        t, s = _teacher_student_logits(num_classes, 2000, 99_999)
        with torch.no_grad():
            acc = 0.5 * ((D(t) > 0).float().mean() + (D(s) < 0).float().mean())
        assert float(acc) > 0.9, (num_classes, seed, float(acc))


def test_the_students_adversarial_gradient_raises_d_of_student():
    torch.manual_seed(0)
    D = Discriminator(3)
    opt = torch.optim.Adam(D.parameters(), lr=1e-3, betas=(0.5, 0.999))
    for step in range(300):
        t, s = _teacher_student_logits(3, 64, step)
        opt.zero_grad()
        discriminator_loss(D(t), D(s)).backward()
        opt.step()
    _, s = _teacher_student_logits(3, 512, 7)
    s = s.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(generator_loss(D(s)), s)
    with torch.no_grad():
        before = D(s).mean()  # D's logit: log-odds that s came from a teacher
        after = D(s - 0.5 * g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)).mean()
    assert float(g.abs().mean()) > 1e-4  # a collapsed D gives the student no signal
    assert float(after) > float(before) + 0.5
