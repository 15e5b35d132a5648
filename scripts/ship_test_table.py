"""Maintainers: (re)write ``src/dpcdvae/pretrained/<name>/test_table.npz`` from the real pipeline.

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/ship_test_table.py --name perov_5 \
        --source ../shared/data --cache-dir .cache --workers 2

Computes (or reads from the evaluation cache) the ground-truth table ``dpcdvae evaluate gen`` uses for
the test split, adds the shipped property predictor's predictions on it, and stores both with the CIF
column's digest, the settings and the library versions (``dpcdvae.evaluation.shipped``).
"""

from __future__ import annotations

import argparse
import time
from datetime import datetime, timezone
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", default="perov_5")
    ap.add_argument("--source", required=True)
    ap.add_argument("--cache-dir", default=None)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()

    import numpy as np

    from dpcdvae.evaluation.cache import resolve_cache_dir
    from dpcdvae.evaluation.gen import _predict, code_provenance, evaluate_csv_cached, library_versions
    from dpcdvae.evaluation.io import file_sha256, resolve_source, split_csv_path
    from dpcdvae.evaluation.shipped import read_shipped_table, write_shipped_table
    from dpcdvae.evaluation.worker import EvalOptions, LazyPool
    from dpcdvae.pretrained import get_info, pretrained_dir, property_path

    info = get_info(args.name)
    csv = split_csv_path(resolve_source(args.source), info.dataset, "test")
    opts = EvalOptions()
    with LazyPool(args.workers) as pool:
        table, tinfo = evaluate_csv_cached(csv, info.dataset, "test", opts, pool, resolve_cache_dir(args.cache_dir),
                                           True, shipped=False)
    print(f"table: {tinfo['table_source']} in {tinfo['seconds']} s ({tinfo['n']} rows)")
    prop = property_path(args.name)
    t0 = time.perf_counter()
    rows = np.flatnonzero(table["constructed"])
    preds = _predict(prop, table, rows, "cpu")
    print(f"property predictions on {rows.size} crystals: {time.perf_counter() - t0:.1f} s")
    out = pretrained_dir(args.name) / "test_table.npz"
    write_shipped_table(out, table, dataset=info.dataset, split="test", csv_path=csv, opts=opts,
                        versions=library_versions(), gt_prop={file_sha256(prop)[:16]: preds},
                        extra={"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                               "code": code_provenance(), "csv_name": csv.name, "csv_file_sha256": tinfo["sha256"],
                               "property_ckpt": f"pretrained/{args.name}/property/property.pt"})
    _, meta, _ = read_shipped_table(out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.2f} MiB): {meta['n_rows']} rows, versions {meta['versions']}")


if __name__ == "__main__":
    main()
