"""Slow end-to-end runs, excluded from the default suite: ``pytest -m slow``."""

import json
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_main_job_as_the_readme_runs_it(tmp_path):
    """`joryu` with no arguments: teacher, student alone and student + KD on MNIST-1D."""
    proc = subprocess.run([sys.executable, "-m", "joryu", "--out", str(tmp_path / "main")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "student + kd" in proc.stdout
    rows = json.loads((tmp_path / "main" / "results.json").read_text())["rows"]
    assert rows["teacher"]["test_acc"] > 90
    assert rows["student + kd"]["params"] < rows["teacher"]["params"]
