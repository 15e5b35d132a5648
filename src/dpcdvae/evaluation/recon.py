"""``evaluate_recon``: CDVAE reconstruction metrics (match rate, mean normalised RMS) plus DP-CDVAE's
RMS errors of lattice lengths and angles.

Each prediction is paired with its ground truth (CSV row ``index`` of samples.pt, else file order),
checked for validity exactly like a generated crystal (structure + composition, and by default the
fingerprint check of CDVAE's ``Crystal``), and only valid predictions are matched with
``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).get_rms_dist``. match_rate divides by ALL
ground-truth crystals of the split.
"""

from __future__ import annotations

import functools
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dpcdvae.evaluation.worker import EvalOptions


def evaluate_recon(pred: Path | list[Path], dataset: str, *, split: str = "test", source: Path | None = None,
                   out: Path | None = None, report_dir: Path | None = None, workers: int | None = None,
                   fp_check: bool = True, oxidation_states: str = "smact14", pauling_missing: str = "pass",
                   stol: float = 0.5, angle_tol: float = 10.0, ltol: float = 0.3,
                   progress: bool = True, cache_dir: Path | str | None = None,
                   rows_below: int | None = None) -> dict[str, Any]:
    """Reconstruction metrics of the predictions in ``pred`` against ``<source>/<dataset>/<split>``
    (a custom dataset: the split CSV of its record in ``cache_dir``, ``dpcdvae.data.source.dataset_split_csv``).

    Args:
        pred: sample folder with samples.pt holding ``index`` (0-based CSV rows of the ground truth),
            or a folder of CIFs / one extxyz / a samples.pt without index (paired in order with CSV
            rows 0, 1, ...; reported in ``pairing``); a list: several runs with index, scored as one
            (:func:`dpcdvae.evaluation.io.load_paired_crystals`).
        fp_check: also count a prediction invalid when its fingerprints fail (CDVAE's ``Crystal``);
            off skips the CrystalNN cost (then reported as a deviation).
        rows_below: score only the predictions of ground-truth rows < N, against those N rows (so two
            runs of which one reconstructed only the first N crystals compare on the same crystals).
    Returns: the metrics dict (also written to ``out``).
    """
    import pandas as pd

    from dpcdvae.evaluation.gen import code_provenance, library_versions, write_json
    from dpcdvae.evaluation.io import (check_output_dir, check_output_file, dataset_split_csv, load_paired_crystals,
                                       read_csv_structures, unparsable_cif_warnings)
    from dpcdvae.evaluation.metrics import canonical_dataset, lattice_rms, recon_summary, validity_summary
    from dpcdvae.evaluation.worker import LazyPool, default_workers, match_pair, records_to_table

    t_start = time.perf_counter()
    dataset = canonical_dataset(dataset)
    workers = default_workers() if workers is None else max(1, int(workers))
    gt_csv = dataset_split_csv(source, dataset, split, cache_dir)
    check_output_file(out)
    check_output_dir(report_dir)
    preds = [Path(p) for p in pred] if isinstance(pred, (list, tuple)) else [Path(pred)]
    loaded = load_paired_crystals(preds)
    n_gt = len(pd.read_csv(gt_csv, usecols=["cif"]))
    if loaded.index is not None and loaded.kind == "samples.pt":
        index = loaded.index.astype(np.int64)
        pairing = "samples.pt index (0-based CSV rows of the split)"
        meta_split = loaded.meta.get("split")
        if meta_split is not None and str(meta_split) != split:
            raise ValueError(f"samples.pt meta split is {meta_split!r} but --split is {split!r}")
    else:
        index = np.arange(len(loaded.items), dtype=np.int64)
        pairing = f"input order ({loaded.note}) -> CSV rows 0..{len(index) - 1}"
    if rows_below is not None:
        if not 1 <= int(rows_below) <= n_gt:
            raise ValueError(f"--rows-below must be in 1..{n_gt} (the {split} split's rows), got {rows_below}")
        keep = index < int(rows_below)
        loaded.items = [it for it, k in zip(loaded.items, keep) if k]
        index, n_gt = index[keep], int(rows_below)
        pairing += f"; only ground-truth rows < {n_gt}"
    if index.size == 0:
        raise ValueError(f"{', '.join(map(str, preds))}: no predictions" + ("" if rows_below is None else f" of rows < {rows_below}"))
    if index.min() < 0 or index.max() >= n_gt:
        raise ValueError(f"prediction index out of range: rows {index.min()}..{index.max()} but the {split} split "
                         f"has {n_gt} rows")
    gt_items = read_csv_structures(gt_csv, preprocess=True, rows=index).items
    opts = EvalOptions(oxidation_states=oxidation_states, pauling_missing=pauling_missing, fingerprints=fp_check)
    fn = functools.partial(match_pair, opts=opts, stol=stol, angle_tol=angle_tol, ltol=ltol)
    with LazyPool(workers) as pool:
        records = pool.map(fn, list(zip(loaded.items, gt_items)), progress, "match")
    table = records_to_table(records)
    matched = np.array([r["matched"] for r in records], dtype=bool)
    rms = np.array([r["rms"] for r in records], dtype=np.float64)
    d_len = np.array([r["d_lengths"] for r in records], dtype=np.float64).reshape(-1, 3)
    d_ang = np.array([r["d_angles"] for r in records], dtype=np.float64).reshape(-1, 3)
    summary = recon_summary(index, matched, rms, n_gt)
    summary["rms_lengths"] = lattice_rms(d_len)
    summary["rms_angles"] = lattice_rms(d_ang)
    summary["n_pred"] = int(index.size)
    summary["n_gt_unbuildable"] = int(sum(not r["gt_ok"] for r in records))
    warnings = unparsable_cif_warnings(loaded.items, table)
    if summary["n_gt_predicted"] < n_gt:
        warnings.append(f"predictions cover {summary['n_gt_predicted']} of {n_gt} ground-truth crystals; "
                        "match_rate counts the others as unmatched (see match_rate_over_predicted)")
    result = {
        "task": "recon", "dataset": dataset,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": str(preds[0]) if len(preds) == 1 else [str(p) for p in preds], "kind": loaded.kind, "note": loaded.note, "meta": loaded.meta,
                  "pairing": pairing},
        "ground_truth": {"split": split, "csv": str(gt_csv), "n": n_gt, "rows_below": rows_below},
        "settings": {"stol": stol, "angle_tol": angle_tol, "ltol": ltol, "fingerprint_validity": fp_check,
                     "oxidation_states": oxidation_states, "pauling_missing_electronegativity": pauling_missing,
                     "versions": library_versions(), "code": code_provenance()},
        **summary,
        "validity": validity_summary(table),
        "timing": {"total_s": round(time.perf_counter() - t_start, 3), "workers": workers,
                   "mean_crystal_s": float(np.mean(table["seconds"] + np.array([r["match_seconds"] for r in records])))},
    }
    if warnings:
        result["warnings"] = warnings
    if out is not None:
        write_json(Path(out), result)
    if report_dir is not None:
        from dpcdvae.evaluation.report import write_recon_report

        write_recon_report(Path(report_dir), result, table, rms, matched, d_len, d_ang)
    return result
