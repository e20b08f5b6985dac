"""Run folders: where a run may write.

Policy (``plan_run_dir``):

- a new run goes to ``--out FOLDER`` or ``output_dir/name``; an existing default folder is never
  touched (the run goes to ``name-2``, ``name-3``...), and an ``--out`` folder that already holds
  anything is refused unless ``--resume`` or ``--overwrite`` is given;
- ``--resume`` needs the folder, its ``config.yaml``, and a config that agrees with the saved one
  in every key that changes the result (``RESULT_NEUTRAL`` keys may differ); a finished run is
  reported as finished, never trained again;
- nothing is created or deleted until ``RunPlan.commit`` is called, which the experiment does
  only after its checks (data, models, a dry run of every stage) have passed; ``--overwrite``
  then moves the old folder aside, creates the new one and deletes the old one.

Every file inside a run folder is written through ``joryu.atomic``.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from joryu import atomic
from joryu.config import build_config
from joryu.errors import ConfigError, JoryuError, RunDirError
from joryu.methods import get_method

# Dotted config keys that do not change what a run computes: they may differ on --resume.
# A key matches if it equals an entry or ends with "." + entry.
RESULT_NEUTRAL = ("name", "output_dir", "log_every", "checkpoint_every", "keep_checkpoints",
                  "threads")

FINISHED_MARKER = "results.json"  # written last, by the report, when a run completes


# --------------------------------------------------------------------------- config comparison

def flatten(d, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out = {}
    if isinstance(d, dict):
        for k, v in d.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten(v, key))  # an empty section adds no keys
            else:
                out[key] = v
    return out


def _neutral(key: str) -> bool:
    return any(key == n or key.endswith("." + n) for n in RESULT_NEUTRAL)


def config_differences(saved: dict, current: dict) -> list[str]:
    """Dotted keys whose values differ between two dumped configs, ignoring ``RESULT_NEUTRAL``."""
    a, b = flatten(saved), flatten(current)
    return sorted(k for k in set(a) | set(b) if not _neutral(k) and a.get(k) != b.get(k))


def dump_config(cfg) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def is_finished(path: str | os.PathLike) -> bool:
    """True when ``path`` holds a run that completed (its report was written)."""
    return (Path(path) / FINISHED_MARKER).is_file()


# --------------------------------------------------------------------------- the plan

def _check_creatable(path: Path) -> None:
    """Refuse, with one line, a run folder that cannot be created or written."""
    if path.exists() and not path.is_dir():
        raise RunDirError(f"run folder {path} is a file, not a folder; choose another --out or "
                          "output_dir")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise RunDirError(f"cannot create run folder {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"cannot create run folder {path}: {probe} is not writable; choose "
                          "another --out or output_dir")


@dataclass
class RunPlan:
    """Where a run writes and how: ``mode`` is ``new``, ``overwrite`` or ``resume``."""

    path: Path
    mode: str
    finished: bool = False
    notes: list[str] = field(default_factory=list)
    committed: bool = False

    def commit(self, config_text: str, main_process: bool = True) -> Path:
        """Create (or replace) the folder and write ``config.yaml``; call after the checks pass."""
        if self.committed or not main_process:
            self.committed = True
            return self.path
        path = self.path
        try:
            if self.mode == "resume":
                path.mkdir(parents=True, exist_ok=True)
            else:  # the folder appears, with its config.yaml, in one rename
                path.parent.mkdir(parents=True, exist_ok=True)
                staging = path.with_name(f".{path.name}.new-{os.getpid()}")
                if staging.exists():
                    shutil.rmtree(staging)
                staging.mkdir()
                atomic.atomic_write_text(staging / "config.yaml", config_text)
                aside = None
                if self.mode == "overwrite" and path.exists():
                    aside = path.with_name(f".{path.name}.replaced-{os.getpid()}")
                    if aside.exists():
                        shutil.rmtree(aside)
                    atomic.replace(path, aside)
                elif path.is_dir():  # an empty folder the user made for the run
                    path.rmdir()
                atomic.replace(staging, path)
                atomic.fsync_dir(path.parent)
                if aside is not None:
                    shutil.rmtree(aside, ignore_errors=True)
        except OSError as e:
            raise RunDirError(f"cannot write run folder {path}: {e.strerror or e}") from None
        self.committed = True
        return path


def _next_free(base: Path, name: str) -> Path:
    path = base / name
    if not path.exists():
        return path
    k = 2
    while (base / f"{name}-{k}").exists():
        k += 1
    return base / f"{name}-{k}"


def plan_run_dir(cfg, out: str | os.PathLike | None = None, overwrite: bool = False,
                 resume: bool = False) -> RunPlan:
    """Decide where ``cfg``'s run goes, without touching the file system (see the module doc)."""
    if overwrite and resume:
        raise RunDirError("--resume and --overwrite exclude each other: resume continues a run, "
                          "overwrite replaces it")
    path = Path(out) if out else Path(cfg.output_dir) / cfg.name
    if resume:
        return _plan_resume(cfg, path)
    if out is None and not overwrite:
        path = _next_free(Path(cfg.output_dir), cfg.name)
    _check_creatable(path)
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            what = "a finished run" if is_finished(path) else "files (a run?)"
            raise RunDirError(f"run folder {path} already holds {what}; add --resume to continue "
                              "it, --overwrite to replace it, or choose another --out")
        return RunPlan(path, "overwrite")
    return RunPlan(path, "new")


def _normalised(dumped: dict) -> dict:
    """A dumped config with the method's parameters filled in with their defaults, so that
    ``temperature: 4.0`` written out and the same default left implicit compare equal."""
    out = dict(dumped)
    method = dict(out.get("method") or {})
    try:
        method["params"] = get_method(method.get("name", "kd"), method.get("params") or {}).params \
            .model_dump(mode="json")
    except (JoryuError, TypeError, ValueError):
        return out
    out["method"] = method
    return out


def _plan_resume(cfg, path: Path) -> RunPlan:
    if not path.is_dir():
        raise RunDirError(f"--resume: no run folder {path} to resume; start the run without --resume")
    saved_file = path / "config.yaml"
    if not saved_file.is_file():
        raise RunDirError(f"--resume: {path} has no config.yaml, so it holds no joryu run to resume")
    try:
        saved_raw = yaml.safe_load(saved_file.read_text(encoding="utf-8"))
        saved = build_config(saved_raw if isinstance(saved_raw, dict) else {}).model_dump(mode="json")
    except (yaml.YAMLError, UnicodeDecodeError, ConfigError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RunDirError(f"--resume: the saved {saved_file} is not a valid config ({first})") from None
    diff = config_differences(_normalised(saved), _normalised(cfg.model_dump(mode="json")))
    if diff:
        shown = ", ".join(diff[:8]) + (f" and {len(diff) - 8} more" if len(diff) > 8 else "")
        raise RunDirError(f"--resume: the config differs from the one {path} was trained with in "
                          f"{shown}; resume with the saved config ({saved_file}), or start a new "
                          "run (drop --resume, or add --overwrite to replace it)")
    _check_creatable(path)
    return RunPlan(path, "resume", finished=is_finished(path))
