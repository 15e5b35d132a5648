"""CLI: ``dpcdvae train`` (and ``dpcdvae export``)."""

from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

from dpcdvae.data.datasets import DATASETS
from dpcdvae.jsonio import dumps_strict
from dpcdvae.registry import ENCODERS as _ENCODER_REGISTRY

ENCODERS = _ENCODER_REGISTRY.names()  # the --encoder choices (dpcdvae.registry.ENCODERS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train DP-CDVAE on a prepared dataset")
    p.add_argument("--config", default=None,
                   help="preset (perov_5, carbon_24, mp_20, tiny) or YAML path (default perov_5; --resume: the run's)")
    p.add_argument("--encoder", choices=ENCODERS, default=None, help="encoder variant (paper Table I)")
    p.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                   help="dotted config override, repeatable (e.g. --set model.latent_dim=128)")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    p.add_argument("--cache-dir", default=None, help="tensor cache (default: $DPCDVAE_CACHE or ~/.cache/dpcdvae)")
    p.add_argument("--devices", type=int, default=1, help="number of devices (GPUs) for Lightning")
    p.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    p.add_argument("--accelerator", default="auto", help="auto, gpu or cpu")
    p.add_argument("--limit", type=int, default=None, help="train on the first N crystals only")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_train)

    tp = sub.add_parser("train-property", help="train the property (formation-energy) predictor for W(E)")
    tp.add_argument("--dataset", required=True, choices=tuple(DATASETS))
    tp.add_argument("--out", required=True, type=Path)
    tp.add_argument("--cache-dir", default=None)
    tp.add_argument("--train-split", default=None, help="default: train for perov_5, val for carbon_24 / mp_20")
    tp.add_argument("--max-minutes", type=float, default=8.0)
    tp.add_argument("--max-epochs", type=int, default=1000)
    tp.add_argument("--batch-size", type=int, default=256)
    tp.add_argument("--lr", type=float, default=1e-3)
    tp.add_argument("--limit", type=int, default=None)
    tp.add_argument("--tiny", action="store_true", help="a tiny encoder (tests, CPU demos)")
    tp.add_argument("--no-progress", action="store_true")
    tp.set_defaults(func=_train_property)

    e = sub.add_parser("export", help="write a self-contained model file, optionally in shards of at most --max-mb")
    e.add_argument("--ckpt", required=True, type=Path, help="Lightning .ckpt or model.pt")
    e.add_argument("--out", required=True, type=Path, help="output .pt file (or folder when sharding)")
    e.add_argument("--max-mb", type=float, default=None, help="shard size limit in MiB")
    e.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
    e.set_defaults(func=_export)


def _train(args: argparse.Namespace) -> int:
    from dpcdvae.errors import DPCDVAEError
    from dpcdvae.training.lightning import NonFiniteLossError
    from dpcdvae.training.train import train

    try:
        res = train(config=args.config, out=args.out, encoder=args.encoder, overrides=args.overrides,
                    resume=args.resume, cache_dir=args.cache_dir, devices=args.devices, strategy=args.strategy,
                    accelerator=args.accelerator, limit=args.limit, progress=not args.no_progress)
    except NonFiniteLossError as err:  # raised inside Lightning's loop: one line like any user error
        raise DPCDVAEError(str(err)) from err
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:  # under DDP every rank returns here; print once
        print(dumps_strict(asdict(res)))
    return 0


def tiny_property_encoder() -> dict:
    """The encoder of ``train-property --tiny``: the ``tiny`` preset's encoder_cfg (its DimeNet++ keys)
    with a 16-wide output."""
    from dpcdvae.config import load_preset
    from dpcdvae.training.property_train import DEFAULT_ENCODER

    enc = load_preset("tiny")["model"]["encoder_cfg"]
    return {**{k: enc[k] for k in DEFAULT_ENCODER}, "out_channels": 16}


def _train_property(args: argparse.Namespace) -> int:
    from dpcdvae.training.property_train import train_property

    res = train_property(args.dataset, args.out, cache_dir=args.cache_dir, train_split=args.train_split,
                         max_minutes=args.max_minutes, max_epochs=args.max_epochs, batch_size=args.batch_size,
                         lr=args.lr, limit=args.limit, encoder_cfg=tiny_property_encoder() if args.tiny else None,
                         progress=not args.no_progress)
    print(dumps_strict(res))
    return 0


def _export(args: argparse.Namespace) -> int:
    from dpcdvae.models.checkpoint import export_model

    paths = export_model(args.ckpt, args.out, max_mb=args.max_mb, dtype=args.dtype)
    for p in paths:
        print(p)
    return 0
