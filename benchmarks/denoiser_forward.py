"""Benchmark: DP-CDVAE denoiser (GemNet-T, A = 548) forward / forward+backward on a synthetic batch.

    python benchmarks/denoiser_forward.py [--device cuda] [--batch-size 256] [--atoms 6 24]
        [--precision fp32|tf32|bf16] [--repeat 5] [--compile] [--energy-branch]

Synthetic crystals: atom counts uniform in [--atoms], random lattices (angles 70-110 deg, lengths
scaled to --volume-per-atom Å^3), random fractional coordinates, random z and t. Reports the graph size
(E, T), the time of graph + triplet-layout construction, of a no-grad forward (the sampler's call), and of
forward + backward (a training step without the optimiser), as the best of ``--repeat`` synchronised
runs, plus peak CUDA memory.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import time

import torch


def _batch(batch_size: int, atoms: tuple[int, int], vpa: float, latent: int, device: torch.device, seed: int):
    from dpcdvae.geometry.lattice import lattice_from_params

    g = torch.Generator().manual_seed(seed)
    num_atoms = torch.randint(atoms[0], atoms[1] + 1, (batch_size,), generator=g)
    angles = 70.0 + 40.0 * torch.rand(batch_size, 3, generator=g)
    ratios = 0.7 + 0.6 * torch.rand(batch_size, 3, generator=g)
    lat = lattice_from_params(ratios, angles)
    vol = torch.linalg.det(lat).abs()
    scale = (vpa * num_atoms / vol) ** (1.0 / 3.0)
    lattice = lat * scale[:, None, None]
    n = int(num_atoms.sum())
    inputs = dict(
        z=torch.randn(batch_size, latent, generator=g),
        t=torch.randint(1, 1000, (batch_size,), generator=g),
        T=1000,
        frac_coords=torch.rand(n, 3, generator=g),
        atom_types=torch.randint(1, 101, (n,), generator=g),
        num_atoms=num_atoms,
        batch=torch.repeat_interleave(torch.arange(batch_size), num_atoms),
        lattice=lattice.float(),
    )
    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in inputs.items()}


def _best(fn, repeat: int, sync) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--atoms", type=int, nargs=2, default=(6, 24))
    p.add_argument("--volume-per-atom", type=float, default=10.0)
    p.add_argument("--precision", choices=["fp32", "tf32", "bf16"], default="fp32")
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile GemNetT.run_blocks (dynamic shapes)")
    p.add_argument("--energy-branch", action="store_true")
    p.add_argument("--eps-frame", choices=["fractional", "cartesian"], default="fractional")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    from dpcdvae.nn.denoiser import DPDenoiser

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.precision == "tf32"
    torch.backends.cudnn.allow_tf32 = args.precision == "tf32"
    torch.manual_seed(args.seed)
    model = DPDenoiser(energy_branch=args.energy_branch, eps_frame=args.eps_frame).to(device)
    if args.compile:
        model.gemnet.run_blocks = torch.compile(model.gemnet.run_blocks, dynamic=True)
    inputs = _batch(args.batch_size, tuple(args.atoms), args.volume_per_atom, model.latent_dim, device, args.seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    amp = (torch.autocast(device.type, dtype=torch.bfloat16) if args.precision == "bf16"
           else contextlib.nullcontext())

    graph = model.build_graph(inputs["frac_coords"], inputs["lattice"], inputs["num_atoms"])
    deg = torch.bincount(graph.dst, minlength=graph.num_nodes)
    n_trip = int((deg * (deg - 1)).sum())
    n_params = sum(q.numel() for q in model.parameters())
    print(f"device={device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else platform.processor()})"
          f" torch={torch.__version__} precision={args.precision} compile={args.compile} params={n_params:,}")
    print(f"B={args.batch_size} N={graph.num_nodes} E={graph.src.shape[0]} T={n_trip} "
          f"max_in_degree={int(deg.max())} mean_in_degree={float(deg.float().mean()):.1f}")

    def build():
        with torch.no_grad():
            g = model.build_graph(inputs["frac_coords"], inputs["lattice"], inputs["num_atoms"])
            model.gemnet.edge_bases(g)

    def infer():
        with torch.no_grad(), amp:
            model(**inputs)

    def train_step():
        model.zero_grad(set_to_none=True)
        with amp:
            eps, logits = model(**inputs)
        (eps.float().square().mean() + logits.float().logsumexp(-1).mean()).backward()

    t_graph = _best(build, args.repeat, sync)
    t_inf = _best(infer, args.repeat, sync)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t_train = _best(train_step, args.repeat, sync)
    mem = f" peak_mem={torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB" if device.type == "cuda" else ""
    print(f"graph+layout {t_graph * 1e3:.1f} ms | forward (no grad) {t_inf * 1e3:.1f} ms | "
          f"forward+backward {t_train * 1e3:.1f} ms{mem}")


if __name__ == "__main__":
    main()
