import pytest
import torch
import torch.nn.functional as F
from torch import nn

from joryu.config import TrainConfig
from joryu.errors import ConfigError
from joryu.losses import dropout_distillation_loss, predictive_kl
from joryu.methods import get_method
from joryu.methods.dropout_distillation import DropoutDistillationDistiller
from joryu.reproduce import run_reproduction
from joryu.run.stages import run_stages
from joryu.teachers import FrozenTeacher, MCDropoutTeacher, dropout_modules


def dropnet(p=0.5, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Dropout(0.2 * (p > 0)), nn.Linear(8, 32), nn.ReLU(), nn.Dropout(p), nn.Linear(32, 3))


def test_loss_is_cross_entropy_with_the_teacher_softmax_and_averages_masks():
    s, t = torch.randn(5, 3), torch.randn(4, 5, 3)
    want = -(t[0].softmax(-1) * s.log_softmax(-1)).sum(-1).mean()
    torch.testing.assert_close(dropout_distillation_loss(s, t[0]), want)
    p = t.softmax(-1).mean(0)
    torch.testing.assert_close(dropout_distillation_loss(s, t), -(p * s.log_softmax(-1)).sum(-1).mean())
    torch.testing.assert_close(predictive_kl(s.softmax(-1), s), torch.tensor(0.0), atol=1e-6, rtol=0)
    assert float(predictive_kl(p, s)) > 0


def test_with_p0_the_teacher_initialised_student_is_stationary():
    teacher = dropnet(p=0.0)
    student = dropnet(p=0.0, seed=1)
    student.load_state_dict(teacher.state_dict())
    d = DropoutDistillationDistiller(student, MCDropoutTeacher(teacher), 1, 0.0)
    d.train()
    d.training_step({"input": torch.randn(64, 8)})["loss"].backward()
    assert max(float(q.grad.abs().max()) for q in d.student.parameters()) < 1e-6


def test_single_mask_gradients_average_to_the_mc_target_gradient():
    teacher = MCDropoutTeacher(dropnet(p=0.5), samples=4000)
    x = torch.randn(6, 8)
    z = torch.randn(6, 3, requires_grad=True)
    torch.manual_seed(0)
    grads = []
    for _ in range(4000):
        (g,) = torch.autograd.grad(dropout_distillation_loss(z, teacher.sample({"input": x}).logits), z)
        grads.append(g)
    mean_grad = torch.stack(grads).mean(0)
    p_bar = teacher.mean_probs({"input": x})
    (g_mc,) = torch.autograd.grad(-(p_bar * F.log_softmax(z, -1)).sum(-1).mean(), z)
    assert float((mean_grad - g_mc).abs().max()) < 3e-3
    assert float((grads[0] - g_mc).abs().max()) > 1e-2  # one mask alone is noisy: the test can fail


def test_student_is_deterministic_initialised_from_the_teacher_and_trains(tiny_data):
    teacher = dropnet()
    student = dropnet(seed=5)
    m = get_method("dropout_distillation", {"input_noise": 0.05})
    stages = m.stages()
    from joryu.methods import StageContext
    ctx = StageContext(student=student, teacher=FrozenTeacher(teacher), train_data=tiny_data, num_classes=3,
                       train_cfg=TrainConfig())
    d = stages[0].build(ctx)
    assert not dropout_modules(d.student)
    for a, b in zip(d.student.parameters(), teacher.parameters()):
        torch.testing.assert_close(a, b)
    d.train()
    x = torch.randn(4, 8)
    torch.testing.assert_close(d.student(x), d.student(x))
    torch.testing.assert_close(d.student(x), teacher.eval()(x))  # the weight-scaled teacher
    before = [q.clone() for q in teacher.parameters()]
    net, res = run_stages(m, student=dropnet(seed=6), teacher=FrozenTeacher(teacher), train=tiny_data, val=None, train_cfg=TrainConfig(epochs=2, batch_size=32), run_dir=None, seed=0, augment=None, progress=False)
    assert not dropout_modules(net)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert res["distill"].history[-1]["train/loss"] > 0


def test_wrong_teacher_or_student_is_a_config_error(tiny_data):
    m = get_method("dropout_distillation")
    with pytest.raises(ConfigError, match="no dropout"):
        run_stages(m, student=dropnet(), teacher=FrozenTeacher(nn.Linear(8, 3)), train=tiny_data, val=None, train_cfg=TrainConfig(epochs=1), run_dir=None, seed=0, augment=None, progress=False)
    with pytest.raises(ConfigError, match="architecture"):
        run_stages(m, student=nn.Linear(8, 3), teacher=FrozenTeacher(dropnet()), train=tiny_data, val=None, train_cfg=TrainConfig(epochs=1), run_dir=None, seed=0, augment=None, progress=False)


def test_quick_reproduction_reports_its_claims(tmp_path):
    md = run_reproduction("dropout_distillation", quick=True, out_dir=tmp_path, progress=False)
    text = md.read_text()
    assert text.count("- **") == 2 and "KL" in text
