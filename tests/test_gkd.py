"""On-policy and sequence-level distillation (gkd) on tiny GPT-2s built from configs, random weights."""

import pytest
import torch

pytest.importorskip("transformers")

import joryu  # noqa: E402
from joryu.data import TensorData, TensorLoader, load  # noqa: E402
from joryu.errors import ConfigError  # noqa: E402
from joryu.losses.lm import token_divergence  # noqa: E402
from joryu.methods.gkd import (  # noqa: E402
    GKDDistiller,
    continuation_target,
    generated_batch,
    mask_prompt,
)
from joryu.models import create  # noqa: E402
from joryu.models.hf import gpt2_lm  # noqa: E402
from joryu.outputs import declare_inputs, forward  # noqa: E402
from joryu.teachers import FrozenTeacher  # noqa: E402

INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
EOS = 2


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def prompt_data(n=64, vocab=32, max_len=16, seed=0) -> TensorData:
    """synthetic_lm sequences with a prompt of 3 to 5 tokens per row (``prompt_length``)."""
    b = load("synthetic_lm", num_samples=n, test_samples=8, vocab_size=vocab, min_len=8, max_len=max_len,
             seed=seed)
    t = dict(b.train.tensors)
    t["prompt_length"] = 3 + torch.arange(len(t["input_ids"])) % 3
    return TensorData(t, vocab, "prompts")


def pair(vocab=32, max_len=48):
    torch.manual_seed(0)
    teacher = declare_inputs(gpt2_lm(vocab_size=vocab, hidden_size=32, layers=2, max_len=max_len), INPUTS)
    student = declare_inputs(gpt2_lm(vocab_size=vocab, hidden_size=16, layers=1, max_len=max_len), INPUTS)
    return teacher, student


def distiller(student, teacher, **kw):
    opts = dict(lmbda=0.0, beta=0.5, seq_kd=False, temperature=1.0, generation_temperature=1.0,
                max_new_tokens=6, eos_token_id=None, pad_token_id=None)
    return GKDDistiller(student, FrozenTeacher(teacher), **{**opts, **kw})


def batch_of(data, n=8):
    return TensorLoader(data, n, shuffle=False).batch(torch.arange(n))


def test_lmbda_zero_is_exactly_the_off_policy_loss_on_the_continuations():
    data = prompt_data()
    teacher, student = pair()
    batch = batch_of(data)
    d = distiller(student, teacher, lmbda=0.0, beta=0.3)
    torch.manual_seed(1)
    got = d.training_step(batch)
    assert float(got["on_policy"]) == 0.0
    target = batch["target"].clone()
    for r, p in enumerate(batch["prompt_length"].tolist()):
        target[r, :p - 1] = -100  # predicting a prompt token: no loss
    with torch.no_grad():
        t_logits = forward(teacher, batch)
    want = token_divergence(forward(student, batch), t_logits, "jsd", 1.0, 0.3, target=target)
    assert torch.equal(got["loss"], want)
    assert torch.equal(mask_prompt(batch["target"], batch["prompt_length"]), target)


def test_continuation_target_masks_prompt_padding_and_everything_after_the_first_eos():
    ids = torch.tensor([[5, 6, 7, EOS, 8, 9],    # prompt 2: targets 7, EOS; 8 and 9 come after EOS
                        [5, 6, 7, 8, 9, 0]])     # prompt 3: targets 8, 9; the last token is padding
    real = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0]])
    got = continuation_target(ids, torch.tensor([2, 3]), real, EOS)
    assert got.tolist() == [[-100, 7, EOS, -100, -100, -100], [-100, -100, 8, 9, -100, -100]]
    # an EOS inside the prompt does not end the continuation
    got = continuation_target(torch.tensor([[EOS, 6, 7, 8]]), torch.tensor([2]), torch.ones(1, 4), EOS)
    assert got.tolist() == [[-100, 7, 8, -100]]


def test_student_samples_keep_the_prompts_and_only_sampled_tokens_count():
    data = prompt_data()
    teacher, student = pair()
    batch = batch_of(data)
    torch.manual_seed(0)
    new = generated_batch(student, batch, 6, 1.0, pad=0, eos=EOS)
    lengths = batch["prompt_length"]
    for r, p in enumerate(lengths.tolist()):
        assert torch.equal(new["input_ids"][r, :p], batch["input_ids"][r, :p])  # the prompt, unchanged
        n_real = int(new["attention_mask"][r].sum())
        assert p < n_real <= p + 6
        valid = (new["target"][r] != -100).nonzero().flatten().tolist()
        assert valid and valid[0] == p - 1  # the first loss position predicts the first sampled token
        gen = new["input_ids"][r, p:n_real].tolist()
        stop = gen.index(EOS) + 1 if EOS in gen else len(gen)
        assert valid == list(range(p - 1, p - 1 + stop))
        assert new["target"][r, valid].tolist() == gen[:stop]
    assert torch.equal(new["prompt_length"], lengths) and torch.equal(new["index"], batch["index"])


def test_a_model_without_generate_is_sampled_by_the_plain_loop():
    data = prompt_data(vocab=32)
    net = declare_inputs(create("byte_conv_lm", num_classes=32, width=8, layers=1), "input_ids")
    batch = batch_of(data)
    torch.manual_seed(0)
    new = generated_batch(net, batch, 5, 1.0, pad=0, eos=None)
    assert new["input_ids"].shape == (8, 5 + 5)  # the longest prompt (5) + 5 sampled tokens
    assert ((new["target"] != -100).sum(1) == 5).all()


def test_on_policy_step_never_gives_the_teacher_gradients_and_lmbda_one_always_samples():
    data = prompt_data()
    teacher, student = pair()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    d = distiller(student, teacher, lmbda=1.0, beta=0.0)
    out = d.training_step(batch_of(data))
    out["loss"].backward()
    assert float(out["on_policy"]) == 1.0
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_seq_kd_trains_on_the_teachers_samples():
    data = prompt_data()
    teacher, student = pair()
    batch = batch_of(data)
    d = distiller(student, teacher, lmbda=0.0, seq_kd=True)
    torch.manual_seed(3)
    out = d.training_step(batch)
    torch.manual_seed(3)  # lmbda = 0 draws no coin: the same samples
    new = generated_batch(teacher, batch, 6, 1.0, pad=0, eos=EOS)
    with torch.no_grad():
        t_logits = forward(teacher, new)
    want = token_divergence(forward(student, new), t_logits, "jsd", 1.0, 0.5, target=new["target"])
    assert torch.allclose(out["loss"], want)


def test_gkd_through_distill_trains_and_refuses_data_without_prompts():
    data = prompt_data(n=48)
    teacher, student = pair()
    _, metrics = joryu.distill(teacher, student, data, method="gkd", lmbda=0.5, max_new_tokens=4, epochs=2,
                               batch_size=16, lr=3e-3, progress=False)
    hist = metrics["distill"]["history"]
    assert all(torch.isfinite(torch.tensor(h["train/loss"])) for h in hist)
    assert 0.0 <= hist[-1]["train/on_policy"] <= 1.0
    plain = TensorData({k: v for k, v in data.tensors.items() if k != "prompt_length"}, 32, "no prompts")
    with pytest.raises(ConfigError, match="prompt_length"):
        joryu.distill(teacher, student, plain, method="gkd", epochs=1, batch_size=16, progress=False)


def test_gkd_quick_reproduction_judges_its_one_claim(tmp_path):
    import json

    from joryu.reproduce import run_reproduction

    n = torch.get_num_threads()
    try:
        md = run_reproduction("gkd", quick=True, out_dir=tmp_path, progress=False)
    finally:
        torch.set_num_threads(n)
    data = json.loads(md.with_suffix(".json").read_text())
    assert data["meta"]["quick"] and len(data["claims"]) == 1
    rows = {t["title"]: t["rows"] for t in data["tables"]}["Test prompts (files never seen in training)"]
    assert set(rows) == {"off-policy (lambda = 0)", "on-policy (lambda = 1)"}
    assert all(len(v) == 2 and all(x > 0 for x in v) for r in rows.values() for v in r.values())


def test_seq_kd_from_a_bfloat16_teacher_on_the_cpu_trains_the_student():
    data = prompt_data(n=32)
    teacher, student = pair()
    before = [p.clone() for p in student.parameters()]
    _, metrics = joryu.distill(teacher, student, data, method="gkd", lmbda=0.0, seq_kd=True, max_new_tokens=4,
                               teacher_device="cpu", teacher_dtype="bfloat16", epochs=1, batch_size=16,
                               progress=False)
    assert torch.isfinite(torch.tensor(metrics["distill"]["history"][-1]["train/loss"]))
    assert any(not torch.equal(a, b) for a, b in zip(before, student.parameters()))
    assert all(p.dtype == torch.float32 for p in teacher.parameters())  # the caller's teacher is not cast
