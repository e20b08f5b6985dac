"""``joryu teacher-store``: a config's teacher stored once, then read by the config's kd run."""

import pytest
import torch
import yaml

pytest.importorskip("transformers")

from joryu.cli import main  # noqa: E402
from joryu.engine import save_weights  # noqa: E402
from joryu.models.hf import gpt2_lm  # noqa: E402
from joryu.teachers.store import TopKStore  # noqa: E402

INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask"}
GPT2 = {"vocab_size": 32, "hidden_size": 16, "layers": 1, "heads": 2, "max_len": 16}


def tiny_config(tmp_path, checkpoint=True):
    torch.manual_seed(0)
    ckpt = tmp_path / "teacher.safetensors"
    save_weights(gpt2_lm(**GPT2), ckpt)
    cfg = {"name": "store-cmd", "data": {"name": "synthetic_lm", "kwargs": {
        "num_samples": 48, "test_samples": 16, "vocab_size": 32, "max_len": 16}},
        "teacher": {"name": "joryu.models.hf:gpt2_lm", "kwargs": GPT2, "inputs": INPUTS,
                    **({"checkpoint": str(ckpt)} if checkpoint else {})},
        "student": {"name": "joryu.models.hf:gpt2_lm", "kwargs": GPT2, "inputs": INPUTS},
        "method": {"name": "kd", "params": {"temperature": 1.0, "alpha": 1.0}},
        "train": {"epochs": 1, "batch_size": 16, "optimizer": "adamw", "lr": 0.003}, "baseline": False}
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_the_command_builds_a_store_the_configs_kd_run_accepts(tmp_path, capsys):
    cfg = tiny_config(tmp_path)
    store = tmp_path / "store"
    assert main(["teacher-store", str(cfg), "--k", "4", "--out", str(store), "--temperature", "1"]) == 0
    assert "k = 4 of 32 classes" in capsys.readouterr().out
    s = TopKStore(store)
    assert s.k == 4 and s.positions == (16,) and s.num_samples == 43  # 48 minus the 10% validation split
    code = main(["run", str(cfg), f"method.params.teacher_store={store}", "--out", str(tmp_path / "run"),
                 "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "report.md").is_file()


def test_a_teacher_without_a_checkpoint_is_refused_in_one_line(tmp_path, capsys):
    cfg = tiny_config(tmp_path, checkpoint=False)
    assert main(["teacher-store", str(cfg), "--k", "4", "--out", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err
    assert "teacher.checkpoint" in err and len(err.strip().splitlines()) == 1
