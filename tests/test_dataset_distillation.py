import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from joryu.data import TensorData, load
from joryu.data.distilled import DistilledSet, load_distilled, save_distilled, save_image_grid
from joryu.losses.dataset_distillation import (
    dataset_distillation_loss,
    functional_logits,
    model_state,
    saved_tensor_bytes,
    softplus_inverse,
    unrolled_sgd,
)
from joryu.methods import get_method
from joryu.methods.dataset_distillation import DatasetDistiller, train_on_distilled


def small_net(bn=False):
    torch.manual_seed(0)
    layers = [nn.Flatten(), nn.Linear(6, 5)]
    if bn:
        layers.append(nn.BatchNorm1d(5))
    layers += [nn.Tanh(), nn.Linear(5, 3)]
    return nn.Sequential(*layers).double()


def problem(steps=2, epochs=2, n_real=12):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(steps, 3, 6, generator=g, dtype=torch.float64).requires_grad_(True)
    labels = torch.arange(3).repeat(steps, 1)
    rho = torch.full((steps * epochs,), softplus_inverse(0.3), dtype=torch.float64).requires_grad_(True)
    x = torch.randn(n_real, 6, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n_real,), generator=g)
    return images, labels, rho, x, y


def test_softplus_inverse_roundtrip():
    for v in (1e-4, 0.02, 1.0, 30.0):
        assert abs(float(F.softplus(torch.tensor(softplus_inverse(v), dtype=torch.float64))) - v) < 1e-9 * max(1, v)
    with pytest.raises(ValueError):
        softplus_inverse(0.0)


def test_zero_steps_gives_zero_image_gradient():
    net = small_net()
    params, buffers = model_state(net)
    images, labels, rho, x, y = problem(steps=1, epochs=1)
    # T = 0: no inner step uses the images, so the outer loss does not depend on them
    final = unrolled_sgd(net, params, images[:0], labels[:0], F.softplus(rho)[:0], 1, buffers)
    loss = F.cross_entropy(functional_logits(net, final, buffers, x), y)
    g = torch.autograd.grad(loss, images, allow_unused=True)[0]
    assert g is None or torch.count_nonzero(g) == 0


def test_one_step_lr_gradient_matches_closed_form():
    """T = 1: dL/d eta = -grad_theta L_real(theta_1) . grad_theta l(x~, theta_0)."""
    net = small_net()
    params, buffers = model_state(net)
    images, labels, rho, x, y = problem(steps=1, epochs=1)
    lr = torch.tensor([0.3], dtype=torch.float64, requires_grad=True)
    loss = dataset_distillation_loss(net, params, images, labels, lr, x, y, 1, buffers)
    (g_lr,) = torch.autograd.grad(loss, lr)
    p0 = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    inner = F.cross_entropy(functional_logits(net, p0, buffers, images[0].detach()), labels[0])
    g_inner = torch.autograd.grad(inner, list(p0.values()))
    p1 = {k: (v - 0.3 * g).detach().requires_grad_(True) for (k, v), g in zip(p0.items(), g_inner)}
    outer = F.cross_entropy(functional_logits(net, p1, buffers, x), y)
    g_outer = torch.autograd.grad(outer, list(p1.values()))
    expected = -sum((a * b).sum() for a, b in zip(g_outer, g_inner))
    assert torch.allclose(g_lr[0], expected, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("checkpoint", [False, True])
def test_unrolled_gradient_matches_finite_differences(checkpoint):
    net = small_net()
    params, buffers = model_state(net)
    images, labels, rho, x, y = problem(steps=2, epochs=2)

    def loss_of(imgs, r):
        return dataset_distillation_loss(net, params, imgs, labels, F.softplus(r), x, y, 2, buffers,
                                         checkpoint=checkpoint)

    loss = loss_of(images, rho)
    loss.backward()
    eps = 1e-6
    for idx in [(0, 0, 0), (1, 2, 5), (0, 1, 3)]:
        e = torch.zeros_like(images)
        e[idx] = eps
        with torch.enable_grad():
            fd = (loss_of(images.detach() + e, rho.detach()) - loss_of(images.detach() - e, rho.detach())) / (2 * eps)
        assert abs(float(fd) - float(images.grad[idx])) < 1e-7, idx
    for t in range(len(rho)):
        e = torch.zeros_like(rho)
        e[t] = eps
        fd = (loss_of(images.detach(), rho.detach() + e) - loss_of(images.detach(), rho.detach() - e)) / (2 * eps)
        assert abs(float(fd) - float(rho.grad[t])) < 1e-7, t


def test_checkpointing_gives_the_same_gradient_with_less_saved_memory():
    net = small_net(bn=True)
    params, buffers = model_state(net)
    grads, mem = [], []
    for ck in (False, True):
        images, labels, rho, x, y = problem(steps=3, epochs=3)
        loss, nbytes = saved_tensor_bytes(dataset_distillation_loss, net, params, images, labels, F.softplus(rho),
                                          x, y, 3, buffers, ck)
        loss.backward()
        grads.append((images.grad, rho.grad))
        mem.append(nbytes)
    assert torch.allclose(grads[0][0], grads[1][0], atol=1e-12) and torch.allclose(grads[0][1], grads[1][1], atol=1e-12)
    assert mem[1] < mem[0]
    assert torch.equal(buffers["2.running_mean"], torch.zeros(5, dtype=torch.float64))  # caller's copy untouched


def test_unrolled_sgd_without_graph_equals_manual_sgd():
    net = small_net()
    images, labels, rho, x, y = problem(steps=2, epochs=2)
    lrs = F.softplus(rho).detach()
    ref = small_net()
    opt = torch.optim.SGD(ref.parameters(), lr=1.0)
    for t in range(4):
        for gr in opt.param_groups:
            gr["lr"] = float(lrs[t])
        opt.zero_grad()
        F.cross_entropy(ref(images[t % 2].detach()), labels[t % 2]).backward()
        opt.step()
    d = DistilledSet(images.detach(), labels, lrs, 2, 3)
    train_on_distilled(net, d)
    for a, b in zip(net.parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-12)


def test_wrong_number_of_lrs_is_an_error():
    net = small_net()
    params, _ = model_state(net)
    images, labels, rho, *_ = problem(steps=2, epochs=2)
    with pytest.raises(ValueError, match="one lr per unrolled step"):
        unrolled_sgd(net, params, images, labels, F.softplus(rho), epochs=3)


def test_distiller_learns_and_state_roundtrips(tiny_data, tmp_path):
    """Through the engine: the outer loss drops, theta_0 is untouched, the set saves and loads."""
    from joryu.config import TrainConfig
    from joryu.run.stages import run_stages

    torch.manual_seed(0)
    student = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    m = get_method("dataset_distillation", {"steps": 2, "epochs": 2, "init_lr": 0.1, "save_path": str(tmp_path / "d.safetensors")})
    cfg = TrainConfig(epochs=30, batch_size=120, lr=0.05, scheduler="constant")
    net, res = run_stages(m, student=student, teacher=None, train=tiny_data, val=tiny_data, train_cfg=cfg, run_dir=None, seed=0, augment=None, progress=False, resume=False, label="dd", num_classes=3)
    dist = res["distill"].distiller
    assert isinstance(dist, DatasetDistiller) and dist.images.shape == (2, 3, 8)
    hist = res["distill"].history
    assert hist[-1]["train/loss"] < hist[0]["train/loss"] - 0.1
    assert hist[-1]["val/acc"] > 60
    assert all(not p.requires_grad for p in dist.student.parameters())
    d = load_distilled(tmp_path / "d.safetensors")
    assert d.images.shape == (2, 3, 8) and d.epochs == 2 and len(d.lrs) == 4
    assert torch.allclose(d.lrs, dist.lrs().detach())
    assert (tmp_path / "d.png").stat().st_size > 1000
    # the deployable network is theta_0 trained on exactly the learned steps
    replay = train_on_distilled(dist.student, d, inplace=False)
    for a, b in zip(replay.parameters(), net.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_distilled_dataset_loads_for_joryu_run(tmp_path):
    d = DistilledSet(torch.randn(2, 10, 1, 8, 8), torch.arange(10).repeat(2, 1), torch.tensor([0.1] * 6), 3, 10,
                     source="digits")
    save_distilled(tmp_path / "x.safetensors", d)
    save_image_grid(d, tmp_path / "x.png")
    b = load("distilled", str(tmp_path / "x.safetensors"))
    assert isinstance(b.train, TensorData) and len(b.train) == 20 and b.input_shape == (1, 8, 8)
    assert len(b.test) == 500 and b.num_classes == 10
    assert torch.equal(b.train.targets, torch.arange(10).repeat(2))


def test_dataset_distillation_reproduction_quick(tmp_path):
    from joryu.reproduce import run_reproduction

    md = run_reproduction("dataset_distillation", quick=True, out_dir=tmp_path, progress=False)
    text = md.read_text()
    assert text.count("- **") == 4 and "QUICK smoke run" in text  # three claims and the BatchNorm one
    data = json.loads(md.with_suffix(".json").read_text())
    assert len(data["claims"]) == 4 and data["meta"]["quick"]
    assert (tmp_path / "quick" / "dataset_distillation_fixed.png").is_file()


def _manual_unroll(net, images, labels, lrs, epochs):
    """The inner loop by hand on a real module in train mode: BatchNorm updates its statistics."""
    import copy

    m = copy.deepcopy(net).train()
    steps = images.shape[0]
    for t in range(steps * epochs):
        s = t % steps
        loss = F.cross_entropy(m(images[s].detach()), labels[s])
        grads = torch.autograd.grad(loss, list(m.parameters()))
        with torch.no_grad():
            for p, g in zip(m.parameters(), grads):
                p.sub_(lrs[t].detach() * g)
    return m


@pytest.mark.parametrize("ck", [False, True])
def test_batchnorm_statistics_are_carried_through_the_unrolled_loop(ck):
    net = small_net(bn=True)
    images, labels, rho, x, y = problem(steps=3, epochs=2)
    lrs = F.softplus(rho)
    ref = _manual_unroll(net, images, labels, lrs, 2)
    params, buffers = model_state(net)
    start = {k: v.clone() for k, v in buffers.items()}
    # the final (eval-mode) loss uses the statistics the inner steps left
    loss = dataset_distillation_loss(net, params, images, labels, lrs, x, y, 2, buffers, ck)
    want = F.cross_entropy(ref.eval()(x), y)
    torch.testing.assert_close(loss, want)
    assert all(torch.equal(buffers[k], start[k]) for k in start)  # the caller's buffers are not modified
    # train_on_distilled leaves the same statistics in the model
    d = DistilledSet(images.detach(), labels, lrs.detach(), 2, 3)
    trained = train_on_distilled(small_net(bn=True), d, inplace=False)
    for (k, a), (_, b) in zip(trained.named_buffers(), ref.named_buffers()):
        torch.testing.assert_close(a, b, msg=k)
    assert not torch.equal(trained.get_buffer("2.running_mean"), start["2.running_mean"])
