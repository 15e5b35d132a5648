"""``dpcdvae data ...`` commands: thin argparse wrappers around the typed data functions."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dpcdvae.data.datasets import DATASETS, SPLITS
from dpcdvae.errors import DPCDVAEError

_DATASETS = tuple(DATASETS)  # the registry (dpcdvae.data.datasets.DATASETS)
_SPLITS = SPLITS


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data prepare`` and ``data check-graph``."""
    data = subparsers.add_parser("data", help="prepare the benchmark datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data.set_defaults(func=lambda args: (data.print_help(), 2)[1])

    p = sub.add_parser(
        "prepare",
        help="CSV splits -> tensor cache + scalers",
        description="Parse the CIFs of DATASET's CSV splits (Niggli + canonical lattice), write "
        "<cache-dir>/DATASET/<split>.pt, scalers.json and report.json. Source: --source, else "
        "$DPCDVAE_DATA, else download CDVAE's CSVs. Your own data: --csv-dir DIR --name NAME instead of "
        "DATASET, with DIR/{train,val,test}.csv[.gz] or one CSV and --split-seed S (a 'cif' column; "
        "writes the dataset record <cache-dir>/NAME/dataset.json; README 'Custom data').",
    )
    p.add_argument("dataset", nargs="?", choices=_DATASETS, help=" | ".join(_DATASETS) + " (or --csv-dir)")
    p.add_argument("--csv-dir", default=None, metavar="DIR",
                   help="custom dataset: folder with train/val/test CSVs, or with one CSV (or that CSV) and --split-seed")
    p.add_argument("--name", default=None, help="custom dataset: its name (data.dataset=NAME, --dataset NAME)")
    p.add_argument("--split-seed", type=int, default=None, metavar="S",
                   help="custom dataset from one CSV: seed of the deterministic train/val/test split")
    p.add_argument("--split-fractions", type=float, nargs=3, default=None, metavar=("TRAIN", "VAL", "TEST"),
                   help="with --split-seed: fractions summing to 1 (default 0.8 0.1 0.1)")
    p.add_argument("--prop", default=None, metavar="COLUMN",
                   help="custom dataset: numeric property column to keep (default: none)")
    p.add_argument("--max-atoms", type=int, default=None,
                   help="custom dataset: larger cells are skipped (default 20; train with data.max_atoms >= it)")
    p.add_argument("--source", default=None, help="folder with DATASET/<split>.csv[.gz] (default: $DPCDVAE_DATA)")
    p.add_argument("--cache-dir", default=None, help="cache root (default: $DPCDVAE_CACHE or ~/.cache/dpcdvae)")
    p.add_argument("--workers", type=int, default=2, help="preprocessing processes (default 2)")
    p.add_argument("--splits", nargs="+", choices=_SPLITS, default=list(_SPLITS))
    p.add_argument("--train-split", choices=_SPLITS, default=None,
                   help="split the scalers are fitted on (default train), e.g. val for carbon_24")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows of every split")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_prepare)

    c = sub.add_parser(
        "check-graph",
        help="compare our periodic radius graph with pymatgen's neighbour list",
        description="Build the exact periodic radius graph of preprocessed crystals with dpcdvae.geometry "
        "and with pymatgen's Structure.get_neighbor_list; the last line is 'mismatches: K of N structures'.",
    )
    c.add_argument("--source", default=None, help="folder with DATASET/<split>.csv[.gz] (default: $DPCDVAE_DATA)")
    c.add_argument("--dataset", required=True, choices=_DATASETS)
    c.add_argument("--split", required=True, choices=_SPLITS)
    c.add_argument("--limit", type=int, default=None, help="first N rows (default: all)")
    c.add_argument("--cutoff", type=float, default=7.0, help="radius in Å (default 7.0)")
    c.add_argument("--device", default="cpu", help="torch device for our graph (default cpu)")
    c.set_defaults(func=_check_graph)


def _prepare(args: argparse.Namespace) -> int:
    from dpcdvae.data.cache import resolve_cache_dir

    if args.workers < 1:
        raise DPCDVAEError(f"--workers must be >= 1, got {args.workers}")
    if args.csv_dir is not None:
        return _prepare_custom(args)
    custom_only = [f"--{k.replace('_', '-')}" for k in ("name", "split_seed", "split_fractions", "prop", "max_atoms")
                   if getattr(args, k) is not None]
    if custom_only:
        raise DPCDVAEError(f"{', '.join(custom_only)}: options of a custom dataset (--csv-dir DIR --name NAME)")
    if args.dataset is None:
        raise DPCDVAEError(f"give a dataset ({', '.join(_DATASETS)}) or your own CSVs: --csv-dir DIR --name NAME")
    _print_report(_run_prepare(args, args.dataset, args.source, resolve_cache_dir(args.cache_dir)))
    return 0


def _run_prepare(args: argparse.Namespace, dataset: str, source, cache_dir: Path, files: dict | None = None):
    """``prepare_dataset`` with the options that the benchmark and the custom form share."""
    from dpcdvae.data.prepare import prepare_dataset

    return prepare_dataset(dataset, source=source, cache_dir=cache_dir, splits=tuple(args.splits),
                           workers=args.workers, train_split=args.train_split, limit=args.limit,
                           progress=not args.no_progress and sys.stderr.isatty(), files=files)


def _print_report(report, tail: str = "") -> None:
    for line in report.lines():
        print(line)
    print(f"{report.label}: done in {report.seconds:.1f} s; report in "
          f"{os.path.join(report.cache_dir, report.dataset, 'report.json')}{tail}")


def _prepare_custom(args: argparse.Namespace) -> int:
    from dpcdvae.data import custom
    from dpcdvae.data.cache import resolve_cache_dir

    if args.dataset is not None:
        raise DPCDVAEError(f"give either a dataset ({args.dataset}) or --csv-dir DIR --name NAME, not both")
    if args.source is not None:
        raise DPCDVAEError("--source is for the benchmarks; a custom dataset reads --csv-dir")
    max_atoms = 20 if args.max_atoms is None else args.max_atoms
    if max_atoms < 1:
        raise DPCDVAEError(f"--max-atoms must be >= 1, got {max_atoms}")
    plan = custom.plan_custom(args.csv_dir, args.name, args.split_seed, args.split_fractions)  # all checks first
    cache_dir = resolve_cache_dir(args.cache_dir)
    files = custom.write_splits(plan, cache_dir)
    info = custom.register(custom.make_info(plan.name, files, max_atoms, args.prop))
    report = _run_prepare(args, plan.name, plan.csv_dir, cache_dir, files=files)
    record = custom.write_record(cache_dir, info, plan)
    if plan.layout == "single":
        sizes = ", ".join(f"{s} {report.splits[s].n_rows}" for s in files if s in report.splits)
        print(f"{plan.name}: split {plan.single.name} with seed {plan.seed}, fractions "
              f"{' '.join(f'{f:g}' for f in plan.fractions)} -> {sizes} rows in {Path(files['train']).parent}")
    _print_report(report, f"; dataset record {record}")
    return 0


def _check_graph(args: argparse.Namespace) -> int:
    from dpcdvae.data.graph_check import check_graph
    from dpcdvae.data.source import resolve_source

    if args.limit is not None and args.limit < 1:
        raise DPCDVAEError(f"--limit must be >= 1, got {args.limit}")
    result = check_graph(resolve_source(args.source, args.dataset), args.dataset, args.split, args.limit, args.cutoff,
                         device=args.device)
    for line in result.lines():
        print(line)
    return 1 if result.n_mismatches else 0
