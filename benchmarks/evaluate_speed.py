"""Benchmark: per-structure cost of each stage of ``dpcdvae evaluate`` and an extrapolation.

    python benchmarks/evaluate_speed.py --source ../shared/data [--dataset mp_20] [--n 200] [--workers 2]

Takes a fixed random subset (seed 0) of ``--n`` crystals of the dataset's val split (stand-ins for
generated crystals: same sizes and chemistry), preprocessed as ground truth, and times each stage in
THIS process (one core): CIF parsing + preprocessing, structure validity, composition validity,
CrystalNN "ops" fingerprint, Magpie fingerprint, StructureMatcher (recon, against a perturbed copy).
Then it times the real pipeline (``evaluate_items``) with ``--workers`` processes to measure the pool's
efficiency and its start-up cost, and the COV distance stage at full size (10,240 x 9,046). It prints
a Markdown table and the extrapolation of ``evaluate gen`` on 10,240 crystals to ``--target-cores``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


def _stage_times(items, n_perturb_seed: int = 0) -> dict[str, np.ndarray]:
    from dpcdvae.evaluation.fingerprints import composition_fingerprint, structure_fingerprint
    from dpcdvae.evaluation.io import build_structure
    from dpcdvae.evaluation.validity import composition_validity, structure_validity
    from dpcdvae.evaluation.worker import _matcher

    rng = np.random.default_rng(n_perturb_seed)
    names = ("parse_preprocess", "struct_validity", "comp_validity", "crystalnn_fp", "magpie_fp", "match")
    t = {k: np.zeros(len(items)) for k in names}
    atoms = np.zeros(len(items), dtype=np.int64)
    for i, item in enumerate(items):
        t0 = time.perf_counter()
        s, _ = build_structure(item)
        t1 = time.perf_counter()
        structure_validity(s)
        t2 = time.perf_counter()
        z = np.array([site.specie.Z for site in s])
        composition_validity(z)
        t3 = time.perf_counter()
        try:
            structure_fingerprint(s)
        except Exception:
            pass
        t4 = time.perf_counter()
        composition_fingerprint(z)
        t5 = time.perf_counter()
        pert = s.copy()
        pert.perturb(0.05)  # 0.05 Å random displacement of every site
        _matcher(0.5, 10.0, 0.3).get_rms_dist(pert, s)
        t6 = time.perf_counter()
        for k, a, b in zip(names, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
            t[k][i] = b - a
        atoms[i] = len(s)
    t["atoms"] = atoms
    return t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=os.environ.get("DPCDVAE_DATA", "../shared/data"))
    p.add_argument("--dataset", default="mp_20")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--n-gen", type=int, default=10240)
    p.add_argument("--n-gt", type=int, default=None, help="ground-truth size (default: rows of the test split)")
    p.add_argument("--target-cores", type=int, default=16)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args()

    import pandas as pd

    from dpcdvae.evaluation.gen import evaluate_items
    from dpcdvae.evaluation.io import read_csv_structures, split_csv_path
    from dpcdvae.evaluation.metrics import min_distances
    from dpcdvae.evaluation.worker import EvalOptions, LazyPool

    source = Path(args.source)
    val = split_csv_path(source, args.dataset, "val")
    n_rows = len(pd.read_csv(val, usecols=["cif"]))
    rows = np.sort(np.random.default_rng(0).choice(n_rows, size=min(args.n, n_rows), replace=False))
    items = read_csv_structures(val, rows=rows).items
    n_gt = args.n_gt or len(pd.read_csv(split_csv_path(source, args.dataset, "test"), usecols=["cif"]))

    _stage_times(items[:3])  # warm-up: imports, featuriser construction
    t = _stage_times(items)
    per = {k: float(v.mean()) for k, v in t.items() if k != "atoms"}
    gen_stages = ("parse_preprocess", "struct_validity", "comp_validity", "crystalnn_fp", "magpie_fp")
    per_gen = sum(per[k] for k in gen_stages)

    # the real pipeline in a pool: start-up + throughput
    t0 = time.perf_counter()
    with LazyPool(args.workers) as pool:
        evaluate_items(items[:args.workers], EvalOptions(), pool, False, "")  # start the workers
        t_start = time.perf_counter() - t0
        t0 = time.perf_counter()
        evaluate_items(items, EvalOptions(), pool, False, "")
        t_pool = time.perf_counter() - t0
    serial = float(per_gen * len(items))
    efficiency = serial / (t_pool * args.workers)

    # COV at full size with random fingerprints (cost depends on sizes only)
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    min_distances(rng.random((args.n_gen, 61)), rng.random((n_gt, 61)))
    min_distances(rng.random((args.n_gen, 132)), rng.random((n_gt, 132)))
    t_cov = time.perf_counter() - t0

    eff = min(1.0, efficiency)
    warm = args.n_gen * per_gen / (args.target_cores * eff) + t_start + t_cov
    cold = (args.n_gen + n_gt) * per_gen / (args.target_cores * eff) + t_start + t_cov
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    res = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "commit": commit,
        "host": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()}",
        "dataset": args.dataset, "n": len(items), "mean_atoms": float(t["atoms"].mean()),
        "per_structure_s": per, "per_structure_gen_s": per_gen,
        "pool": {"workers": args.workers, "startup_s": t_start, "wall_s": t_pool, "efficiency": efficiency},
        "cov_full_size_s": t_cov, "n_gen": args.n_gen, "n_gt": n_gt, "target_cores": args.target_cores,
        "extrapolated_gen_s": {"gt_cached": warm, "gt_cold": cold},
    }
    print(f"| stage | ms / structure (mean over {len(items)} {args.dataset} val crystals, "
          f"{res['mean_atoms']:.1f} atoms) |")
    print("| --- | --- |")
    for k, v in per.items():
        print(f"| {k} | {1000 * v:.1f} |")
    print(f"| **gen total per structure** | {1000 * per_gen:.1f} |")
    print(f"\npool: {args.workers} workers, start-up {t_start:.1f} s, {len(items)} crystals in {t_pool:.1f} s "
          f"(efficiency {efficiency:.2f} vs the serial stage sum); COV distances at {args.n_gen} x {n_gt}: {t_cov:.1f} s")
    print(f"extrapolated evaluate gen of {args.n_gen} crystals on {args.target_cores} cores: "
          f"{warm / 60:.1f} min with the ground truth cached, {cold / 60:.1f} min cold")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
