"""Ground-truth tables shipped with the package (``pretrained/<name>/test_table.npz``).

``dpcdvae evaluate gen`` spends minutes fingerprinting a test split. The table it computes for the
Perov-5 test split ships with the package and is reused, instead of being recomputed, when

- the ground-truth CSV's *parsed content* is the one the table was computed from: same number of
  rows and the same sha256 over the ``cif`` column (:func:`cif_column_digest`; the .gz bytes are
  not compared, since a re-compressed copy of the same CSV has other bytes), and
- the evaluation settings are identical (EvalOptions, preprocessing, ``EVAL_CACHE_VERSION``).

A table computed with other settings is never used. The library versions the table was computed
with (pymatgen, matminer, smact, ...) are stored in it and reported in metrics.json; where they
differ from the installed ones the table is still used, with a warning naming the differences
(``--no-shipped-table`` recomputes with the installed versions).

The file is a plain ``.npz`` (``np.load(allow_pickle=False)``): the record-table arrays of
``worker.records_to_table``, ``__meta__`` (JSON) and optionally ``gt_prop__<sha16>`` arrays, the
ground truth's predictions by the property predictor whose file has that sha256 prefix.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dpcdvae.jsonio import dumps_strict

FORMAT = "dpcdvae-gt-table-v1"
PROP_PREFIX = "gt_prop__"

__all__ = ["FORMAT", "ShippedTable", "cif_column_digest", "table_settings", "write_shipped_table",
           "read_shipped_table", "check_shipped_table", "find_shipped_table"]


@dataclass
class ShippedTable:
    """A shipped table accepted for a CSV: the record table, its meta, and the report for metrics.json."""

    table: dict[str, np.ndarray]
    meta: dict[str, Any]
    path: Path
    info: dict[str, Any] = field(default_factory=dict)
    gt_prop: dict[str, np.ndarray] = field(default_factory=dict)  # sha16 of a property checkpoint -> [n_gt]
    warnings: list[str] = field(default_factory=list)


def cif_column_digest(csv_path: Path) -> tuple[int, str]:
    """(rows, sha256 over the ``cif`` column's strings, each followed by a NUL byte) of a CSV(.gz)."""
    import pandas as pd

    frame = pd.read_csv(csv_path, usecols=["cif"])
    h = hashlib.sha256()
    for text in frame["cif"].astype(str):
        h.update(text.encode("utf-8"))
        h.update(b"\0")
    return len(frame), h.hexdigest()


def table_settings(opts) -> dict[str, Any]:
    """The settings a ground-truth table depends on, library versions excepted."""
    from dpcdvae.evaluation.cache import EVAL_CACHE_VERSION

    return {"opts": dict(opts.__dict__), "preprocess": "niggli+canonical", "eval_cache_version": EVAL_CACHE_VERSION}


def write_shipped_table(path: Path, table: dict[str, np.ndarray], *, dataset: str, split: str, csv_path: Path,
                        opts, versions: dict[str, str], gt_prop: dict[str, np.ndarray] | None = None,
                        extra: dict[str, Any] | None = None) -> Path:
    """Write ``table`` (the whole split, rows in CSV order) as a shippable .npz with its provenance."""
    import os

    n, digest = cif_column_digest(csv_path)
    if int(table["valid"].shape[0]) != n:
        raise ValueError(f"table has {table['valid'].shape[0]} rows but {csv_path} has {n}")
    meta = {"format": FORMAT, "dataset": dataset, "split": split, "n_rows": n, "cif_sha256": digest,
            "settings": table_settings(opts), "versions": dict(versions),
            "gt_prop": {k: {"n": int(v.shape[0])} for k, v in (gt_prop or {}).items()}, **(extra or {})}
    arrays = dict(table)
    arrays.update({PROP_PREFIX + k: np.asarray(v, dtype=np.float64) for k, v in (gt_prop or {}).items()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, __meta__=np.array(dumps_strict(meta, indent=None, sort_keys=True)), **arrays)
    os.replace(tmp, path)
    return path


def read_shipped_table(path: Path) -> tuple[dict[str, np.ndarray], dict[str, Any], dict[str, np.ndarray]]:
    """(table, meta, gt_prop) of a shipped .npz (ValueError when it is not one)."""
    with np.load(path, allow_pickle=False) as data:
        if "__meta__" not in data.files:
            raise ValueError(f"{path}: not a dpcdvae ground-truth table (no __meta__)")
        meta = json.loads(str(data["__meta__"]))
        table = {k: data[k] for k in data.files if k != "__meta__" and not k.startswith(PROP_PREFIX)}
        gt_prop = {k[len(PROP_PREFIX):]: data[k] for k in data.files if k.startswith(PROP_PREFIX)}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    return table, meta, gt_prop


def check_shipped_table(path: Path, dataset: str, split: str, csv_path: Path, opts,
                        digest: tuple[int, str] | None = None) -> tuple[ShippedTable | None, str]:
    """Accept the table at ``path`` for ``csv_path`` or say why not: (ShippedTable, "") or (None, reason)."""
    from dpcdvae.evaluation.gen import library_versions

    try:
        table, meta, gt_prop = read_shipped_table(path)
    except (OSError, ValueError, KeyError) as err:
        return None, f"unreadable ({type(err).__name__}: {err})"
    if (meta.get("dataset"), meta.get("split")) != (dataset, split):
        return None, f"computed for {meta.get('dataset')}/{meta.get('split')}, not {dataset}/{split}"
    if meta.get("settings") != table_settings(opts):
        return None, f"computed with other settings ({meta.get('settings')} vs {table_settings(opts)})"
    n, sha = digest if digest is not None else cif_column_digest(csv_path)
    if n != meta.get("n_rows") or int(table["valid"].shape[0]) != n:
        return None, f"{csv_path.name} has {n} rows, the shipped table {meta.get('n_rows')}"
    if sha != meta.get("cif_sha256"):
        return None, f"the cif column of {csv_path.name} differs from the one the table was computed from"
    now = library_versions()
    then = meta.get("versions", {})
    diff = {k: {"table": then.get(k), "installed": now.get(k)} for k in sorted(set(now) | set(then))
            if then.get(k) != now.get(k)}
    warnings = []
    if diff:
        pretty = ", ".join(f"{k} {v['table']} (installed {v['installed']})" for k, v in diff.items())
        warnings.append(f"ground truth: the shipped {dataset}/{split} table was computed with {pretty}; "
                        "pass --no-shipped-table to recompute it with the installed versions")
    info = {"used": True, "path": str(path), "n_rows": n, "cif_sha256": sha, "versions": then,
            "versions_match": not diff, "version_differences": diff,
            "computed": {k: meta[k] for k in ("date", "code") if k in meta}}
    return ShippedTable(table, meta, Path(path), info, gt_prop, warnings), ""


def find_shipped_table(dataset: str, split: str, csv_path: Path, opts) -> tuple[ShippedTable | None, str]:
    """The shipped table for ``dataset``/``split`` if one ships and fits ``csv_path`` (see the module
    docstring); else (None, why not)."""
    from dpcdvae.pretrained import PRETRAINED, pretrained_dir

    candidates = []
    for name, entry in sorted(PRETRAINED.items()):
        if entry.dataset != dataset:
            continue
        path = pretrained_dir(name) / f"{split}_table.npz"
        if path.is_file():
            candidates.append(path)
    if not candidates:
        return None, f"no shipped table for {dataset}/{split}"
    digest = cif_column_digest(csv_path)
    reasons = []
    for path in candidates:
        found, why = check_shipped_table(path, dataset, split, csv_path, opts, digest)
        if found is not None:
            return found, ""
        reasons.append(f"{path.parent.name}/{path.name}: {why}")
    return None, "; ".join(reasons)
