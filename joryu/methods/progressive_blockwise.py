"""Wang, Zhao, Li & Tan (2018), "Progressive Blockwise Knowledge Distillation for Neural Network
Acceleration", IJCAI 2018.

The teacher is split into blocks T_1..T_N (module paths, configuration). Each student block S_i
is T_i with **every convolution's filters halved** (``ratio``) plus a **1x1 convolution restoring
the block's output channels**, so it has the same input and output shapes. Blocks are replaced
**one at a time from the input side**: step i trains S_i inside the hybrid network
[S_1..S_i, T_{i+1}..T_N] (the head and every part outside the blocks are copies of the teacher's),
then S_i stays. The result is the all-student network. One engine stage per block, plus an optional
fine-tuning stage.

Loss of step i (``loss``, the paper's exact choice is unverified; both are offered):
- ``"output_kd"`` (default): KD at the hybrid's output, alpha * T^2 KL(p_T^T || p_H^T) + (1 - alpha) CE.
- ``"local"``: the local L2 || S_i(h_{i-1}) - T_i(t_{i-1}) ||^2 between the student block's output in
  the hybrid and the teacher block's output on the same input image (batch mean); the hybrid's forward
  pass stops after S_i.

Documented options for the unverified details (docs/methods/progressive_blockwise.md): ``freeze_earlier`` (S_1..S_{i-1}
frozen during step i, default True), a final fine-tune of the whole student (``finetune``,
``finetune_loss`` kd or ce), ``step_epochs``/``step_lr`` per block. Teacher-copied parts are always
frozen during the block steps and kept in eval mode, so T_{i+1}..T_N stay bit-identical to the
teacher's (batch-norm statistics included).

Deviations and best guesses:
- The student (``student_blocks``): ``"halve"`` (default) derives S_i from the teacher's blocks; the
  configured ``student`` must then be the teacher's architecture (it only fixes which network is
  meant) and a different one is refused with one line. ``"student"`` honours the configured
  student: S_i is (a copy of) the student's module at each block path, which must give the
  teacher block's output shape; everything outside the blocks is still the teacher's. The block
  paths are required (e.g. a zoo model's ``feature_layers``).
- Automatic halving supports blocks that are (nested) ``nn.Sequential`` of convolutions (groups = 1),
  linear layers, batch norms and parameter-free layers (activations, pooling, dropout); other blocks
  raise an error. A block of a single layer shrinks little (the restoring layer adds back about
  half of what halving saved): on LeNet-5 with its two conv blocks only, 21.4k -> 20.3k parameters,
  because the fully connected layers hold most weights; adding ``fc1``/``fc2`` as blocks halves
  those too. Blocks whose student is not smaller than the teacher's are refused.
- Student blocks start from a fresh initialisation; the 1x1 restoring convolution is linear (no
  batch norm or activation after it).
- Speed-up is reported as the ratio of multiply-accumulates (convolutions and linear layers) and of
  parameters (``blockwise_cost``), not wall-clock time.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from pydantic import Field
from torch import nn

from joryu.distiller import Distiller
from joryu.errors import ConfigError
from joryu.losses import feature_l2_loss, kd_loss
from joryu.methods._features import (
    count_macs,
    on_device_of,
    run_until,
    sample_input,
    tapped_teacher,
)
from joryu.methods.base import (
    Baseline,
    DefaultsEvidence,
    Method,
    Params,
    Stage,
    StageContext,
    register_method,
)
from joryu.methods.kd import kd_objective
from joryu.outputs import forward
from joryu.taps import Taps, resolve
from joryu.teachers import prepare_for

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _halve(seq: nn.Module, c_in: int, ratio: float, path: str):
    """Rebuild ``seq`` with each conv's out_channels * ratio; returns (module, channels out, conv type)."""
    new, conv_type = [], None
    for name, m in seq.named_children():
        where = f"{path}.{name}"
        if isinstance(m, nn.Sequential):
            sub, c_in, ct = _halve(m, c_in, ratio, where)
            new.append(sub)
            conv_type = ct or conv_type
        elif isinstance(m, nn.Linear):
            out = max(1, int(round(m.out_features * ratio)))
            new.append(nn.Linear(c_in, out, bias=m.bias is not None))
            c_in, conv_type = out, nn.Linear
        elif isinstance(m, CONVS):
            if m.groups != 1:
                raise ConfigError(f"{where}: grouped convolutions cannot be halved automatically")
            out = max(1, int(round(m.out_channels * ratio)))
            new.append(type(m)(c_in, out, m.kernel_size, m.stride, m.padding, m.dilation, bias=m.bias is not None,
                               padding_mode=m.padding_mode))
            c_in, conv_type = out, type(m)
        elif isinstance(m, NORMS):
            new.append(type(m)(c_in, m.eps, m.momentum, m.affine, m.track_running_stats))
        elif not any(True for _ in m.parameters()) and not any(True for _ in m.buffers()):
            new.append(copy.deepcopy(m))
        else:
            raise ConfigError(f"{where}: cannot halve a {type(m).__name__} automatically (supported: nn.Sequential "
                              "of convolutions, linear layers, batch norms and parameter-free layers)")
    return nn.Sequential(*new), c_in, conv_type


def _weighted(block: nn.Module) -> list[nn.Module]:
    layers = [m for m in block.modules() if isinstance(m, (*CONVS, nn.Linear))]
    if not layers:
        raise ConfigError("a block to replace must contain at least one convolution or linear layer")
    return layers


def _out_channels(block: nn.Module) -> int:
    last = _weighted(block)[-1]
    return last.out_features if isinstance(last, nn.Linear) else last.out_channels


def student_block(teacher_block: nn.Module, ratio: float = 0.5) -> nn.Module:
    """S_i from T_i: every convolution's filters (every linear layer's units) multiplied by
    ``ratio`` (halved), then a 1x1 convolution (a linear layer) restoring T_i's output channels.
    Same input and output shapes as T_i."""
    if not isinstance(teacher_block, nn.Sequential):
        raise ConfigError(f"automatic student blocks need an nn.Sequential block, got {type(teacher_block).__name__}")
    first = _weighted(teacher_block)[0]
    c_in = first.in_features if isinstance(first, nn.Linear) else first.in_channels
    body, c, kind = _halve(teacher_block, c_in, ratio, "block")
    restore = nn.Linear(c, _out_channels(teacher_block)) if kind is nn.Linear else kind(c, _out_channels(teacher_block), 1)
    return nn.Sequential(body, restore)


def _same_architecture(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(sa[k].shape == sb[k].shape for k in sa)


def _check_smaller(teacher: nn.Module, blocks: list[str], new: list[nn.Module]) -> None:
    before = sum(p.numel() for b in blocks for p in resolve(teacher, b).parameters())
    after = sum(p.numel() for m in new for p in m.parameters())
    if after >= before:
        raise ConfigError(f"progressive_blockwise: the student blocks have {after} parameters, the teacher's "
                          f"{before}: the student would not be smaller; lower ratio or choose blocks with more "
                          "than one layer (a single layer plus its restoring layer barely shrinks)")


def replace_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = resolve(model, parent_path) if parent_path else model
    resolve(model, path)
    setattr(parent, name, new)


def blockwise_student(teacher: nn.Module, blocks: list[str], ratio: float = 0.5) -> nn.Module:
    """The final student architecture: a copy of ``teacher`` with every block replaced by a fresh S_i."""
    net = copy.deepcopy(teacher)
    for p in net.parameters():
        p.requires_grad_(True)
    for path in blocks:
        replace_module(net, path, student_block(resolve(teacher, path), ratio))
    return net


def blockwise_cost(teacher: nn.Module, student: nn.Module, x) -> dict:
    """MACs and parameter counts of both networks and the teacher/student ratios."""
    tm, sm = count_macs(teacher, x), count_macs(student, x)
    tp, sp = sum(p.numel() for p in teacher.parameters()), sum(p.numel() for p in student.parameters())
    return {"teacher_macs": tm, "student_macs": sm, "mac_ratio": tm / sm, "teacher_params": tp,
            "student_params": sp, "param_ratio": tp / sp}


class BlockStepDistiller(Distiller):
    """Step i: train S_i (and S_<i unless frozen) inside the hybrid network."""

    def __init__(self, hybrid, teacher, step: int, blocks: list[str], loss: str,
                 freeze_earlier: bool, temperature: float, alpha: float, input_key: str = "input"):
        super().__init__(hybrid, [teacher], input_key)
        self.teacher = teacher
        self.path = blocks[step]
        self.loss_kind = loss
        self.temperature, self.alpha = temperature, alpha
        trained = blocks[: step + 1] if not freeze_earlier else [blocks[step]]
        self.trained_modules = [resolve(hybrid, p) for p in trained]
        ids = {id(p) for m in self.trained_modules for p in m.parameters()}
        for p in hybrid.parameters():
            p.requires_grad_(id(p) in ids)
        self.frozen_modules = [m for m in hybrid.modules()
                               if not any(m is t or _contains(t, m) for t in self.trained_modules)
                               and not any(_contains(m, t) for t in self.trained_modules)]
        self.taps = Taps(hybrid, {"block": self.path}) if loss == "local" else None

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.frozen_modules:
            m.eval()
        return self

    def trainable_parameters(self):
        return [p for m in self.trained_modules for p in m.parameters()]

    def training_step(self, batch):
        if self.loss_kind == "local":
            run_until(self.student, self.path, batch[self.input_key])
            out = self.taps.pop()["block"]
            loss = feature_l2_loss(out, self.teacher(batch).features["block"])
            return {"loss": loss, "local": loss}
        t_logits = self.teacher(batch).logits
        logits = forward(self.student, batch, self.input_key)
        return kd_objective(logits, t_logits, batch["target"], self.temperature, self.alpha)

    def release(self) -> None:
        if self.taps is not None:
            self.taps.remove()
        if getattr(self.teacher, "taps", None) is not None:
            self.teacher.taps.remove()


def _contains(outer: nn.Module, inner: nn.Module) -> bool:
    return outer is not inner and any(m is inner for m in outer.modules())


class FinetuneDistiller(Distiller):
    """The whole student: KD (alpha * T^2 KL + (1 - alpha) CE) or plain CE."""

    def __init__(self, student, teacher, loss: str, temperature: float, alpha: float):
        super().__init__(student, [teacher])
        for p in student.parameters():
            p.requires_grad_(True)
        self.teacher, self.loss_kind = teacher, loss
        self.temperature, self.alpha = temperature, alpha

    def training_step(self, batch):
        logits = forward(self.student, batch, self.input_key)
        ce = F.cross_entropy(logits, batch["target"])
        if self.loss_kind == "ce":
            return {"loss": ce, "ce": ce}
        soft = kd_loss(logits, self.teacher(batch).logits, self.temperature)
        return {"loss": self.alpha * soft + (1 - self.alpha) * ce, "kd": soft, "ce": ce}


@dataclass
class BlockwiseState:
    """What the block steps hand on: the hybrid network (the teacher's copy whose blocks are
    replaced one step at a time, and the final student) and the student block of each path."""

    hybrid: nn.Module
    blocks: list[nn.Module]


class ProgressiveBlockwiseParams(Params):
    blocks: list[str] = Field(..., min_length=1, description="teacher module paths of the blocks, input side first")
    ratio: float = Field(0.5, gt=0, le=1, description="fraction of each conv's filters kept in a student block")
    student_blocks: Literal["halve", "student"] = Field(
        "halve", description="halve the teacher's blocks, or use the configured student's modules at the block paths")
    loss: Literal["output_kd", "local"] = Field("output_kd", description="loss of each block step")
    freeze_earlier: bool = Field(True, description="keep S_1..S_{i-1} frozen during step i")
    step_epochs: int | None = Field(None, ge=1, description="epochs per block step (default: the run's epochs)")
    step_lr: float | None = Field(None, gt=0, description="learning rate of the block steps (default: the run's)")
    finetune: bool = Field(True, description="fine-tune the whole student after the last block")
    finetune_loss: Literal["kd", "ce"] = Field("kd", description="loss of the final fine-tune")
    finetune_epochs: int | None = Field(None, ge=1, description="fine-tune epochs (default: the run's epochs)")
    temperature: float = Field(4.0, gt=0, description="KD temperature (output_kd steps and fine-tune)")
    alpha: float = Field(0.9, ge=0, le=1, description="KD weight; 1 - alpha on the labels")


@register_method("progressive_blockwise",
                 paper="Wang, Zhao, Li & Tan 2018, Progressive Blockwise Knowledge Distillation, IJCAI")
class ProgressiveBlockwise(Method):
    Params = ProgressiveBlockwiseParams
    defaults_evidence = DefaultsEvidence(
        hurts=False, ran=False, source="results/defaults/progressive_blockwise.md",
        regime="Not checked: the method builds its student by thinning the teacher's own blocks, so it "
               'applies only where the student is a thinned copy of the teacher; every pair of the check '
               'pairs different architectures. On mnist100 with a convnet teacher '
               '(results/progressive_blockwise_mnist100.md) it was +0.26 over the thin network from scratch, '
               'not a reproduced gain.')

    def new_state(self, ctx: StageContext) -> BlockwiseState:
        """The hybrid network (a copy of the teacher) and the student block of each path."""
        p = self.params
        teacher = getattr(ctx.teacher, "model", None)
        if not isinstance(teacher, nn.Module):
            raise ConfigError("progressive_blockwise builds the student from the teacher's network: the "
                              "teacher must be a single network (a FrozenTeacher)")
        if p.student_blocks == "halve":
            if ctx.student is not None and not _same_architecture(ctx.student, teacher):
                raise ConfigError(f"progressive_blockwise builds its student by halving the teacher's blocks; "
                                  f"the configured student ({type(ctx.student).__name__}, "
                                  f"{sum(q.numel() for q in ctx.student.parameters())} parameters) is not the "
                                  "teacher's architecture: configure the teacher's, or set student_blocks: "
                                  "student to use the student's modules at the block paths")
            new = [student_block(resolve(teacher, b), p.ratio) for b in p.blocks]
            _check_smaller(teacher, p.blocks, new)
        else:
            new = [_student_module(ctx, teacher, b) for b in p.blocks]
        return BlockwiseState(hybrid=copy.deepcopy(teacher), blocks=new)

    def stages(self):
        p = self.params

        def build_step(i):
            def build(ctx: StageContext[BlockwiseState]):
                hybrid = ctx.state.hybrid
                replace_module(hybrid, p.blocks[i], ctx.state.blocks[i])
                teacher = (tapped_teacher(ctx.teacher, {"block": p.blocks[i]}) if p.loss == "local"
                           else prepare_for(ctx))
                return BlockStepDistiller(hybrid, teacher, i, p.blocks, p.loss, p.freeze_earlier, p.temperature,
                                          p.alpha)
            return build

        def build_finetune(ctx: StageContext[BlockwiseState]):
            return FinetuneDistiller(ctx.state.hybrid, prepare_for(ctx), p.finetune_loss, p.temperature, p.alpha)

        step_train = {}
        if p.step_epochs is not None:
            step_train["epochs"] = p.step_epochs
        if p.step_lr is not None:
            step_train["lr"] = p.step_lr
        stages = [Stage(f"block{i + 1}", build_step(i), dict(step_train), after=_release)
                  for i in range(len(p.blocks))]
        if p.finetune:
            ft = {"epochs": p.finetune_epochs} if p.finetune_epochs is not None else {}
            stages.append(Stage("finetune", build_finetune, ft))
        return stages


    def deployed_network(self, student, teacher):
        """The all-student network: the teacher with every block replaced by its student block."""
        model = getattr(teacher, "model", teacher)
        hybrid = copy.deepcopy(model)
        for b in self.params.blocks:
            replace_module(hybrid, b, student_block(resolve(model, b), self.params.ratio))
        return hybrid

    def baselines(self):
        """The student alone: the network the method builds (derived from the teacher), every
        parameter re-initialised, trained with cross-entropy under the run's train config."""

        def alone(b):
            net = copy.deepcopy(b.deployed)
            for m in net.modules():
                if hasattr(m, "reset_parameters"):
                    m.reset_parameters()
            for q in net.parameters():
                q.requires_grad_(True)
            return b.train(net.train())

        return [Baseline("student alone (same network, from scratch)", alone, folder="baseline")]


def _student_module(ctx, teacher: nn.Module, path: str) -> nn.Module:
    """The configured student's module at ``path`` (a trainable copy), checked to give the teacher
    block's output shape on a sample batch."""
    if ctx.student is None:
        raise ConfigError("progressive_blockwise with student_blocks: student needs a configured student")
    try:
        module = resolve(ctx.student, path)
    except Exception:  # noqa: BLE001 - a TapError naming the valid paths
        raise ConfigError(f"progressive_blockwise: the student has no module at block path {path!r}; give a "
                          "student with the teacher's block paths or use student_blocks: halve") from None
    key = getattr(ctx.teacher, "input_key", "input")
    x = sample_input(ctx.train_data, key)
    shapes = {}
    for name, net in (("teacher", teacher), ("student", ctx.student)):
        taps = Taps(net, {"b": path}, detach=True)
        was = net.training
        net.eval()
        try:
            import torch

            with torch.no_grad():
                forward(net, {key: on_device_of(net, x)}, key)
            shapes[name] = tuple(taps.pop()["b"].shape[1:])
        finally:
            taps.remove()
            net.train(was)
    if shapes["teacher"] != shapes["student"]:
        raise ConfigError(f"progressive_blockwise: the student's {path!r} gives {shapes['student']}, the teacher's "
                          f"{shapes['teacher']}: a student block must keep the block's output shape")
    m = copy.deepcopy(module)
    for q in m.parameters():
        q.requires_grad_(True)
    return m.train()

def _release(ctx, distiller):
    """End of a block step: take the taps off; the hybrid's parameters are trainable again for the user."""
    distiller.release()
    for p in distiller.student.parameters():
        p.requires_grad_(True)
