"""Training throughput per dataset preset: crystals/s of full training steps (batch gathered from the
device-resident cache, forward, backward, grad clipping, Adam step) and peak GPU memory.

    python benchmarks/train_throughput.py --cache-dir .cache --presets perov_5 mp_20 carbon_24 [--steps 30]
    # the static-shape step (train.static_shapes), eager or captured as CUDA graphs (train.cuda_graphs):
    python benchmarks/train_throughput.py --cache-dir .cache --presets mp_20 --static-shapes [--cuda-graphs]

Not a test. The model is the preset's full paper-size model; the numbers exclude validation. With
``--static-shapes`` every batch is padded to its atom bucket (``--atom-multiple``) and the losses come
from the padded, host-sync-free forward (training/static_step.py); the warm-up steps also compile and
capture (one graph per bucket and teacher-forcing flag), so give ``--warmup`` enough steps to meet every
bucket twice: ``warmup_s`` reports their time, ``buckets`` the N_pad seen, ``fallbacks`` the batches
recomputed eagerly because a padded graph overflowed.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dpcdvae.config import load_config
from dpcdvae.data.cache import load_scalers, load_split
from dpcdvae.models.build import build_model


def bench(preset: str, cache_dir: str, steps: int, warmup: int, precision: str, batch_size: int | None,
          encoder: str | None, device: torch.device, compile_: bool = False, static_shapes: bool = False,
          cuda_graphs: bool = False, atom_multiple: int = 256, edge_factor: float = 1.1,
          max_degree: int | None = None, fused_adam: bool = False) -> dict:
    cfg = load_config(preset, encoder=encoder)
    data = cfg["data"]
    ds = load_split(cache_dir, data["dataset"], data["train_split"]).to(device)
    torch.manual_seed(0)
    model = build_model(cfg, load_scalers(cache_dir, data["dataset"])).to(device).train()
    if compile_:
        from dpcdvae.training.compile import compile_model

        compile_model(model)
    static = None
    if static_shapes:
        from dpcdvae.training.static_step import StaticStep

        static = StaticStep(model, atom_multiple, edge_factor, max_degree, cuda_graphs=cuda_graphs,
                            max_atoms=int(ds.num_atoms.max()))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, **({"fused": True} if fused_adam else {}))
    bs = batch_size or int(data["batch_size"])
    gen = torch.Generator().manual_seed(0)
    dtype = torch.bfloat16 if precision == "bf16" else None
    torch.backends.cuda.matmul.allow_tf32 = precision != "fp32"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    n_crystals = n_atoms = 0
    t_start = t0 = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
        idx = torch.randint(len(ds), (bs,), generator=gen)
        batch = ds.batch(idx)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            if static is not None:
                out, _ = static(batch, teacher_forcing=step % 2 == 0, coord_multiplier=1.0)
            else:
                out = model(batch, teacher_forcing=step % 2 == 0)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), 0.5)
        opt.step()
        if step >= warmup:
            n_crystals += bs
            n_atoms += batch.num_nodes
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {
        "preset": preset, "encoder": cfg["model"]["encoder"], "batch_size": bs, "precision": precision,
        "compile": compile_, "static_shapes": static_shapes, "cuda_graphs": cuda_graphs, "fused_adam": fused_adam,
        "warmup_s": round(t0 - t_start, 1),
        "buckets": dict(sorted(static.buckets.items())) if static is not None else None,
        "fallbacks": static.fallbacks if static is not None else None,
        "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "crystals_per_s": round(n_crystals / dt, 1), "atoms_per_s": round(n_atoms / dt, 1),
        "ms_per_step": round(1000 * dt / steps, 1),
        "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda" else None,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--presets", nargs="+", default=["perov_5", "carbon_24", "mp_20"])
    ap.add_argument("--encoder", default=None)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--precision", choices=("bf16", "tf32", "fp32"), default="bf16")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--compile", action="store_true", help="torch.compile the network bodies")
    ap.add_argument("--static-shapes", action="store_true", help="padded, host-sync-free step (train.static_shapes)")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="with --static-shapes: torch.compile(mode='reduce-overhead') of the step (train.cuda_graphs)")
    ap.add_argument("--atom-multiple", type=int, default=256, help="atom bucket multiple (train.static_atom_multiple)")
    ap.add_argument("--edge-factor", type=float, default=1.1, help="edge / triplet slack (train.static_edge_factor)")
    ap.add_argument("--max-degree", type=int, default=None, help="in-degree bound (train.static_max_degree)")
    ap.add_argument("--fused-adam", action="store_true", help="torch.optim.Adam(fused=True) (train.fused_adam)")
    args = ap.parse_args()
    if args.cuda_graphs and not args.static_shapes:
        ap.error("--cuda-graphs needs --static-shapes")
    for preset in args.presets:
        res = bench(preset, args.cache_dir, args.steps, args.warmup, args.precision, args.batch_size,
                    args.encoder, torch.device(args.device), args.compile, args.static_shapes, args.cuda_graphs,
                    args.atom_multiple, args.edge_factor, args.max_degree, args.fused_adam)
        print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
