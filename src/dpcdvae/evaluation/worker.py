"""Per-crystal work (runs in worker processes) and the process pool.

``evaluate_crystal`` applies CDVAE's ``Crystal`` class to one input: build the structure, structure
and composition validity, fingerprints (a featuriser failure makes the crystal invalid with a reason,
as in CDVAE), and the descriptors used by the Wasserstein distances and the report. It never raises.
``match_pair`` does the same for a reconstruction and matches it to its ground truth.
"""

from __future__ import annotations

import functools
import os
import time
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from dpcdvae.evaluation.fingerprints import COMP_FP_DIM, STRUCT_FP_DIM
from dpcdvae.evaluation.io import CrystalInput, build_structure


@dataclass(frozen=True)
class EvalOptions:
    """Settings of the per-crystal evaluation.

    Attributes:
        oxidation_states: SMACT oxidation-state set, "smact14" (CDVAE era) or "icsd24".
        pauling_missing: "pass" (CDVAE) or "fail" (smact 4) for a missing electronegativity.
        fingerprints: compute fingerprints (a failure makes the crystal invalid, as in CDVAE).
        dist_cutoff: minimum interatomic distance in Å for structure validity.
    """

    oxidation_states: str = "smact14"
    pauling_missing: str = "pass"
    fingerprints: bool = True
    dist_cutoff: float = 0.5


def _build(item: CrystalInput) -> tuple[Any, str | None]:
    """:func:`~dpcdvae.evaluation.io.build_structure` that never raises (an error is a reason)."""
    try:
        return build_structure(item)
    except Exception:
        return None, "construction_error"


def analyse_crystal(item: CrystalInput, opts: EvalOptions) -> tuple[dict[str, Any], Any]:
    """Evaluate one crystal; returns (record, pymatgen Structure or None). Never raises.

    Record keys: label, constructed, struct_valid, comp_valid, fp_ok, valid (bools), reasons (list of
    str), struct_fp [61] | None, comp_fp [132] | None (raw Magpie), atom_types [n], frac_coords [n,3],
    lengths [3] Å, angles [3] deg, density g/cm^3, volume Å^3, n_elems, formula, seconds.
    """
    from dpcdvae.evaluation.fingerprints import composition_fingerprint, structure_fingerprint
    from dpcdvae.evaluation.validity import composition_validity, structure_validity

    t0 = time.perf_counter()
    reasons: list[str] = []
    structure, reason = _build(item)
    constructed = reason is None
    if reason is not None:
        reasons.append(reason)
    if structure is not None:
        types = np.array([site.specie.Z for site in structure], dtype=np.int64)
        frac = np.asarray(structure.frac_coords, dtype=np.float64)
    else:
        types = np.asarray(item.atom_types if item.atom_types is not None else [], dtype=np.int64)
        frac = np.full((types.shape[0], 3), np.nan)

    struct_valid = False
    if constructed:
        try:
            struct_valid, why = structure_validity(structure, cutoff=opts.dist_cutoff)
        except Exception:
            struct_valid, why = False, "distance_error"
        if why:
            reasons.append(why)
    try:
        comp_valid = bool(types.size) and composition_validity(types, opts.oxidation_states, opts.pauling_missing)
    except Exception:
        comp_valid = False
    if not comp_valid:
        reasons.append("composition_invalid")

    struct_fp = comp_fp = None
    fp_ok = True
    if opts.fingerprints:
        # CDVAE tries the fingerprint of every built structure. We skip unbuilt ones and those with
        # volume < 0.1 Å^3 (CrystalNN's neighbour search explodes there); all are invalid anyway.
        if constructed:
            try:
                struct_fp = structure_fingerprint(structure)
            except Exception:
                reasons.append("struct_fingerprint_failed")
        else:
            reasons.append("struct_fingerprint_skipped")
        if types.size:
            try:
                comp_fp = composition_fingerprint(types)
            except Exception:
                reasons.append("comp_fingerprint_failed")
        fp_ok = struct_fp is not None and comp_fp is not None
    valid = bool(constructed and struct_valid and comp_valid and fp_ok)

    if structure is not None:
        lengths = np.array(structure.lattice.abc, dtype=np.float64)
        angles = np.array(structure.lattice.angles, dtype=np.float64)
        volume = float(structure.volume)
        try:
            density = float(structure.density)
        except Exception:
            density = float("nan")
        formula = structure.composition.reduced_formula
    else:
        lengths = np.asarray(item.lengths, np.float64) if item.lengths is not None else np.full(3, np.nan)
        angles = np.asarray(item.angles, np.float64) if item.angles is not None else np.full(3, np.nan)
        volume = density = float("nan")
        formula = ""
    record = {
        "label": item.label, "constructed": constructed, "struct_valid": bool(struct_valid),
        "comp_valid": bool(comp_valid), "fp_ok": bool(fp_ok), "valid": valid, "reasons": reasons,
        "struct_fp": struct_fp, "comp_fp": comp_fp, "atom_types": types, "frac_coords": frac,
        "lengths": lengths, "angles": angles, "density": density, "volume": volume,
        "n_elems": int(np.unique(types).size), "formula": formula,
        "seconds": time.perf_counter() - t0,
    }
    return record, structure


def evaluate_crystal(item: CrystalInput, opts: EvalOptions) -> dict[str, Any]:
    """``analyse_crystal`` without the structure (what worker processes send back)."""
    return analyse_crystal(item, opts)[0]


@functools.lru_cache(maxsize=4)
def _matcher(stol: float, angle_tol: float, ltol: float):
    from pymatgen.analysis.structure_matcher import StructureMatcher

    return StructureMatcher(stol=stol, angle_tol=angle_tol, ltol=ltol)


def match_pair(pair: tuple[CrystalInput, CrystalInput], opts: EvalOptions,
               stol: float = 0.5, angle_tol: float = 10.0, ltol: float = 0.3) -> dict[str, Any]:
    """Evaluate a reconstruction ``pair[0]`` against its ground truth ``pair[1]`` (CDVAE RecEval,
    with DP-CDVAE's lattice errors). Never raises.

    Returns: the prediction's record (see ``analyse_crystal``, without fingerprints) plus
    gt_ok (bool), rms (normalised RMS or NaN when not matched), matched (bool),
    d_lengths [3] Å and d_angles [3] deg (pred - gt, NaN unless the prediction is valid),
    match_seconds.
    """
    import warnings

    pred, gt = pair
    record, pred_s = analyse_crystal(pred, opts)
    record["struct_fp"] = record["comp_fp"] = None
    t0 = time.perf_counter()
    gt_s, gt_reason = _build(gt)
    gt_ok = gt_s is not None and gt_reason is None
    rms = float("nan")
    d_len = np.full(3, np.nan)
    d_ang = np.full(3, np.nan)
    if record["valid"] and gt_ok:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = _matcher(stol, angle_tol, ltol).get_rms_dist(pred_s, gt_s)
            if res is not None:
                rms = float(res[0])
            d_len = np.array(pred_s.lattice.abc) - np.array(gt_s.lattice.abc)
            d_ang = np.array(pred_s.lattice.angles) - np.array(gt_s.lattice.angles)
        except Exception:
            record["reasons"].append("matcher_error")
    record.update(gt_ok=gt_ok, rms=rms, matched=bool(np.isfinite(rms)), d_lengths=d_len, d_angles=d_ang,
                  gt_lengths=np.array(gt_s.lattice.abc) if gt_s is not None else np.full(3, np.nan),
                  gt_angles=np.array(gt_s.lattice.angles) if gt_s is not None else np.full(3, np.nan),
                  gt_num_atoms=len(gt_s) if gt_s is not None else 0,
                  match_seconds=time.perf_counter() - t0)
    return record


# ---------------------------------------------------------------------------------------------
# Tables


def records_to_table(records: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Stack per-crystal records into flat numpy arrays (M crystals, N atoms in total).

    Keys: label [M] str, constructed/struct_valid/comp_valid/fp_ok/valid [M] bool, reasons [M] str
    ("|"-joined), has_struct_fp/has_comp_fp [M] bool, struct_fp [M,61], comp_fp [M,132] (raw, zeros
    where absent), density/volume [M], n_elems/num_atoms [M] int64, lengths/angles [M,3],
    atom_ptr [M+1] int64, atom_types [N] int64, frac_coords [N,3], formula [M] str, seconds [M].
    """
    m = len(records)
    struct_fp = np.zeros((m, STRUCT_FP_DIM))
    comp_fp = np.zeros((m, COMP_FP_DIM))
    has_s = np.array([r["struct_fp"] is not None for r in records], dtype=bool)
    has_c = np.array([r["comp_fp"] is not None for r in records], dtype=bool)
    for i, r in enumerate(records):
        if has_s[i]:
            struct_fp[i] = r["struct_fp"]
        if has_c[i]:
            comp_fp[i] = r["comp_fp"]
    num_atoms = np.array([len(r["atom_types"]) for r in records], dtype=np.int64)
    table = {
        "label": np.array([r["label"] for r in records], dtype=str),
        "reasons": np.array(["|".join(r["reasons"]) for r in records], dtype=str),
        "formula": np.array([r["formula"] for r in records], dtype=str),
        "has_struct_fp": has_s, "has_comp_fp": has_c, "struct_fp": struct_fp, "comp_fp": comp_fp,
        "num_atoms": num_atoms,
        "atom_ptr": np.concatenate([[0], np.cumsum(num_atoms)]).astype(np.int64),
        "atom_types": np.concatenate([r["atom_types"] for r in records]).astype(np.int64) if m else np.zeros(0, np.int64),
        "frac_coords": np.concatenate([r["frac_coords"] for r in records]).reshape(-1, 3) if m else np.zeros((0, 3)),
        "lengths": np.array([r["lengths"] for r in records], dtype=np.float64).reshape(m, 3),
        "angles": np.array([r["angles"] for r in records], dtype=np.float64).reshape(m, 3),
    }
    for key in ("constructed", "struct_valid", "comp_valid", "fp_ok", "valid"):
        table[key] = np.array([r[key] for r in records], dtype=bool)
    for key in ("density", "volume", "seconds"):
        table[key] = np.array([r[key] for r in records], dtype=np.float64)
    table["n_elems"] = np.array([r["n_elems"] for r in records], dtype=np.int64)
    return table


def take_rows(table: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """Sub-table of the given crystal rows (atoms re-packed)."""
    rows = np.asarray(rows, dtype=np.int64)
    ptr = table["atom_ptr"]
    atom_idx = np.concatenate([np.arange(ptr[r], ptr[r + 1]) for r in rows]) if rows.size else np.zeros(0, np.int64)
    out = {}
    for key, val in table.items():
        if key in ("atom_types", "frac_coords"):
            out[key] = val[atom_idx]
        elif key != "atom_ptr":
            out[key] = val[rows]
    out["atom_ptr"] = np.concatenate([[0], np.cumsum(out["num_atoms"])]).astype(np.int64)
    return out


# ---------------------------------------------------------------------------------------------
# Process pool


def _init_worker() -> None:
    """Pool initialiser: one BLAS/OpenMP thread per worker, featurisers built once."""
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except Exception:
        pass
    from dpcdvae.evaluation.fingerprints import _crystalnn_featurizer, _magpie_featurizer

    _crystalnn_featurizer()
    _magpie_featurizer()


def default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def make_executor(workers: int, start_method: str = "spawn") -> Executor | None:
    """A process pool of ``workers`` processes, or None for ``workers <= 1`` (in-process evaluation).

    ``spawn`` (default) is safe whatever the parent holds (threads, CUDA, OpenMP state); each worker
    imports pymatgen/matminer once (a few seconds, in parallel)."""
    import multiprocessing

    if workers <= 1:
        return None
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context(start_method),
                               initializer=_init_worker)


def run_parallel(fn: Callable[[Any], Any], items: Sequence[Any], executor: Executor | None,
                 workers: int, progress: bool = True, desc: str = "") -> list[Any]:
    """Ordered map of ``fn`` over ``items`` in ``executor`` (in-process when None), with a tqdm bar."""
    from tqdm.auto import tqdm

    results: Iterable[Any]
    if executor is None:
        results = map(fn, items)
    else:
        chunk = max(1, min(32, len(items) // (workers * 16) or 1))
        results = executor.map(fn, items, chunksize=chunk)
    import sys

    interval = 2.0 if sys.stderr.isatty() else 30.0
    return list(tqdm(results, total=len(items), desc=desc, disable=not progress, mininterval=interval,
                     dynamic_ncols=True))


class LazyPool:
    """A process pool started on first use (a fully cached evaluation starts no process).

    Use as a context manager; ``workers <= 1`` evaluates in this process."""

    def __init__(self, workers: int, start_method: str = "spawn") -> None:
        self.workers = max(1, int(workers))
        self.start_method = start_method
        self._executor: Executor | None = None

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], progress: bool = True, desc: str = "") -> list[Any]:
        """Ordered ``fn`` over ``items`` with a progress bar."""
        if self._executor is None and self.workers > 1 and len(items) > 1:
            self._executor = make_executor(self.workers, self.start_method)
        return run_parallel(fn, items, self._executor, self.workers, progress, desc)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None

    def __enter__(self) -> "LazyPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
