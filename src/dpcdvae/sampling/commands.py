"""CLI: ``dpcdvae sample`` and ``dpcdvae reconstruct`` (``--ckpt FILE`` or ``--pretrained NAME``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dpcdvae.registry import REVERSE_FRAMES, SAMPLERS


def _common(p: argparse.ArgumentParser) -> None:
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--ckpt", type=Path, help="model.pt, exported folder or Lightning .ckpt")
    which.add_argument("--pretrained", metavar="NAME",
                       help="a model shipped with the package instead of --ckpt (perov_5; offline)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--batch-size", type=int, default=None, help="crystals per batch")
    p.add_argument("--steps", type=int, default=None,
                   help="DDPM models: reverse steps K (default: all T-1; K<T = fast sampler); refused for "
                        "score (CDVAE) models, whose Langevin schedule is fixed")
    p.add_argument("--sampler", choices=SAMPLERS.names(), default=None,
                   help="DDPM models: paper Eq. 7 (default), plain DDPM Eq. 6, or DDIM (eta=1); score (CDVAE) "
                        "models: langevin (default, the only one)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cuda, cuda:N or cpu")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--no-cif", action="store_true", help="skip the per-crystal CIF files")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--frame", choices=REVERSE_FRAMES, default=None,
                   help="reverse-chain state frame (DDPM): wrap (reference) or fmod; default: the model's "
                        "model.diffusion.reverse_frame")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="network precision (auto: bf16 autocast on CUDA for bf16-trained models, else fp32)")
    p.add_argument("--static-shapes", action=argparse.BooleanOptionalAction, default=None,
                   help="padded fixed-shape network call per reverse step (default: the config's "
                        "sample.static_shapes, off)")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="capture that call as CUDA graphs (torch.compile reduce-overhead; implies "
                        "--static-shapes; CUDA only; default: sample.cuda_graphs, off)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sample", help="generate crystals (CIF, extxyz, samples.pt)")
    _common(p)
    p.add_argument("-n", type=int, default=10240, help="number of crystals")
    p.add_argument("--rank", type=int, default=0, help="shard index (batch b runs on rank b %% world)")
    p.add_argument("--world-size", type=int, default=1, help="number of shards")
    p.add_argument("--devices", type=int, default=1,
                   help="worker processes, one per GPU cuda:0..N-1 (or CPU workers with --device cpu); "
                        "same crystals as one device")
    p.set_defaults(func=_sample)

    r = sub.add_parser("reconstruct", help="encode and decode a split, paired with its ground truth")
    _common(r)
    r.add_argument("--split", default="test")
    r.add_argument("--cache-dir", default=None)
    r.add_argument("--limit", type=int, default=None, help="first N crystals of the split (from --start)")
    r.add_argument("--start", type=int, default=0,
                   help="first row of the split to reconstruct (default 0), e.g. the rows a cut-short run did not "
                        "reach; `evaluate recon --pred A --pred B` scores both runs together")
    r.set_defaults(func=_reconstruct)


def _ckpt(args: argparse.Namespace) -> Path:
    """--ckpt, or the shipped model folder of --pretrained NAME (one-line error for an unknown NAME)."""
    if args.pretrained is None:
        return args.ckpt
    from dpcdvae.pretrained import get_info, model_path

    info = get_info(args.pretrained)
    print(f"pretrained {info.name}: {info.label}", file=sys.stderr)
    return model_path(args.pretrained)


def _sample(args: argparse.Namespace) -> int:
    from dpcdvae.sampling.run import result_json, sample

    args.ckpt = _ckpt(args)
    if args.devices != 1:
        if args.world_size != 1 or args.rank != 0:
            raise ValueError("use either --devices N (one command) or --rank/--world-size (one command per shard)")
        from dpcdvae.sampling.distributed import ShardFailedError, sample_multi

        try:
            res = sample_multi(args.ckpt, args.n, args.out, args.devices, device=args.device,
                               batch_size=args.batch_size, steps=args.steps, sampler=args.sampler, seed=args.seed,
                               resume=args.resume, write_cifs=not args.no_cif, progress=not args.no_progress,
                               precision=args.precision, frame=args.frame, static_shapes=args.static_shapes,
                               cuda_graphs=args.cuda_graphs)
        except ShardFailedError as err:  # one line, as for bad input
            raise ValueError(str(err)) from None
        print(result_json(res))
        return 0
    res = sample(args.ckpt, args.n, args.out, batch_size=args.batch_size, steps=args.steps, sampler=args.sampler,
                 seed=args.seed, device=args.device, resume=args.resume, write_cifs=not args.no_cif,
                 rank=args.rank, world_size=args.world_size, progress=not args.no_progress,
                 precision=args.precision, frame=args.frame, static_shapes=args.static_shapes,
                 cuda_graphs=args.cuda_graphs)
    print(result_json(res))
    return 0


def _reconstruct(args: argparse.Namespace) -> int:
    from dpcdvae.sampling.run import reconstruct, result_json

    args.ckpt = _ckpt(args)
    res = reconstruct(args.ckpt, args.out, split=args.split, cache_dir=args.cache_dir, batch_size=args.batch_size,
                      steps=args.steps, sampler=args.sampler, seed=args.seed, device=args.device,
                      resume=args.resume, limit=args.limit, write_cifs=not args.no_cif,
                      progress=not args.no_progress, precision=args.precision, frame=args.frame,
                      static_shapes=args.static_shapes, cuda_graphs=args.cuda_graphs, start=args.start)
    print(result_json(res))
    return 0
