"""Profile training steps of a preset on the GPU (torch.profiler; top ops by device and host time).

    python benchmarks/profile_step.py --cache-dir .cache --preset perov_5 [--steps 3] [--batch-size 512]
        [--static-shapes [--cuda-graphs]]   # the padded step of train.static_shapes / train.cuda_graphs
        [--device cpu]                      # the same ops on the CPU (sorted by self CPU time)
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from dpcdvae.config import load_config
from dpcdvae.data.cache import load_scalers, load_split
from dpcdvae.models.build import build_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--preset", default="perov_5")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=30)
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--static-shapes", action="store_true", help="the padded, host-sync-free step")
    ap.add_argument("--cuda-graphs", action="store_true", help="with --static-shapes: reduce-overhead compile")
    ap.add_argument("--warmup", type=int, default=3, help="steps before profiling (compiles / captures)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--shapes", action="store_true", help="also group the top ops by input shape")
    args = ap.parse_args()
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    cfg = load_config(args.preset)
    ds = load_split(args.cache_dir, cfg["data"]["dataset"], cfg["data"]["train_split"]).to(dev)
    model = build_model(cfg, load_scalers(args.cache_dir, cfg["data"]["dataset"])).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    bs = args.batch_size or int(cfg["data"]["batch_size"])
    static = None
    if args.static_shapes:
        from dpcdvae.training.static_step import StaticStep

        static = StaticStep(model, cuda_graphs=args.cuda_graphs, max_atoms=int(ds.num_atoms.max()))

    def step(i: int) -> None:
        batch = ds.batch(torch.randint(len(ds), (bs,)))
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            if static is not None:
                out, _ = static(batch, teacher_forcing=i % 2 == 0, coord_multiplier=1.0)
            else:
                out = model(batch, teacher_forcing=i % 2 == 0)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()

    for i in range(args.warmup):
        step(i)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts, record_shapes=args.shapes) as prof:
        for i in range(args.steps):
            with torch.profiler.record_function(f"step{i}"):
                step(i)
        sync()
    ka = prof.key_averages()
    if cuda:
        print(ka.table(sort_by="cuda_time_total", row_limit=args.rows, max_name_column_width=60))
        print(ka.table(sort_by="cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    else:
        print(ka.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))
    if args.shapes:
        by_shape = prof.key_averages(group_by_input_shape=True)
        key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
        print(by_shape.table(sort_by=key, row_limit=args.rows, max_name_column_width=40, max_shapes_column_width=90))
    launches = sum(e.count for e in ka if e.key.startswith(("cudaLaunch", "cuLaunch", "cudaGraphLaunch")))
    print(f"kernel / graph launches per step: {launches / args.steps:.0f}"
          + (f"; buckets {dict(static.buckets)}, fallbacks {static.fallbacks}" if static is not None else ""))


if __name__ == "__main__":
    main()
