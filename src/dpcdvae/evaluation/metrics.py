"""CDVAE metric formulas on numpy arrays (no pymatgen): coverage, diversity, Wasserstein, summaries.

Definitions follow CDVAE's compute_metrics.py / eval_utils.py (docs/REFERENCE.md §2).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from dpcdvae.data.datasets import DATASET_ALIASES, DATASETS  # noqa: F401  (aliases: one table)

# (structure cutoff, composition cutoff) of COV, per dataset (CDVAE COV_Cutoffs; data/datasets.py).
COV_CUTOFFS: dict[str, tuple[float, float]] = {name: info.cov_cutoffs for name, info in DATASETS.items()}


def canonical_dataset(name: str) -> str:
    return DATASET_ALIASES.get(name, name)


def min_distances(a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean ``cdist(a, b)`` row and column minima, in chunks of ``chunk`` rows.

    Args: a [Ma, D], b [Mb, D].  Returns: (min over b for each row of a [Ma], min over a for each
    row of b [Mb]).
    """
    from scipy.spatial.distance import cdist

    row_min = np.empty(a.shape[0])
    col_min = np.full(b.shape[0], np.inf)
    for start in range(0, a.shape[0], chunk):
        d = cdist(a[start:start + chunk], b)
        row_min[start:start + chunk] = d.min(axis=1)
        np.minimum(col_min, d.min(axis=0), out=col_min)
    return row_min, col_min


def coverage(gen_struct: np.ndarray, gen_comp: np.ndarray, gt_struct: np.ndarray, gt_comp: np.ndarray,
             struct_cutoff: float, comp_cutoff: float, num_gen: int | None = None) -> dict[str, float | None]:
    """CDVAE ``compute_cov``.

    Args:
        gen_struct [G, 61], gen_comp [G, 132] (normalised): fingerprints of the generated crystals
            whose fingerprints exist (all of them, valid or not).
        gt_struct [T, 61], gt_comp [T, 132] (normalised): the ground truth.
        struct_cutoff, comp_cutoff: the dataset's cutoffs.
        num_gen: number of generated crystals BEFORE dropping missing fingerprints (precision's
            denominator); default G.
    Returns: cov_recall, cov_precision (fractions), amsd_recall, amsd_precision, amcd_recall,
        amcd_precision (mean minimum distances; None without generated fingerprints).
    Each cutoff is checked on its own minimum distance (the nearest structure and the nearest
    composition need not be the same crystal).
    """
    num_gen = gen_struct.shape[0] if num_gen is None else num_gen
    if gen_struct.shape[0] == 0 or gt_struct.shape[0] == 0:
        return {"cov_recall": 0.0, "cov_precision": 0.0, "amsd_recall": None, "amsd_precision": None,
                "amcd_recall": None, "amcd_precision": None}
    s_prec, s_rec = min_distances(gen_struct, gt_struct)
    c_prec, c_rec = min_distances(gen_comp, gt_comp)
    return {
        "cov_recall": float(np.mean((s_rec <= struct_cutoff) & (c_rec <= comp_cutoff))),
        "cov_precision": float(np.sum((s_prec <= struct_cutoff) & (c_prec <= comp_cutoff)) / num_gen),
        "amsd_recall": float(np.mean(s_rec)),
        "amsd_precision": float(np.mean(s_prec)),
        "amcd_recall": float(np.mean(c_rec)),
        "amcd_precision": float(np.mean(c_prec)),
    }


def mean_pdist(x: np.ndarray) -> float | None:
    """Mean pairwise Euclidean distance of the rows of ``x`` [M, D] (CDVAE ``get_fp_pdist``)."""
    from scipy.spatial.distance import pdist

    return float(pdist(x).mean()) if x.shape[0] >= 2 else None


def wasserstein(u: np.ndarray, v: np.ndarray) -> float | None:
    """1-D Wasserstein distance (scipy) between two samples; None if either is empty."""
    from scipy.stats import wasserstein_distance

    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    u, v = u[np.isfinite(u)], v[np.isfinite(v)]
    return float(wasserstein_distance(u, v)) if u.size and v.size else None


def choose_subset(candidates: np.ndarray, n: int, seed: int) -> np.ndarray:
    """``n`` of the given row indices without replacement (all if fewer), numpy default_rng(seed),
    returned sorted."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if candidates.size <= n:
        return candidates.copy()
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(candidates, size=n, replace=False))


def reason_counts(reasons: np.ndarray) -> dict[str, int]:
    """Count of each invalidity reason over "|"-joined reason strings [M]."""
    counter: Counter[str] = Counter()
    for r in reasons:
        counter.update(x for x in str(r).split("|") if x)
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def validity_summary(table: dict[str, np.ndarray]) -> dict[str, Any]:
    """Fractions over ALL crystals: comp_valid, struct_valid, valid (CDVAE), plus counts and the
    fingerprint failures and reasons."""
    m = int(table["valid"].shape[0])
    frac = (lambda key: float(table[key].mean()) if m else None)
    return {
        "comp_valid": frac("comp_valid"),
        "struct_valid": frac("struct_valid"),
        "valid": frac("valid"),
        "n_total": m,
        "n_comp_valid": int(table["comp_valid"].sum()),
        "n_struct_valid": int(table["struct_valid"].sum()),
        "n_valid": int(table["valid"].sum()),
        "n_fingerprint_failed": int((~table["fp_ok"]).sum()),
        "reasons": reason_counts(table["reasons"]),
    }


def lattice_rms(diff: np.ndarray) -> float | None:
    """sqrt(mean of squared finite entries) of [M, 3] differences (DP-CDVAE rms_lengths/angles)."""
    d = np.asarray(diff, dtype=np.float64).reshape(-1)
    d = d[np.isfinite(d)]
    return float(np.sqrt(np.mean(d ** 2))) if d.size else None


def recon_summary(gt_index: np.ndarray, matched: np.ndarray, rms: np.ndarray, n_gt: int) -> dict[str, Any]:
    """CDVAE RecEval on a list of predictions.

    Args:
        gt_index [P]: ground-truth row of each prediction; matched [P] bool; rms [P] normalised RMS
            (NaN where unmatched); n_gt: number of ground-truth crystals in the split.
    A ground truth counts as matched if any of its predictions matches (one prediction per ground
    truth reduces to CDVAE), with the smallest RMS. match_rate divides by ``n_gt``.
    """
    gt_index = np.asarray(gt_index, dtype=np.int64)
    best = np.full(n_gt, np.inf)
    sel = np.asarray(matched, dtype=bool)
    np.minimum.at(best, gt_index[sel], np.asarray(rms, dtype=np.float64)[sel])
    hit = np.isfinite(best)
    n_pred_gt = int(np.unique(gt_index).size)
    return {
        "match_rate": float(hit.sum() / n_gt) if n_gt else None,
        "rms_dist": float(best[hit].mean()) if hit.any() else None,
        "n_gt": int(n_gt),
        "n_gt_predicted": n_pred_gt,
        "n_matched": int(hit.sum()),
        "match_rate_over_predicted": float(hit.sum() / n_pred_gt) if n_pred_gt else None,
    }
