"""Where the benchmark CSVs come from: ``--source DIR``, else ``$DPCDVAE_DATA``, else a download.

One rule for every command that reads ``<source>/<dataset>/<split>.csv[.gz]`` (data prepare /
check-graph, evaluate gen / recon, the demo). A custom dataset (``data prepare --csv-dir``) is read
from the CSVs its cache record names (:func:`dataset_split_csv`, ``dpcdvae.data.custom``).
Standard library only (the custom-dataset lookup imports on use).
"""

from __future__ import annotations

import os
from pathlib import Path

from dpcdvae.data.datasets import SPLITS
from dpcdvae.errors import DPCDVAEError

__all__ = ["SOURCE_ENV", "resolve_source", "find_split_file", "split_csv_path", "dataset_split_csv"]

SOURCE_ENV = "DPCDVAE_DATA"


def resolve_source(source: Path | str | None, dataset: str | None = None, *,
                   download_to: Path | str | None = None, splits: tuple[str, ...] = SPLITS) -> Path:
    """The data source folder.

    Args:
        source: ``--source``; None (or empty) falls back to ``$DPCDVAE_DATA``.
        dataset: if given, the source must hold a ``<dataset>/`` folder.
        download_to: with neither source nor ``$DPCDVAE_DATA``, download ``dataset``'s CDVAE CSVs
            (``splits``) into this folder and return it; None: that is an error.

    Raises:
        DPCDVAEError: no source and nothing to download. FileNotFoundError: the source (or its
        ``<dataset>/`` folder) is not a folder.
    """
    if not source:
        source = os.environ.get(SOURCE_ENV) or None
    if source is None:
        if download_to is None or dataset is None:
            raise DPCDVAEError(f"no data source: pass --source DIR or set {SOURCE_ENV}")
        from dpcdvae.data.download import download_dataset

        return download_dataset(dataset, Path(download_to), splits=splits)
    root = Path(source).expanduser()
    if dataset is not None and not (root / dataset).is_dir():
        raise FileNotFoundError(f"no folder {root / dataset} (expected {dataset}/<split>.csv[.gz] under {root})")
    if not root.is_dir():
        raise FileNotFoundError(f"data source {root} is not a folder")
    return root


def find_split_file(source: Path | str, dataset: str, split: str) -> Path | None:
    """``<source>/<dataset>/<split>.csv`` or ``.csv.gz``, whichever exists (plain CSV first)."""
    for name in (f"{split}.csv", f"{split}.csv.gz"):
        path = Path(source) / dataset / name
        if path.is_file():
            return path
    return None


def split_csv_path(source: Path | str, dataset: str, split: str) -> Path:
    """Like :func:`find_split_file`, but a missing dataset folder or split file is an error that
    names what is there."""
    source = Path(source)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not (source / dataset).is_dir():
        have = sorted(p.name for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise FileNotFoundError(f"unknown dataset {dataset!r}: no folder {source / dataset} "
                                f"(datasets there: {', '.join(have) or 'none'})")
    path = find_split_file(source, dataset, split)
    if path is None:
        raise FileNotFoundError(f"no {split}.csv(.gz) for dataset {dataset!r} under {source}")
    return path


def dataset_split_csv(source: Path | str | None, dataset: str, split: str,
                      cache_dir: Path | str | None = None) -> Path:
    """The ground-truth CSV of ``split``: for a custom dataset (record in ``cache_dir``, None:
    $DPCDVAE_CACHE or ~/.cache/dpcdvae) the split CSV of the record, or ``<source>/<split>`` /
    ``<source>/<dataset>/<split>`` .csv[.gz] where ``source`` holds one; for a benchmark
    :func:`split_csv_path` of :func:`resolve_source`."""
    from dpcdvae.data.custom import custom_split_csv, register_custom

    info = register_custom(dataset, cache_dir)
    if info is not None and info.custom:
        return custom_split_csv(info, split, source)
    if info is None and not (source or os.environ.get(SOURCE_ENV)):
        from dpcdvae.data.cache import resolve_cache_dir
        from dpcdvae.data.datasets import builtin_datasets

        raise DPCDVAEError(f"unknown dataset {dataset!r}: not a built-in one ({', '.join(builtin_datasets())}) and "
                           f"no custom dataset record in {resolve_cache_dir(cache_dir) / dataset} (dpcdvae data "
                           f"prepare --csv-dir DIR --name {dataset}; or pass --source DIR with {dataset}/<split>.csv)")
    return split_csv_path(resolve_source(source), dataset, split)
