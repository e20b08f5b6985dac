"""The smoke versions of the feature-level reproductions run end to end and state a verdict per claim."""

import json

import pytest

from joryu.cli import main
from joryu.reproduce import available, run_reproduction

CLAIMS = {"fitnets": 2, "fsp": 2, "cross_modal": 2, "svd_kd": 4, "progressive_blockwise": 2}


@pytest.mark.parametrize("name", sorted(CLAIMS))
def test_quick_reproduction(name, tmp_path):
    assert name in available()
    md = run_reproduction(name, quick=True, out_dir=tmp_path, progress=False)
    text = md.read_text()
    assert "QUICK smoke run" in text and text.count("- **") == CLAIMS[name]
    data = json.loads(md.with_suffix(".json").read_text())
    assert data["meta"]["quick"] and all(c["verdict"] in ("reproduced", "not reproduced") for c in data["claims"])
    assert all(t["rows"] for t in data["tables"])


def test_methods_are_listed_as_implemented(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in CLAIMS:
        line = next(ln for ln in out.splitlines() if ln.split() and ln.split()[0] == name)
        assert "implemented" in line
