"""Several inputs, integer inputs, per-position outputs, LM divergences and shape-aware metrics."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from joryu.config import ModelConfig, build_config
from joryu.data import TensorData, TensorLoader, example_batch, split_validation
from joryu.errors import ConfigError
from joryu.losses import kd_loss, masked_cross_entropy
from joryu.losses.lm import generalized_jsd, reverse_kl, token_divergence
from joryu.losses.positions import next_token_targets, rows
from joryu.metrics import compute
from joryu.outputs import call, declare_inputs, forward


class TwoArgs(nn.Module):
    """Embeds integer ids, zeroes masked positions, mean-pools: needs both arguments."""

    def __init__(self, vocab=10, classes=3):
        super().__init__()
        self.emb = nn.Embedding(vocab, 8)
        self.out = nn.Linear(8, classes)

    def forward(self, input_ids, attention_mask=None):
        h = self.emb(input_ids)
        if attention_mask is not None:
            h = h * attention_mask.unsqueeze(-1)
        return {"logits": self.out(h.mean(1))}


def _batch():
    ids = torch.tensor([[1, 2, 3, 0], [4, 5, 0, 0]])
    return {"ids": ids, "am": (ids != 0).long(), "input": torch.randn(2, 4), "target": torch.tensor([0, 1])}


def test_forward_positional_list_and_keyword_mapping_agree():
    torch.manual_seed(0)
    m, b = TwoArgs(), _batch()
    pos = forward(m, b, ["ids", "am"])
    kw = forward(m, b, {"input_ids": "ids", "attention_mask": "am"})
    direct = m(b["ids"], b["am"])["logits"]
    assert torch.equal(pos, direct) and torch.equal(kw, direct)
    # the mask is really passed: without it the logits differ
    assert not torch.allclose(forward(m, b, "ids"), direct)


def test_declared_inputs_are_used_where_callers_pass_the_default():
    m, b = TwoArgs(), _batch()
    declare_inputs(m, {"input_ids": "ids", "attention_mask": "am"})
    assert torch.equal(forward(m, b), m(b["ids"], b["am"])["logits"])
    assert torch.equal(forward(m, b, "input"), forward(m, b))
    # an explicit key still wins
    assert torch.equal(forward(m, b, "ids"), m(b["ids"])["logits"])


def test_missing_key_is_one_config_error_naming_key_model_and_batch_keys():
    with pytest.raises(ConfigError) as e:
        forward(TwoArgs(), _batch(), {"input_ids": "input_ids"})
    msg = str(e.value)
    assert "'input_ids'" in msg and "TwoArgs" in msg and "['am', 'ids', 'input', 'target']" in msg
    assert "\n" not in msg


def test_integer_inputs_to_a_float_model_is_a_config_error():
    lin = nn.Linear(4, 2)
    with pytest.raises(ConfigError, match="integer inputs"):
        forward(lin, {"input": torch.ones(2, 4, dtype=torch.long)})
    with pytest.raises(ConfigError, match="integer token ids"):
        forward(nn.Embedding(10, 3), {"input": torch.ones(2, 4)})


def test_integer_tensors_keep_their_dtype_through_the_loader():
    ids = torch.randint(0, 10, (6, 4))
    data = TensorData({"input": ids, "target": torch.zeros(6, dtype=torch.long)}, 2)
    batch = TensorLoader(data, 3, shuffle=False).batch(torch.arange(3))
    assert batch["input"].dtype == torch.long and torch.equal(batch["input"], ids[:3])
    # uint8 images still become floats in [0, 1]
    img = TensorData({"input": torch.full((2, 1, 2, 2), 255, dtype=torch.uint8), "target": torch.zeros(2).long()}, 2)
    assert TensorLoader(img, 2, shuffle=False).batch(torch.arange(2))["input"].dtype == torch.float32


def test_tensor_data_without_input_key_and_per_position_split():
    d = TensorData({"input_ids": torch.zeros(10, 5).long(), "target": torch.zeros(10, 5).long()}, 7)
    assert len(d) == 10 and d.input_shape == (5,)
    tr, va = split_validation(d, 0.2, seed=0)
    assert len(tr) == 8 and len(va) == 2
    assert example_batch(d, 2)["input_ids"].shape == (2, 5)


def test_model_config_inputs_and_input_key_alias():
    assert ModelConfig(name="m", input_key="privileged").inputs == "privileged"
    c = ModelConfig(name="m", inputs={"input_ids": "input_ids", "attention_mask": "attention_mask"})
    assert c.input_key == c.inputs
    with pytest.raises(ConfigError, match="disagree"):
        build_config({"teacher": {"name": "m", "inputs": "a", "input_key": "b"}, "student": {"name": "m"}})


def test_call_returns_the_raw_output():
    out = call(TwoArgs(), _batch(), ["ids"])
    assert isinstance(out, dict) and out["logits"].shape == (2, 3)


# --------------------------------------------------------------------------- positions

def test_rows_flatten_tokens_and_pixels_with_the_class_axis_right():
    z = torch.randn(2, 3, 5)  # [B, L, C]
    flat, y, valid = rows(z, torch.tensor([[1, -100, 2], [0, 0, -100]]))
    assert flat.shape == (6, 5) and torch.equal(flat[1], z[0, 1])
    assert valid.tolist() == [True, False, True, True, True, False]
    seg = torch.randn(2, 4, 3, 3)  # [B, C, H, W]
    flat, _, _ = rows(seg, torch.zeros(2, 3, 3).long())
    assert flat.shape == (18, 4) and torch.equal(flat[4], seg[0, :, 1, 1])
    with pytest.raises(ValueError, match="does not fit"):
        rows(z, torch.zeros(2).long())


def test_next_token_targets_pair_like_hugging_face():
    ids = torch.tensor([[1, 5, 6, 7, 0, 0]])
    am = (ids != 0).long()
    prompt = torch.tensor([[1, 1, 0, 0, 0, 0]])
    assert next_token_targets(ids, am).tolist() == [[5, 6, 7, -100, -100, -100]]
    # predicting a prompt token (5, after 1) is masked; predicting 6 (after prompt token 5) counts
    assert next_token_targets(ids, am, prompt).tolist() == [[-100, 6, 7, -100, -100, -100]]


def test_kd_loss_per_position_equals_mean_over_valid_rows():
    torch.manual_seed(0)
    zs, zt = torch.randn(3, 4, 6), torch.randn(3, 4, 6)
    target = torch.tensor([[1, 2, -100, -100], [1, 1, 1, 1], [-100, 3, 3, -100]])
    keep = target != -100
    expected = kd_loss(zs[keep], zt[keep], 2.0)  # [N, C] rows of the valid positions only
    assert torch.allclose(kd_loss(zs, zt, 2.0, target=target), expected, atol=1e-6)
    # padding positions do not change it
    zs2 = zs.clone()
    zs2[~keep] = 100 * torch.randn(int((~keep).sum()), 6)
    assert torch.allclose(kd_loss(zs2, zt, 2.0, target=target), expected, atol=1e-6)
    # [B, C] with no mask: the classic batch mean
    a, b = torch.randn(5, 4), torch.randn(5, 4)
    classic = F.kl_div(F.log_softmax(a / 3, -1), F.softmax(b / 3, -1), reduction="batchmean") * 9
    assert torch.allclose(kd_loss(a, b, 3.0), classic, atol=1e-6)


def test_masked_cross_entropy_per_position_matches_ignore_index():
    z, y = torch.randn(2, 5, 7), torch.tensor([[1, 2, -100, 3, 4], [-100, -100, 0, 1, 2]])
    ref = F.cross_entropy(z.reshape(-1, 7), y.reshape(-1), ignore_index=-100)
    assert torch.allclose(masked_cross_entropy(z, y), ref, atol=1e-6)
    seg, ys = torch.randn(2, 4, 3, 3), torch.randint(0, 4, (2, 3, 3))
    assert torch.allclose(masked_cross_entropy(seg, ys), F.cross_entropy(seg, ys), atol=1e-6)


# --------------------------------------------------------------------------- LM divergences

def test_jsd_is_zero_for_equal_symmetric_at_half_and_bounded_by_log2():
    torch.manual_seed(1)
    p, q = torch.randn(8, 11), torch.randn(8, 11)
    assert float(generalized_jsd(p, p.clone())) < 1e-6
    assert torch.allclose(generalized_jsd(p, q, 0.5), generalized_jsd(q, p, 0.5), atol=1e-6)
    assert float(generalized_jsd(p, q, 0.3)) != pytest.approx(float(generalized_jsd(q, p, 0.3)), abs=1e-4)
    sharp_p, sharp_q = torch.full((4, 11), -50.0), torch.full((4, 11), -50.0)
    sharp_p[:, 0] = 50
    sharp_q[:, 1] = 50  # disjoint supports: the JSD reaches its bound
    for beta in (0.1, 0.5, 0.9):
        bound = -(beta * math.log(beta) + (1 - beta) * math.log(1 - beta))
        assert float(generalized_jsd(p * 5, q * 5, beta)) <= bound + 1e-6
        assert float(generalized_jsd(sharp_q, sharp_p, beta)) == pytest.approx(bound, abs=1e-4)
    assert bound <= math.log(2)


def test_reverse_kl_is_forward_kl_with_arguments_swapped():
    torch.manual_seed(2)
    s, t = torch.randn(3, 5, 9), torch.randn(3, 5, 9)
    target = torch.randint(0, 9, (3, 5))
    target[0, 3:] = -100
    assert torch.allclose(reverse_kl(s, t, 2.0, target=target), kd_loss(t, s, 2.0, target=target), atol=1e-6)


def test_jsd_limits_behave_like_scaled_kls():
    torch.manual_seed(3)
    s, t = torch.randn(6, 7), torch.randn(6, 7)
    b = 1e-4
    assert float(generalized_jsd(s, t, b)) / b == pytest.approx(float(kd_loss(s, t, 1.0)), rel=1e-2)
    assert float(generalized_jsd(s, t, 1 - b)) / b == pytest.approx(float(reverse_kl(s, t)), rel=1e-2)


@pytest.mark.parametrize("div", ["forward_kl", "reverse_kl", "jsd"])
def test_divergences_give_student_gradients_only_at_valid_positions(div):
    torch.manual_seed(4)
    s = torch.randn(2, 4, 6, requires_grad=True)
    t = torch.randn(2, 4, 6, requires_grad=True)
    target = torch.tensor([[1, 2, 3, -100], [-100, -100, 1, 1]])
    loss = token_divergence(s, t, div, temperature=2.0, target=target)
    loss.backward()
    assert t.grad is None
    pad = target == -100
    assert float(s.grad[pad].abs().max()) == 0.0 and float(s.grad[~pad].abs().max()) > 0
    # gradient check against finite differences, away from the masked rows
    s2 = torch.randn(2, 3, 5, dtype=torch.double, requires_grad=True)
    t2 = torch.randn(2, 3, 5, dtype=torch.double)
    assert torch.autograd.gradcheck(lambda x: token_divergence(x, t2, div, 1.5, beta=0.3), (s2,))


def test_vocabulary_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same classes"):
        token_divergence(torch.randn(2, 3, 10), torch.randn(2, 3, 12), "jsd")


# --------------------------------------------------------------------------- metrics

def test_metrics_follow_the_shape():
    z = torch.tensor([[2.0, 0.0], [0.0, 2.0], [2.0, 0.0]])
    m = compute(z, torch.tensor([0, 1, 1]))
    assert m["acc"] == pytest.approx(200 / 3) and "ppl" not in m and "miou" not in m
    tok = torch.log_softmax(torch.randn(2, 4, 5), -1)
    y = torch.tensor([[1, 2, -100, -100], [3, 3, 3, -100]])
    m = compute(tok, y)
    keep = y != -100
    nll = F.cross_entropy(tok[keep], y[keep])
    assert m["loss"] == pytest.approx(float(nll), rel=1e-5)
    assert m["ppl"] == pytest.approx(math.exp(float(nll)), rel=1e-5)
    assert m["acc"] == pytest.approx(100 * float((tok[keep].argmax(-1) == y[keep]).float().mean()))
    # segmentation: IoU per class by hand
    pred = torch.tensor([[[0, 0], [1, 1]]])
    target = torch.tensor([[[0, 1], [1, -100]]])
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    m = compute(logits, target)
    # valid pixels: (0,0) pred 0 / true 0, (0,1) 0 / 1, (1,0) 1 / 1 ((1,1) is -100):
    # class 0 intersection 1, union 2; class 1 intersection 1, union 2 -> mIoU 50%
    assert m["acc"] == pytest.approx(200 / 3) and m["miou"] == pytest.approx(50.0)


def test_text_lm_quick_reproduction_writes_results(tmp_path):
    import json

    from joryu.reproduce import run_reproduction

    n = torch.get_num_threads()
    try:
        md = run_reproduction("text_lm", quick=True, out_dir=tmp_path, progress=False)
    finally:
        torch.set_num_threads(n)
    data = json.loads(md.with_suffix(".json").read_text())
    assert md.is_file() and data["meta"]["quick"] and len(data["claims"]) == 1
    rows = {t["title"]: t["rows"] for t in data["tables"]}
    per_seed = rows["Test split (files never seen in training)"]["student alone"]["test bits per byte"]
    assert len(per_seed) == 2 and all(0 < v < 9 for v in per_seed)
    assert "Paired effect (per seed)" in rows


def test_probability_ensemble_averages_over_the_class_axis_of_pixel_logits():
    from joryu.teachers import EnsembleTeacher

    torch.manual_seed(0)
    nets = [nn.Conv2d(1, 3, 1), nn.Conv2d(1, 3, 1)]
    x = {"input": torch.randn(2, 1, 4, 4)}
    out = EnsembleTeacher(nets, mode="probs")(x).logits
    expected = torch.stack([F.softmax(n(x["input"]), 1) for n in nets]).mean(0)
    assert torch.allclose(out.exp(), expected, atol=1e-6)


def test_per_position_zoo_models_shapes_and_causality():
    from joryu.models import create

    seg = create("tiny_segmenter", num_classes=4, input_shape=(1, 12, 12)).eval()
    assert seg(torch.randn(2, 1, 12, 12)).shape == (2, 4, 12, 12)
    lm = create("byte_conv_lm", num_classes=20, width=8, layers=3).eval()
    ids = torch.randint(1, 20, (2, 10))
    with torch.no_grad():
        out = lm(ids)
        changed = ids.clone()
        changed[:, 6:] = 0  # later tokens never change earlier positions
        assert out.shape == (2, 10, 20) and torch.allclose(lm(changed)[:, :6], out[:, :6], atol=1e-6)
