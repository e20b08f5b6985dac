import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from joryu.cli import main
from joryu.config import build_config, load_config
from joryu.defaults import MAIN_JOB

ROOT = Path(__file__).resolve().parents[1]
FAST = ["train.epochs=1", "teacher.train.epochs=1", "data.kwargs.num_samples=600"]


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def base_yaml(**changes):
    raw = {"name": "t", "data": {"name": "mnist1d", "kwargs": {"num_samples": 600}},
           "teacher": {"name": "cnn1d", "kwargs": {"width": 8}, "train": {"epochs": 1}},
           "student": {"name": "mlp", "kwargs": {"hidden": [16]}}, "train": {"epochs": 1}}
    raw.update(changes)
    return yaml.safe_dump(raw)


def run_cli(args, capsys):
    code = main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_every_example_config_validates():
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        load_config(path)


def test_main_job_config_file_matches_the_builtin_default():
    assert load_config(ROOT / "configs" / "kd_mnist1d.yaml") == build_config(MAIN_JOB)


@pytest.mark.parametrize("text,needle", [
    ("name: [unclosed\n", "not valid YAML at line"),
    ("- a\n- b\n", "must hold a mapping"),
    (base_yaml(train={"epochs": "many"}), "train.epochs"),
    (base_yaml(train={"epohcs": 3}), "train.epohcs: unknown key (allowed: batch_size"),
    (base_yaml(method={"name": "kd", "params": {"temprature": 2}}), "method.params.temprature: unknown key"),
    (base_yaml(method={"name": "kdd"}), "unknown method 'kdd'. Did you mean kd"),
    (base_yaml(student={"name": "resnet21"}), "unknown model 'resnet21'"),
    (base_yaml(data={"name": "mnist2d"}), "unknown dataset 'mnist2d'"),
    (base_yaml(student={"name": "mlp", "kwargs": {"num_classes": 7}}), "class counts differ"),
    (base_yaml(data={"name": "cifar10", "path": "/nonexistent/cifar"}), "/nonexistent/cifar"),
])
def test_bad_config_is_one_line_exit_2_no_traceback(tmp_path, capsys, text, needle):
    code, out, err = run_cli(["run", write(tmp_path, text), "--out", str(tmp_path / "run"), "--quiet"], capsys)
    assert code != 0
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    if "YAML" in needle or "mapping" in needle or "unknown" in needle or "train.epochs" in needle:
        assert code == 2


def test_bad_override_names_the_key(tmp_path, capsys):
    code, _, err = run_cli(["run", write(tmp_path, base_yaml()), "train.lr=-1", "--quiet"], capsys)
    assert code == 2 and "train.lr" in err and "greater than 0" in err


def test_listing_commands(capsys):
    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0 and "kd" in out and "implemented" in out and "Hinton" in out
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and "resnet32x4" in out and "mobilenetv2" in out
    code, out, _ = run_cli(["datasets"], capsys)
    assert code == 0 and "mnist1d" in out and "image_folder" in out


def test_run_writes_folder_and_never_overwrites(tmp_path, capsys):
    cfg = write(tmp_path, base_yaml(output_dir=str(tmp_path / "runs")))
    code, out, _ = run_cli(["run", cfg, "--quiet"], capsys)
    assert code == 0 and "student + kd" in out and "student alone" in out and "teacher" in out
    first = tmp_path / "runs" / "t"
    for f in ("config.yaml", "report.md", "results.json", "val_accuracy.png", "student.safetensors",
              "teacher/metrics.jsonl", "baseline/metrics.jsonl", "kd/metrics.jsonl"):
        assert (first / f).exists(), f
    marker = (first / "report.md").read_text()
    code, out, _ = run_cli(["run", cfg, "--quiet"], capsys)
    assert code == 0 and (tmp_path / "runs" / "t-2" / "report.md").exists()
    assert (first / "report.md").read_text() == marker


def test_kill_then_resume_matches_an_uninterrupted_run(tmp_path):
    """A real SIGKILL mid-run, then --resume: same final metrics as a run never interrupted."""
    args = ["train.epochs=6", "teacher.train.epochs=2", "data.kwargs.num_samples=1500",
            "train.checkpoint_every=5", "data.augment.shift=2"]
    env = {**os.environ, "JORYU_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "joryu", "--quiet"]
    ref = subprocess.run(cmd + ["--out", str(tmp_path / "ref")] + args, env=env, capture_output=True,
                         text=True, timeout=300)
    assert ref.returncode == 0, ref.stderr[-2000:]
    run = tmp_path / "run"
    proc = subprocess.Popen(cmd + ["--out", str(run)] + args, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts = run / "kd" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and not any(ckpts.glob("step-*/state.json")):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "kd" / "done.json").exists(), "the run finished before it could be killed"
    res = subprocess.run(cmd + ["--out", str(run), "--resume"] + args, env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    a = json.loads((tmp_path / "ref" / "results.json").read_text())["rows"]
    b = json.loads((run / "results.json").read_text())["rows"]
    for row in a:
        assert a[row]["test_acc"] == b[row]["test_acc"], row
        assert a[row]["test/student/loss"] == b[row]["test/student/loss"], row


def test_torchrun_two_processes_share_one_run_folder(tmp_path):
    """`torchrun -m joryu run`: one run folder, one table, both processes in one process group."""
    cfg = write(tmp_path, base_yaml(output_dir=str(tmp_path / "runs")))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           "--master_port=29541", "-m", "joryu", "run", cfg, "--quiet"],
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "JORYU_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    table_rows = [line for line in proc.stdout.splitlines() if line.startswith("student + kd ")]
    assert proc.stdout.count("run folder:") == 1 and len(table_rows) == 1  # one table, printed once
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["t"]
    rows = [json.loads(x) for x in (tmp_path / "runs" / "t" / "kd" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 1  # written once, by the main process
