"""Why reconstructions fail: sort a random subset of a reconstruction into matched / wrong composition /
right composition but no match, and test whether the geometry alone matches (all species set equal:
cations on swapped sites). Not a test.

    python benchmarks/recon_failures.py --pred results/perov_5/dime_17min/recon_samples.pt \\
        --csv ../shared/data/perov_5/test.csv.gz -n 400 --seed 0

Also prints the exact-composition and right-N_a rates over ALL predictions. StructureMatcher settings as
in ``dpcdvae evaluate recon`` (stol 0.5, angle_tol 10, ltol 0.3); "geometry ok" = the species-blind
match has RMS < 0.05.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pandas as pd
import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pred", required=True, action="append",
                    help="samples.pt written by `dpcdvae reconstruct` (repeat it for several runs' parts, e.g. "
                         "results/mp_20/dime/recon_gpu/parts/part_*.pt)")
    ap.add_argument("--csv", required=True, help="the ground-truth split CSV (column cif)")
    ap.add_argument("-n", type=int, default=400)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Lattice, Structure

    from dpcdvae.sampling.writers import concat_samples

    d = concat_samples([torch.load(p, weights_only=True) for p in args.pred])
    df = pd.read_csv(args.csv, usecols=["cif"])
    na = d["num_atoms"].numpy()
    off = np.concatenate([[0], np.cumsum(na)])
    sm = StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3)
    gt_cache: dict[int, Structure] = {}

    def gt(i: int) -> Structure:
        idx = int(d["index"][i])
        if idx not in gt_cache:
            gt_cache[idx] = Structure.from_str(df.cif.iloc[idx], fmt="cif")
        return gt_cache[idx]

    def pred(i: int) -> Structure:
        lat = Lattice.from_parameters(*d["lengths"][i].tolist(), *d["angles"][i].tolist())
        return Structure(lat, d["atom_types"][off[i]:off[i + 1]].tolist(), d["frac_coords"][off[i]:off[i + 1]].numpy())

    exact = right_na = 0
    for i in range(len(na)):
        t = sorted(d["atom_types"][off[i]:off[i + 1]].tolist())
        g = sorted(gt(i).atomic_numbers)
        exact += int(t == g)
        right_na += int(len(t) == len(g))
    rng = np.random.default_rng(args.seed)
    sel = rng.choice(len(na), min(args.n, len(na)), replace=False)
    counts = {"matched": 0, "wrong_composition": 0, "wrong_num_atoms": 0, "right_composition_no_match": 0,
              "no_match_geometry_ok": 0, "matched_rms_above_0.1": 0}
    rms = []
    for i in sel:
        p, g = pred(i), gt(i)
        r = sm.get_rms_dist(p, g)
        if r is not None:
            counts["matched"] += 1
            rms.append(r[0])
            counts["matched_rms_above_0.1"] += int(r[0] > 0.1)
            continue
        if p.composition.reduced_formula != g.composition.reduced_formula:
            counts["wrong_composition"] += 1
            counts["wrong_num_atoms"] += int(len(p) != len(g))  # of these, the atom count was wrong too
            continue
        counts["right_composition_no_match"] += 1
        blind = sm.get_rms_dist(Structure(p.lattice, ["Si"] * len(p), p.frac_coords),
                                Structure(g.lattice, ["Si"] * len(g), g.frac_coords))
        counts["no_match_geometry_ok"] += int(blind is not None and blind[0] < 0.05)
    r = np.array(rms) if rms else np.array([np.nan])
    out = {"pred": args.pred[0] if len(args.pred) == 1 else args.pred, "n_all": int(len(na)), "exact_composition_all": exact / len(na),
           "right_num_atoms_all": right_na / len(na), "subset": int(len(sel)), "seed": args.seed, **counts,
           "matched_rms_median": float(np.median(r)), "matched_rms_p90": float(np.percentile(r, 90)),
           "matched_rms_mean": float(r.mean())}
    from dpcdvae.jsonio import dumps_strict

    print(dumps_strict({k: (int(v) if isinstance(v, (np.integer, np.bool_)) else v) for k, v in out.items()}))


if __name__ == "__main__":
    main()
