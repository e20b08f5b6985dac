"""The README's language-model recipes run as written (top-k store, on-policy, LoRA student)."""

import re
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

README = Path(__file__).resolve().parents[1] / "README.md"


def blocks():
    text = README.read_text()
    section = text[text.index("## Hugging Face models"):text.index("## Data\n")]
    code = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    gpt2 = next(c for c in code if "GPT2LMHeadModel" in c and "markov_sequences" in c)
    recipes = code[code.index(gpt2) + 1:]
    assert len(recipes) == 3 and "teacher_store" in recipes[0] and 'method="gkd"' in recipes[1] \
        and "LoraConfig" in recipes[2]
    return gpt2, recipes


def test_the_readme_lm_recipes_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    gpt2, recipes = blocks()
    import joryu

    monkeypatch.setattr(joryu, "distill", _quiet(joryu.distill))
    ns = {"ids": {"input_ids": "input_ids", "attention_mask": "attention_mask"}, "joryu": joryu}
    try:
        exec(gpt2, ns)
        for code in recipes:
            exec(code, ns)
            assert ns["m"]["distill"]["val"]["val/student/ppl"] > 0
    finally:
        torch.set_num_threads(n)
    assert (tmp_path / "store" / "manifest.json").is_file()
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def _quiet(fn):
    def call(*a, **k):
        return fn(*a, **{"progress": False, **k})
    return call
