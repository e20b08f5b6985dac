"""End to end on real libraries, offline: tiny randomly initialised Hugging Face models from configs."""

from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")

import joryu  # noqa: E402
from joryu.cli import main  # noqa: E402
from joryu.config import (
    TrainConfig,  # noqa: E402
    load_config,  # noqa: E402
)
from joryu.data import TensorLoader, load  # noqa: E402
from joryu.engine import Engine  # noqa: E402
from joryu.errors import ConfigError  # noqa: E402
from joryu.losses import kd_loss, masked_cross_entropy  # noqa: E402
from joryu.losses.positions import next_token_targets  # noqa: E402
from joryu.methods.supervised import SupervisedDistiller  # noqa: E402
from joryu.models.hf import bert_classifier, gpt2_lm  # noqa: E402
from joryu.outputs import forward  # noqa: E402
from joryu.run.experiment import Experiment  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
FAST = dict(batch_size=32, optimizer="adamw", progress=False)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


def _mean_kl(student, teacher, data, temperature=1.0):
    """Token-level (or sample-level) KL(teacher || student) over the valid positions of ``data``."""
    batch = TensorLoader(data, len(data), shuffle=False).batch(torch.arange(len(data)))
    student.eval()
    teacher.eval()
    with torch.no_grad():
        t, s = forward(teacher, batch, INPUTS), forward(student, batch, INPUTS)
    target = batch["target"] if s.dim() > 2 else None
    return float(kd_loss(s, t, temperature, target=target))


def test_bert_classifier_distilled_into_a_smaller_bert_on_token_ids_and_masks():
    b = load("synthetic_text", num_samples=224, test_samples=48, max_len=16)
    torch.manual_seed(0)
    teacher = bert_classifier(vocab_size=32, hidden_size=32, layers=2, max_len=16)
    teacher, _ = joryu.distill(None, teacher, b.train, method="supervised", inputs=INPUTS, epochs=3, lr=3e-3,
                               **FAST)
    student = bert_classifier(vocab_size=32, hidden_size=16, layers=1, max_len=16)
    before = _mean_kl(student, teacher, b.test)
    student, metrics = joryu.distill(teacher, student, b.train, method="kd", inputs=INPUTS, epochs=3, lr=3e-3,
                                     temperature=2.0, alpha=0.5, **FAST)
    after = _mean_kl(student, teacher, b.test)
    assert after < 0.7 * before
    assert metrics["distill"]["val"]["val/acc"] > 0
    # the attention mask reaches the model: dropping it changes the student's predictions
    batch = TensorLoader(b.test, 8, shuffle=False).batch(torch.arange(8))
    with torch.no_grad():
        assert not torch.allclose(forward(student, batch, INPUTS), forward(student, batch, "input_ids"))


def test_vocabulary_mismatch_is_a_config_error_from_the_api():
    b = load("synthetic_text", num_samples=64, test_samples=8, max_len=16)
    t = bert_classifier(vocab_size=32, num_classes=2, hidden_size=16, layers=1, max_len=16)
    s = bert_classifier(vocab_size=32, num_classes=3, hidden_size=16, layers=1, max_len=16)
    with pytest.raises(ConfigError, match="teacher predicts 2 classes .* student 3"):
        joryu.distill(t, s, b.train, inputs=INPUTS, epochs=1, **FAST)


def test_gpt2_cross_entropy_equals_hugging_faces_shifted_loss():
    torch.manual_seed(0)
    m = gpt2_lm(vocab_size=48, hidden_size=16, layers=1, max_len=32).eval()
    b = load("synthetic_lm", num_samples=8, test_samples=2)
    ids, am = b.train.tensors["input_ids"], b.train.tensors["attention_mask"]
    labels = ids.masked_fill(am == 0, -100)  # Hugging Face's convention: unshifted labels
    with torch.no_grad():
        hf = m(input_ids=ids, attention_mask=am, labels=labels).loss
        ours = masked_cross_entropy(forward(m, {"ids": ids, "am": am}, {"input_ids": "ids", "attention_mask": "am"}),
                                    next_token_targets(ids, am))
    assert torch.allclose(hf, ours, atol=1e-5)


def test_gpt2_distilled_into_a_smaller_gpt2_kl_falls_and_padding_does_not_count():
    b = load("synthetic_lm", num_samples=224, test_samples=32, vocab_size=48, max_len=24)
    torch.manual_seed(0)
    teacher = gpt2_lm(vocab_size=48, hidden_size=32, layers=2, max_len=32)
    teacher, _ = joryu.distill(None, teacher, b.train, method="supervised", inputs=INPUTS, epochs=3, lr=3e-3,
                               **FAST)
    student = gpt2_lm(vocab_size=48, hidden_size=16, layers=1, max_len=32)
    before = _mean_kl(student, teacher, b.test)
    student, metrics = joryu.distill(teacher, student, b.train, method="kd", inputs=INPUTS, epochs=3, lr=3e-3,
                                     temperature=1.0, alpha=1.0, **FAST)
    after = _mean_kl(student, teacher, b.test)
    assert after < 0.5 * before
    assert metrics["distill"]["val"]["val/student/ppl"] > 1

    # padding does not count: other ids at padded positions, or more padding, leave the loss unchanged
    batch = TensorLoader(b.test, 16, shuffle=False).batch(torch.arange(16))
    pad = batch["attention_mask"] == 0
    assert bool(pad.any())

    def loss_of(bt):
        with torch.no_grad():
            return kd_loss(forward(student, bt, INPUTS), forward(teacher, bt, INPUTS), 1.0, target=bt["target"])

    base = loss_of(batch)
    noisy = dict(batch, input_ids=batch["input_ids"].masked_fill(pad, 7))
    assert torch.allclose(loss_of(noisy), base, atol=1e-5)
    extra = {k: torch.cat([v, torch.full((16, 4), fill, dtype=v.dtype)], 1)
             for k, v, fill in (("input_ids", batch["input_ids"], 5), ("attention_mask", batch["attention_mask"], 0),
                                ("target", batch["target"], -100))}
    assert torch.allclose(loss_of(extra), base, atol=1e-5)
    # while a change at a real position does change it
    real = dict(batch, input_ids=batch["input_ids"].masked_fill(~pad, 9))
    assert not torch.allclose(loss_of(real), base, atol=1e-3)


@pytest.mark.parametrize("divergence", ["reverse_kl", "jsd"])
def test_gpt2_reverse_kl_and_jsd_reduce_their_divergence(divergence):
    from joryu.losses.lm import token_divergence

    b = load("synthetic_lm", num_samples=192, test_samples=32, vocab_size=32, max_len=16)
    torch.manual_seed(1)
    teacher = gpt2_lm(vocab_size=32, hidden_size=32, layers=1, max_len=16)
    student = gpt2_lm(vocab_size=32, hidden_size=16, layers=1, max_len=16)
    batch = TensorLoader(b.test, 32, shuffle=False).batch(torch.arange(32))

    def div():
        with torch.no_grad():
            return float(token_divergence(forward(student, batch, INPUTS), forward(teacher, batch, INPUTS),
                                          divergence, target=batch["target"]))

    before = div()
    student, _ = joryu.distill(teacher, student, b.train, method="kd", inputs=INPUTS, epochs=2, lr=5e-3,
                               temperature=1.0, alpha=1.0, divergence=divergence, **FAST)
    assert div() < 0.5 * before


def test_fitnets_hint_between_two_transformers_through_module_path_taps():
    b = load("synthetic_text", num_samples=192, test_samples=32, max_len=16)
    torch.manual_seed(0)
    teacher = bert_classifier(vocab_size=32, hidden_size=32, layers=2, max_len=16)
    student = bert_classifier(vocab_size=32, hidden_size=16, layers=2, max_len=16)
    s0 = {k: v.clone() for k, v in student.state_dict().items()}
    student, metrics = joryu.distill(teacher, student, b.train, method="fitnets", inputs=INPUTS, epochs=2, lr=3e-3,
                                     hint_layer="bert.encoder.layer.1", guided_layer="bert.encoder.layer.0",
                                     regressor="token", regressor_activation="none", **FAST)
    hint = [h["train/hint"] for h in metrics["hint"]["history"]]
    assert hint[-1] < hint[0]
    # stage 1 trained the layers up to the guided one only; stage 2 trained the rest too
    assert not torch.equal(student.state_dict()["bert.encoder.layer.0.output.dense.weight"],
                           s0["bert.encoder.layer.0.output.dense.weight"])


def test_segmentation_pair_on_synthetic_masks_reports_pixel_accuracy_and_miou():
    from joryu import models
    from joryu.metrics import compute

    b = load("synthetic_shapes", num_samples=160, test_samples=32, size=12)
    torch.manual_seed(0)
    teacher = models.create("tiny_segmenter", width=16, depth=3)
    teacher, _ = joryu.distill(None, teacher, b.train, method="supervised", epochs=4, lr=1e-2, batch_size=16,
                               progress=False)
    student = models.create("tiny_segmenter", width=8, depth=2)
    student, _ = joryu.distill(teacher, student, b.train, method="kd", epochs=4, lr=1e-2, batch_size=16,
                               temperature=2.0, alpha=0.5, progress=False)
    ev = Engine(TrainConfig(eval_batch_size=64), None, progress=False).evaluate(SupervisedDistiller(student),
                                                                              b.test, "test")
    assert set(ev) >= {"test/acc", "test/loss", "test/student/miou", "test/student/acc"}
    # better than predicting background everywhere, on both metrics
    y = b.test.targets
    background = compute(torch.nn.functional.one_hot(torch.zeros_like(y), 3).permute(0, 3, 1, 2).float(), y)
    assert ev["test/acc"] > background["acc"] + 5
    assert ev["test/student/miou"] > background["miou"] + 10
    assert 0 < ev["test/student/miou"] <= 100


def test_a_per_sample_method_refuses_token_logits_at_config_time():
    b = load("synthetic_lm", num_samples=32, test_samples=8, vocab_size=32, max_len=16)
    t = gpt2_lm(vocab_size=32, hidden_size=16, layers=1, max_len=16)
    s = gpt2_lm(vocab_size=32, hidden_size=16, layers=1, max_len=16)
    with pytest.raises(ConfigError, match="method 'dml' needs one label per sample"):
        joryu.distill(t, s, b.train, method="dml", inputs=INPUTS, epochs=1, **FAST)


SMALL_BERT = ["teacher.kwargs.hidden_size=16", "teacher.kwargs.layers=1"]


# The BERT config runs in the default suite; the others (same code paths, covered above through the
# API and by test_experiment_summary_has_perplexity_for_a_language_model) run with -m slow.
@pytest.mark.parametrize("config,extra", [
    ("hf_bert_text.yaml", ["data.kwargs.num_samples=96", "data.kwargs.test_samples=32", *SMALL_BERT]),
    pytest.param("hf_gpt2_lm.yaml", ["data.kwargs.num_samples=160", "data.kwargs.test_samples=32"],
                 marks=pytest.mark.slow),
    pytest.param("seg_shapes.yaml", ["data.kwargs.num_samples=96", "data.kwargs.test_samples=32"],
                 marks=pytest.mark.slow),
    pytest.param("hf_bert_fitnets.yaml", ["data.kwargs.num_samples=160", "data.kwargs.test_samples=32",
                                          "method.params.hint_epochs=1"], marks=pytest.mark.slow),
])
def test_example_configs_run_through_the_cli(tmp_path, capsys, config, extra):
    out = tmp_path / "run"
    code = main(["run", str(ROOT / "configs" / config), "train.epochs=1", "teacher.train.epochs=1", *extra,
                 "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (out / "report.md").is_file()
    cfg = load_config(ROOT / "configs" / config)
    assert cfg.student.inputs == cfg.student.input_key


def test_bad_inputs_in_a_config_are_one_line_exit_2(tmp_path, capsys):
    code = main(["run", str(ROOT / "configs" / "hf_bert_text.yaml"), "train.epochs=1", "teacher.train.epochs=1",
                 "data.kwargs.num_samples=64", "student.inputs.input_ids=token_ids",
                 "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert "'token_ids'" in err and "BertForSequenceClassification" in err and "attention_mask" in err
    assert len(err.strip().splitlines()) == 1


def test_experiment_summary_has_perplexity_for_a_language_model(tmp_path):
    exp = Experiment.from_yaml(ROOT / "configs" / "hf_gpt2_lm.yaml",
                               ["train.epochs=1", "teacher.train.epochs=1", "data.kwargs.num_samples=64",
                                "data.kwargs.test_samples=16", "baseline=false", "teacher.kwargs.hidden_size=16",
                                "teacher.kwargs.layers=1"],
                               run_dir=tmp_path / "r", progress=False)
    rows = exp.run()["rows"]
    assert rows["student + kd"]["test/student/ppl"] > 1
    assert rows["teacher"]["test/student/ppl"] > 1
