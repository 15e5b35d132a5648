"""Strict JSON for every file and printout of the package: NaN / Infinity become ``null``.

``json.dumps`` writes ``NaN`` by default, which is not JSON (``jq``, browsers and most languages
refuse it). Every JSON the package writes goes through :func:`dumps_strict`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable

from dpcdvae.atomic import atomic_write_text

__all__ = ["to_strict", "dumps_strict", "write_json"]


def to_strict(obj: Any, default: Callable[[Any], Any] | None = None) -> Any:
    """A copy of ``obj`` that ``json.dumps(..., allow_nan=False)`` accepts: non-finite floats -> None,
    numpy / torch scalars and arrays -> Python numbers and lists, tuples -> lists, keys -> str.
    Other objects go through ``default`` (e.g. ``str``) if given, else are left to json (TypeError)."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k) if not isinstance(k, (str, int, float, bool)) else k: to_strict(v, default)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_strict(v, default) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy / torch scalars and arrays
    if callable(tolist) and type(obj).__module__.split(".")[0] in ("numpy", "torch"):
        return to_strict(tolist(), default)
    if default is not None:
        return to_strict(default(obj))
    return obj


def dumps_strict(obj: Any, indent: int | None = 2, default: Callable[[Any], Any] | None = None, **kwargs) -> str:
    """``json.dumps`` with ``allow_nan=False`` after :func:`to_strict` (NaN / inf written as null)."""
    return json.dumps(to_strict(obj, default), indent=indent, allow_nan=False, **kwargs)


def write_json(path: Path | str, obj: Any, indent: int | None = 2, default: Callable[[Any], Any] | None = None) -> Path:
    """Write strict JSON (plus a newline) to ``path`` atomically, creating its folder."""
    return atomic_write_text(Path(path), dumps_strict(obj, indent=indent, default=default) + "\n")
