"""Run folders: where a run may write.

Policy (``plan_run_dir``):

- a new run goes to ``--out FOLDER`` or ``output_dir/name``; an existing default folder is never
  touched (the run goes to ``name-2``, ``name-3``...), and an ``--out`` folder that already holds
  anything is refused unless ``--resume`` or ``--overwrite`` is given;
- ``--resume`` needs the folder, its ``config.yaml``, and a config that agrees with the saved one
  in every key that changes the result (``RESULT_NEUTRAL`` keys may differ); a finished run is
  reported as finished, never trained again;
- nothing is created or deleted until ``RunPlan.commit`` is called, which the experiment does
  only after its checks (data, models, a dry run of every stage) have passed;
- a new folder is claimed with ``os.mkdir`` of its final name, which exactly one process can win:
  two runs started at once with the default folder get ``name`` and ``name-2``;
- a run holds ``RunLock`` (``fcntl.flock`` on ``.lock`` in the folder, with its pid) for its
  life: a second ``--resume`` (or ``--out``) of a folder in use is refused in one line; the kernel
  drops the lock when the process dies, so a stale ``.lock`` is simply taken over;
- ``--overwrite`` moves the old folder aside at commit and deletes it only when the new run has
  finished (``RunPlan.finish(True)``); a new run that fails, is interrupted or diverges is removed
  and the old one put back (``finish(False)``). After a kill, the next plan of that folder puts a
  finished run back over the unfinished one that replaced it.

Every file inside a run folder is written through ``joryu.atomic``.
"""

from __future__ import annotations

import contextlib
import errno
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


LOCK_NAME = ".lock"


class RunLock:
    """An exclusive ``fcntl.flock`` on ``folder/.lock`` (which holds the owner's pid), held until
    ``release`` or the process ends. ``RunLock.acquire(folder)`` refuses a folder in use."""

    def __init__(self, folder: Path, fd: int):
        self.folder, self.fd = folder, fd

    @classmethod
    def acquire(cls, folder: Path) -> RunLock:
        import fcntl

        path = folder / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise RunDirError(f"cannot lock run folder {folder}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            owner = ""
            with contextlib.suppress(OSError, ValueError):
                owner = f" by process {int(os.pread(fd, 32, 0).decode().split()[0])}"
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirError(f"cannot lock run folder {folder}: {e.strerror or e}") from None
            raise RunDirError(f"run folder {folder} is in use{owner} (another joryu run or --resume of "
                              "it); wait for it to finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(folder, fd)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the last descriptor drops the flock
            self.fd = None

    __del__ = release


def _aside_name(path: Path, pid: int) -> Path:
    return path.with_name(f".{path.name}.replaced-{pid}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def restore_orphans(path: Path) -> str | None:
    """After a kill during ``--overwrite``: put a finished run set aside by a process that is gone
    back over the unfinished run that replaced it (which is deleted). Returns a note, or None."""
    note = None
    for aside in sorted(path.parent.glob(f".{path.name}.replaced-*")) if path.parent.is_dir() else []:
        try:
            pid = int(aside.name.rsplit("-", 1)[1])
        except ValueError:
            continue
        if _pid_alive(pid) and pid != os.getpid():
            continue
        if is_finished(path) or not is_finished(aside):  # the new run finished: the old one goes
            shutil.rmtree(aside, ignore_errors=True)
            continue
        try:
            lock = RunLock.acquire(path) if path.is_dir() else None
        except RunDirError:
            continue  # someone resumes the new run: leave both
        failed = path.with_name(f".{path.name}.failed-{os.getpid()}")
        if path.exists():
            atomic.replace(path, failed)
        atomic.replace(aside, path)
        if lock is not None:
            lock.release()
        shutil.rmtree(failed, ignore_errors=True)
        note = (f"{path}: the finished run that an interrupted --overwrite had set aside was put back "
                "(the unfinished run that replaced it was removed)")
    return note


@dataclass
class RunPlan:
    """Where a run writes and how: ``mode`` is ``new``, ``overwrite`` or ``resume``. ``auto``: the
    folder is the default one, so another name is taken if this one is claimed first."""

    path: Path
    mode: str
    finished: bool = False
    notes: list[str] = field(default_factory=list)
    committed: bool = False
    auto: str | None = None  # the default folder's name: another (NAME-K) is taken if it is claimed first
    lock: RunLock | None = field(default=None, repr=False, compare=False)
    aside: Path | None = None

    def __getstate__(self):  # handed to other processes (torchrun) without the lock
        return {**self.__dict__, "lock": None}

    def commit(self, config_text: str, main_process: bool = True) -> Path:
        """Claim (or replace) the folder, lock it and write ``config.yaml``; call after the checks
        pass. Returns the folder (a default one may have moved on to ``name-K``)."""
        if self.committed or not main_process:
            self.committed = True
            return self.path
        try:
            if self.mode == "resume":  # its config.yaml is the saved one, kept as it is
                self.path.mkdir(parents=True, exist_ok=True)
                if self.lock is None:
                    self.lock = RunLock.acquire(self.path)
            else:
                self._replace_old() if self.mode == "overwrite" else self._claim()
                atomic.atomic_write_text(self.path / "config.yaml", config_text)
        except BaseException:
            if self.mode != "resume":
                self._undo()
            raise
        self.committed = True
        return self.path

    def _claim(self) -> None:
        """``os.mkdir`` of the final name is the claim: exactly one process wins a name."""
        path = self.path
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                path.mkdir()
                break
            except FileExistsError:
                if not self.auto:  # an --out folder the user made (empty when planned)
                    if path.is_dir() and not any(p.name != LOCK_NAME for p in path.iterdir()):
                        break
                    raise RunDirError(f"run folder {path} was filled by another run after this one "
                                      "was planned; choose another --out") from None
                path = _next_free(path.parent, self.auto)  # taken since planned: the next free name
            except OSError as e:
                raise RunDirError(f"cannot create run folder {path}: {e.strerror or e}") from None
        self.path = path
        self.lock = RunLock.acquire(path)

    def _replace_old(self) -> None:
        """Set the old run aside (kept until this one finishes), then claim the name afresh."""
        path = self.path
        old_lock = RunLock.acquire(path) if path.is_dir() else None  # not while it is in use
        if old_lock is not None:
            old_lock.release()
        self.aside = _aside_name(path, os.getpid())
        if self.aside.exists():
            shutil.rmtree(self.aside)
        if path.exists():
            atomic.replace(path, self.aside)
            atomic.fsync_dir(path.parent)
        else:
            self.aside = None
        try:
            path.mkdir()
        except FileExistsError:
            raise RunDirError(f"run folder {path} was created by another run during --overwrite; "
                              "choose another --out") from None
        self.lock = RunLock.acquire(path)

    def _undo(self) -> None:
        """A commit that failed part-way leaves what was there before."""
        if self.lock is not None:
            shutil.rmtree(self.path, ignore_errors=True)
            self.lock.release()
            self.lock = None
        if self.aside is not None and self.aside.exists():
            with contextlib.suppress(OSError):
                atomic.replace(self.aside, self.path)
            self.aside = None

    def finish(self, ok: bool) -> str | None:
        """The run ended: ``ok`` (it finished) deletes the run it replaced; otherwise a replaced
        finished run is put back in place of this unfinished one (the note returned says so).
        Then the lock is released."""
        note = None
        if self.aside is not None:
            if ok:
                shutil.rmtree(self.aside, ignore_errors=True)
            elif self.aside.exists():
                failed = self.path.with_name(f".{self.path.name}.failed-{os.getpid()}")
                with contextlib.suppress(OSError):
                    if self.path.exists():
                        atomic.replace(self.path, failed)
                    atomic.replace(self.aside, self.path)
                    shutil.rmtree(failed, ignore_errors=True)
                note = f"the run this one was to replace is kept in {self.path}"
            self.aside = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None
        return note


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
    notes = [n for n in [restore_orphans(path)] if n]
    if resume:
        plan = _plan_resume(cfg, path)
        plan.notes[:0] = notes
        return plan
    auto = out is None and not overwrite
    if auto:
        path = _next_free(Path(cfg.output_dir), cfg.name)
    _check_creatable(path)
    if path.is_dir() and any(p.name != LOCK_NAME for p in path.iterdir()):
        if not overwrite:
            what = "a finished run" if is_finished(path) else "files (a run?)"
            raise RunDirError(f"run folder {path} already holds {what}; add --resume to continue "
                              "it, --overwrite to replace it, or choose another --out")
        RunLock.acquire(path).release()  # refuse at once a folder whose run is still going
        return RunPlan(path, "overwrite", notes=notes)
    return RunPlan(path, "new", notes=notes, auto=cfg.name if auto else None)


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
    lock = RunLock.acquire(path)  # a second --resume of a folder in use stops here
    return RunPlan(path, "resume", finished=is_finished(path), lock=lock)
