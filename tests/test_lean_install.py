"""A lean install: `import joryu` pulls no heavy optional package; a missing one names its extra."""

import subprocess
import sys

import pytest

from joryu._optional import missing_message, require
from joryu.errors import ConfigError

HEAVY = ["sklearn", "matplotlib", "mnist1d", "mlxtend", "transformers", "datasets", "onnx",
         "onnxruntime", "tensorboard", "pandas", "scipy", "peft"]


def test_import_joryu_is_free_of_heavy_imports():
    code = ("import sys, joryu, joryu.data, joryu.engine, joryu.config, joryu.run.experiment; "
            f"print([m for m in {HEAVY!r} if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_a_missing_optional_package_names_its_extra(monkeypatch, tmp_path, capsys):
    assert "pip install 'joryu[demo]'" in missing_message("sklearn.datasets", "the digits dataset")
    with pytest.raises(ConfigError, match="pip install no_such_pkg_xyz") as e:
        require("no_such_pkg_xyz", "this feature")
    assert "\n" not in str(e.value)
    from joryu.report.figures import plot_curves

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert plot_curves({"a": [{"epoch": 1, "val/acc": 50.0}]}, tmp_path) == []
    err = capsys.readouterr().err
    assert "joryu[plot]" in err and len(err.strip().splitlines()) == 1


def test_builtin_dataset_without_its_package_is_one_line(monkeypatch):
    """With mnist1d hidden, loading it says which extra to install."""
    import joryu.data as jd

    monkeypatch.setitem(sys.modules, "mnist1d", None)
    monkeypatch.setitem(sys.modules, "mnist1d.data", None)
    with pytest.raises(ConfigError, match=r"mnist1d.*pip install 'joryu\[demo\]'"):
        jd.load("mnist1d", num_samples=100)


def test_pyproject_core_dependencies_are_lean():
    tomllib = pytest.importorskip("tomllib")
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    core = {d.split(">")[0].split("=")[0].split("<")[0].strip().lower() for d in meta["dependencies"]}
    assert core == {"torch", "accelerate", "pydantic", "pyyaml", "numpy", "safetensors", "tqdm", "pillow"}
    extras = meta["optional-dependencies"]
    assert {"demo", "plot", "test", "all"} <= set(extras)
    assert any("demo" in d and "plot" in d for d in extras["test"])


def test_a_run_without_matplotlib_writes_its_report_without_figures(tmp_path):
    """The `plot` extra is optional: a whole run (learning curves, reliability and deployment
    figures) completes without matplotlib and says once how to get the figures."""
    code = ("import sys; sys.modules['matplotlib'] = None; from joryu.cli import main; "
            f"sys.exit(main(['run', 'configs/user_dataset.yaml', '--out', {str(tmp_path / 'r')!r}, '--quiet', "
            "'train.epochs=1', 'teacher.train.epochs=1', 'data.kwargs.n=200', 'data.kwargs.n_test=50']))")
    from pathlib import Path

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert (tmp_path / "r" / "report.md").is_file() and not list((tmp_path / "r").glob("*.png"))
    assert "joryu[plot]" in out.stderr
