"""``evaluate_ground_state``: how far are crystals from their (CHGNet) ground state at a pressure?

Every structure is relaxed (positions AND cell) with the pretrained CHGNet (weights ship in the
``chgnet`` wheel, no network) through ASE: ``FrechetCellFilter(atoms, scalar_pressure=P)`` with
P = pressure_gpa * ase.units.GPa (eV/Å^3), so the optimiser minimises the enthalpy H = E + PV.
With the relaxed structure as the reference, over the CONVERGED structures:

- match_rate: share matched by ``StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)`` (the
  reconstruction metric's matcher); mean_rms_dist (<δrms>): mean normalised RMS of matched pairs.
- delta_v_rms_a3_per_atom: RMS over structures of (V_relaxed - V_generated) / N, Å^3/atom.
- delta_e_rms_mev_per_atom (E = CHGNet energy) and delta_h_rms_mev_per_atom (H = E + PV at the
  pressure): RMS of (X_generated - X_relaxed) / N, meV/atom.

Defaults: fmax 0.05 eV/Å (max norm of the filter's generalised forces; the cell part is the
virial / N), FIRE, 500 steps, 300 s per structure. This is the usual protocol for universal
potentials (Matbench Discovery: max force 0.05 eV/Å or 500 steps). A tighter threshold buys
nothing below CHGNet's own force error (68 meV/Å MAE for the 0.3.0 weights), and at 0.05 the
energy is converged far below the 64 meV/atom bins of the ΔE histogram (diamond at 0 / 10 GPa:
fmax 0.05 vs 0.01 changes V by 0.3 / 0.1 % and E by < 0.5 meV/atom). CHGNet diamond: 5.70
Å^3/atom at 0 GPa (experiment 5.67), 5.55 at 10 GPa.

Failures never stop the run and are reported per structure: "not converged in N steps",
"timeout after T s", "calculator error: ...", "invalid structure: ...". Results are appended to
OUT/results.jsonl as each structure finishes (``resume=True`` skips indices already there).

Cost measured on the 2-core dev CPU (1 torch thread, 1 worker, 10 GPa, defaults): 31 s per
structure (mean of 5 random 8-12 atom carbon cells, range 23-43 s, 110-130 FIRE steps, ~0.25 s per
CHGNet step), plus ~5 s to load CHGNet once per process. Throughput scales with --workers.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dpcdvae.atomic import atomic_savefig, atomic_write_text
from dpcdvae.jsonio import dumps_strict

RESULTS = "results.jsonl"
SETTINGS = "settings.json"
MATCHER = {"stol": 0.5, "angle_tol": 10.0, "ltol": 0.3}  # as evaluate_recon
_RESUME_KEYS = ("samples", "pressure_gpa", "fmax", "max_steps", "optimizer", "n", "seed")
_STATE: dict[str, Any] = {}  # per-process CHGNet calculator


@dataclass(frozen=True)
class RelaxSettings:
    """pressure_gpa: GPa; fmax: eV/Å; max_steps: optimiser steps; timeout_s: wall seconds per
    structure; optimizer: "fire" | "bfgs"; device: torch device of CHGNet."""

    pressure_gpa: float = 10.0
    fmax: float = 0.05
    max_steps: int = 500
    timeout_s: float = 300.0
    optimizer: str = "fire"
    device: str = "cpu"


class _Timeout(BaseException):  # not swallowed by library "except Exception"
    pass


def _calculator(device: str):
    """The CHGNet ASE calculator of this process (loaded once, quietly)."""
    if _STATE.get("device") != device:
        import warnings

        from chgnet.model import CHGNet
        from chgnet.model.dynamics import CHGNetCalculator

        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = CHGNet.load(verbose=False, use_device=device)
            _STATE["calc"] = CHGNetCalculator(model, use_device=device, on_isolated_atoms="ignore")
        _STATE["device"] = device
    return _STATE["calc"]


def _init_worker(device: str, threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    _calculator(device)


@contextlib.contextmanager
def _deadline(seconds: float):
    """Raise ``_Timeout`` after ``seconds`` of wall time (SIGALRM; a no-op outside the main thread)."""
    import signal
    import threading

    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise _Timeout()

    old = signal.signal(signal.SIGALRM, _raise)
    signal.setitimer(signal.ITIMER_REAL, max(1e-3, float(seconds)))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def relax_structure(structure, settings: RelaxSettings) -> tuple[dict[str, Any], Any]:
    """Relax one pymatgen ``Structure`` at ``settings.pressure_gpa``. Never raises.

    Returns: (record, relaxed structure or None). record: status ("converged" | "not_converged" |
    "timeout" | "calculator_error"), reason (None when converged), steps, seconds, fmax_final (eV/Å),
    energy_initial/_final (eV/atom), enthalpy_initial/_final (eV/atom, H = E + PV),
    volume_initial/_final (Å^3/atom).
    """
    import warnings

    from ase import units
    from ase.filters import FrechetCellFilter
    from ase.optimize import BFGS, FIRE
    from pymatgen.core import Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    p = settings.pressure_gpa * units.GPa  # eV/Å^3
    n = len(structure)
    rec: dict[str, Any] = {"status": "calculator_error", "reason": None, "steps": 0}
    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = calc = _calculator(settings.device)
    calc.reset()
    t0 = time.perf_counter()

    def state(tag: str) -> None:
        e, v = float(atoms.get_potential_energy()), float(atoms.get_volume())
        rec.update({f"energy_{tag}": e / n, f"enthalpy_{tag}": (e + p * v) / n, f"volume_{tag}": v / n})

    try:
        with warnings.catch_warnings(), _deadline(settings.timeout_s):
            warnings.simplefilter("ignore")
            state("initial")
            filt = FrechetCellFilter(atoms, scalar_pressure=p)
            opt = (FIRE if settings.optimizer == "fire" else BFGS)(filt, logfile=None)
            converged = False
            for converged in opt.irun(fmax=settings.fmax, steps=settings.max_steps):
                rec["steps"] = opt.nsteps
                if not np.isfinite(atoms.get_potential_energy()):
                    raise FloatingPointError("non-finite energy")
                if not converged and time.perf_counter() - t0 > settings.timeout_s:
                    raise _Timeout()
            state("final")
            rec["fmax_final"] = float(np.sqrt((filt.get_forces() ** 2).sum(axis=1)).max())
        rec.update(status="converged" if converged else "not_converged",
                   reason=None if converged else f"not converged in {settings.max_steps} steps")
    except _Timeout:
        rec.update(status="timeout", reason=f"timeout after {settings.timeout_s:g} s ({rec['steps']} steps)")
    except Exception as err:  # CHGNet graph errors, NaNs, ASE failures
        rec.update(status="calculator_error", reason=f"calculator error: {type(err).__name__}: {err}"[:300])
    rec["seconds"] = time.perf_counter() - t0
    relaxed = None
    if rec["status"] in ("converged", "not_converged", "timeout") and np.all(np.isfinite(atoms.cell.array)):
        relaxed = Structure(atoms.cell.array, structure.species, atoms.get_scaled_positions(wrap=True))
    return rec, relaxed


def _relax_task(task: tuple[int, Any, RelaxSettings]) -> dict[str, Any]:
    """Worker: build, relax, match one input. Returns the JSONL record plus "cif" (relaxed, or None);
    "seconds" is the whole per-structure cost, "relax_seconds" the relaxation alone."""
    import warnings

    from dpcdvae.evaluation.io import build_structure
    from dpcdvae.evaluation.worker import _matcher

    index, item, settings = task
    _calculator(settings.device)  # model load (once per process) is not part of the per-structure time
    t0 = time.perf_counter()
    base = {"index": int(index), "label": item.label, "matched": None, "rms": None}
    structure, reason = build_structure(item)
    if structure is None or reason is not None:
        return {**base, "status": "invalid_structure", "reason": f"invalid structure: {reason}", "steps": 0,
                "seconds": 0.0, "n_atoms": len(structure) if structure else 0, "cif": None}
    rec, relaxed = relax_structure(structure, settings)
    rec.update(base, n_atoms=len(structure), formula=structure.composition.reduced_formula)
    if rec["status"] == "converged":
        try:
            with warnings.catch_warnings(), _deadline(settings.timeout_s):
                warnings.simplefilter("ignore")
                res = _matcher(**MATCHER).get_rms_dist(structure, relaxed)
            rec.update(matched=res is not None, rms=float(res[0]) if res is not None else None)
        except (_Timeout, Exception) as err:
            rec.update(matched=False, match_error=f"{type(err).__name__}: {err}"[:200])
    rec["cif"] = None
    if relaxed is not None:
        from pymatgen.io.cif import CifWriter

        rec["cif"] = str(CifWriter(relaxed))
    rec.update(relax_seconds=rec["seconds"], seconds=time.perf_counter() - t0)  # seconds: build + relax + match
    return rec


def summarize(records: list[dict[str, Any]], n_selected: int) -> dict[str, Any]:
    """Ground-state metrics of JSONL records (module docstring); null where nothing converged."""
    ok = [r for r in records if r["status"] == "converged"]

    def arr(key_a: str, key_b: str, scale: float = 1.0) -> np.ndarray:
        return np.array([(r[key_a] - r[key_b]) * scale for r in ok], dtype=np.float64)

    def rms(x: np.ndarray) -> float | None:
        return float(np.sqrt(np.mean(x ** 2))) if x.size else None

    def mean(x: np.ndarray) -> float | None:
        return float(np.mean(x)) if x.size else None

    dv = arr("volume_final", "volume_initial")
    de = arr("energy_initial", "energy_final", 1000.0)
    dh = arr("enthalpy_initial", "enthalpy_final", 1000.0)
    matched = [r for r in ok if r.get("matched")]
    failed: dict[str, int] = {}
    for r in records:
        if r["status"] != "converged":
            failed[r["status"]] = failed.get(r["status"], 0) + 1
    secs = np.array([r["seconds"] for r in records if r["status"] != "invalid_structure"], dtype=np.float64)
    return {
        "n": int(n_selected), "n_done": len(records), "n_converged": len(ok), "failed": failed,
        "n_matched": len(matched),
        "match_rate": len(matched) / len(ok) if ok else None,
        "match_rate_over_all": len(matched) / len(records) if records else None,
        "mean_rms_dist": mean(np.array([r["rms"] for r in matched], dtype=np.float64)),
        "delta_v_rms_a3_per_atom": rms(dv), "delta_v_mean_a3_per_atom": mean(dv),
        "delta_e_rms_mev_per_atom": rms(de), "delta_e_mean_mev_per_atom": mean(de),
        "delta_h_rms_mev_per_atom": rms(dh), "delta_h_mean_mev_per_atom": mean(dh),
        "seconds_per_structure_mean": mean(secs),
        "seconds_per_structure_median": float(np.median(secs)) if secs.size else None,
        "steps_mean": mean(np.array([r["steps"] for r in ok], dtype=np.float64)),
    }


def _plot_hist(path: Path, dh: np.ndarray, pressure_gpa: float) -> None:
    """Histogram of ΔH (meV/atom) in 64 meV/atom bins (cf. DP-CDVAE Fig. S2), Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.6), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    if dh.size:
        lo = np.floor(dh.min() / 64.0) * 64.0
        edges = lo + 64.0 * np.arange(max(1, int(np.ceil((dh.max() - lo) / 64.0))) + 1)
        ax.hist(dh, bins=edges, color="tab:blue", edgecolor="white")
        ax.yaxis.get_major_locator().set_params(integer=True)
    else:
        ax.text(0.5, 0.5, "no converged structures", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(f"ΔH = H(generated) − H(relaxed) at {pressure_gpa:g} GPa (meV/atom)")
    ax.set_ylabel("number of structures")
    ax.set_title(f"CHGNet relaxation, n = {dh.size} converged, 64 meV/atom bins", fontsize=9)
    atomic_savefig(path, fig, dpi=110)


def _read_done(path: Path) -> dict[int, dict[str, Any]]:
    """Records already in ``path`` by index; a torn last line is dropped (file rewritten atomically)."""
    if not path.is_file():
        return {}
    text = path.read_text()
    done: dict[int, dict[str, Any]] = {}
    lines = text.splitlines()
    for line in lines:
        try:
            rec = json.loads(line)
            done[int(rec["index"])] = rec
        except (ValueError, KeyError, TypeError):
            continue
    if len(done) != len(lines) or (text and not text.endswith("\n")):
        atomic_write_text(path, "".join(dumps_strict(r, indent=None) + "\n" for r in done.values()))
    return done


def evaluate_ground_state(samples: Path | str, out: Path | str, pressure_gpa: float = 10.0, n: int | None = None, *,
                          workers: int | None = 1, fmax: float = 0.05, max_steps: int = 500,
                          timeout_s: float = 300.0, device: str = "cpu", optimizer: str = "fire", seed: int = 0,
                          resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Relax the crystals of ``samples`` with CHGNet at ``pressure_gpa`` and score them (module docstring).

    Args:
        samples: sample folder (samples.pt), CIF folder, .extxyz, ... (``io.load_crystals``).
        out: output folder: results.jsonl, relaxed/NNNNNN.cif (NNNNNN = 0-based input index),
            ground_state.json, delta_e_hist.png, settings.json. Must be absent/empty unless ``resume``.
        pressure_gpa: GPa (negative allowed). n: relax a random subset of n (seed ``seed``); None: all.
        workers: processes (None: all cores on CPU, 1 on CUDA); 1 relaxes in this process.
        fmax: eV/Å. max_steps: optimiser steps. timeout_s: wall seconds per structure.
        device: "cpu" | "cuda" | "auto". optimizer: "fire" | "bfgs".
    Returns: the ground_state.json dict. Raises ValueError/FileNotFoundError on bad input before any work.
    """
    from dpcdvae.evaluation.gen import code_provenance, library_versions, write_json
    from dpcdvae.evaluation.io import load_crystals
    from dpcdvae.evaluation.metrics import choose_subset

    t_start = time.perf_counter()
    samples, out = Path(samples), Path(out)
    if not np.isfinite(pressure_gpa):
        raise ValueError(f"--pressure-gpa must be finite, got {pressure_gpa}")
    for name, val in (("--n", n), ("--workers", workers), ("--max-steps", max_steps)):
        if val is not None and val < 1:
            raise ValueError(f"{name} must be >= 1, got {val}")
    if not fmax > 0 or not timeout_s > 0:
        raise ValueError(f"--fmax and --timeout-s must be > 0, got {fmax} and {timeout_s}")
    if optimizer not in ("fire", "bfgs") or device not in ("cpu", "cuda", "auto"):
        raise ValueError(f"optimizer must be fire|bfgs and device cpu|cuda|auto, got {optimizer!r}, {device!r}")
    if not samples.exists():
        raise FileNotFoundError(f"--samples {samples} does not exist")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        raise ValueError(f"--out {out} exists and is not empty (pass --resume to continue it)")
    if device != "cpu":
        import torch

        if device == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda but torch sees no CUDA device")
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_crystals(samples)
    sel = np.arange(len(loaded.items)) if n is None else choose_subset(np.arange(len(loaded.items)), n, seed)
    settings = {"samples": str(samples.resolve()), "pressure_gpa": float(pressure_gpa), "fmax": float(fmax),
                "max_steps": int(max_steps), "optimizer": optimizer, "n": n, "seed": int(seed)}
    old = json.loads((out / SETTINGS).read_text()) if (out / SETTINGS).is_file() else None
    if old is not None:
        diff = [k for k in _RESUME_KEYS if old.get(k) != settings[k]]
        if diff:
            raise ValueError(f"--resume: {out} was run with different settings ({', '.join(diff)}: "
                             + ", ".join(f"{old.get(k)!r} != {settings[k]!r}" for k in diff) + ")")
    cpu = os.cpu_count() or 1
    workers = int(workers) if workers is not None else (1 if device == "cuda" else cpu)

    (out / "relaxed").mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / SETTINGS, dumps_strict(settings) + "\n")
    wanted = set(sel.tolist())
    done = {i: r for i, r in _read_done(out / RESULTS).items() if i in wanted}
    relax = RelaxSettings(float(pressure_gpa), float(fmax), int(max_steps), float(timeout_s), optimizer, device)
    todo = [(int(i), loaded.items[int(i)], relax) for i in sel if int(i) not in done]
    _run(todo, done, out, workers, max(1, cpu // workers), device, progress)

    records = [done[int(i)] for i in sel if int(i) in done]
    summary = summarize(records, len(sel))
    dh = np.array([(r["enthalpy_initial"] - r["enthalpy_final"]) * 1000.0 for r in records
                   if r["status"] == "converged"], dtype=np.float64)
    _plot_hist(out / "delta_e_hist.png", dh, pressure_gpa)
    from importlib.metadata import version

    result = {
        "task": "ground_state", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": {"path": str(samples), "kind": loaded.kind, "note": loaded.note, "meta": loaded.meta,
                  "n_input": len(loaded.items), "indices": "all" if n is None else sel.tolist()},
        "settings": {**settings, **{k: v for k, v in asdict(relax).items() if k not in settings},
                     "model": "CHGNet (pretrained, chgnet wheel)", "cell_filter": "ase FrechetCellFilter",
                     "matcher": MATCHER, "versions": {**library_versions(), "chgnet": version("chgnet"),
                                                      "ase": version("ase"), "torch": version("torch")},
                     "code": code_provenance()},
        "definitions": {
            "match_rate": "matched / converged; StructureMatcher(generated, relaxed)",
            "mean_rms_dist": "mean normalised RMS of matched pairs (<δrms>)",
            "delta_v": "(V_relaxed - V_generated) / N, Å^3/atom, converged only",
            "delta_e": "(E_generated - E_relaxed) / N, meV/atom, E = CHGNet energy",
            "delta_h": "(H_generated - H_relaxed) / N, meV/atom, H = E + P V at pressure_gpa"},
        **summary,
        "timing": {"total_s": round(time.perf_counter() - t_start, 3), "workers": workers, "device": device},
        "files": {"records": RESULTS, "relaxed": "relaxed/NNNNNN.cif", "histogram": "delta_e_hist.png"},
    }
    write_json(out / "ground_state.json", result)
    return result


def _run(todo: list, done: dict[int, dict[str, Any]], out: Path, workers: int, threads: int, device: str,
         progress: bool) -> None:
    """Relax ``todo`` (in a spawn pool when workers > 1), appending each record to results.jsonl."""
    from tqdm.auto import tqdm

    if not todo:
        return
    bar = tqdm(total=len(todo), desc="relax", disable=not progress, dynamic_ncols=True)
    with open(out / RESULTS, "a", encoding="utf-8") as fh:

        def finish(rec: dict[str, Any]) -> None:
            cif = rec.pop("cif", None)
            if cif is not None:
                atomic_write_text(out / "relaxed" / f"{rec['index']:06d}.cif", cif)
            rec = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in rec.items()}
            fh.write(dumps_strict(rec, indent=None) + "\n")  # one write per line
            fh.flush()
            os.fsync(fh.fileno())
            done[rec["index"]] = rec
            bar.update(1)

        if workers <= 1 or len(todo) == 1:
            for task in todo:
                finish(_relax_task(task))
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=multiprocessing.get_context("spawn"),
                                       initializer=_init_worker, initargs=(device, threads))
            try:
                futures = {pool.submit(_relax_task, task): task for task in todo}
                for fut in as_completed(futures):
                    try:
                        finish(fut.result())
                    except Exception as err:  # a crashed worker
                        task = futures[fut]
                        finish({"index": task[0], "label": task[1].label, "status": "worker_error",
                                "reason": f"worker error: {type(err).__name__}: {err}"[:300], "steps": 0,
                                "seconds": 0.0, "matched": None, "rms": None})
            except BaseException:
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown()
    bar.close()
