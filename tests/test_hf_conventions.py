"""Hugging Face conventions (issue 20, item 3): HF-style labels, datasets columns, several-input
export, padding in token feature losses, save_pretrained. Tiny random models, nothing downloaded."""

import textwrap

import pytest
import torch

pytest.importorskip("transformers")
datasets = pytest.importorskip("datasets")

import joryu  # noqa: E402
from joryu.data import example_batch, load  # noqa: E402
from joryu.data.sources import align_labels, as_source  # noqa: E402
from joryu.losses import masked_cross_entropy  # noqa: E402
from joryu.losses.positions import next_token_targets, shift_labels  # noqa: E402
from joryu.models.hf import bert_classifier, bert_token_classifier, gpt2_lm  # noqa: E402
from joryu.outputs import forward, is_causal_lm  # noqa: E402

INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
FAST = dict(batch_size=32, optimizer="adamw", progress=False)


@pytest.fixture(autouse=True)
def _threads():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _lm_tensors(n=128, vocab=32, max_len=16, seed=0):
    b = load("synthetic_lm", num_samples=n, test_samples=16, vocab_size=vocab, max_len=max_len, seed=seed)
    ids, am = b.train.tensors["input_ids"], b.train.tensors["attention_mask"]
    return ids, am, ids.masked_fill(am == 0, -100)  # Hugging Face's labels: unshifted, -100 at padding


def _hf_dataset(ids, am, labels):
    return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": am.tolist(),
                                       "labels": labels.tolist()})


# ------------------------------------------------------------------ 1. causal-LM labels
def test_causal_lm_detection():
    assert is_causal_lm(gpt2_lm(vocab_size=16, hidden_size=8, layers=1, max_len=8))
    assert not is_causal_lm(bert_classifier(vocab_size=16, hidden_size=8, layers=1, max_len=8))
    assert not is_causal_lm(bert_token_classifier(vocab_size=16, hidden_size=8, layers=1, max_len=8))
    own = torch.nn.Linear(2, 2)
    assert not is_causal_lm(own)
    own.joryu_causal_lm = True  # one's own next-token model says so
    assert is_causal_lm(own)


def test_shift_labels_pairs_like_hugging_faces_loss():
    labels = torch.tensor([[5, 6, 7, -100], [1, 2, 3, 4]])
    assert shift_labels(labels).tolist() == [[6, 7, -100, -100], [2, 3, 4, -100]]
    assert shift_labels(labels[1]).tolist() == [2, 3, 4, -100]  # one sample


@pytest.mark.parametrize("path", ["dataset", "collator", "tensors"])
def test_hf_labels_become_the_shifted_target_once_on_every_path(path):
    """A causal LM's HF labels give the target whose cross-entropy is HF's own loss, whether they
    come from a dataset column, a collator or a dict of tensors; aligning again shifts nothing."""
    ids, am, labels = _lm_tensors(16)
    if path == "dataset":
        data = as_source(_hf_dataset(ids, am, labels))
    elif path == "collator":
        rows = [{"input_ids": i, "attention_mask": a} for i, a in zip(ids, am)]

        def collate(samples):  # as HF's DataCollatorForLanguageModeling: labels = ids, -100 at padding
            i = torch.stack([s["input_ids"] for s in samples])
            a = torch.stack([s["attention_mask"] for s in samples])
            return {"input_ids": i, "attention_mask": a, "labels": i.masked_fill(a == 0, -100)}

        data = as_source(torch.utils.data.DataLoader(rows, batch_size=8, collate_fn=collate))
    else:
        data = as_source({"input_ids": ids, "attention_mask": am, "labels": labels})
    unaligned = example_batch(data, 8)["target"]
    assert torch.equal(unaligned, labels[:8])  # before a causal model is known: HF labels as they are
    once = align_labels(data, True)
    twice = align_labels(once, True)
    t1, t2 = example_batch(once, 8)["target"], example_batch(twice, 8)["target"]
    assert torch.equal(t1, t2)
    assert torch.equal(t1, next_token_targets(ids[:8], am[:8]))
    torch.manual_seed(0)
    m = gpt2_lm(vocab_size=32, hidden_size=16, layers=1, max_len=16).eval()
    with torch.no_grad():
        hf = m(input_ids=ids[:8], attention_mask=am[:8], labels=labels[:8]).loss
        ours = masked_cross_entropy(forward(m, example_batch(once, 8), INPUTS), t1)
    assert torch.allclose(hf, ours, atol=1e-5)


def test_a_target_is_never_shifted_and_non_causal_labels_are_not_shifted():
    b = load("synthetic_lm", num_samples=16, test_samples=4, vocab_size=32, max_len=16)
    assert align_labels(b.train, True) is b.train  # joryu's own target is aligned already
    ids, am, labels = _lm_tensors(16)
    token_cls = align_labels(as_source(_hf_dataset(ids, am, labels)), False)  # e.g. BERT token tagging
    assert torch.equal(example_batch(token_cls, 4)["target"], labels[:4])
    explicit = as_source(_hf_dataset(ids, am, labels), columns={"target": "labels"})  # "already aligned"
    assert torch.equal(example_batch(align_labels(explicit, True), 4)["target"], labels[:4])


def test_gpt2_given_its_own_labels_learns_the_next_token_not_a_copy():
    """Trained on a datasets.Dataset of input_ids / attention_mask / labels (HF's convention, no
    renaming): the task learnt is the next token, scored on the shifted targets; the same labels
    declared already aligned (columns={'target': 'labels'}) make the trivial copy task."""
    ids, am, labels = _lm_tensors(192)
    ds = _hf_dataset(ids, am, labels)
    acc = {}
    for name, cols in (("hf", None), ("copy", {"target": "labels"})):
        torch.manual_seed(0)
        m = gpt2_lm(vocab_size=32, hidden_size=16, layers=1, max_len=16)
        m, metrics = joryu.distill(None, m, ds, method="supervised", inputs=INPUTS, columns=cols, epochs=2,
                                   lr=1e-2, **FAST)
        acc[name] = metrics["train"]["val"]["val/acc"]
        if name == "hf":
            model = m
    assert acc["copy"] > 80 and acc["hf"] < acc["copy"] - 40
    # the reported score is the accuracy on the next tokens
    from joryu.evaluate import evaluate_model

    test = align_labels(as_source(ds.select(range(64))), True)
    batch = example_batch(test, 64)
    with torch.no_grad():
        pred = forward(model.eval(), batch, INPUTS).argmax(-1)
    want = next_token_targets(ids[:64], am[:64])
    manual = float((pred == want)[want != -100].float().mean()) * 100
    assert evaluate_model(model, test, INPUTS)["top1"] == pytest.approx(manual, abs=1e-3)


# ------------------------------------------------------------------ 2. datasets columns by the models' inputs
def test_distill_takes_a_datasets_dataset_named_by_the_inputs():
    b = load("synthetic_text", num_samples=96, test_samples=8, max_len=16)
    t = b.train.tensors
    ds = datasets.Dataset.from_dict({"input_ids": t["input_ids"].tolist(),
                                     "attention_mask": t["attention_mask"].tolist(),
                                     "label": t["target"].tolist()})
    torch.manual_seed(0)
    s = bert_classifier(vocab_size=32, hidden_size=16, layers=1, max_len=16)
    s, metrics = joryu.distill(None, s, ds, method="supervised", inputs=INPUTS, epochs=1, **FAST)
    assert "val/acc" in metrics["train"]["val"]
    # without inputs naming its columns, one line says so
    from joryu.errors import ConfigError

    with pytest.raises(ConfigError, match="reads batch key 'input'.*set the model's inputs"):
        joryu.distill(None, bert_classifier(vocab_size=32, hidden_size=16, layers=1, max_len=16), ds,
                      method="supervised", epochs=1, **FAST)
    # columns= renames: a 'tokens' column read as input_ids
    renamed = ds.rename_column("input_ids", "tokens")
    s2 = bert_classifier(vocab_size=32, hidden_size=16, layers=1, max_len=16)
    _, metrics = joryu.distill(None, s2, renamed, method="supervised", inputs=INPUTS,
                               columns={"input_ids": "tokens"}, epochs=1, **FAST)
    assert "val/acc" in metrics["train"]["val"]


def test_a_config_takes_a_hugging_face_lm_dataset_as_it_is(tmp_path, monkeypatch, capsys):
    from joryu.cli import main

    (tmp_path / "hf_lm_data.py").write_text(textwrap.dedent("""
        import datasets
        from joryu.data import load

        def lm(n=96):
            b = load("synthetic_lm", num_samples=n, test_samples=32, vocab_size=32, max_len=16)
            def ds(d):
                ids, am = d.tensors["input_ids"], d.tensors["attention_mask"]
                return datasets.Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": am.tolist(),
                                                   "labels": ids.masked_fill(am == 0, -100).tolist()})
            return {"train": ds(b.train), "test": ds(b.test), "num_classes": 32}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    model = "{name: joryu.models.hf:gpt2_lm, kwargs: {vocab_size: 32, hidden_size: 16, layers: 1, max_len: 16}, " \
            "inputs: {input_ids: input_ids, attention_mask: attention_mask}}"
    (tmp_path / "c.yaml").write_text(textwrap.dedent(f"""
        name: hf-lm-columns
        data: {{name: "hf_lm_data:lm"}}
        teacher: {model}
        student: {model}
        method: {{name: kd, params: {{temperature: 1.0, alpha: 0.5}}}}
        train: {{epochs: 1, batch_size: 32, optimizer: adamw, lr: 0.003}}
        baseline: false
    """))
    code = main(["run", str(tmp_path / "c.yaml"), "teacher.train.epochs=1", "--out", str(tmp_path / "r"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "r" / "report.md").is_file()


# ------------------------------------------------------------------ 4. token feature losses skip padding
def test_hint_loss_on_tokens_skips_padded_positions():
    from joryu.losses import hint_loss

    torch.manual_seed(0)
    r, h = torch.randn(3, 5, 4), torch.randn(3, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    base = hint_loss(r, h, mask)
    noisy = r.masked_fill((mask == 0)[..., None], 50.0)
    assert torch.equal(hint_loss(noisy, h, mask), base)
    assert not torch.allclose(hint_loss(noisy, h), hint_loss(r, h))  # unmasked, padding would count
    real = r.clone()
    real[0, 0] += 1.0
    assert not torch.allclose(hint_loss(real, h, mask), base)


def test_fitnets_hint_between_berts_ignores_what_sits_at_padding():
    """Other token ids at padded positions change the padded features of both networks, but not
    the hint loss of FitNets' stage 1 (regressor: token)."""
    from joryu.methods._features import tapped_teacher
    from joryu.methods.fitnets import HintDistiller
    from joryu.teachers import FrozenTeacher

    b = load("synthetic_text", num_samples=16, test_samples=4, max_len=16)
    batch = {k: v[:8] for k, v in b.train.tensors.items()}
    pad = batch["attention_mask"] == 0
    assert bool(pad.any())
    torch.manual_seed(0)
    t_net = bert_classifier(vocab_size=32, hidden_size=32, layers=2, max_len=16).eval()
    s_net = bert_classifier(vocab_size=32, hidden_size=16, layers=2, max_len=16).eval()
    from joryu.outputs import declare_inputs

    declare_inputs(s_net, INPUTS)
    teacher = tapped_teacher(FrozenTeacher(t_net, INPUTS), {"hint": "bert.encoder.layer.1"})
    d = HintDistiller(s_net, teacher, "bert.encoder.layer.0", batch, "token", "none", INPUTS)
    with torch.no_grad():
        base = d.training_step(batch)["hint"]
        noisy = dict(batch, input_ids=batch["input_ids"].masked_fill(pad, 7))
        assert not torch.allclose(teacher(noisy).features["hint"], teacher(batch).features["hint"])
        assert torch.allclose(d.training_step(noisy)["hint"], base, atol=1e-5)
        real = dict(batch, input_ids=batch["input_ids"].masked_fill(~pad, 9))
        assert not torch.allclose(d.training_step(real)["hint"], base, atol=1e-3)


# ------------------------------------------------------------------ 3. export of several-input models
def _text_batch(n, length=16):
    b = load("synthetic_text", num_samples=32, test_samples=8, max_len=length)
    return {k: v[:n] for k, v in b.train.tensors.items()}


def _run_export(path, fmt):
    """The exported file's logits on a batch dict, loaded the way a user loads each format."""
    def run(batch):
        x = (batch["input_ids"], batch["attention_mask"])
        if fmt == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
            return torch.as_tensor(sess.run(None, {"input_ids": x[0].numpy(), "attention_mask": x[1].numpy()})[0])
        if fmt == "torchscript":
            return torch.jit.load(str(path))(*x)
        return torch.export.load(str(path)).module()(*x)
    return run


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt"), ("torch-export", ".pt2")])
@pytest.mark.parametrize("factory", [bert_classifier, gpt2_lm])
def test_bert_and_gpt2_export_with_named_inputs_and_dynamic_batch_and_sequence(tmp_path, factory, fmt, suffix):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from joryu.export import export_model
    from joryu.outputs import declare_inputs

    torch.manual_seed(0)
    model = declare_inputs(factory(vocab_size=32, hidden_size=16, layers=1, max_len=16).eval(), INPUTS)
    full = _text_batch(8)
    out = tmp_path / f"m{suffix}"
    info = export_model(model, {k: v[:2] for k, v in full.items()}, out, fmt, checks=[full])
    assert info["input_names"] == ["input_ids", "attention_mask"]
    assert info["input_shape"]["input_ids"] == ["batch", "sequence"]
    run = _run_export(out, fmt)
    for rows, length in ((1, 16), (5, 16), (3, 9), (7, 4)):  # other batch sizes and sequence lengths
        batch = {k: full[k][:rows, :length] for k in INPUTS}
        with torch.no_grad():
            want = forward(model, batch, INPUTS)
        assert torch.allclose(run(batch), want, atol=1e-4)


def test_joryu_export_of_a_bert_run_folder_in_every_format(tmp_path, capsys):
    """The bug of issue 20: `joryu export` of a BERT student exited 1 ('dict' has no .cpu())."""
    from pathlib import Path

    from joryu.cli import main

    root = Path(__file__).resolve().parents[1]
    run = tmp_path / "run"
    code = main(["run", str(root / "configs" / "hf_bert_text.yaml"), "train.epochs=1", "teacher.train.epochs=1",
                 "data.kwargs.num_samples=64", "data.kwargs.test_samples=16", "teacher.kwargs.hidden_size=16",
                 "teacher.kwargs.layers=1", "baseline=false", "--out", str(run), "--quiet"])
    assert code == 0, capsys.readouterr().err
    fmts = [("torchscript", ".pt"), ("torch-export", ".pt2")]
    try:
        import onnxruntime  # noqa: F401

        fmts.append(("onnx", ".onnx"))
    except ImportError:
        pass
    for fmt, suffix in fmts:
        capsys.readouterr()
        code = main(["export", str(run), "--format", fmt])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        assert (run / f"student{suffix}").is_file() and "max |difference|" in captured.out
    code = main(["export", str(run), "--format", "hf"])
    assert code == 0, capsys.readouterr().err
    assert (run / "student-hf" / "config.json").is_file()


class _Branchy(torch.nn.Module):
    """Data-dependent control flow: a Python `if` on tensor values, which a trace freezes."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx", "torch-export"])
def test_a_branch_on_tensor_values_is_refused_not_written(tmp_path, fmt):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")
    from joryu.export import ExportError, export_model

    torch.manual_seed(0)
    example = torch.randn(2, 8).abs()  # every example row takes the first branch
    out = tmp_path / "b.bin"
    with pytest.raises(ExportError) as err:
        export_model(_Branchy(), example, out, fmt)
    msg = str(err.value)
    assert "\n" not in msg
    if fmt != "torch-export":  # traced: the random check batches take the other branch
        assert "differs from PyTorch" in msg and "branches on tensor values" in msg
    else:  # torch.export refuses to capture it
        assert "cannot export with torch.export" in msg
    assert not out.exists() and not list(tmp_path.iterdir())


# ------------------------------------------------------------------ 5. save_pretrained
@pytest.mark.parametrize("factory", [bert_classifier, gpt2_lm])
def test_a_hugging_face_student_is_written_as_a_save_pretrained_folder(tmp_path, factory):
    from joryu.export import ExportError, save_hf_pretrained

    torch.manual_seed(0)
    model = factory(vocab_size=32, hidden_size=16, layers=1, max_len=16).eval()
    batch = _text_batch(4)
    info = save_hf_pretrained(model, tmp_path / "s", batch, INPUTS)
    assert {"config.json", "model.safetensors"} <= set(info["files"])
    again = type(model).from_pretrained(str(tmp_path / "s")).eval()
    with torch.no_grad():
        assert torch.allclose(forward(again, batch, INPUTS), forward(model, batch, INPUTS), atol=1e-6)
    with pytest.raises(ExportError, match="exists; pass --overwrite"):
        save_hf_pretrained(model, tmp_path / "s")
    with pytest.raises(ExportError, match="not a Hugging Face model"):
        save_hf_pretrained(torch.nn.Linear(2, 2), tmp_path / "x")
