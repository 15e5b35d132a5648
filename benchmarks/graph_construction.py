"""Benchmark: periodic radius graph of MP-20 crystals, dpcdvae (torch) vs pymatgen.

    python benchmarks/graph_construction.py --source ../shared/data [--n 256] [--cutoff 7.0]

Takes the first ``--n`` crystals of MP-20 val, preprocessed as in the cache (Niggli + canonical lattice,
float32). Times (best of ``--repeat``):
  - ours, one batched call, exact image search, no neighbour cap (what check-graph compares);
  - ours, the model setting (27 images, max_neighbors 20);
  - pymatgen ``Structure.get_neighbor_list(r=cutoff)``, one call per crystal.
Ours runs on CPU, and on CUDA too when available (synchronised timings).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch


def _load(source: Path, n: int):
    from dpcdvae.data.prepare import find_split_file, read_split_csv
    from dpcdvae.data.structures import preprocess_cif, structure_arrays, wrap_frac

    path = find_split_file(source, "mp_20", "val")
    if path is None:
        raise SystemExit(f"no mp_20/val.csv[.gz] in {source}")
    cifs, _, _, _ = read_split_csv(path, [], n)
    arrays = [structure_arrays(preprocess_cif(c, 20)) for c in cifs]
    frac = torch.from_numpy(wrap_frac(np.concatenate([a.frac_coords for a in arrays]), np.float32))
    lengths = torch.from_numpy(np.stack([a.lengths for a in arrays]).astype(np.float32))
    angles = torch.from_numpy(np.stack([a.angles for a in arrays]).astype(np.float32))
    num_atoms = torch.tensor([len(a.atom_types) for a in arrays])
    types = [a.atom_types.tolist() for a in arrays]
    return frac, lengths, angles, num_atoms, types


def _best(fn, repeat: int, sync=lambda: None) -> tuple[float, object]:
    out = fn()  # warm-up
    sync()
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", default=os.environ.get("DPCDVAE_DATA", "../shared/data"))
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--cutoff", type=float, default=7.0)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--cache-dir", default=None,
                   help="read the crystals from the tensor cache instead of the CSV (no pymatgen needed; "
                        "the pymatgen timing is then skipped if pymatgen is not installed)")
    args = p.parse_args()

    from dpcdvae.geometry.graph import radius_graph_pbc
    from dpcdvae.geometry.lattice import lattice_from_params

    if args.cache_dir:
        from dpcdvae.data.cache import load_split

        b = load_split(args.cache_dir, "mp_20", "val").batch(torch.arange(args.n))
        frac, lengths, angles, num_atoms = b.frac_coords, b.lengths, b.angles, b.num_atoms
        types = [t.tolist() for t in b.atom_types.split(num_atoms.tolist())]
    else:
        frac, lengths, angles, num_atoms, types = _load(Path(args.source), args.n)
    print(f"{len(types)} MP-20 val crystals, {frac.shape[0]} atoms, cutoff {args.cutoff} Å; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for dev in devices:
        sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
        f, le, an, na = frac.to(dev), lengths.to(dev), angles.to(dev), num_atoms.to(dev)
        name = torch.cuda.get_device_name() if dev == "cuda" else "CPU"

        def exact():
            return radius_graph_pbc(f, lattice_from_params(le, an), na, args.cutoff, None, images="exact")

        def model():
            return radius_graph_pbc(f, lattice_from_params(le, an), na, args.cutoff, 20, images="ref")

        t_exact, g = _best(exact, args.repeat, sync)
        print(f"ours {dev:4s} ({name}) exact images, no cap : {t_exact * 1e3:9.1f} ms  ({g.num_edges} edges)")
        t_model, g = _best(model, args.repeat, sync)
        print(f"ours {dev:4s} ({name}) 27 images, cap 20   : {t_model * 1e3:9.1f} ms  ({g.num_edges} edges)")

    try:
        from pymatgen.core import Lattice, Structure
    except ImportError:
        print("pymatgen not installed: its timing is skipped")
        return
    lat = lattice_from_params(lengths.double(), angles.double()).numpy()
    ptr = np.concatenate([[0], np.cumsum(num_atoms.numpy())])
    structs = [Structure(Lattice(lat[i]), types[i], frac[ptr[i] : ptr[i + 1]].double().numpy())
               for i in range(len(types))]

    def pmg():
        return sum(len(s.get_neighbor_list(r=args.cutoff)[0]) for s in structs)

    t_pmg, n_edges = _best(pmg, args.repeat)
    print(f"pymatgen get_neighbor_list (per crystal)  : {t_pmg * 1e3:9.1f} ms  ({n_edges} edges)")


if __name__ == "__main__":
    main()
