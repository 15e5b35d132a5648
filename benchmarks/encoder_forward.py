"""Benchmark: crystal encoder forward + backward on a synthetic MP-20-sized batch.

    OMP_NUM_THREADS=2 python benchmarks/encoder_forward.py [--batch-size 256] [--variants dime dime+gine]
        [--device cpu|cuda] [--bf16] [--repeat 3] [--tiny]

The batch mimics MP-20: ``--batch-size`` crystals with 1..20 atoms (uniform), about 18 Å^3 per atom,
lattice angles 60-120 deg, random fractional coordinates and atomic numbers. The encoder runs with the
reference settings (7 Å cutoff, 20 neighbours, 27 images, full-size DimeNet++). Reported per variant
(best of ``--repeat`` after one warm-up): graph + triplet construction, forward (graph included) and
backward times, and the batch's N / E / T.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch


def synthetic_batch(batch_size: int, seed: int = 0, max_atoms: int = 20, vol_per_atom: float = 18.0):
    """frac [N, 3], atom_types [N], num_atoms [B], batch [N], lattice [B, 3, 3] (float32, CPU)."""
    from dpcdvae.geometry.lattice import lattice_from_params, lattice_volume

    g = torch.Generator().manual_seed(seed)
    num_atoms = torch.randint(1, max_atoms + 1, (batch_size,), generator=g)
    angles = 60.0 + 60.0 * torch.rand(batch_size, 3, generator=g)
    lengths = 0.7 + 0.6 * torch.rand(batch_size, 3, generator=g)
    unit = lattice_from_params(lengths, angles)
    ok = lattice_volume(unit) > 0.1  # drop nearly flat random cells
    while not bool(ok.all()):
        angles[~ok] = 80.0 + 20.0 * torch.rand(int((~ok).sum()), 3, generator=g)
        unit = lattice_from_params(lengths, angles)
        ok = lattice_volume(unit) > 0.1
    scale = (vol_per_atom * num_atoms / lattice_volume(unit)).pow(1.0 / 3.0)
    lattice = unit * scale.view(-1, 1, 1)
    n = int(num_atoms.sum())
    frac = torch.rand(n, 3, generator=g)
    atom_types = torch.randint(1, 101, (n,), generator=g)
    batch = torch.repeat_interleave(torch.arange(batch_size), num_atoms)
    return frac, atom_types, num_atoms, batch, lattice


def _timed(fn, sync) -> tuple[float, object]:
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - t, out


def main() -> None:
    from dpcdvae.nn.encoder import VARIANTS, CrystalEncoder

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--variants", nargs="+", default=["dime", "dime+na+gine"], choices=VARIANTS)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for the network blocks")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--tiny", action="store_true", help="the tiny test configuration instead of full size")
    args = p.parse_args()

    dev = torch.device(args.device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    inputs = [t.to(dev) for t in synthetic_batch(args.batch_size)]
    frac, atom_types, num_atoms, batch, lattice = inputs
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else (platform.processor() or platform.machine())
    print(f"# torch {torch.__version__}, {name}, {torch.get_num_threads()} threads, bf16={args.bf16}")

    for variant in args.variants:
        torch.manual_seed(0)
        model = (CrystalEncoder.tiny(variant) if args.tiny else CrystalEncoder(variant)).to(dev)
        n_params = sum(p.numel() for p in model.parameters())

        def build():
            graph = model.dimenet.build_graph(frac, lattice, num_atoms)
            return graph, model.dimenet.triplets(graph)

        def fwd():
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=args.bf16):
                return model(*inputs)

        times: dict[str, float] = {"graph_s": float("inf"), "forward_s": float("inf"), "backward_s": float("inf")}
        for rep in range(args.repeat + 1):  # the first round is a warm-up
            t_graph, (graph, (idx_kj, _)) = _timed(build, sync)
            model.zero_grad(set_to_none=True)
            t_fwd, out = _timed(fwd, sync)
            t_bwd, _ = _timed(lambda: out.square().mean().backward(), sync)
            if rep > 0:
                for key, val in zip(times, (t_graph, t_fwd, t_bwd)):
                    times[key] = min(times[key], val)
        rec = {
            "variant": variant, "device": str(dev), "params": n_params, "B": args.batch_size,
            "N": int(frac.shape[0]), "E": int(graph.src.shape[0]), "T": int(idx_kj.shape[0]),
            **{k: round(v, 4) for k, v in times.items()},
        }
        if dev.type == "cuda":
            rec["max_mem_GiB"] = round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
        print(json.dumps(rec))


if __name__ == "__main__":
    main()
