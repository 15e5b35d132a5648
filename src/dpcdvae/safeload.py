"""``torch.load(weights_only=True)`` with one-line errors: missing, empty, truncated, not a PyTorch
file, or a pickle that would run code (refused, never executed)."""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from dpcdvae.errors import DPCDVAEError, one_line

__all__ = ["load_weights_only", "UnreadableFileError"]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's default (zip) format
_PICKLE_MAGIC = b"\x80"  # a pickle (protocol >= 2), e.g. torch's legacy format


class UnreadableFileError(DPCDVAEError):
    """A file that torch cannot read (empty, truncated, or not a PyTorch file)."""


def load_weights_only(path: Path | str, what: str = "model file", hint: str = "") -> Any:
    """Load ``path`` on the CPU with ``weights_only=True``.

    Args:
        what: what the file should be, for the messages ("model file", "checkpoint").
        hint: appended to the message of an unreadable file (what the user can do).
    Raises:
        FileNotFoundError, UnreadableFileError, DPCDVAEError (refused pickle): one-line messages.
    """
    import torch

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no {what} at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder, not a {what}")
    with open(path, "rb") as fh:
        head = fh.read(4)
    hint = f"; {hint}" if hint else ""
    if not head:
        raise UnreadableFileError(f"{what} {path} is unreadable: the file is empty (0 bytes){hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if head == _ZIP_MAGIC or head.startswith(_PICKLE_MAGIC):
            found = re.search(r"GLOBAL (\S+)", str(err))
            detail = f"; it would call {found.group(1)} when unpickled" if found else ""
            raise DPCDVAEError(f"refusing to load {path} (not a weights-only checkpoint){detail}; "
                               f"a dpcdvae {what} holds only tensors and plain values") from err
        raise UnreadableFileError(f"{path} is not a {what} (not a PyTorch file){_expected(what)}") from err
    except (RuntimeError, EOFError, OSError) as err:
        if head != _ZIP_MAGIC and not head.startswith(_PICKLE_MAGIC):
            raise UnreadableFileError(f"{path} is not a {what} (not a PyTorch file){_expected(what)}") from err
        raise UnreadableFileError(f"{what} {path} is unreadable (truncated or corrupt: "
                                  f"{_short(one_line(err))}){hint}") from err


def _expected(what: str) -> str:
    if what == "model file":
        return "; expected a model.pt, an exported model folder or a training run's .ckpt"
    return ""


def _short(text: str, limit: int = 120) -> str:
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."
