"""Run folders under concurrency and --overwrite: an atomic claim of the default folder, one run
per folder at a time (a lock), a finished run kept until the run that replaces it has finished,
and files that follow the user's umask."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import yaml

from joryu.cli import main
from joryu.config import build_config
from joryu.errors import RunDirError
from joryu.run.rundir import LOCK_NAME, plan_run_dir, restore_orphans

ROOT = Path(__file__).resolve().parent.parent
TINY = {
    "name": "t",
    "data": {"name": "mnist1d", "kwargs": {"num_samples": 200}},
    "student": {"name": "mlp", "kwargs": {"hidden": [8]}},
    "method": {"name": "supervised"},
    "train": {"epochs": 1, "batch_size": 64},
    "baseline": False,
}
ENV = {**os.environ, "JORYU_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def cfg_file(tmp_path, **changes) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({**TINY, "output_dir": str(tmp_path / "runs"), **changes}))
    return str(p)


def joryu(*argv, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "joryu", *argv], cwd=ROOT, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != LOCK_NAME}


def finished_run(tmp_path, capsys) -> tuple[str, Path]:
    cfg, run = cfg_file(tmp_path), tmp_path / "run"
    assert main(["run", cfg, "--out", str(run), "--quiet"]) == 0, capsys.readouterr().err
    return cfg, run


# ----------------------------------------------------------------------------- the default folder

def test_two_plans_of_the_default_folder_claim_two_folders(tmp_path):
    cfg = build_config({**TINY, "output_dir": str(tmp_path / "runs")})
    a, b = plan_run_dir(cfg), plan_run_dir(cfg)  # both planned before either claimed: both "t"
    assert a.path == b.path == tmp_path / "runs" / "t"
    pa, pb = a.commit("name: t\n"), b.commit("name: t\n")
    assert (pa.name, pb.name) == ("t", "t-2")  # the mkdir claim: the second moves on
    assert (pa / "config.yaml").is_file() and (pb / "config.yaml").is_file()
    a.finish(True)
    b.finish(True)


@pytest.mark.slow  # two processes side by side: ~25 s on 2 shared cores (the claim itself is above)
def test_two_runs_started_at_once_with_the_default_folder_both_finish(tmp_path):
    cfg = cfg_file(tmp_path)
    procs = [joryu("run", cfg, "--quiet") for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    runs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert runs == ["t", "t-2"], runs
    for name in runs:
        assert (tmp_path / "runs" / name / "results.json").is_file()


# ----------------------------------------------------------------------------- one run per folder

def test_a_second_resume_of_a_folder_in_use_is_refused(tmp_path, capsys):
    cfg, run = finished_run(tmp_path, capsys)
    c = build_config({**TINY, "output_dir": str(tmp_path / "runs")})
    first = plan_run_dir(c, run, resume=True)  # holds the lock (a run in progress)
    with pytest.raises(RunDirError, match=f"in use by process {os.getpid()}"):
        plan_run_dir(c, run, resume=True)
    with pytest.raises(RunDirError, match="in use"):  # nor may --overwrite replace it meanwhile
        plan_run_dir(c, run, overwrite=True)
    first.finish(True)
    plan_run_dir(c, run, resume=True).finish(True)  # released: the next one may


def test_resume_refused_in_one_line_while_another_process_holds_the_folder(tmp_path, capsys):
    cfg, run = finished_run(tmp_path, capsys)
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, os, sys, time
        fd = os.open({str(run / LOCK_NAME)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0); os.write(fd, f"{{os.getpid()}}\\n".encode())
        print("locked", flush=True)
        time.sleep(120)
    """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        p = joryu("run", cfg, "--out", str(run), "--resume", "--quiet")
        out, err = p.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert p.returncode == 2 and len(lines) == 1, err
        assert f"in use by process {holder.pid}" in lines[0] and "Traceback" not in err
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock file is stale and is taken over (a finished run: nothing to do)
    p = joryu("run", cfg, "--out", str(run), "--resume", "--quiet")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "finished run" in err, err


# ----------------------------------------------------------------------------- --overwrite

def test_overwrite_by_a_run_that_diverges_puts_the_old_run_back(tmp_path, capsys):
    cfg, run = finished_run(tmp_path, capsys)
    before = snapshot(run)
    code = main(["run", cfg, "--out", str(run), "--overwrite", "--quiet", "train.lr=1e38",
                 "train.optimizer=sgd"])
    err = capsys.readouterr().err
    assert code == 2 and "non-finite" in err, err
    assert "is kept in" in err  # says where the old run is
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "run"]  # nothing left aside


def test_overwrite_interrupted_keeps_the_old_run(tmp_path, capsys, monkeypatch):
    cfg, run = finished_run(tmp_path, capsys)
    before = snapshot(run)
    from joryu.engine import loop

    def interrupt(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop.Engine, "_epoch", interrupt)
    code = main(["run", cfg, "--out", str(run), "--overwrite", "--quiet", "seed=4"])
    assert code == 130
    assert snapshot(run) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "run"]


def test_overwrite_killed_midway_gets_the_old_run_back_at_the_next_start(tmp_path, capsys):
    cfg, run = finished_run(tmp_path, capsys)
    before = snapshot(run)
    p = joryu("run", cfg, "--out", str(run), "--overwrite", "--quiet", "train.epochs=400")
    aside = run.with_name(f".run.replaced-{p.pid}")
    deadline = time.time() + 120
    while not (aside.is_dir() and (run / "config.yaml").is_file()) and p.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.communicate()
    assert snapshot(aside) == before and not (run / "results.json").exists()
    assert "put back" in restore_orphans(run)  # what the next plan of this folder does
    assert snapshot(run) == before
    assert sorted(q.name for q in tmp_path.iterdir()) == ["c.yaml", "run"]


def test_overwrite_that_finishes_replaces_the_old_run(tmp_path, capsys):
    cfg, run = finished_run(tmp_path, capsys)
    before = snapshot(run)
    assert main(["run", cfg, "--out", str(run), "--overwrite", "--quiet", "seed=5"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 5
    assert snapshot(run)["student.safetensors"] != before["student.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.yaml", "run"]


# ----------------------------------------------------------------------------- umask

@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_files_follow_the_umask(tmp_path, mask):
    from joryu.atomic import atomic_write_text
    from joryu.engine.checkpoint import _save_torch, save_weights

    old = os.umask(mask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        save_weights(torch.nn.Linear(2, 2), tmp_path / "w.safetensors")  # safetensors makes 0600
        _save_torch({"x": torch.zeros(2)}, tmp_path / "o.pt")
    finally:
        os.umask(old)
    for name in ("a.txt", "w.safetensors", "o.pt"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o666 & ~mask, name
