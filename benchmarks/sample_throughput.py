"""Sampling throughput: crystals/s of the reverse diffusion (all network calls, graph rebuilt every
step) for a model file, or for an untrained paper-size model of a preset (speed does not depend on the
weights, only on the crystal sizes the N_a head predicts; with random weights they come from
``--num-atoms`` instead).

    python benchmarks/sample_throughput.py --preset mp_20 --cache-dir .cache -n 1024 --steps 100 999

``--static-shapes`` times the padded fixed-shape network call (dpcdvae.sampling.static_net), and
``--cuda-graphs`` that call captured by ``torch.compile(mode="reduce-overhead")``; a warm-up chain of
``--warmup-steps`` steps (same shapes, so the compile and capture happen there) runs first and is
timed separately. Each line reports the padded calls and the steps that fell back to the eager call.

Not a test.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from dpcdvae.config import load_config
from dpcdvae.data.cache import load_scalers, load_split
from dpcdvae.models.build import build_model
from dpcdvae.models.checkpoint import load_model
from dpcdvae.sampling.static_net import StaticSampling


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ckpt", default=None, help="model.pt (default: untrained preset model)")
    ap.add_argument("--preset", default="mp_20")
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("-n", type=int, default=1024, help="crystals per batch")
    ap.add_argument("--steps", type=int, nargs="+", default=[100])
    ap.add_argument("--sampler", default="eq7")
    ap.add_argument("--precision", choices=("fp32", "tf32", "bf16"), default="tf32")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--static-shapes", action="store_true", help="padded fixed-shape network call per step")
    ap.add_argument("--cuda-graphs", action="store_true", help="capture it (reduce-overhead; implies --static-shapes)")
    ap.add_argument("--atom-multiple", type=int, default=256, help="static: N_pad = next multiple above N")
    ap.add_argument("--edge-factor", type=float, default=1.1, help="static: edge buffer = factor x N_pad K")
    ap.add_argument("--max-degree", type=int, default=None, help="static: in-degree bound (default 2 K)")
    ap.add_argument("--warmup-steps", type=int, default=0,
                    help="an untimed-in-throughput chain of this many steps first (compile / capture)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = args.precision != "fp32"
    if args.ckpt:
        model, cfg = load_model(args.ckpt, dev)
    else:
        cfg = load_config(args.preset)
        torch.manual_seed(0)
        model = build_model(cfg, load_scalers(args.cache_dir, cfg["data"]["dataset"])).to(dev).eval()
    # atom counts drawn from the training split (what a trained N_a head reproduces)
    train = load_split(args.cache_dir, cfg["data"]["dataset"], cfg["data"]["train_split"])
    gen = torch.Generator().manual_seed(0)
    counts = train.num_atoms[torch.randint(len(train), (args.n,), generator=gen)].to(dev)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    static = None
    if args.static_shapes or args.cuda_graphs:
        static = StaticSampling(atom_multiple=args.atom_multiple, edge_factor=args.edge_factor,
                                max_degree=args.max_degree, cuda_graphs=args.cuda_graphs)
    warmup_s = None
    score = model.schedule is None  # CDVAE score process: fixed Langevin schedule of network_calls() calls
    full_calls = model.process.network_calls() if score else model.schedule.num_steps - 1
    levels = full_calls // model.process.steps_per_level if score else None
    if args.warmup_steps and score:  # one Langevin step per level: every level's shapes are the same
        model.process.steps_per_level = 1
    if args.warmup_steps:
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            model.decode(torch.randn(args.n, model.latent_dim, device=dev), sampler=args.sampler,
                         steps=None if score else args.warmup_steps, num_atoms=counts, static=static)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        warmup_s = round(time.perf_counter() - t0, 2)
    for steps in args.steps:
        if score:  # time `steps` calls (steps_per_level = steps / levels) and extrapolate to the full chain
            model.process.steps_per_level = max(1, round(steps / levels))
            steps = model.process.network_calls()
        calls0 = (static.calls, static.fallbacks) if static is not None else (0, 0)
        z = torch.randn(args.n, model.latent_dim, device=dev)
        g = torch.Generator(device=dev).manual_seed(0)
        if dev.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with torch.no_grad(), torch.autocast(dev.type, dtype=dtype, enabled=dtype is not None):
            out = model.decode(z, sampler=args.sampler, steps=None if score or steps >= full_calls else steps,
                               generator=g, num_atoms=counts, static=static)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        print(json.dumps({
            "dataset": cfg["data"]["dataset"], "n": args.n, "atoms": int(out["num_atoms"].sum()), "steps": steps,
            "sampler": args.sampler, "precision": args.precision, "seconds": round(dt, 2),
            "crystals_per_s": round(args.n / dt, 1),
            "est_10240_minutes": round(10240 / (args.n / dt) / 60, 2),
            "full_chain_calls": full_calls,
            "est_10240_full_chain_minutes": round(10240 / (args.n / dt) / 60 * full_calls / steps, 2),
            "peak_mem_GiB": round(torch.cuda.max_memory_allocated() / 2**30, 2) if dev.type == "cuda" else None,
            "device": torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
            "static_shapes": static is not None, "cuda_graphs": args.cuda_graphs, "warmup_s": warmup_s,
            "padded_calls": static.calls - calls0[0] if static is not None else 0,
            "fallback_steps": static.fallbacks - calls0[1] if static is not None else 0,
        }), flush=True)


if __name__ == "__main__":
    main()
