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


# the mnist100 variants (issue 22): their smoke runs judge every claim (none refused: the compared arms take the
# same student optimizer updates) and report on the 5000-number test split
MNIST100 = {"svd_kd_mnist100": 2, "progressive_blockwise_mnist100": 2, "fitnets_mnist100": 2,
            "noisy_label_distillation_mnist100": 4}


@pytest.mark.parametrize("name", sorted(MNIST100))
def test_quick_mnist100_reproduction(name, tmp_path):
    assert name in available()
    md = run_reproduction(name, quick=True, out_dir=tmp_path, progress=False)
    data = json.loads(md.with_suffix(".json").read_text())
    assert data["meta"]["quick"] and len(data["claims"]) == MNIST100[name]
    assert all(c["verdict"] in ("reproduced", "not reproduced") for c in data["claims"])
    assert "5000 samples" in md.read_text()
    if name == "fitnets_mnist100":  # the fraction of seeds on which each arm trains, one 0/1 per seed
        trains = next(t for t in data["tables"] if t["title"].startswith("Which seeds train"))
        assert len(trains["rows"]) == 3
        assert all(v in (0.0, 1.0) for r in trains["rows"].values() for vs in r.values() for v in vs)
