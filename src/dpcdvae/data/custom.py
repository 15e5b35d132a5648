"""Custom datasets: your own CSVs of CIFs, prepared, trained on and evaluated like the benchmarks.

``dpcdvae data prepare --csv-dir DIR --name NAME`` takes either

- ``DIR/{train,val,test}.csv[.gz]`` (three splits, used as they are), or
- one CSV (``DIR/all.csv``, any name, or ``--csv-dir FILE.csv``) plus ``--split-seed S`` [and
  ``--split-fractions 0.8 0.1 0.1``]: the rows are split deterministically (numpy
  ``default_rng(S).permutation``; each split keeps the file order) into
  ``<cache_dir>/NAME/csv/<split>.csv`` with a ``source_row`` column (the row in the original file).

Every CSV needs a ``cif`` column; ``material_id`` and a property column (``--prop``) are optional.
Besides the usual cache files the command writes the dataset's *record*
``<cache_dir>/NAME/dataset.json``: max_atoms, property columns, COV cutoffs and the CSV of every split
(absolute paths). :func:`register_custom` reads it back into the dataset registry
(:data:`dpcdvae.data.datasets.DATASETS`, ``custom=True``), which is how ``train --set data.dataset=NAME``
and ``evaluate recon|gen --dataset NAME`` know the dataset: the ground truth of ``evaluate`` is the
recorded split CSV (rows match the cache's ``index``). Standard library plus pandas / numpy (lazily).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from dpcdvae.data.datasets import DATASET_ALIASES, DATASETS, SPLITS, DatasetInfo
from dpcdvae.errors import DPCDVAEError

__all__ = ["RECORD_NAME", "DEFAULT_COV_CUTOFFS", "DEFAULT_FRACTIONS", "CustomPlan", "plan_custom", "split_rows",
           "write_record", "register_custom", "custom_split_csv", "record_path"]

RECORD_NAME = "dataset.json"
RECORD_VERSION = 1
# COV (structure, composition) cutoffs of a custom dataset: CDVAE's mp_20 values (the general one)
DEFAULT_COV_CUTOFFS = (0.4, 10.0)
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_CSV_SUFFIXES = (".csv", ".csv.gz")


def record_path(cache_dir: Path | str, name: str) -> Path:
    return Path(cache_dir) / name / RECORD_NAME


def _is_csv(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(_CSV_SUFFIXES) and not path.name.startswith(".")


def _split_file(folder: Path, split: str) -> Path | None:
    for suffix in _CSV_SUFFIXES:
        if (folder / f"{split}{suffix}").is_file():
            return folder / f"{split}{suffix}"
    return None


def check_name(name: str | None) -> str:
    """A custom dataset name: a plain folder name that is not a built-in benchmark."""
    if not name:
        raise DPCDVAEError("--csv-dir needs --name NAME (the dataset's name, e.g. --name mine)")
    if not _NAME.fullmatch(name):
        raise DPCDVAEError(f"--name {name!r}: use letters, digits, '_', '.', '-' (a folder name)")
    if (name in DATASETS and not DATASETS[name].custom) or name in DATASET_ALIASES:
        builtin = DATASET_ALIASES.get(name, name)
        raise DPCDVAEError(f"--name {name!r} is the built-in dataset {builtin}; choose another name for your data")
    return name


def _check_columns(path: Path) -> None:
    import pandas as pd

    try:
        cols = list(pd.read_csv(path, nrows=0).columns)
    except Exception as err:  # noqa: BLE001 - pandas raises several parser errors
        raise DPCDVAEError(f"cannot read {path} ({type(err).__name__}: {err})") from None
    if "cif" not in cols:
        raise DPCDVAEError(f"{path} has no 'cif' column (columns: {', '.join(map(str, cols)) or 'none'})")


@dataclass
class CustomPlan:
    """What ``prepare --csv-dir`` will do, checked before any work.

    Attributes:
        name: dataset name. csv_dir: the folder (or the one CSV) given. layout: "splits" or "single".
        files: split -> CSV (layout "splits"); single: the one CSV (layout "single").
        seed / fractions: the split of layout "single".
    """

    name: str
    csv_dir: Path
    layout: str
    files: dict[str, Path]
    single: Path | None = None
    seed: int | None = None
    fractions: tuple[float, float, float] | None = None


def plan_custom(csv_dir: str | Path, name: str | None, split_seed: int | None = None,
                split_fractions: list[float] | tuple[float, ...] | None = None) -> CustomPlan:
    """Check the input of a custom preparation (one-line DPCDVAEError for each mistake)."""
    name = check_name(name)
    if split_fractions is not None and split_seed is None:
        raise DPCDVAEError("--split-fractions needs --split-seed S (the split of one CSV)")
    fractions = None
    if split_seed is not None:
        fractions = tuple(float(f) for f in (split_fractions or DEFAULT_FRACTIONS))
        if len(fractions) != 3:
            raise DPCDVAEError(f"--split-fractions needs 3 numbers (train val test), got {len(fractions)}")
        if any(not f > 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
            raise DPCDVAEError(f"--split-fractions must be 3 positive numbers summing to 1, got "
                               f"{' '.join(f'{f:g}' for f in fractions)} (sum {sum(fractions):g})")
        if split_seed < 0:
            raise DPCDVAEError(f"--split-seed must be >= 0, got {split_seed}")
    path = Path(csv_dir).expanduser()
    if not path.exists():
        raise DPCDVAEError(f"--csv-dir {path} does not exist")
    if path.is_file():
        if not _is_csv(path):
            raise DPCDVAEError(f"--csv-dir {path}: expected a folder or a .csv / .csv.gz file")
        singles, folder = [path], path.parent
        found = {}
    else:
        folder = path
        found = {s: f for s in SPLITS if (f := _split_file(folder, s)) is not None}
        singles = sorted(p for p in folder.iterdir() if _is_csv(p) and p not in found.values())
    if split_seed is None:
        if len(found) == len(SPLITS):
            for f in found.values():
                _check_columns(f)
            return CustomPlan(name, path.resolve(), "splits", {s: f.resolve() for s, f in found.items()})
        if found:
            missing = [s for s in SPLITS if s not in found]
            raise DPCDVAEError(f"--csv-dir {folder} has {', '.join(f.name for f in found.values())} but no "
                               f"{' / '.join(missing)}.csv[.gz]; give all three splits, or one CSV with --split-seed S")
        if len(singles) == 1:
            raise DPCDVAEError(f"--csv-dir {path} holds one CSV ({singles[0].name}); pass --split-seed S "
                               f"[--split-fractions 0.8 0.1 0.1] to split it into train/val/test")
        raise DPCDVAEError(f"--csv-dir {path}: expected train.csv, val.csv and test.csv (or .csv.gz), "
                           f"or one CSV with --split-seed S; found {len(singles)} other CSV files")
    if found:
        raise DPCDVAEError(f"--csv-dir {folder} already holds split files ({', '.join(f.name for f in found.values())}); "
                           "--split-seed is for a folder with one CSV")
    if len(singles) != 1:
        raise DPCDVAEError(f"--split-seed needs exactly one CSV in --csv-dir {folder}, found {len(singles)}"
                           + (f" ({', '.join(p.name for p in singles)}); give the file itself as --csv-dir"
                              if singles else ""))
    _check_columns(singles[0])
    return CustomPlan(name, path.resolve(), "single", {}, singles[0].resolve(), int(split_seed), fractions)


def split_rows(n: int, seed: int, fractions: tuple[float, float, float]) -> dict[str, "object"]:
    """Deterministic disjoint split of rows 0..n-1: split -> sorted int64 array of rows.

    ``numpy.random.default_rng(seed).permutation(n)``; the first round(f_train * n) rows train, the next
    round(f_val * n) val, the rest test; every split gets at least one row (n >= 3)."""
    import numpy as np

    if n < 3:
        raise DPCDVAEError(f"need at least 3 rows to split into train/val/test, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(fractions[1] * n)))
    n_test = max(1, int(round(fractions[2] * n)))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise DPCDVAEError(f"--split-fractions {' '.join(map(str, fractions))} leave no training row of {n}")
    cuts = {"train": perm[:n_train], "val": perm[n_train:n_train + n_val], "test": perm[n_train + n_val:]}
    return {s: np.sort(rows).astype(np.int64) for s, rows in cuts.items()}


def write_splits(plan: CustomPlan, cache_dir: Path) -> dict[str, Path]:
    """Layout "single": write ``<cache_dir>/NAME/csv/<split>.csv`` (with ``source_row``); else the
    three given files."""
    if plan.layout == "splits":
        return dict(plan.files)
    import pandas as pd

    from dpcdvae.atomic import atomic_write_text

    df = pd.read_csv(plan.single, dtype={"material_id": str}, keep_default_na=True)
    rows = split_rows(len(df), plan.seed, plan.fractions)
    out_dir = Path(cache_dir) / plan.name / "csv"
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {}
    for split, idx in rows.items():
        part = df.iloc[idx].copy()
        if "source_row" not in part.columns:
            part.insert(0, "source_row", idx)
        files[split] = out_dir / f"{split}.csv"
        atomic_write_text(files[split], part.to_csv(index=False))
    return files


def make_info(name: str, files: dict[str, Path], max_atoms: int, prop: str | None,
              cov_cutoffs: tuple[float, float] = DEFAULT_COV_CUTOFFS) -> DatasetInfo:
    return DatasetInfo(name=name, max_atoms=int(max_atoms), prop=prop or "", cov_cutoffs=tuple(cov_cutoffs),
                       split_files={s: str(Path(f).resolve()) for s, f in files.items()}, custom=True)


def write_record(cache_dir: Path | str, info: DatasetInfo, plan: CustomPlan) -> Path:
    """``<cache_dir>/NAME/dataset.json``: what :func:`register_custom` reads back."""
    from dpcdvae.atomic import atomic_write_text
    from dpcdvae.jsonio import dumps_strict

    rec = {
        "version": RECORD_VERSION, "name": info.name, "kind": "custom", "max_atoms": info.max_atoms,
        "prop": info.prop, "extra_props": list(info.extra_props), "cov_cutoffs": list(info.cov_cutoffs),
        "split_files": dict(info.split_files), "csv_dir": str(plan.csv_dir), "layout": plan.layout,
        "source_csv": None if plan.single is None else str(plan.single),
        "split_seed": plan.seed, "split_fractions": None if plan.fractions is None else list(plan.fractions),
    }
    path = record_path(cache_dir, info.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dumps_strict(rec) + "\n")
    return path


def register(info: DatasetInfo) -> DatasetInfo:
    """Put a custom dataset into the registry (replacing a custom one of that name)."""
    if info.name in DATASETS and not DATASETS[info.name].custom:
        raise DPCDVAEError(f"{info.name!r} is a built-in dataset")
    DATASETS.register(info.name, info, replace=True, custom=True)
    return info


def register_custom(name: str, cache_dir: Path | str | None = None) -> DatasetInfo | None:
    """The registered dataset ``name``, or the custom dataset whose record is in the cache (then
    registered), or None when there is neither."""
    if name in DATASETS and not DATASETS[name].custom:
        return DATASETS[name]
    from dpcdvae.data.cache import resolve_cache_dir  # noqa: PLC0415 - torch only here

    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return None
    path = record_path(resolve_cache_dir(cache_dir), name)
    if not path.is_file():
        return DATASETS[name] if name in DATASETS else None
    try:
        rec = json.loads(path.read_text())
        info = DatasetInfo(name=name, max_atoms=int(rec["max_atoms"]), prop=str(rec.get("prop") or ""),
                           extra_props=tuple(rec.get("extra_props") or ()),
                           cov_cutoffs=tuple(float(c) for c in rec.get("cov_cutoffs", DEFAULT_COV_CUTOFFS)),
                           split_files={s: str(f) for s, f in rec["split_files"].items()}, custom=True)
    except (ValueError, KeyError, TypeError) as err:
        raise DPCDVAEError(f"cannot read the dataset record {path} ({type(err).__name__}: {err}); "
                           "prepare the dataset again") from None
    return register(info)


def custom_split_csv(info: DatasetInfo, split: str, source: Path | str | None = None) -> Path:
    """Ground-truth CSV of one split of a custom dataset: with ``source``, ``<source>/<name>/<split>``
    or ``<source>/<split>`` .csv[.gz] where present; else the CSV recorded at preparation."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if source:
        root = Path(source).expanduser()
        for folder in (root / info.name, root):
            found = _split_file(folder, split) if folder.is_dir() else None
            if found is not None:
                return found
    recorded = info.split_files.get(split)
    if recorded is None:
        raise FileNotFoundError(f"custom dataset {info.name!r} has no {split} split")
    path = Path(recorded)
    if not path.is_file():
        raise FileNotFoundError(f"{info.name}/{split}: the CSV it was prepared from, {path}, is gone; "
                                f"pass --source DIR with {split}.csv or prepare the dataset again")
    return path
