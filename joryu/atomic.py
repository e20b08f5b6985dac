"""Files a user keeps, written so that a kill at any moment leaves the old file or the new one.

``atomic_path`` / ``atomic_write_bytes`` / ``atomic_write_text``: a temporary file in the same
folder, flushed and fsynced, then ``os.replace``. ``append_line`` is for append-only logs
(``metrics.jsonl``); the engine rewrites that file from the checkpoint's history on resume, so a
torn last line never survives. ``replace`` and ``fsync_dir`` are the one place where a finished
file or folder takes its final name.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
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
    """The one place where an append-only log grows."""
    with open(path, "ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
