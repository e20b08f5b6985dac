"""Files a user keeps, written so that a kill at any moment leaves the old file or the new one.

``atomic_path`` / ``atomic_write_bytes`` / ``atomic_write_text``: a temporary file in the same
folder, flushed and fsynced, then ``os.replace``. ``append_line`` is for append-only logs
(``metrics.jsonl``); the engine rewrites that file from the checkpoint's history on resume, so a
torn last line never survives. ``replace`` and ``fsync_dir`` are the one place where a finished
file or folder takes its final name.

A write the file system refuses (disk full, ``RLIMIT_FSIZE``, a quota) is a one-line
``StorageError`` naming the file, and leaves no temporary file and no torn line behind. Files get
the mode the user's umask gives (``tempfile.mkstemp`` alone would make them 0600).
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from joryu.errors import StorageError

_REASONS = {errno.ENOSPC: "the disk is full", errno.EFBIG: "the file-size limit (ulimit -f) was reached",
            errno.EDQUOT: "the disk quota is exceeded", errno.EROFS: "the file system is read-only"}


def refused(path, e: BaseException) -> StorageError:
    """The one-line error for a write the file system refused."""
    code = _write_errno(e)
    why = _REASONS.get(code, getattr(e, "strerror", None) or type(e).__name__)
    return StorageError(f"cannot write {path}: {why}; nothing half-written was kept. Free space (or "
                        "raise the limit) and run again (a run continues with --resume)")


def _write_errno(e: BaseException) -> int | None:
    """The errno of a refused write behind ``e``: an OSError itself, one in its chain (torch.save
    wraps it in a RuntimeError), or "(os error N)" in the message (safetensors's Rust I/O)."""
    import re

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _REASONS:
            return e.errno
        m = re.search(r"\(os error (\d+)\)", str(e))
        if m and int(m.group(1)) in _REASONS:
            return int(m.group(1))
        e = e.__cause__ or e.__context__
    return None


def umask() -> int:
    """The process's umask (read without changing it where /proc allows)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask



def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """``os.replace``: the one place where a finished file or folder takes its final name."""
    os.replace(src, dst)


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success fsync it and rename it to ``path``.

    For writers that want a file name (``safetensors.save_file``, ``savefig``). On an exception
    the temporary file is removed and ``path`` is left as it was."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            os.fchmod(fd, 0o666 & ~umask())  # the mode open() would give, not mkstemp's 0600
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno in _REASONS:
            raise refused(path, e) from None
        raise
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fchmod(f.fileno(), 0o666 & ~umask())  # again: a writer may have made it anew (safetensors: 0600)
            os.fsync(f.fileno())
        replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if _write_errno(e) is not None:
            raise refused(path, e) from None
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temporary file in the same folder, fsync, rename."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
        f.flush()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """``atomic_write_bytes`` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line to an append-only log (``metrics.jsonl``) and flush it to disk."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _append(path, (line.rstrip("\n") + "\n").encode("utf-8"))


def _append(path: Path, data: bytes) -> None:
    """The one place where an append-only log grows; a refused write is cut back off."""
    try:
        f = open(path, "ab")
    except OSError as e:
        if e.errno in _REASONS:
            raise refused(path, e) from None
        raise
    with f:
        size = f.tell()
        try:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        except OSError as e:
            with contextlib.suppress(OSError):
                f.truncate(size)
            if e.errno in _REASONS:
                raise refused(path, e) from None
            raise
