"""Kill a run at the k-th file write it makes (any file, not only checkpoints), resume it, and get
bit-identical weights and the same metrics as a run never interrupted.

Every write of a run goes through ``joryu.atomic``: atomic files end in ``atomic.replace`` and the
append-only ``metrics.jsonl`` grows through ``atomic._append``. A small driver script patches those
two functions to SIGKILL its own process at the k-th call: before the rename (the new file is only
a temporary), after it, or halfway through an append (a torn last line).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

DRIVER = textwrap.dedent("""
    import os, signal, sys
    import joryu.atomic as r

    k, mode, count_file = int(os.environ["KILL_AT"]), os.environ["KILL_MODE"], os.environ["COUNT_FILE"]
    n = [0]
    log = []
    replace, append = r.replace, r._append

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    def counted_replace(src, dst):
        n[0] += 1
        log.append(("replace", str(dst)))
        if n[0] == k and mode == "before":
            die()
        replace(src, dst)
        if n[0] == k and mode == "after":
            die()

    def counted_append(path, data):
        n[0] += 1
        log.append(("append", str(path)))
        if n[0] == k:
            with open(path, "ab") as f:  # a torn line, as a kill mid-write leaves it
                f.write(data[: len(data) // 2])
            die()
        append(path, data)

    r.replace, r._append = counted_replace, counted_append
    from joryu.cli import main

    code = main(sys.argv[1:])
    open(count_file, "w").write("\\n".join(f"{a} {b}" for a, b in log))
    sys.exit(code)
""")

CONFIG = {
    "name": "k", "seed": 1,
    "data": {"name": "mnist1d", "kwargs": {"num_samples": 300}, "augment": {"shift": 2}},
    "teacher": {"name": "cnn1d", "kwargs": {"width": 4}, "train": {"epochs": 2, "checkpoint_every": 2}},
    "student": {"name": "mlp", "kwargs": {"hidden": [16], "dropout": 0.1}},
    "method": {"name": "kd", "params": {"temperature": 3.0}},
    "train": {"epochs": 2, "batch_size": 64, "checkpoint_every": 2},
    "baseline": False,  # the baseline is one more supervised stage, like the teacher's
}


def _run(tmp: Path, out: Path, k: int, mode: str = "none", resume: bool = False):
    env = {**os.environ, "JORYU_THREADS": "1", "PYTHONPATH": str(ROOT), "KILL_AT": str(k),
           "KILL_MODE": mode, "COUNT_FILE": str(tmp / "count")}
    args = [sys.executable, str(tmp / "driver.py"), "run", str(tmp / "c.yaml"), "--out", str(out), "--quiet"]
    if resume:
        args.append("--resume")
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)


def _metrics(run: Path) -> dict:
    out = {}
    for f in sorted(run.rglob("metrics.jsonl")):
        rows = [json.loads(x) for x in f.read_text().splitlines()]
        # wall times and the teacher cache's per-process hit counters are not results
        out[str(f.relative_to(run))] = [{k: v for k, v in r.items() if k not in ("time_s", "samples_per_s")
                                         and not k.startswith("cache_")} for r in rows]
    return out


def _results(run: Path) -> dict:
    rows = json.loads((run / "results.json").read_text())["rows"]
    out = {}
    for name, r in rows.items():
        r = {k: v for k, v in r.items() if k != "latency_ms"}
        if "deploy" in r:  # wall-clock timings differ run to run; sizes, MACs and memory must not
            r["deploy"] = {k: v for k, v in r["deploy"].items() if not k.startswith(("cpu_", "cuda"))}
        out[name] = r
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill")
    (tmp / "driver.py").write_text(DRIVER)
    (tmp / "c.yaml").write_text(yaml.safe_dump(CONFIG))
    ref = _run(tmp, tmp / "ref", 0)
    assert ref.returncode == 0, ref.stderr[-3000:]
    writes = (tmp / "count").read_text().splitlines()
    assert len(writes) > 40, len(writes)  # checkpoints, metrics rows, done.json, weights, report...
    return tmp, writes


def _picks(writes, names):
    total, mid = len(writes), len(writes) // 2

    def first(kind, name, after=0):
        return next(i + 1 for i, w in enumerate(writes) if i >= after and w.startswith(kind)
                    and w.endswith(name))

    table = {
        "config": (1, "before"),  # the run folder's first file
        "torn-metrics": (first("append", "metrics.jsonl"), "torn"),
        "state.json": (first("replace", "state.json"), "after"),
        "checkpoint-rename": (first("replace", "step-00000004"), "before"),
        "final-weights": (first("replace", "final.safetensors"), "after"),
        "done.json": (first("replace", "done.json"), "before"),
        "torn-metrics-late": (first("append", "metrics.jsonl", mid), "torn"),
        "optim-late": (first("replace", "optim.pt", mid), "before"),
        "student-weights": (first("replace", "student.safetensors"), "after"),
        "report": (first("replace", "report.md"), "before"),
        "last-before": (total, "before"),
        "last-after": (total, "after"),
    }
    return [table[n] for n in names]


def _kill_and_resume(tmp, k, mode):
    ref_dir = tmp / "ref"
    out = tmp / f"run-{k}-{mode}"
    killed = _run(tmp, out, k, "before" if mode == "torn" else mode)
    assert killed.returncode == -9, (k, mode, killed.returncode, killed.stderr[-2000:])
    if not out.exists():  # killed before the run folder appeared: start it again
        res = _run(tmp, out, 0)
    else:
        res = _run(tmp, out, 0, resume=True)
    assert res.returncode == 0, (k, mode, res.stderr[-3000:])
    assert (out / "student.safetensors").read_bytes() == (ref_dir / "student.safetensors").read_bytes(), (k, mode)
    assert _results(out) == _results(ref_dir), (k, mode)
    assert _metrics(out) == _metrics(ref_dir), (k, mode)
    leftovers = [p.name for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
    assert not leftovers or all(p.startswith(".") for p in leftovers), leftovers


def test_kill_at_a_write_then_resume_is_bit_identical(reference):
    tmp, writes = reference
    for k, mode in _picks(writes, ["torn-metrics", "checkpoint-rename", "report"]):
        _kill_and_resume(tmp, k, mode)


@pytest.mark.slow
def test_kill_at_more_writes_then_resume_is_bit_identical(reference):
    tmp, writes = reference
    for k, mode in _picks(writes, ["config", "state.json", "final-weights", "done.json", "torn-metrics-late",
                                   "optim-late", "student-weights", "last-before", "last-after"]):
        _kill_and_resume(tmp, k, mode)
