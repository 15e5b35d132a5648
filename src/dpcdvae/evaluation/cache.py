"""On-disk cache of evaluated crystal tables (validity, fingerprints, descriptors).

A table is stored as ``<cache_dir>/<dataset>/eval/<split>-<key>.npz`` (numpy arrays only, read with
``allow_pickle=False``); the key hashes the CSV file's sha256 (ground truth) or the crystals' content
(generated samples, :func:`items_sha256`), the selected rows, the evaluation settings and
``EVAL_CACHE_VERSION``, so a changed file or setting never reuses a stale entry.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from dpcdvae.atomic import atomic_write
from dpcdvae.data.cache import resolve_cache_dir  # noqa: F401  (one rule for every cache)
from dpcdvae.jsonio import dumps_strict

EVAL_CACHE_VERSION = 1


def table_key(file_sha256: str, rows: np.ndarray | None, settings: dict[str, Any]) -> str:
    """16-hex-digit key of (file content, selected rows, settings, cache version)."""
    h = hashlib.sha256()
    h.update(file_sha256.encode())
    h.update(b"all" if rows is None else np.asarray(rows, dtype=np.int64).tobytes())
    h.update(dumps_strict(settings, indent=None, sort_keys=True).encode())
    h.update(str(EVAL_CACHE_VERSION).encode())
    return h.hexdigest()[:16]


_ITEM_FIELDS = ("label", "atom_types", "frac_coords", "lengths", "angles", "lattice", "cif", "preprocess")


def items_sha256(items) -> str:
    """sha256 of the content of a list of ``CrystalInput`` (every field, arrays with dtype and shape)."""
    h = hashlib.sha256()
    for it in items:
        for name in _ITEM_FIELDS:
            v = getattr(it, name)
            h.update(name.encode())
            if v is None:
                h.update(b"\x00none")
            elif isinstance(v, (str, bool)):
                h.update(repr(v).encode())
            else:
                a = np.ascontiguousarray(np.asarray(v))
                h.update(f"{a.dtype}{a.shape}".encode())
                h.update(a.tobytes())
    return h.hexdigest()


def table_path(cache_dir: Path, dataset: str, split: str, key: str) -> Path:
    return cache_dir / dataset / "eval" / f"{split}-{key}.npz"


def save_table(path: Path, table: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
    """Write atomically (temp file + rename) so parallel runs never read a half-written file."""
    meta_arr = np.array(dumps_strict(meta, indent=None))
    atomic_write(path, lambda fh: np.savez_compressed(fh, __meta__=meta_arr, **table))


def load_table(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
    """(table, meta), or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            table = {k: data[k] for k in data.files if k != "__meta__"}
            meta = json.loads(str(data["__meta__"]))
    except Exception:
        return None
    return table, meta
