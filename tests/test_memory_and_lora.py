"""train.gradient_checkpointing (same loss and gradients, lower peak memory) and LoRA students
(only the adapters train; they save and load back; the report states trainable parameters)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import joryu
from joryu.errors import ConfigError
from joryu.models import create
from joryu.models.checkpointing import enable_gradient_checkpointing
from joryu.report.deploy import peak_bytes


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def train_step(model, batch, inputs):
    """CE loss of one forward and backward; returns (loss, gradients, peak bytes of the step)."""
    model.zero_grad(set_to_none=True)
    out = {}

    def step():
        args = {k: batch[v] for k, v in inputs.items()}
        logits = model(**args)
        logits = getattr(logits, "logits", logits)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch["target"].reshape(-1))
        loss.backward()
        out["loss"] = loss.detach()
        return None

    known = [*model.parameters(), *model.buffers(), *batch.values()]
    peak = peak_bytes(step, known)
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    return out["loss"], grads, peak


def check_checkpointing(model, batch, inputs, at_most=0.8):
    plain = copy.deepcopy(model).train()
    ckpt = copy.deepcopy(model).train()
    enable_gradient_checkpointing(ckpt)
    torch.manual_seed(0)
    loss_a, grads_a, peak_a = train_step(plain, batch, inputs)
    torch.manual_seed(0)
    loss_b, grads_b, peak_b = train_step(ckpt, batch, inputs)
    assert torch.allclose(loss_a, loss_b, rtol=1e-6, atol=1e-7)
    assert len(grads_a) == len(grads_b)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(grads_a, grads_b))
    assert peak_b < at_most * peak_a, (peak_a, peak_b)
    return plain, ckpt


def test_checkpointing_a_zoo_lm_keeps_loss_and_gradients_and_lowers_peak_memory():
    torch.manual_seed(0)
    net = create("byte_conv_lm", num_classes=64, width=32, layers=4)
    ids = torch.randint(1, 64, (8, 64))
    check_checkpointing(net, {"input_ids": ids, "target": torch.roll(ids, -1, 1)}, {"input_ids": "input_ids"})


def test_checkpointing_a_resnet_counts_batchnorm_statistics_once():
    torch.manual_seed(0)
    net = create("resnet8", num_classes=10, input_shape=(3, 16, 16))
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 10, (8,))
    plain, ckpt = check_checkpointing(net, {"input": x, "target": y}, {"x": "input"}, at_most=0.9)  # 3 stages of one block
    for (name, a), (_, b) in zip(plain.named_buffers(), ckpt.named_buffers()):
        assert torch.allclose(a.float(), b.float(), rtol=1e-5, atol=1e-7), name


def test_checkpointing_a_gpt2_keeps_loss_and_gradients_and_lowers_peak_memory():
    pytest.importorskip("transformers")
    from joryu.models.hf import gpt2_lm

    torch.manual_seed(0)
    net = gpt2_lm(vocab_size=64, hidden_size=32, layers=4, max_len=64, dropout=0.1)
    ids = torch.randint(1, 64, (4, 64))
    check_checkpointing(net, {"input_ids": ids, "target": torch.roll(ids, -1, 1)}, {"input_ids": "input_ids"})


def test_the_engine_option_gives_the_same_training_and_refuses_a_network_without_blocks(tiny_data):
    def run(flag):
        torch.manual_seed(0)
        net = create("mlp", num_classes=3, input_shape=(8,), hidden=[16, 16])
        _, m = joryu.distill(None, net, tiny_data, method="supervised", epochs=2, batch_size=32,
                             gradient_checkpointing=flag, progress=False)
        return [h["train/loss"] for h in m["train"]["history"]]

    assert run(True) == pytest.approx(run(False), rel=1e-6)
    with pytest.raises(ConfigError, match="gradient_checkpointing"):
        joryu.distill(None, nn.Sequential(nn.Linear(8, 3)), tiny_data, method="supervised", epochs=1,
                      gradient_checkpointing=True, progress=False)


# --------------------------------------------------------------------------- LoRA students
INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}


def test_a_lora_student_trains_only_its_adapters_which_save_and_load_back(tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from joryu.data import load
    from joryu.models.hf import gpt2_lm
    from joryu.models.lora import apply_lora, load_adapters, parameter_counts, save_adapters
    from joryu.outputs import forward

    b = load("synthetic_lm", num_samples=48, test_samples=8, vocab_size=32, max_len=16)
    torch.manual_seed(0)
    teacher = gpt2_lm(vocab_size=32, hidden_size=32, layers=2, max_len=16)
    torch.manual_seed(1)
    base = gpt2_lm(vocab_size=32, hidden_size=16, layers=1, max_len=16)
    base_before = {k: v.clone() for k, v in base.state_dict().items()}
    student = apply_lora(base, r=4, alpha=8)
    counts = parameter_counts(student)
    assert 0 < counts["trainable"] < counts["total"] / 5
    lora_before = {n: p.clone() for n, p in student.named_parameters() if p.requires_grad}
    student, _ = joryu.distill(teacher, student, b.train, method="kd", inputs=INPUTS, alpha=1.0,
                               temperature=1.0, epochs=2, batch_size=16, lr=1e-2, progress=False)
    after = student.get_base_model().state_dict()
    for k, v in base_before.items():  # peft's layers hold the base weights under base_layer
        key = k if k in after else k.replace(".weight", ".base_layer.weight").replace(".bias", ".base_layer.bias")
        assert torch.equal(after[key], v), k
    assert any(not torch.equal(p, lora_before[n]) for n, p in student.named_parameters() if n in lora_before)

    folder = save_adapters(student, tmp_path / "adapter")
    assert (folder / "adapter_model.safetensors").is_file()
    torch.manual_seed(1)
    again = load_adapters(gpt2_lm(vocab_size=32, hidden_size=16, layers=1, max_len=16), folder)
    batch = {k: v[:4] for k, v in b.test.tensors.items()}
    student.eval()
    with torch.no_grad():
        assert torch.allclose(forward(again, batch, INPUTS), forward(student, batch, INPUTS), atol=1e-6)


def test_a_config_lora_student_writes_its_adapters_and_the_report_states_trainable_parameters(tmp_path):
    pytest.importorskip("peft")
    pytest.importorskip("transformers")
    from pathlib import Path

    from joryu.cli import main

    cfg = Path(__file__).resolve().parents[1] / "configs" / "hf_gpt2_lm.yaml"
    out = tmp_path / "run"
    code = main(["run", str(cfg), "train.epochs=1", "teacher.train.epochs=1", "data.kwargs.num_samples=64",
                 "data.kwargs.test_samples=16", "baseline=false", "teacher.kwargs.hidden_size=16",
                 "student.lora={r: 2, alpha: 4}", "--out", str(out), "--quiet"])
    assert code == 0
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert "Trainable parameters while distilling: student + kd" in (out / "report.md").read_text()
