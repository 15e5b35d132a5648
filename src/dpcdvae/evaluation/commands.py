"""``dpcdvae evaluate recon|gen|ground-state``: thin argparse wrappers around ``evaluate_recon`` /
``evaluate_gen`` / ``evaluate_ground_state``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpcdvae.data.datasets import DATASETS, SPLITS
from dpcdvae.errors import DPCDVAEError


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True,
                   help=" | ".join(DATASETS) + " | a custom dataset (data prepare --csv-dir DIR --name NAME)")
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="ground-truth split (default test)")
    p.add_argument("--source", default=None,
                   help="folder with DATASET/<split>.csv[.gz] (default: $DPCDVAE_DATA); a custom dataset: "
                        "optional, default the split CSVs of its record")
    p.add_argument("--out", required=True, help="metrics JSON to write")
    p.add_argument("--report", default=None,
                   help="folder for report.md + PNGs (default: <out without .json>_report next to --out)")
    p.add_argument("--no-report", action="store_true", help="write metrics.json only")
    p.add_argument("--workers", type=int, default=None, help="processes (default: os.cpu_count())")
    p.add_argument("--oxidation-states", default="smact14", choices=("smact14", "icsd24"),
                   help="SMACT oxidation-state set (default smact14, CDVAE's era)")
    p.add_argument("--pauling-missing", default="pass", choices=("pass", "fail"),
                   help="missing electronegativity in the Pauling test: pass (CDVAE, default) or fail (smact 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` command group with ``recon`` and ``gen``."""
    ev = subparsers.add_parser("evaluate", help="CDVAE metrics of reconstructions or generated crystals")
    sub = ev.add_subparsers(dest="evaluate_command", metavar="SUBCOMMAND")
    ev.set_defaults(func=lambda args: (ev.print_help(), 2)[1])

    r = sub.add_parser(
        "recon", help="match rate and RMS of reconstructions",
        description="Match every valid prediction to its ground truth with StructureMatcher(stol 0.5, angle_tol 10, "
        "ltol 0.3); match rate over ALL ground-truth crystals, mean normalised RMS over matches, RMS errors of "
        "lattice lengths/angles. PRED: sample folder with samples.pt (index = CSV rows), a folder of CIFs or an "
        "extxyz (paired with CSV rows in order).")
    r.add_argument("--pred", required=True, action="append",
                   help="predictions (sample folder, CIF folder, .extxyz); repeat it to score several "
                        "reconstruction runs as one (each a samples.pt with index, e.g. a cut-short run's "
                        "parts and a `reconstruct --start` run of the rest)")
    _common(r)
    r.add_argument("--no-fp-check", action="store_true",
                   help="skip CDVAE's fingerprint-failure validity check (faster; a deviation)")
    r.add_argument("--rows-below", type=int, default=None, metavar="N",
                   help="score only the predictions of ground-truth rows < N, against those N rows "
                        "(compare with a run that reconstructed only the first N)")
    r.add_argument("--cache-dir", default=None,
                   help="cache root holding a custom dataset's record (default: $DPCDVAE_CACHE or ~/.cache/dpcdvae)")
    r.set_defaults(func=_recon)

    g = sub.add_parser(
        "gen", help="validity, COV, Wasserstein distances of generated crystals",
        description="CDVAE generation metrics of SAMPLES (sample folder, CIF folder, .extxyz, or a dataset "
        "CSV scored as if generated) against the ground-truth split. The ground truth's fingerprints are "
        "cached in the cache dir; for perov_5 test they ship with the package and are used when the CSV's "
        "content and the settings match (metrics.json: ground_truth.shipped_table).")
    g.add_argument("--samples", required=True, help="generated crystals")
    _common(g)
    g.add_argument("--cache-dir", default=None, help="cache root (default: $DPCDVAE_CACHE or ~/.cache/dpcdvae)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the fingerprint cache")
    g.add_argument("--prop-ckpt", default=None,
                   help="property-model checkpoint for W(E) (else W(E) is null); pretrained:NAME = the predictor "
                        "shipped with the pretrained model NAME, e.g. pretrained:perov_5")
    g.add_argument("--no-shipped-table", action="store_true",
                   help="recompute the ground truth's fingerprints even when the package ships them for this "
                        "split (used only when the CSV's content and the settings match)")
    g.add_argument("--prop-device", default="cpu", help="torch device of the property model (default cpu)")
    g.add_argument("--n-wdist", type=int, default=1000, help="valid crystals for W distances (default 1000)")
    g.add_argument("--seed", type=int, default=0, help="seed choosing those crystals (default 0)")
    g.add_argument("--max-samples", type=int, default=None, help="score a fixed random subset of SAMPLES")
    g.add_argument("--subset-seed", type=int, default=0, help="seed of that subset (default 0)")
    g.add_argument("--struct-cutoff", type=float, default=None, help="override the COV structure cutoff")
    g.add_argument("--comp-cutoff", type=float, default=None, help="override the COV composition cutoff")
    g.set_defaults(func=_gen)

    gs = sub.add_parser(
        "ground-state", help="relax crystals with CHGNet at a pressure; match rate, ΔV, ΔE, ΔH to the relaxed",
        description="Relax every crystal of SAMPLES (positions and cell, CHGNet + ase FrechetCellFilter at "
        "--pressure-gpa) and score it against its own relaxed structure: StructureMatcher match rate and mean "
        "RMS, RMS of ΔV (Å^3/atom), ΔE and ΔH = Δ(E + PV) (meV/atom) over converged structures. Writes "
        "OUT/results.jsonl (one line per finished structure; --resume continues), OUT/relaxed/NNNNNN.cif, "
        "OUT/ground_state.json and OUT/delta_e_hist.png.")
    gs.add_argument("--samples", required=True, help="crystals (sample folder, CIF folder, .extxyz)")
    gs.add_argument("--pressure-gpa", type=float, required=True, help="pressure in GPa (e.g. 10)")
    gs.add_argument("--n", type=int, default=100,
                    help="relax a random subset of N (seed --seed; default 100; N >= the input count: all)")
    gs.add_argument("--out", required=True, help="output folder (must be absent or empty unless --resume)")
    gs.add_argument("--workers", type=int, default=None, help="processes (default: all cores on CPU, 1 on CUDA)")
    gs.add_argument("--fmax", type=float, default=0.05, help="force threshold in eV/Å (default 0.05)")
    gs.add_argument("--max-steps", type=int, default=500, help="optimiser steps per structure (default 500)")
    gs.add_argument("--timeout-s", type=float, default=300.0, help="wall seconds per structure (default 300)")
    gs.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"), help="CHGNet device (default cpu)")
    gs.add_argument("--optimizer", default="fire", choices=("fire", "bfgs"), help="ase optimiser (default fire)")
    gs.add_argument("--seed", type=int, default=0, help="seed of the --n subset (default 0)")
    gs.add_argument("--resume", action="store_true", help="continue OUT, skipping structures already done")
    gs.add_argument("--no-progress", action="store_true", help="no progress bar")
    gs.set_defaults(func=_ground_state)


def _report_dir(args: argparse.Namespace) -> Path | None:
    if args.no_report:
        return None
    if args.report:
        return Path(args.report)
    out = Path(args.out)
    return out.with_name(out.name[: -len(".json")] + "_report" if out.name.endswith(".json") else out.name + "_report")


def _common_kwargs(args: argparse.Namespace) -> dict:
    """The keyword arguments of ``evaluate_recon`` / ``evaluate_gen`` given by the options of
    :func:`_common` and ``--cache-dir`` (``--workers`` checked)."""
    if args.workers is not None and args.workers < 1:
        raise DPCDVAEError(f"--workers must be >= 1, got {args.workers}")
    return dict(split=args.split, source=args.source, out=Path(args.out), report_dir=_report_dir(args),
                workers=args.workers, oxidation_states=args.oxidation_states, pauling_missing=args.pauling_missing,
                progress=not args.no_progress, cache_dir=args.cache_dir)


def _print_warnings(result: dict) -> None:
    for warn in result.get("warnings", []):
        print(f"warning: {warn}", file=sys.stderr)


def _recon(args: argparse.Namespace) -> int:
    from dpcdvae.evaluation.recon import evaluate_recon

    common = _common_kwargs(args)
    res = evaluate_recon([Path(p) for p in args.pred], args.dataset, fp_check=not args.no_fp_check, rows_below=args.rows_below,
                         **common)
    print(f"match_rate {res['match_rate']:.4f}  rms_dist {res['rms_dist'] if res['rms_dist'] is None else round(res['rms_dist'], 4)}"
          f"  valid {res['validity']['valid']:.4f}  ({res['n_pred']} predictions, {res['n_gt']} ground truth) "
          f"-> {args.out}")
    _print_warnings(res)
    return 0


def _gen(args: argparse.Namespace) -> int:
    from dpcdvae.evaluation.gen import evaluate_gen

    common = _common_kwargs(args)
    if args.n_wdist < 1:
        raise DPCDVAEError(f"--n-wdist must be >= 1, got {args.n_wdist}")
    if args.max_samples is not None and args.max_samples < 1:
        raise DPCDVAEError(f"--max-samples must be >= 1, got {args.max_samples}")
    if args.struct_cutoff is None or args.comp_cutoff is None:
        from dpcdvae.data.custom import register_custom
        from dpcdvae.evaluation.metrics import canonical_dataset

        info = register_custom(canonical_dataset(args.dataset), args.cache_dir)
        if info is not None and info.custom:
            s, c = (info.cov_cutoffs[0] if args.struct_cutoff is None else args.struct_cutoff,
                    info.cov_cutoffs[1] if args.comp_cutoff is None else args.comp_cutoff)
            print(f"note: {info.name} is a custom dataset: COV cutoffs struct {s:g} / comp {c:g} (CDVAE's mp_20 "
                  "values unless set); choose yours with --struct-cutoff / --comp-cutoff", file=sys.stderr)
    res = evaluate_gen(Path(args.samples), args.dataset, use_cache=not args.no_cache, prop_ckpt=args.prop_ckpt,
                       prop_device=args.prop_device, n_wdist=args.n_wdist, seed=args.seed,
                       max_samples=args.max_samples, subset_seed=args.subset_seed,
                       struct_cutoff=args.struct_cutoff, comp_cutoff=args.comp_cutoff,
                       shipped_table=not args.no_shipped_table, **common)
    v, c, w = res["validity"], res["coverage"], res["wdist"]

    def f(x):
        return "null" if x is None else f"{x:.4f}"

    print(f"valid {f(v['valid'])} (comp {f(v['comp_valid'])}, struct {f(v['struct_valid'])})  "
          f"COV-R {f(c['cov_recall'])}  COV-P {f(c['cov_precision'])}  W(rho) {f(w['wdist_density'])}  "
          f"W(#elem) {f(w['wdist_num_elems'])}  W(E) {f(w['wdist_prop'])}  -> {args.out}")
    _print_warnings(res)
    return 0


def _ground_state(args: argparse.Namespace) -> int:
    from dpcdvae.evaluation.ground_state import evaluate_ground_state

    res = evaluate_ground_state(Path(args.samples), Path(args.out), args.pressure_gpa, args.n, workers=args.workers,
                                fmax=args.fmax, max_steps=args.max_steps, timeout_s=args.timeout_s,
                                device=args.device, optimizer=args.optimizer, seed=args.seed, resume=args.resume,
                                progress=not args.no_progress)

    def f(x, d=4):
        return "null" if x is None else f"{x:.{d}f}"

    failed = ", ".join(f"{k} {v}" for k, v in sorted(res["failed"].items())) or "none"
    print(f"converged {res['n_converged']}/{res['n_done']} (failed: {failed})  match_rate {f(res['match_rate'])}  "
          f"rms_dist {f(res['mean_rms_dist'])}  dV_rms {f(res['delta_v_rms_a3_per_atom'], 3)} A^3/atom  "
          f"dE_rms {f(res['delta_e_rms_mev_per_atom'], 1)}  dH_rms {f(res['delta_h_rms_mev_per_atom'], 1)} meV/atom  "
          f"-> {Path(args.out) / 'ground_state.json'}")
    return 0
