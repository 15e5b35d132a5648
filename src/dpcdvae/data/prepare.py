"""CSV(.gz) splits -> tensor cache + scalers + report (``dpcdvae data prepare``).

Reads ``<source>/<dataset>/<split>.csv[.gz]`` with pandas, preprocesses the CIFs in a process pool
(``dpcdvae.data.structures``), writes ``<cache_dir>/<dataset>/<split>.pt`` (format in
``dpcdvae.data.cache``), ``scalers.json`` (fitted on the training split) and ``report.json``
(skipped rows with their reasons, timings). All files are written atomically.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from dpcdvae.atomic import atomic_write_text
from dpcdvae.data.cache import CACHE_VERSION, save_split_dict, scalers_path, split_path
from dpcdvae.data.datasets import SPLITS, get_dataset, train_label
from dpcdvae.data.scalers import fit_scalers, save_scalers
from dpcdvae.data.source import find_split_file, resolve_source
from dpcdvae.data.structures import ChunkResult, process_chunk, wrap_frac
from dpcdvae.jsonio import dumps_strict


@dataclass
class SplitReport:
    """What happened to one split.

    skip_counts: category -> count; skipped: one dict per skipped row (row, material_id, reason).
    """

    split: str
    path: str
    n_rows: int
    n_ok: int
    n_skipped: int
    seconds: float
    skip_counts: dict[str, int] = field(default_factory=dict)
    skipped: list[dict] = field(default_factory=list)


@dataclass
class PrepareReport:
    """Result of ``prepare_dataset``; also written to ``<cache_dir>/<dataset>/report.json``."""

    dataset: str
    label: str
    train_split: str
    source: str
    cache_dir: str
    splits: dict[str, SplitReport] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)
    scalers_written: bool = False
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human summary, one line per split plus the messages."""
        out = []
        for rep in self.splits.values():
            why = ", ".join(f"{k} {v}" for k, v in sorted(rep.skip_counts.items()))
            out.append(
                f"{self.dataset}/{rep.split}: {rep.n_ok} of {rep.n_rows} rows cached, {rep.n_skipped} skipped"
                + (f" ({why})" if why else "") + f" in {rep.seconds:.1f} s"
            )
        out.extend(self.messages)
        if self.scalers_written:
            out.append(f"{self.label}: scalers fitted on '{self.train_split}' -> "
                       f"{scalers_path(Path(self.cache_dir), self.dataset)}")
        return out


def read_split_csv(path: Path, prop_names: list[str], limit: int | None = None) -> tuple[list, list[str], np.ndarray, list[str]]:
    """-> (cifs [B], material_ids [B], props [B,P] float64 with NaN, messages)."""
    import pandas as pd

    try:
        df = pd.read_csv(path, nrows=limit, dtype={"material_id": str}, keep_default_na=True)
    except Exception as err:  # noqa: BLE001 - pandas raises several parser errors
        raise ValueError(f"cannot read {path} ({type(err).__name__}: {err})") from None
    if "cif" not in df.columns:
        raise ValueError(f"{path} has no 'cif' column (columns: {', '.join(map(str, df.columns))})")
    messages = []
    props = np.full((len(df), len(prop_names)), np.nan, dtype=np.float64)
    for j, name in enumerate(prop_names):
        if name in df.columns:
            props[:, j] = pd.to_numeric(df[name], errors="coerce").to_numpy(dtype=np.float64)
        else:
            messages.append(f"{path}: no column {name!r}; stored as NaN")
    if "material_id" in df.columns:
        ids = df["material_id"].fillna("").astype(str).tolist()
    else:
        ids = [str(i) for i in range(len(df))]
    return df["cif"].tolist(), ids, props, messages


def _chunk_size(n: int, workers: int) -> int:
    return int(min(512, max(32, -(-n // max(1, 8 * workers)))))


def _run_chunks(cifs: list, max_atoms: int, pool, workers: int, progress: bool, desc: str) -> list[ChunkResult]:
    from tqdm.auto import tqdm

    size = _chunk_size(len(cifs), workers)
    tasks = [(s, cifs[s : s + size], max_atoms) for s in range(0, len(cifs), size)]
    results: list[ChunkResult | None] = [None] * len(tasks)
    with tqdm(total=len(cifs), desc=desc, unit="cif", disable=not progress, leave=False) as bar:
        if pool is None:
            for i, task in enumerate(tasks):
                results[i] = process_chunk(task)
                bar.update(len(task[1]))
        else:
            from concurrent.futures import as_completed

            futures = {pool.submit(process_chunk, task): i for i, task in enumerate(tasks)}
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                bar.update(len(tasks[i][1]))
    return results  # type: ignore[return-value]


def _assemble(results: list[ChunkResult], ids: list[str], props: np.ndarray, prop_names: list[str], meta: dict) -> dict:
    rows = np.concatenate([r.ok_rows for r in results]) if results else np.zeros(0, np.int64)
    cat = lambda key, shape: (np.concatenate([getattr(r, key) for r in results]) if results else np.zeros(shape))  # noqa: E731
    frac = wrap_frac(cat("frac_coords", (0, 3)).reshape(-1, 3), np.float32)
    return {
        "frac_coords": torch.from_numpy(frac),
        "atom_types": torch.from_numpy(cat("atom_types", (0,)).astype(np.int64)),
        "num_atoms": torch.from_numpy(cat("num_atoms", (0,)).astype(np.int64)),
        "lengths": torch.from_numpy(cat("lengths", (0, 3)).reshape(-1, 3).astype(np.float32)),
        "angles": torch.from_numpy(cat("angles", (0, 3)).reshape(-1, 3).astype(np.float32)),
        "props": torch.from_numpy(props[rows].astype(np.float32).reshape(len(rows), len(prop_names))),
        "index": torch.from_numpy(rows.astype(np.int64)),
        "material_ids": [ids[i] for i in rows.tolist()],
        "prop_names": list(prop_names),
        "meta": meta,
    }


def prepare_dataset(
    dataset: str,
    source: Path | str | None,
    cache_dir: Path | str,
    splits: tuple[str, ...] | list[str] = SPLITS,
    workers: int = 2,
    train_split: str | None = None,
    limit: int | None = None,
    progress: bool = True,
    files: dict[str, Path] | None = None,
) -> PrepareReport:
    """Preprocess a benchmark's CSV splits into the cache.

    Args:
        dataset: registry name (perov_5, carbon_24, mp_20).
        source: folder with ``<dataset>/<split>.csv[.gz]``; None -> $DPCDVAE_DATA -> download.
        cache_dir: cache root; files go to ``<cache_dir>/<dataset>/``.
        splits: splits to process; a missing one gives a message in the report, not an error.
        workers: preprocessing processes (<= 1: in this process).
        train_split: split the scalers are fitted on (default "train"); any other gives the label
            "<dataset> (<split>-trained)" in the report, every split's meta and scalers.json.
        limit: read only the first ``limit`` rows of every split (tests, demos).
        progress: show a tqdm progress bar.
        files: split -> CSV, instead of the source rule (custom datasets, ``dpcdvae.data.custom``:
            ``dataset`` must be registered then; ``source`` is only reported).
    """
    t_all = time.perf_counter()
    info = get_dataset(dataset)
    splits = tuple(splits)
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"unknown split {s!r}; known: {', '.join(SPLITS)}")
    train_split = train_split or "train"
    if train_split not in SPLITS:
        raise ValueError(f"unknown --train-split {train_split!r}; known: {', '.join(SPLITS)}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    cache_dir = Path(cache_dir).expanduser()
    if files is None:
        root = resolve_source(source, dataset, download_to=cache_dir / "raw", splits=splits)
    else:
        root = Path(source) if source else Path(next(iter(files.values()))).parent
    label = train_label(dataset, train_split)
    report = PrepareReport(dataset, label, train_split, str(root), str(cache_dir))
    out_dir = cache_dir / dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    prop_names = info.prop_names

    given, files = files, {}
    for s in splits:
        path = find_split_file(root, dataset, s) if given is None else given.get(s)
        if path is not None:
            files[s] = path
        elif s == "train" and train_split == "train":
            others = [o for o in SPLITS if o != "train" and find_split_file(root, dataset, o)]
            hint = f"; use --train-split {others[0]} to train on {others[0]}" if others else ""
            report.messages.append(f"{dataset}: split 'train' not found in {root / dataset}{hint}")
        elif s == "train":
            report.messages.append(
                f"{dataset}: split 'train' not found in {root / dataset}; training on '{train_split}' (--train-split)"
            )
        else:
            report.messages.append(f"{dataset}: split {s!r} not found in {root / dataset}; skipped")

    pool = None
    if workers > 1 and files:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
    train_data = None
    try:
        for s, path in files.items():
            t0 = time.perf_counter()
            cifs, ids, props, msgs = read_split_csv(path, prop_names, limit)
            report.messages.extend(msgs)
            results = _run_chunks(cifs, info.max_atoms, pool, workers, progress, f"{dataset}/{s}")
            skipped = [sk for r in results for sk in r.skipped]
            n_ok = sum(len(r.ok_rows) for r in results)
            meta = {
                "dataset": dataset, "split": s, "label": label, "train_split": train_split,
                "n_rows": len(cifs), "n_skipped": len(skipped), "max_atoms": info.max_atoms,
                "version": CACHE_VERSION, "source": str(path), "limit": -1 if limit is None else int(limit),
            }
            data = _assemble(results, ids, props, prop_names, meta)
            save_split_dict(split_path(cache_dir, dataset, s), data)
            if s == train_split:
                train_data = data
            report.splits[s] = SplitReport(
                split=s, path=str(path), n_rows=len(cifs), n_ok=n_ok, n_skipped=len(skipped),
                seconds=round(time.perf_counter() - t0, 2),
                skip_counts=dict(Counter(cat for _, cat, _ in skipped)),
                skipped=[{"row": r, "material_id": ids[r], "reason": msg} for r, _, msg in skipped],
            )
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)

    if train_data is not None and len(train_data["index"]) > 0:
        scalers = fit_scalers(train_data["lengths"], train_data["angles"], train_data["num_atoms"],
                              train_data["props"], prop_names, dataset, train_split, label)
        save_scalers(scalers_path(cache_dir, dataset), scalers)
        report.scalers_written = True
        for name, count in zip(prop_names, scalers.prop_counts):
            if count == 0:
                report.messages.append(
                    f"{label}: property {name!r} has no values in '{train_split}'; its scaler is null"
                )
    elif train_split in files:
        report.messages.append(f"{label}: training split '{train_split}' has no usable rows; scalers.json not written")
    else:
        report.messages.append(
            f"{label}: training split '{train_split}' not prepared; scalers.json not written"
        )
    report.seconds = round(time.perf_counter() - t_all, 2)
    atomic_write_text(out_dir / "report.json", dumps_strict(report.to_json()) + "\n")
    return report
