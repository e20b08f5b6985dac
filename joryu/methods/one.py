"""Lan, Zhu & Gong (2018), "Knowledge Distillation by On-the-Fly Native Ensemble" (ONE), NeurIPS.

One network becomes a multi-branch network: the layers up to ``trunk_end`` (a module path) are
shared; m branches (default 3) each hold their own copy of the rest of the network. A gate on the
shared features weighs the branches and the gated sum of the branch logits is the on-the-fly
teacher (see ``joryu.losses.one_loss``):

    g   = softmax(ReLU(BN(W · GAP(h))))                     h: the trunk's output
    z_e = sum_i g_i z_i
    L   = sum_i CE(y, z_i) + CE(y, z_e) + w(t) · sum_i T^2 · KL(softmax(z_e/T) || softmax(z_i/T)),  T = 3

The teacher is detached in the KL terms, so the KL never trains the gate.

Any backbone works: branch 0 *is* the student (trunk + its own head), run by its unmodified
``forward``; the trunk's output is read with a hook. Branches 1..m-1 are copies of the student in
which the trunk-end module is replaced by a stub that returns the shared features ``h``, so their
heads see the shared trunk and send gradients into it. Trunk layers that only run before the trunk
end are stubbed out of the copies (pass-through), which removes their parameters and compute; this
is checked at build time (a copy with the student's weights must reproduce the student's output).
If the check fails (e.g. the forward reuses a trunk value after the trunk end, or reshapes inside
the trunk), the copies call the student's own trunk layers instead (shared, not copied): still
correct, at the price of recomputing the trunk per branch. The heads of branches 1..m-1 get fresh
initialisations (seeded from the run).

Evaluation reports ``one`` (branch 0 alone: the student at its original size, the deployable),
``one_e`` (mean of all branch logits), ``gated`` (the training-time teacher z_e) and every branch.

Deviations and best guesses:
- ``rampup_epochs``: the code's w(t) = exp(-5 (1 - t/80)^2) over 80 epochs is not in the paper;
  it is an option, off by default (w = 1, the paper's Eq.), updated once per epoch as in the code.
- ``trunk_end`` defaults to the second-to-last entry of the model's ``feature_layers`` (for the zoo's
  CIFAR ResNets that is ``layer2``: conv1, stage 1 and 2 shared, stage 3 + FC per branch, as in the
  paper); other models must name it.
- ONE-E averages the branch logits (best guess; the paper says the ensemble of the branches).
- The paper's optimiser (SGD 0.1, momentum 0.9, wd 1e-4, batch 128, 300 epochs, lr x0.1 at 151 and
  225) belongs to the experiment's ``train`` section; nothing here fixes it.
- m = 1 is allowed: the gate is 1, z_e = z_0, the KL vanishes and the loss is 2 CE (plain training).
"""

from __future__ import annotations

import copy
import warnings

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from joryu.distiller import Distiller
from joryu.errors import ConfigError
from joryu.losses import gated_logits, one_loss, sigmoid_rampup
from joryu.methods.base import DefaultsEvidence, Method, Params, Stage, register_method
from joryu.models.reinit import reinitialise, seed_from
from joryu.outputs import forward, unwrap_feature


class _Inject(nn.Module):
    """Stands in for the trunk-end module of a branch copy: returns the shared trunk features."""

    def __init__(self):
        super().__init__()
        self.value = None

    def forward(self, *args, **kwargs):
        if self.value is None:
            raise RuntimeError("branch called without shared features")
        return self.value


class _Pass(nn.Module):
    """Stands in for a trunk-only layer of a branch copy: cheap pass-through of its first input."""

    def forward(self, x, *args, **kwargs):
        return x


class _Shared(nn.Module):
    """Calls the student's own module without registering it again (no duplicate parameters)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self._target = [module]

    def forward(self, *args, **kwargs):
        return self._target[0](*args, **kwargs)


def _set_module(root: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if isinstance(parent, (nn.Sequential, nn.ModuleList)) and name.isdigit():
        parent[int(name)] = new
    else:
        setattr(parent, name, new)


def _trace_calls(model: nn.Module, sample: torch.Tensor, trunk_end: str):
    """Run ``model`` once; return (trunk features, paths of leaves that only run before the trunk end)."""
    names = {m: n for n, m in model.named_modules()}
    end = model.get_submodule(trunk_end)
    clock = {"t": 0, "end": None, "feat": None, "calls": 0}
    last_call: dict[str, int] = {}
    handles = []

    def leaf_hook(mod, inp, out):
        clock["t"] += 1
        last_call[names[mod]] = clock["t"]

    def end_hook(mod, inp, out):
        clock["t"] += 1
        clock["calls"] += 1
        clock["end"] = clock["t"]
        clock["feat"] = unwrap_feature(out)

    for m in model.modules():
        if m is end:
            handles.append(m.register_forward_hook(end_hook))
        elif not list(m.children()):
            handles.append(m.register_forward_hook(leaf_hook))
    try:
        model(sample)
    finally:
        for h in handles:
            h.remove()
    if clock["calls"] != 1:
        raise ConfigError(f"one: trunk_end {trunk_end!r} ran {clock['calls']} times in a forward pass; "
                          "it must run exactly once")
    inside = {n for n, _ in end.named_modules(prefix=trunk_end)}
    trunk = [n for n, t in last_call.items() if t < clock["end"] and n not in inside]
    return clock["feat"], trunk


class MultiBranch(nn.Module):
    """The ONE network built from ``student``: shared trunk, ``m`` branches, gate. Branch 0 is the student."""

    def __init__(self, student: nn.Module, trunk_end: str, num_branches: int, sample: torch.Tensor,
                 seed: int = 0):
        super().__init__()
        names = dict(student.named_modules())
        if trunk_end not in names or trunk_end == "":
            close = [n for n in names if n][:30]
            raise ConfigError(f"one: no module {trunk_end!r} in {type(student).__name__}; module paths: "
                              f"{', '.join(close)}")
        self.student = student
        self.trunk_end = trunk_end
        self.num_branches = num_branches
        was = student.training
        student.eval()
        with torch.no_grad():
            feat, trunk = _trace_calls(student, sample, trunk_end)
            ref = forward(student, {"input": sample})
        student.train(was)
        channels = feat.shape[1]
        self.heads = nn.ModuleList()
        self.fast = True
        for i in range(1, num_branches):
            head, fast = self._make_head(student, trunk, sample, feat, ref)
            self.fast = self.fast and fast
            skip = {id(m) for m in head.modules() if isinstance(m, (_Inject, _Pass, _Shared))}
            reinitialise(head, seed + i, skip=skip)
            self.heads.append(head)
        if not self.fast:
            warnings.warn("one: the branch copies could not skip the trunk (a trunk value is used after "
                          f"{trunk_end!r}, or the trunk reshapes its input); they reuse the shared trunk "
                          "layers and recompute them per branch", stacklevel=2)
        self._injects = [next(m for m in h.modules() if isinstance(m, _Inject)) for h in self.heads]
        self.gate_fc = nn.Linear(channels, num_branches)
        self.gate_bn = nn.BatchNorm1d(num_branches)

    def _make_head(self, student, trunk, sample, feat, ref):
        """A copy of the student whose trunk end returns the shared features; checked against ``ref``."""
        for fast in (True, False):
            head = copy.deepcopy(student)
            for path in trunk:
                _set_module(head, path, _Pass() if fast else _Shared(student.get_submodule(path)))
            inject = _Inject()
            _set_module(head, self.trunk_end, inject)
            was = student.training
            student.eval()
            head.eval()
            try:
                with torch.no_grad():
                    inject.value = feat
                    out = forward(head, {"input": sample})
                ok = out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
            except Exception:  # noqa: BLE001 - the fast path may fail; the shared path is the fallback
                if not fast:
                    raise
                ok = False
            finally:
                inject.value = None
                student.train(was)
                head.train()
            if ok:
                return head, fast
        raise ConfigError(f"one: the network after {self.trunk_end!r} does not depend on that module's "
                          "output alone; choose another trunk_end")

    def _trunk_and_branch0(self, x):
        feats = []
        hook = self.student.get_submodule(self.trunk_end).register_forward_hook(
            lambda m, i, o: feats.append(unwrap_feature(o)))
        try:
            z0 = forward(self.student, {"input": x})
        finally:
            hook.remove()
        return feats[0], z0

    def gate(self, feat: torch.Tensor) -> torch.Tensor:
        """g = softmax(ReLU(BN(W · GAP(h)))), shape (B, m)."""
        pooled = feat.mean(dim=tuple(range(2, feat.dim()))) if feat.dim() > 2 else feat
        return F.softmax(F.relu(self.gate_bn(self.gate_fc(pooled))), dim=-1)

    def forward(self, x) -> tuple[list[torch.Tensor], torch.Tensor]:
        """(branch logits [z_0 .. z_{m-1}], gate (B, m))."""
        feat, z0 = self._trunk_and_branch0(x)
        logits = [z0]
        for head, inject in zip(self.heads, self._injects):
            inject.value = feat
            try:
                logits.append(forward(head, {"input": x}))
            finally:
                inject.value = None
        return logits, self.gate(feat)


class ONEDistiller(Distiller):
    def __init__(self, net: MultiBranch, temperature: float, rampup_epochs: float,
                 input_key: str = "input"):
        super().__init__(net.student, (), input_key)
        self.net = net
        self.temperature = temperature
        self.rampup_epochs = rampup_epochs
        self.kd_weight = sigmoid_rampup(0, rampup_epochs)

    def on_epoch_start(self, epoch, num_epochs):
        self.kd_weight = sigmoid_rampup(epoch, self.rampup_epochs)

    def training_step(self, batch):
        logits, gate = self.net(batch[self.input_key])
        out = one_loss(logits, gate, batch["target"], self.temperature, self.kd_weight)
        out["kd_weight"] = torch.tensor(self.kd_weight)
        return out

    @torch.no_grad()
    def eval_logits(self, batch):
        logits, gate = self.net(batch[self.input_key])
        out = {"one": logits[0], "one_e": torch.stack(logits).mean(0), "gated": gated_logits(logits, gate)}
        if len(logits) > 1:
            out.update({f"branch{i}": z for i, z in enumerate(logits)})
        return out

    def deployable(self):
        return self.student


class ONEParams(Params):
    trunk_end: str | None = Field(None, description="module path where the shared trunk ends (default: "
                                                    "the model's feature_layers[-2])")
    num_branches: int = Field(3, ge=1, description="m, the number of branches (3 in the paper)")
    temperature: float = Field(3.0, gt=0, description="T of the KL to the gated ensemble")
    rampup_epochs: float = Field(0.0, ge=0, description="w(t) ramp-up length in epochs (code: 80); 0 = off, w = 1")


def _sample(data, input_key="input"):
    if hasattr(data, "tensors"):
        return data.prepare_input(data.tensors[input_key][:4])
    return torch.stack([data[i][input_key] for i in range(min(4, len(data)))])


@register_method("one", paper="Lan, Zhu & Gong 2018, Knowledge Distillation by On-the-Fly Native Ensemble, NeurIPS")
class ONE(Method):
    Params = ONEParams
    needs_teacher = False
    defaults_evidence = DefaultsEvidence(
        hurts=True, source="results/defaults/one.md",
        regime="Mean gain over the student alone -0.26 points across the four pairs it runs on (3 seeds, "
               "interval -1.42 .. +0.91; an MLP without feature_layers needs trunk_end): level or slightly "
               "above it on mnist100 (convnet +0.13) and MNIST-5000 (MLP +0.00), slightly below with lenet5 "
               "(-0.17) and below on MNIST-1D (MLP -0.99); T = 1 was -0.09, not enough to change the "
               "default. Every interval contains zero: expect about the student alone, not a gain.")

    def stages(self):
        p = self.params

        def build(ctx):
            student = ctx.student
            trunk_end = p.trunk_end
            if trunk_end is None:
                layers = getattr(student, "feature_layers", None)
                if not layers or len(layers) < 2:
                    raise ConfigError("one: set method.params.trunk_end (the module path where the shared "
                                      "trunk ends); this model lists no feature_layers to default from")
                trunk_end = layers[-2]
            net = MultiBranch(student, trunk_end, p.num_branches, _sample(ctx.train_data), seed_from(student))
            return ONEDistiller(net, p.temperature, p.rampup_epochs)

        return [Stage("one", build)]
