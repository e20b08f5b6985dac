"""What a user takes home: weights in and out, joryu eval, joryu export, the deployment report,
trackers."""

import importlib.util
import json
import math
import textwrap

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from joryu.cli import main
from joryu.config import ModelConfig
from joryu.errors import ConfigError
from joryu.evaluate import evaluate_model
from joryu.export import ExportError, export_model
from joryu.metrics import Scores, flatten_positions
from joryu.models import create
from joryu.models.build import build_model
from joryu.report.deploy import count_macs, deployment_stats, peak_forward_bytes, state_dict_bytes
from joryu.weights import load_into, read_state_dict

HAS_ONNX = all(importlib.util.find_spec(m) is not None for m in ("onnx", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx and onnxruntime (pip install 'joryu[onnx]')")
FAST = ["--quiet", "train.epochs=1", "teacher.train.epochs=1", "data.kwargs.num_samples=600"]


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def one_line_exit_2(code, err, needle):
    assert code == 2, err
    assert needle in err, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def main_run(tmp_path_factory):
    """The main job, tiny: teacher, student alone and student + kd in one run folder."""
    out = tmp_path_factory.mktemp("main") / "kd-mnist1d"
    assert main(["--out", str(out), *FAST]) == 0
    return out


def mlp():
    return create("mlp", hidden=[16], num_classes=3, input_shape=(8,))


# ------------------------------------------------------------------ checkpoints in
@pytest.mark.parametrize("layout", ["bare", "state_dict", "model", "model_state_dict", "model.", "module.",
                                    "student.", "lightning", "safetensors", "safetensors+module."])
def test_every_checkpoint_layout_loads_into_the_plain_model(tmp_path, layout):
    src = mlp()
    state = src.state_dict()
    path = tmp_path / "w.pt"
    if layout in ("state_dict", "model", "model_state_dict"):
        torch.save({layout: state, "epoch": 3}, path)
    elif layout.endswith(".") and not layout.startswith("safetensors"):
        torch.save({layout + k: v for k, v in state.items()}, path)
    elif layout == "lightning":  # {"state_dict": {"model.x": ...}, "optimizer_states": [...]}
        torch.save({"state_dict": {"model." + k: v for k, v in state.items()}, "optimizer_states": []}, path)
    elif layout.startswith("safetensors"):
        path = tmp_path / "w.safetensors"
        prefix = layout.partition("+")[2]
        save_file({prefix + k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    dst = mlp()
    load_into(dst, path)
    for k, v in src.state_dict().items():
        assert torch.equal(dst.state_dict()[k], v), k
    # and through the config, as a teacher checkpoint
    model = build_model(ModelConfig(name="mlp", kwargs={"hidden": [16]}, checkpoint=str(path)), 3, (8,))
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_a_distillers_state_dict_loads_its_student_part(tmp_path):
    student = mlp()
    holder = torch.nn.Module()
    holder.student = student
    holder.regressor = torch.nn.Linear(16, 32)  # trained with the student, not part of it
    save_file({k: v.contiguous() for k, v in holder.state_dict().items()}, str(tmp_path / "d.safetensors"))
    dst = load_into(mlp(), tmp_path / "d.safetensors")
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in student.state_dict().items())


def test_a_pickled_module_is_refused_with_how_to_save_a_state_dict(tmp_path):
    torch.save(mlp(), tmp_path / "whole.pt")
    with pytest.raises(ConfigError) as e:
        read_state_dict(tmp_path / "whole.pt")
    msg = str(e.value)
    assert "never unpickles" in msg and "torch.save(model.state_dict()" in msg and "\n" not in msg


def test_weights_that_fit_no_model_are_one_line(tmp_path):
    torch.save(create("mlp", hidden=[32], num_classes=3, input_shape=(8,)).state_dict(), tmp_path / "w.pt")
    with pytest.raises(ConfigError) as e:
        load_into(mlp(), tmp_path / "w.pt", "model 'mlp'")
    assert "do not fit model 'mlp'" in str(e.value) and "another shape" in str(e.value)
    torch.save({"epoch": 1, "lr": 0.1}, tmp_path / "meta.pt")
    with pytest.raises(ConfigError, match="not a state dict"):
        read_state_dict(tmp_path / "meta.pt")


def test_a_hugging_face_folder_loads_through_from_pretrained(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=16, num_hidden_layers=1,
                                 num_attention_heads=2, intermediate_size=32, num_labels=3)
    torch.manual_seed(0)
    hf = transformers.ViTForImageClassification(cfg).eval()
    hf.save_pretrained(tmp_path / "vit")
    model = build_model(ModelConfig(name="transformers:AutoModelForImageClassification.from_pretrained",
                                    kwargs={"pretrained_model_name_or_path": str(tmp_path / "vit")}), 3, (1, 8, 8))
    x = torch.randn(2, 1, 8, 8)
    from joryu.outputs import forward

    with torch.no_grad():
        assert torch.allclose(forward(model.eval(), {"input": x}), hf(x).logits, atol=1e-6)


# ------------------------------------------------------------------ checkpoints out
def test_every_weights_file_of_a_run_loads_into_the_plain_model(main_run):
    from joryu.config import load_config

    cfg = load_config(main_run / "config.yaml")
    for f, which in (("student.safetensors", cfg.student), ("teacher.safetensors", cfg.teacher),
                     ("teacher/final.safetensors", cfg.teacher), ("baseline/final.safetensors", cfg.student),
                     ("kd/final.safetensors", cfg.student)):
        model = create(which.name, **which.kwargs, num_classes=10, input_shape=(1, 40))
        state = load_file(str(main_run / f))
        model.load_state_dict(state)  # strict, no key surgery
    assert (main_run / "kd" / "distiller.safetensors").is_file()  # what --resume needs
    a, b = load_file(str(main_run / "kd" / "final.safetensors")), load_file(str(main_run / "student.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_teacher_a_run_trained_is_the_next_runs_teacher_checkpoint(main_run, tmp_path, capsys):
    first = json.loads((main_run / "results.json").read_text())["rows"]["teacher"]
    a, b = load_file(str(main_run / "teacher.safetensors")), load_file(str(main_run / "teacher/final.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    out = tmp_path / "next"
    code, _, err = run_cli(["--out", str(out), *FAST, f"teacher.checkpoint={main_run / 'teacher/final.safetensors'}"],
                           capsys)
    assert code == 0, err
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows["teacher"]["test_acc"] == first["test_acc"]
    assert not (out / "teacher" / "metrics.jsonl").exists()  # loaded, not retrained


def test_resume_of_a_finished_run_reads_the_distiller_file(main_run, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(main_run, copy)
    (copy / "kd" / "final.safetensors").unlink()  # resume must not need it
    code, _, err = run_cli(["--out", str(copy), "--resume", *FAST], capsys)
    assert code == 0, err
    a = json.loads((main_run / "results.json").read_text())["rows"]
    b = json.loads((copy / "results.json").read_text())["rows"]
    assert all(a[k]["test_acc"] == b[k]["test_acc"] for k in a)


# ------------------------------------------------------------------ metrics
def test_scores_by_hand():
    # 4 predictions, 3 classes; confidences 0.6, 0.6, 0.9, 0.9 (bins 9 and 13 of 15)
    p = torch.tensor([[0.6, 0.3, 0.1], [0.6, 0.1, 0.3], [0.9, 0.05, 0.05], [0.05, 0.9, 0.05]])
    target = torch.tensor([0, 1, 0, 0])
    s = Scores()
    s.update(p.log(), target)
    r = s.compute()
    assert r["n"] == 4 and r["top1"] == pytest.approx(50.0)
    # bin of 0.6: acc 1/2, conf 0.6; bin of 0.9: acc 1/2, conf 0.9 -> ECE = 0.5*0.1 + 0.5*0.4
    assert r["ece"] == pytest.approx(100 * (0.5 * 0.1 + 0.5 * 0.4))
    assert r["nll"] == pytest.approx(float(-(p[range(4), target]).log().mean()))
    assert sum(r["reliability"]["count"]) == 4 and r["ece_bins"] == 15
    assert "top5" not in r  # top-5 of 3 classes says nothing: not reported


def test_agreement_and_kl_with_the_teacher():
    g = torch.Generator().manual_seed(0)
    s_logits, t_logits = torch.randn(50, 4, generator=g), torch.randn(50, 4, generator=g)
    target = torch.randint(0, 4, (50,), generator=g)
    same = Scores()
    same.update(s_logits, target, s_logits)
    assert same.compute()["agreement"] == 100.0 and same.compute()["kl_teacher"] == pytest.approx(0, abs=1e-9)
    sc = Scores()
    sc.update(s_logits, target, t_logits)
    r = sc.compute()
    kl = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True, reduction="batchmean")
    assert r["kl_teacher"] == pytest.approx(float(kl), rel=1e-5)
    assert r["agreement"] == pytest.approx(100 * float((s_logits.argmax(1) == t_logits.argmax(1)).float().mean()))


def test_per_position_outputs_flatten_with_the_ignore_mask():
    logits = torch.randn(2, 5, 3)  # [B, L, C]
    target = torch.randint(0, 3, (2, 5))
    target[0, :2] = -100
    lf, tf, ok = flatten_positions(logits, target)
    assert lf.shape == (10, 3) and int(ok.sum()) == 8
    seg = torch.randn(2, 3, 4, 4)  # [B, C, H, W]
    lf, tf, ok = flatten_positions(seg, torch.randint(0, 3, (2, 4, 4)))
    assert lf.shape == (32, 3) and torch.equal(lf[5], seg[0, :, 1, 1])
    s = Scores()
    s.update(logits, target)
    r = s.compute()
    assert r["n"] == 8 and r["kind"] == "sequence" and r["perplexity"] == pytest.approx(math.exp(r["nll"]))
    # a 2-class 1x2 "image": prediction [0, 0], target [0, 1] -> IoU(0) = 1/2, IoU(1) = 0/1 -> mIoU 25%
    d = Scores()
    d.update(torch.tensor([[[[2.0, 1.0]], [[0.0, 0.0]]]]), torch.tensor([[[0, 1]]]))
    assert d.compute()["miou"] == pytest.approx(25.0) and d.compute()["top1"] == pytest.approx(50.0)


def test_evaluate_model_matches_the_engine(tiny_data):
    from joryu.config import TrainConfig
    from joryu.engine import Engine
    from joryu.methods.supervised import SupervisedDistiller

    model = create("mlp", hidden=[16], num_classes=3, input_shape=(8,))
    ours = evaluate_model(model, tiny_data, batch_size=64)
    eng = Engine(TrainConfig(device="cpu"), None, progress=False).evaluate(SupervisedDistiller(model), tiny_data)
    assert ours["top1"] == pytest.approx(eng["val/acc"]) and ours["nll"] == pytest.approx(eng["val/loss"], rel=1e-5)


# ------------------------------------------------------------------ joryu eval
def test_joryu_eval_on_a_run_folder(main_run, capsys):
    code, out, err = run_cli(["eval", str(main_run)], capsys)
    assert code == 0, err
    assert "agreement" in out and "student + kd" in out and "student alone" in out
    res = json.loads((main_run / "eval" / "eval.json").read_text())
    rows = json.loads((main_run / "results.json").read_text())["rows"]
    assert (main_run / "eval" / "reliability.png").stat().st_size > 1000
    for name in ("teacher", "student alone", "student + kd"):
        assert res["results"][name]["top1"] == pytest.approx(rows[name]["test_acc"])
        assert res["results"][name]["ece"] == pytest.approx(rows[name]["eval"]["ece"])
    assert "agreement" in res["results"]["student + kd"] and "agreement" not in res["results"]["teacher"]


def test_joryu_eval_of_a_model_and_weights_on_another_split(main_run, tmp_path, capsys):
    code, out, err = run_cli(["eval", "--model", "mlp", "--model-kwarg", "hidden=[64,64]", "--weights",
                              str(main_run / "student.safetensors"), "--data", "mnist1d", "--data-kwarg",
                              "num_samples=600", "--split", "val", "--teacher", "cnn1d", "--teacher-kwarg",
                              "width=32", "--teacher-weights", str(main_run / "teacher.safetensors"),
                              "--out", str(tmp_path / "e")], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "e" / "eval.json").read_text())
    from joryu.data import load, split_validation

    _, val = split_validation(load("mnist1d", num_samples=600).train, 0.1, 0)
    assert res["split"] == "val" and res["results"]["model"]["n"] == len(val)
    assert "agreement" in res["results"]["model"] and "teacher" in res["results"]


def test_joryu_eval_bad_input_is_one_line_exit_2(main_run, tmp_path, capsys):
    empty = tmp_path / "half"
    empty.mkdir()
    (empty / "config.yaml").write_text((main_run / "config.yaml").read_text())
    code, _, err = run_cli(["eval", str(empty)], capsys)
    one_line_exit_2(code, err, "has no student")
    code, _, err = run_cli(["eval", str(tmp_path)], capsys)
    one_line_exit_2(code, err, "not a joryu run folder")
    code, _, err = run_cli(["eval", "--model", "mlp", "--weights", str(main_run / "teacher.safetensors"),
                            "--data", "mnist1d", "--data-kwarg", "num_samples=600"], capsys)
    one_line_exit_2(code, err, "do not fit model 'mlp'")
    code, _, err = run_cli(["eval", str(main_run), "--data", "digits"], capsys)  # 8x8 images, not 1x40 signals
    one_line_exit_2(code, err, "cannot run on the data")


# ------------------------------------------------------------------ joryu export
@pytest.mark.parametrize("fmt,suffix", [pytest.param("onnx", ".onnx", marks=needs_onnx), ("torchscript", ".pt"),
                                        ("torch-export", ".pt2")])
def test_joryu_export_checks_the_file_against_pytorch(main_run, tmp_path, capsys, fmt, suffix):
    out = tmp_path / f"s{suffix}"
    code, text, err = run_cli(["export", str(main_run), "--format", fmt, "--out", str(out)], capsys)
    assert code == 0, err
    assert out.is_file() and "max |difference|" in text
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    x = torch.randn(7, 1, 40)  # another batch size than the export's
    student = create("mlp", hidden=[64, 64], num_classes=10, input_shape=(1, 40)).eval()
    student.load_state_dict(load_file(str(main_run / "student.safetensors")))
    with torch.no_grad():
        want = student(x)
    if fmt == "onnx":
        import onnxruntime as ort

        got = torch.as_tensor(ort.InferenceSession(str(out)).run(None, {"input": x.numpy()})[0])
    elif fmt == "torchscript":
        got = torch.jit.load(str(out))(x)
    else:
        got = torch.export.load(str(out)).module()(x)
    assert torch.allclose(got, want, atol=1e-4)


@needs_onnx
def test_export_keeps_an_existing_file_unless_overwrite(main_run, tmp_path, capsys):
    out = tmp_path / "s.onnx"
    out.write_bytes(b"keep me")
    code, _, err = run_cli(["export", str(main_run), "--out", str(out)], capsys)
    one_line_exit_2(code, err, "exists; pass --overwrite")
    assert out.read_bytes() == b"keep me"
    code, _, err = run_cli(["export", str(main_run), "--out", str(out), "--overwrite"], capsys)
    assert code == 0 and out.read_bytes() != b"keep me"


@needs_onnx
def test_a_model_that_cannot_be_exported_names_the_operator(tmp_path, monkeypatch, capsys):
    (tmp_path / "odd_models.py").write_text(textwrap.dedent("""
        import torch

        class Bessel(torch.nn.Module):
            def __init__(self, num_classes=3):
                super().__init__()
                self.fc = torch.nn.Linear(8, num_classes)

            def forward(self, x):
                return self.fc(torch.special.bessel_j0(x))
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(0)
    import odd_models

    torch.save(odd_models.Bessel().state_dict(), tmp_path / "w.pt")
    out = tmp_path / "bessel.onnx"
    code, _, err = run_cli(["export", "--model", "odd_models:Bessel", "--weights", str(tmp_path / "w.pt"),
                            "--input-shape", "8", "--out", str(out)], capsys)
    one_line_exit_2(code, err, "operator aten::special_bessel_j0")
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
    with pytest.raises(ExportError, match="unknown export format"):
        export_model(odd_models.Bessel(), torch.randn(2, 8), tmp_path / "x.bin", "tflite")


# ------------------------------------------------------------------ deployment report
def test_deployment_numbers_by_hand():
    model = create("mlp", hidden=[16], num_classes=3, input_shape=(8,)).eval()
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    macs = sum(m.in_features * m.out_features for m in linears)
    assert count_macs(model, torch.randn(4, 8)) == macs
    d = deployment_stats(model, (8,), throughput_batch=32, repeats=5, batch_repeats=3)
    assert d["params"] == sum(p.numel() for p in model.parameters()) and d["macs"] == macs
    assert d["file_bytes"] == state_dict_bytes(model) > 4 * d["params"]
    assert d["threads"] == 1 and d["cpu_batch1"]["p90_ms"] >= d["cpu_batch1"]["median_ms"] > 0
    assert d["cpu_batch"]["samples_per_s"] > 0 and "cuda" not in d or torch.cuda.is_available()
    # peak memory of a forward: two 1000-wide activations of 4-byte floats are alive at once
    wide = torch.nn.Sequential(torch.nn.Linear(8, 1000), torch.nn.ReLU(), torch.nn.Linear(1000, 3)).eval()
    assert peak_forward_bytes(wide, torch.randn(64, 8)) == 2 * 64 * 1000 * 4


def test_every_run_report_has_quality_and_deployment_numbers(main_run):
    md = (main_run / "report.md").read_text()
    for needle in ("MACs/sample", "ECE (%)", "agreement with teacher", "CPU b=1 median / p90", "file (KiB)",
                   "peak fwd memory", "deployment.png", "reliability.png", "val_cross_entropy.png",
                   "1 thread(s)", "15 equal-width"):
        assert needle in md, needle
    rows = json.loads((main_run / "results.json").read_text())["rows"]
    assert list(rows) == ["teacher", "student alone", "student + kd"]
    for r in rows.values():
        assert r["deploy"]["macs"] > 0 and r["deploy"]["file_bytes"] > 0 and math.isfinite(r["eval"]["ece"])
    assert rows["teacher"]["deploy"]["macs"] > rows["student + kd"]["deploy"]["macs"]
    for png in ("deployment.png", "reliability.png", "val_accuracy.png", "val_cross_entropy.png",
                "train_cross_entropy.png"):
        assert (main_run / png).stat().st_size > 1000, png
    assert not (main_run / "train_loss.png").exists()  # the incomparable objective plot is gone


# ------------------------------------------------------------------ trackers
def test_tensorboard_tracker_gets_every_stage_and_the_report(tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "tb"
    code, _, err = run_cli(["--out", str(out), *FAST, "train.log_with=[tensorboard]", "train.project=demo"],
                           capsys)
    assert code == 0, err
    assert (out / "kd" / "metrics.jsonl").is_file()  # stays
    root = out / "tracking" / "demo" / "kd-mnist1d"
    stages = sorted(p.name for p in root.iterdir())
    assert stages == ["report", "student_alone", "student_kd", "teacher"], stages
    acc = EventAccumulator(str(root / "student_kd"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert "val/acc" in tags and "train/loss" in tags
    jsonl = [json.loads(x) for x in (out / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert acc.Scalars("val/acc")[-1].value == pytest.approx(jsonl[-1]["val/acc"], rel=1e-6)
    rep = EventAccumulator(str(root / "report"))
    rep.Reload()
    assert "student_kd/test_acc" in rep.Tags()["scalars"]
    assert any("report" in t for t in rep.Tags()["tensors"])  # the markdown report as text
    hp = [p for p in (root / "teacher").rglob("*") if p.name.startswith("events")]
    assert len(hp) >= 2  # scalars and the hyper-parameters


def test_unknown_or_missing_tracker_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    code, _, err = run_cli(["--out", str(tmp_path / "a"), *FAST, "train.log_with=[tensorbored]"], capsys)
    one_line_exit_2(code, err, "unknown tracker 'tensorbored'")
    assert not (tmp_path / "a" / "teacher").exists()
    import joryu.tracking as tracking

    monkeypatch.setitem(tracking._PACKAGES, "wandb", (("surely_not_installed_pkg",), "wandb"))
    code, _, err = run_cli(["--out", str(tmp_path / "b"), *FAST, "train.log_with=[wandb]"], capsys)
    one_line_exit_2(code, err, "pip install wandb")


# ------------------------------------------------------------------ did it help?
TINY = ["train.epochs=1", "teacher.train.epochs=1", "train.eval_every=1", "baseline=true"]
COMPARISONS = {
    "cross_modal_digits": (["method.params.transfer_epochs=1", "method.params.finetune_epochs=1"],
                           ["student alone"]),
    "data_distillation_mnist5k": (["data.name=digits", "data.augment.shift=0", "method.params.supervised_epochs=1",
                                   "method.params.labeled_per_class=10"],
                                  ["student alone (labelled part only)"]),
    "dataset_distillation_digits": (["method.params.save_path=null"],
                                    ["random real images (same count and steps)"]),
    "dropout_distillation_mnist1d": (["data.kwargs.num_samples=600", "teacher.kwargs.hidden=[32,32]",
                                      "student.kwargs.hidden=[32,32]"], ["teacher, MC dropout (50 masks)"]),
    "posterior_distillation_digits": (["method.params.burn_in=2", "method.params.thin=1",
                                       "method.params.sample_epochs=1", "method.params.gan_epochs=1",
                                       "method.params.num_predictive=8"],
                                      ["SGD (MAP, same iterations)", "SGLD samples' ensemble"]),
    "progressive_blockwise_mnist1d": (["data.kwargs.num_samples=600", "method.params.step_epochs=1",
                                       "method.params.finetune_epochs=1"],
                                      ["student alone (same network, from scratch)"]),
}


SLOW = {"cross_modal_digits"}  # ~9 s alone (LeNet-5 on paired digits): run with -m slow


@pytest.mark.parametrize("config", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c
                                    for c in sorted(COMPARISONS)])
def test_every_method_run_answers_did_it_help(config, tmp_path):
    from pathlib import Path

    from joryu.config import load_config
    from joryu.run.experiment import Experiment

    extra, labels = COMPARISONS[config]
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{config}.yaml", TINY + extra)
    assert cfg.baseline  # the example configs compare too
    summary = Experiment(cfg, run_dir=tmp_path / "run", progress=False).run()
    rows = summary["rows"]
    method_row = f"student + {cfg.method.name}"
    for label in labels:
        assert label in rows, list(rows)
        assert list(rows).index(label) < list(rows).index(method_row)
        assert 0 <= rows[label]["test_acc"] <= 100 and rows[label]["deploy"]["macs"] > 0
    md = (tmp_path / "run" / "report.md").read_text()
    assert all(label in md for label in labels)
    # the run folder's deployed network loads back (Method.deployed_network) and scores the same
    from joryu.run.folder import RunFolder

    run = RunFolder(tmp_path / "run")
    net, key = run.student
    again = evaluate_model(net, run.bundle.test, key)
    assert again["top1"] == pytest.approx(rows[method_row]["eval"]["top1"], abs=1e-9)
    if cfg.method.name == "posterior_distillation":  # the deployed predictor, not the generator alone
        from joryu.models import count_parameters

        dep = rows[method_row]["deploy"]
        assert dep["params"] > count_parameters(create("mlp", hidden=[50], num_classes=10, input_shape=(1, 8, 8)))
        assert dep["macs"] >= 8 * rows["SGD (MAP, same iterations)"]["deploy"]["macs"]  # 8 generated networks


def test_joryu_report_prints_the_run_tables(main_run, tmp_path, capsys):
    code, out, err = run_cli(["report", str(main_run)], capsys)
    assert code == 0, err
    assert "MACs/sample" in out and "ECE (%)" in out and "student + kd" in out and "1 thread(s)" in out
    code, _, err = run_cli(["report", str(tmp_path)], capsys)
    one_line_exit_2(code, err, "has no results.json")


def test_training_curves_plot_the_label_cross_entropy_of_every_run():
    from joryu.report.figures import train_ce_series

    hist = {"teacher": [{"epoch": 1, "train/loss": 2.0}],
            "student alone": [{"epoch": 1, "train/loss": 1.5}],
            "student + kd": [{"epoch": 1, "train/loss": 9.0, "train/kd": 10.0, "train/ce": 1.2}],
            "student + fsp": [{"epoch": 1, "train/loss": 0.3}]}
    series = train_ce_series(hist, {"teacher", "student alone"})
    assert series == {"teacher": [(1, 2.0)], "student alone": [(1, 1.5)], "student + kd": [(1, 1.2)]}


def test_without_onnxruntime_or_matplotlib_one_line_says_what_to_install(main_run, tmp_path, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    out = tmp_path / "s.onnx"
    code, _, err = run_cli(["export", str(main_run), "--out", str(out)], capsys)
    one_line_exit_2(code, err, "pip install 'joryu[onnx]'")
    assert not out.exists()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    import joryu.report.figures

    monkeypatch.setattr(joryu.report.figures, "_SAID", set())
    code, text, err = run_cli(["eval", str(main_run), "--out", str(tmp_path / "e")], capsys)
    assert code == 0 and (tmp_path / "e" / "eval.json").is_file() and not (tmp_path / "e" / "reliability.png").exists()
    assert "pip install 'joryu[plot]'" in err and len(err.strip().splitlines()) == 1
