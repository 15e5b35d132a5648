"""Atomic file writes for every file the package writes (bottom layer: imports nothing from dpcdvae).

A file is written to a temporary file in the target's folder (same file system), flushed and
fsynced, then moved over the target with ``os.replace``: readers (and a run resumed after a crash)
see either the old or the complete new file, never a half-written one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save", "atomic_savefig"]


def atomic_write(path: Path | str, write: Callable[[BinaryIO], Any], *, fsync: bool = True) -> Path:
    """Create or replace ``path`` (and its missing folders) with what ``write`` writes.

    ``write`` receives the binary handle of a temporary file ``.<name>.<random>.tmp`` in the same
    folder. If ``write`` raises (or the process is interrupted), the temporary file is removed and
    the target is left untouched. A new file gets mode 0644, a replaced one keeps its mode.

    Args:
        fsync: flush the data to the disk before the rename (survives a power loss). ``False``
            keeps every other guarantee (readers and killed processes never see a partial file)
            and is ~10x faster for many small files (one fsync costs milliseconds).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        # mkstemp creates mode 0600; keep an existing file's mode, else the usual 0644
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path | str, content: bytes, *, fsync: bool = True) -> Path:
    """Atomically write ``content`` to ``path``."""
    return atomic_write(path, lambda fh: fh.write(content), fsync=fsync)


def atomic_write_text(path: Path | str, text: str, *, fsync: bool = True) -> Path:
    """Atomically write UTF-8 ``text`` to ``path``."""
    return atomic_write_bytes(path, text.encode("utf-8"), fsync=fsync)


def atomic_torch_save(path: Path | str, obj: Any) -> Path:
    """Atomically ``torch.save`` ``obj`` to ``path`` (torch is imported only when called)."""
    import torch

    return atomic_write(path, lambda fh: torch.save(obj, fh))


def atomic_savefig(path: Path | str, fig: Any, **kwargs: Any) -> Path:
    """Atomically save a matplotlib figure; the format comes from the suffix (``.png``)."""
    fmt = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda fh: fig.savefig(fh, format=fmt, **kwargs))
