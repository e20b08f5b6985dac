"""``train.mixed_precision: bf16`` (autocast, on the CPU too) and ``train.compile``: a zoo ResNet and
a tiny GPT-2 train, the loss falls, and a run stopped mid-way resumes to the uninterrupted weights."""

import warnings

import pytest
import torch

from joryu import models
from joryu.config import TrainConfig
from joryu.data import TensorData
from joryu.engine import Engine, latest_checkpoint
from joryu.losses import masked_cross_entropy
from joryu.methods.supervised import SupervisedDistiller
from joryu.outputs import declare_inputs, forward


class Crash(Exception):
    pass


class Recording(SupervisedDistiller):
    """Supervised training that records its logits' dtype and can stop, as a killed run, at a step."""

    def __init__(self, student, crash_at=None):
        super().__init__(student)
        self.crash_at, self.steps, self.dtypes = crash_at, 0, set()

    def training_step(self, batch):
        self.steps += 1
        if self.steps == self.crash_at:
            raise Crash()
        logits = forward(self.student, batch, self.input_key)
        self.dtypes.add(logits.dtype)
        return {"loss": masked_cross_entropy(logits, batch["target"])}


def images(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 12, 12, generator=g)
    y = (x[:, 0, :6].mean((1, 2)) > x[:, 1, 6:].mean((1, 2))).long()  # which region is brighter
    return TensorData({"input": x, "target": y}, 2, "img")


def resnet(seed):
    torch.manual_seed(seed)
    return models.create("resnet8", num_classes=2)


def tokens():
    from joryu.data import load

    return load("synthetic_lm", num_samples=64, test_samples=8, vocab_size=32, max_len=12).train


def gpt2(seed):
    pytest.importorskip("transformers")
    from joryu.models.hf import gpt2_lm

    torch.manual_seed(seed)
    return declare_inputs(gpt2_lm(vocab_size=32, hidden_size=16, layers=1, max_len=12),
                          {"input_ids": "input_ids", "attention_mask": "attention_mask"})


PAIRS = {"resnet8": (resnet, images), "gpt2": (gpt2, tokens)}


def cfg(mode, **kw):
    base = dict(epochs=3, batch_size=16, lr=3e-3, optimizer="adam", scheduler="constant", device="cpu",
                mixed_precision="bf16" if mode == "bf16" else "no", compile=mode == "compile")
    return TrainConfig(**{**base, **kw})


def run(name, mode, tmp_path):
    """Train uninterrupted; then stop a second run mid-epoch 2 and resume it from its checkpoint."""
    build, data_of = PAIRS[name]
    data = data_of()
    c = cfg(mode, checkpoint_every=3)
    ref = Recording(build(0))
    res = Engine(c, tmp_path / "ref", seed=1, progress=False).fit(ref, data)
    stopped = Recording(build(0), crash_at=8)  # 6 batches per epoch: in epoch 2, after step 6's checkpoint
    with pytest.raises(Crash):
        Engine(c, tmp_path / "run", seed=1, progress=False).fit(stopped, data)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step-00000006"
    fresh = Recording(build(99))  # other initial weights: they must come from the checkpoint
    Engine(c, tmp_path / "run", seed=1, progress=False).fit(fresh, data, resume=True)
    return ref, res, fresh


@pytest.mark.parametrize("name", ["resnet8", "gpt2"])
def test_bf16_trains_on_the_cpu_under_autocast_and_resumes_exactly(name, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "training in float32" fallback any more
        ref, res, fresh = run(name, "bf16", tmp_path)
    assert ref.dtypes == {torch.bfloat16} and fresh.dtypes == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in ref.parameters())  # weights stay float32
    losses = [h["train/loss"] for h in res.history]
    assert losses[-1] < losses[0]
    for p, q in zip(ref.parameters(), fresh.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0)


def test_fp16_on_the_cpu_still_falls_back_to_float32_with_a_warning():
    assert Engine(cfg("bf16"), progress=False).accelerator.mixed_precision == "bf16"
    with pytest.warns(UserWarning, match="fp16.*float32 on the CPU"):
        e = Engine(cfg("no", mixed_precision="fp16"), progress=False)
    assert e.accelerator.mixed_precision == "no"  # one process, another precision: no Accelerate error
    d = Recording(resnet(0))
    e.fit(d, images(32))
    assert d.dtypes == {torch.float32}


# resnet8 compiled: ~65 s on a shared 2-core CPU (inductor builds C++ kernels for its forward and
# backward), so it runs with -m slow; the GPT-2 one (~10 s) stays in the default suite.
@pytest.mark.parametrize("name", [pytest.param("resnet8", marks=pytest.mark.slow), "gpt2"])
def test_compiled_training_learns_and_resumes_exactly(name, tmp_path):
    ref, res, fresh = run(name, "compile", tmp_path)
    assert hasattr(ref.student, "_compiled_call_impl") and ref.student._compiled_call_impl is not None
    losses = [h["train/loss"] for h in res.history]
    assert losses[-1] < losses[0]
    for p, q in zip(ref.parameters(), fresh.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0)
