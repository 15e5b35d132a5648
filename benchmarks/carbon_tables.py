"""Issue 10's tables from the result files: DP-CDVAE and the two CDVAE baselines on Carbon-24.

    python benchmarks/carbon_tables.py [--results results/carbon_24] [--models dime cdvae cdvae_fourier]

Reads, per model folder, ``train_summary.json`` (budget, epochs, card), ``recon_metrics.json``
(``dpcdvae evaluate recon``), ``gen*_metrics.json`` (``dpcdvae evaluate gen``) and ``ground_state.json``
(``dpcdvae evaluate ground-state``), and prints Markdown: Table III (ground state at 10 GPa, CHGNet)
in the paper's layout beside the paper's DFT numbers (docs/REFERENCE.md; CDVAE + Fourier from issue 10),
with bootstrap intervals of ΔE_rms and <δrms> from each model's ``results.jsonl``, then Tables I and II.
Missing files print as "-". Not a test.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LABELS = {"dime": "DP-CDVAE", "cdvae": "CDVAE", "cdvae_fourier": "CDVAE + Fourier"}
# paper, Table III (DFT, 100 generated structures, 10 GPa, 0 K): match %, <δrms>, ΔV_rms Å^3/atom, ΔE_rms meV/atom
PAPER_T3 = {"dime": (64, 0.0141, 0.0158, 400.7), "cdvae": (63, 0.0321, 0.0227, 468.8),
            "cdvae_fourier": (62, 0.0216, 0.0157, 494.4)}
PAPER_T1 = {"dime": (45.57, 0.1513), "cdvae": (55.22, 0.1251)}  # Carbon-24 match %, RMS
PAPER_T2 = {"dime": "99.92 / - / 99.56 / 77.98 / 0.1109 / 0.2596"}  # valid struct / comp / COV-R / COV-P / W(ρ) / W(E)


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _f(x, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def table3(root: Path, models: list[str]) -> list[str]:
    rows = ["| model | source | n relaxed (converged) | match % | <δrms> | ΔV_rms (Å³/atom) | ΔE_rms (meV/atom) "
            "| ΔH_rms (meV/atom) | s / structure |", "|" + " --- |" * 9]
    for m in models:
        g = _load(root / m / "ground_state.json")
        if g is not None:
            rows.append(f"| {LABELS.get(m, m)} | CHGNet, ours | {g['n_done']} ({g['n_converged']}) | "
                        f"{_pct(g['match_rate'])} | {_f(g['mean_rms_dist'], '.4f')} | "
                        f"{_f(g['delta_v_rms_a3_per_atom'], '.4f')} | {_f(g['delta_e_rms_mev_per_atom'], '.1f')} | "
                        f"{_f(g['delta_h_rms_mev_per_atom'], '.1f')} | {_f(g['seconds_per_structure_mean'], '.1f')} |")
        if m in PAPER_T3:
            p = PAPER_T3[m]
            rows.append(f"| {LABELS.get(m, m)} | DFT, paper | 100 | {p[0]} | {p[1]} | {p[2]} | {p[3]} | - | - |")
    return rows


def _records(root: Path, m: str) -> list[dict]:
    path = root / m / "results.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def _stats(recs: list[dict]) -> dict[str, np.ndarray]:
    ok = [r for r in recs if r["status"] == "converged"]
    return {"de": np.array([(r["energy_initial"] - r["energy_final"]) * 1000.0 for r in ok]),
            "rms": np.array([r["rms"] if r.get("matched") else np.nan for r in ok])}


def _resample(x: np.ndarray, rng: np.random.Generator, n: int = 10000) -> np.ndarray:
    """[n, len(x)]: n bootstrap resamples of x."""
    return x[rng.integers(0, len(x), size=(n, len(x)))]


def _boot(x: np.ndarray, fn, rng: np.random.Generator) -> tuple[float, float]:
    vals = np.array([fn(row) for row in _resample(x, rng)])
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def uncertainty(root: Path, models: list[str], ref: str = "dime", seed: int = 0) -> list[str]:
    """Bootstrap 95 % intervals (10,000 resamples of the converged structures, seed 0) of ΔE_rms and
    <δrms> per model, and of the difference model - ``ref`` (independent samples: unpaired)."""
    rng = np.random.default_rng(seed)
    de_rms = lambda x: float(np.sqrt(np.mean(x ** 2)))  # noqa: E731
    rms_mean = lambda x: float(np.nanmean(x)) if np.isfinite(x).any() else np.nan  # noqa: E731
    st = {m: _stats(_records(root, m)) for m in models}
    st = {m: v for m, v in st.items() if v["de"].size}
    rows = ["| model | ΔE_rms (meV/atom), 95 % CI | <δrms>, 95 % CI | ΔE_rms - DP-CDVAE's, 95 % CI |", "|" + " --- |" * 4]
    for m, v in st.items():
        lo, hi = _boot(v["de"], de_rms, rng)
        rlo, rhi = _boot(v["rms"], rms_mean, rng)
        diff = "-"
        if m != ref and ref in st:
            a, b = v["de"], st[ref]["de"]
            ra, rb = _resample(a, rng), _resample(b, rng)
            d = np.sqrt((ra ** 2).mean(1)) - np.sqrt((rb ** 2).mean(1))
            diff = f"{de_rms(a) - de_rms(b):+.1f} [{np.percentile(d, 2.5):+.1f}, {np.percentile(d, 97.5):+.1f}]"
        rows.append(f"| {LABELS.get(m, m)} | {de_rms(v['de']):.1f} [{lo:.1f}, {hi:.1f}] | "
                    f"{rms_mean(v['rms']):.4f} [{rlo:.4f}, {rhi:.4f}] | {diff} |")
    return rows


def _metric_files(root: Path, m: str, pattern: str):
    """(path, metrics dict) of every ``pattern`` file of model ``m``, sorted by name."""
    for path in sorted((root / m).glob(pattern)):
        yield path, _load(path)


def table1(root: Path, models: list[str]) -> list[str]:
    rows = ["| model | trained (card) | epochs | test crystals (file) | match % | RMS | valid % | paper match % / RMS |",
            "|" + " --- |" * 8]
    for m in models:
        s = _load(root / m / "train_summary.json")
        trained = f"{s['trained_minutes_total']:.1f} min ({s.get('device_name', '?')})" if s else "-"
        epochs = s["epochs"] if s else "-"
        paper = " / ".join(str(x) for x in PAPER_T1[m]) if m in PAPER_T1 else "-"
        for path, r in _metric_files(root, m, "recon*_metrics.json"):
            # a run that reconstructed only the first N rows: its rate over those N (match_rate_over_predicted)
            n, rate = r["n_gt_predicted"], r["match_rate_over_predicted"]
            first = "first " if r["ground_truth"].get("rows_below") or n < r["n_gt"] else ""
            rows.append(f"| {LABELS.get(m, m)} | {trained} | {epochs} | {first}{n} ({path.name}) | {_pct(rate)} | "
                        f"{_f(r['rms_dist'], '.4f')} | {_pct(r['validity']['valid'])} | {paper} |")
    return rows


def table2(root: Path, models: list[str]) -> list[str]:
    rows = ["| model | samples | struct valid % | COV-R % | COV-P % | W(ρ) | W(E) | paper (valid / comp / COV-R / COV-P / W(ρ) / W(E)) |",
            "|" + " --- |" * 8]
    for m in models:
        for path, g in _metric_files(root, m, "gen*_metrics.json"):
            v, c, w = g["validity"], g["coverage"], g["wdist"]
            rows.append(f"| {LABELS.get(m, m)} | {v['n_total']} ({path.name}) | {_pct(v['struct_valid'])} | "
                        f"{_pct(c['cov_recall'])} | {_pct(c['cov_precision'])} | {_f(w.get('wdist_density'), '.4f')} | "
                        f"{_f(w.get('wdist_prop'), '.4f')} | {PAPER_T2.get(m, '-')} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default="results/carbon_24")
    ap.add_argument("--models", nargs="+", default=list(LABELS))
    args = ap.parse_args(argv)
    root = Path(args.results)
    for title, rows in (("Table III: ground state at 10 GPa", table3(root, args.models)),
                        ("Table III, uncertainty (bootstrap)", uncertainty(root, args.models)),
                        ("Table I: reconstruction of the test split", table1(root, args.models)),
                        ("Table II: generation", table2(root, args.models))):
        print(f"### {title}\n")
        print("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
