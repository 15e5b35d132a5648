"""``evaluate_gen``: CDVAE generation metrics of any set of crystals against a dataset split.

Metrics (CDVAE GenEval, docs/REFERENCE.md §2.2-§2.4): validity (comp / struct / both, over ALL crystals;
a fingerprint failure makes a crystal invalid), COV-R / COV-P and AMSD / AMCD against the test split,
comp_div / struct_div and Wasserstein distances of density (g/cm^3), number of elements and the
property (formation energy; needs a property-model checkpoint) between ``n_wdist`` random valid
crystals (fixed, reported seed) and all ground-truth crystals.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from dpcdvae.atomic import atomic_write
from dpcdvae.evaluation.io import CrystalInput
from dpcdvae.evaluation.worker import EvalOptions, LazyPool
from dpcdvae.jsonio import write_json as write_strict_json
from dpcdvae.registry import Registry


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("pymatgen", "matminer", "smact", "scipy", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "absent"
    return out


def code_provenance() -> dict[str, Any]:
    """dpcdvae version, and the git commit when running from a checkout (None otherwise);
    ``evaluation_modified`` says whether src/dpcdvae/evaluation differs from that commit."""
    import subprocess

    from dpcdvae import __version__

    out: dict[str, Any] = {"dpcdvae": __version__, "git_commit": None, "evaluation_modified": None}
    root = Path(__file__).resolve().parents[3]
    if not (root / ".git").exists():
        return out
    try:
        git = ["git", "-C", str(root)]
        out["git_commit"] = subprocess.run(git + ["rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                           timeout=10).stdout.strip() or None
        status = subprocess.run(git + ["status", "--porcelain", "--", "src/dpcdvae/evaluation"], capture_output=True,
                                text=True, timeout=10).stdout
        out["evaluation_modified"] = bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out


def evaluate_items(items: list[CrystalInput], opts: EvalOptions, pool: LazyPool, progress: bool,
                   desc: str) -> dict[str, np.ndarray]:
    """Evaluate crystals in ``pool`` -> record table (``worker.records_to_table``)."""
    from dpcdvae.evaluation.worker import evaluate_crystal, records_to_table

    records = pool.map(functools.partial(evaluate_crystal, opts=opts), items, progress, desc)
    return records_to_table(records)


def eval_settings(opts: EvalOptions) -> dict[str, Any]:
    """What a cached table depends on besides its crystals."""
    return {"opts": opts.__dict__, "preprocess": "niggli+canonical", "versions": library_versions()}


def evaluate_items_cached(items: list[CrystalInput], dataset: str, opts: EvalOptions, pool: LazyPool,
                          cache_dir: Path | None, progress: bool) -> tuple[dict[str, np.ndarray], bool]:
    """:func:`evaluate_items` of generated crystals through the cache (key: their content and the
    settings), so that a run stopped after the slow per-crystal part (e.g. in the property step)
    costs nothing the second time. Returns (table, cache_hit)."""
    from dpcdvae.evaluation import cache as ec

    if cache_dir is None:
        return evaluate_items(items, opts, pool, progress, "samples"), False
    settings = eval_settings(opts)
    path = ec.table_path(cache_dir, dataset, "samples", ec.table_key(ec.items_sha256(items), None, settings))
    hit = ec.load_table(path)
    if hit is not None:
        return hit[0], True
    table = evaluate_items(items, opts, pool, progress, "samples")
    ec.save_table(path, table, {"n": len(items), "settings": settings})
    return table, False


def evaluate_csv_cached(csv_path: Path, dataset: str, split_label: str, opts: EvalOptions, pool: LazyPool,
                        cache_dir: Path | None, progress: bool, rows: np.ndarray | None = None,
                        shipped: bool = True) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Evaluate (rows of) a dataset CSV as ground truth (CDVAE preprocessing), through the cache.

    Order: the user's cache (exact key: file sha256, rows, settings, library versions), then a table
    shipped with the package when ``shipped`` and the CSV's parsed content and the settings match
    (:mod:`dpcdvae.evaluation.shipped`), else computed now (and cached).

    Returns: (table, info) with info = csv, sha256, n, rows_subset, cache (path or None), cache_hit,
    table_source ("cache" | "shipped" | "computed"), shipped_table (what was found), seconds, and
    warnings / gt_prop (shipped property predictions) when a shipped table is used."""
    from dpcdvae.evaluation import cache as ec
    from dpcdvae.evaluation.io import file_sha256, read_csv_structures

    t0 = time.perf_counter()
    sha = file_sha256(csv_path)
    settings = eval_settings(opts)
    versions = settings["versions"]
    key = ec.table_key(sha, rows, settings)
    path = ec.table_path(cache_dir, dataset, split_label, key) if cache_dir is not None else None
    hit = ec.load_table(path) if path is not None else None
    found, ship_note = None, ("not looked for (--no-shipped-table)" if not shipped else
                              "not looked for (a subset of rows)" if rows is not None else "")
    if hit is not None:
        table, source = hit[0], "cache"
    else:
        if shipped and rows is None:
            from dpcdvae.evaluation.shipped import find_shipped_table

            found, ship_note = find_shipped_table(dataset, split_label, csv_path, opts)
        if found is not None:
            table, source = found.table, "shipped"
        else:
            loaded = read_csv_structures(csv_path, preprocess=True, rows=rows)
            table = evaluate_items(loaded.items, opts, pool, progress, f"{dataset}/{split_label}")
            source = "computed"
            if path is not None:
                ec.save_table(path, table, {"csv": str(csv_path), "sha256": sha, "settings": settings})
    info = {"csv": str(csv_path), "sha256": sha, "n": int(table["valid"].shape[0]),
            "rows_subset": rows is not None, "cache": str(path) if path else None, "cache_hit": hit is not None,
            "table_source": source, "table_versions": found.info["versions"] if found is not None else versions,
            "shipped_table": found.info if found is not None else
            ({"used": False, "reason": ship_note} if ship_note else {"used": False, "reason": "user cache hit"}),
            "seconds": round(time.perf_counter() - t0, 3)}
    if found is not None:
        info["warnings"] = list(found.warnings)
        info["gt_prop"] = found.gt_prop
        info["shipped_path"] = str(found.path)
    return table, info


@dataclass
class MetricContext:
    """What a generation metric sees besides the two record tables: the rows of ``gen`` drawn for the
    Wasserstein distances and diversities, and the settings."""
    rows: np.ndarray
    valid_rows: np.ndarray
    n_wdist: int
    seed: int
    struct_cutoff: float
    comp_cutoff: float


# Generation metrics (CDVAE's GenEval): name -> f(gen, gt, ctx) -> the dict stored under that name in
# metrics.json. Adding a metric = one function + one registration; ``gen_metrics`` runs them all in order.
GEN_METRICS: Registry = Registry("generation metric")


@GEN_METRICS.register("validity", help="structure + composition validity (docs/REFERENCE.md)")
def _validity(gen: dict[str, np.ndarray], gt: dict[str, np.ndarray], ctx: MetricContext) -> dict[str, Any]:
    from dpcdvae.evaluation.metrics import validity_summary

    return validity_summary(gen)


@GEN_METRICS.register("wdist", help="Wasserstein distances of density and #elements, valid subset")
def _wdist(gen: dict[str, np.ndarray], gt: dict[str, np.ndarray], ctx: MetricContext) -> dict[str, Any]:
    from dpcdvae.evaluation.metrics import choose_subset, wasserstein

    rows, gt_ok = ctx.rows, gt["constructed"]
    out = {
        "n_samples": int(rows.size), "seed": ctx.seed, "n_gt": int(gt_ok.sum()),
        "wdist_density": wasserstein(gen["density"][rows], gt["density"][gt_ok]),
        "wdist_num_elems": wasserstein(gen["n_elems"][rows], gt["n_elems"][gt_ok]),
    }
    if ctx.valid_rows.size > ctx.n_wdist:  # spread of the W distances over 10 draws of the random subset
        draws = [choose_subset(ctx.valid_rows, ctx.n_wdist, ctx.seed + k) for k in range(10)]
        dens = [wasserstein(gen["density"][r], gt["density"][gt_ok]) for r in draws]
        nel = [wasserstein(gen["n_elems"][r], gt["n_elems"][gt_ok]) for r in draws]
        out["resampled_10_seeds"] = {
            "seeds": [ctx.seed, ctx.seed + 9],
            "wdist_density_mean": float(np.mean(dens)), "wdist_density_std": float(np.std(dens)),
            "wdist_num_elems_mean": float(np.mean(nel)), "wdist_num_elems_std": float(np.std(nel)),
        }
    return out


@GEN_METRICS.register("diversity", help="mean pairwise fingerprint distances of the valid subset")
def _diversity(gen: dict[str, np.ndarray], gt: dict[str, np.ndarray], ctx: MetricContext) -> dict[str, Any]:
    from dpcdvae.evaluation.fingerprints import normalise_comp_fps
    from dpcdvae.evaluation.metrics import mean_pdist

    return {"comp_div": mean_pdist(normalise_comp_fps(gen["comp_fp"][ctx.rows])),
            "struct_div": mean_pdist(gen["struct_fp"][ctx.rows])}


@GEN_METRICS.register("coverage", help="COV-R / COV-P and AMSD / AMCD against the test split")
def _coverage(gen: dict[str, np.ndarray], gt: dict[str, np.ndarray], ctx: MetricContext) -> dict[str, Any]:
    from dpcdvae.evaluation.fingerprints import normalise_comp_fps
    from dpcdvae.evaluation.metrics import coverage

    g_fp = gen["has_struct_fp"] & gen["has_comp_fp"]
    t_fp = gt["has_struct_fp"] & gt["has_comp_fp"]
    cov = coverage(gen["struct_fp"][g_fp], normalise_comp_fps(gen["comp_fp"][g_fp]),
                   gt["struct_fp"][t_fp], normalise_comp_fps(gt["comp_fp"][t_fp]),
                   ctx.struct_cutoff, ctx.comp_cutoff, num_gen=int(gen["valid"].shape[0]))
    cov.update(struct_cutoff=ctx.struct_cutoff, comp_cutoff=ctx.comp_cutoff, n_gen_with_fp=int(g_fp.sum()),
               n_gen_total=int(gen["valid"].shape[0]), n_gt_with_fp=int(t_fp.sum()), n_gt_total=int(t_fp.shape[0]))
    return cov


def gen_metrics(gen: dict[str, np.ndarray], gt: dict[str, np.ndarray], struct_cutoff: float, comp_cutoff: float,
                n_wdist: int = 1000, seed: int = 0) -> tuple[dict[str, Any], np.ndarray]:
    """Every registered generation metric (:data:`GEN_METRICS`) except the property distance, from two
    record tables.

    Returns: (metrics dict, rows of ``gen`` used for the Wasserstein distances and diversities).
    """
    from dpcdvae.evaluation.metrics import choose_subset

    valid_rows = np.flatnonzero(gen["valid"])
    ctx = MetricContext(rows=choose_subset(valid_rows, n_wdist, seed), valid_rows=valid_rows, n_wdist=n_wdist,
                        seed=seed, struct_cutoff=struct_cutoff, comp_cutoff=comp_cutoff)
    out: dict[str, Any] = {name: GEN_METRICS[name](gen, gt, ctx) for name in GEN_METRICS}
    if valid_rows.size < n_wdist:
        out["warnings"] = [f"only {valid_rows.size} valid crystals (< {n_wdist}): W distances and diversity use "
                           "all of them"]
    return out, ctx.rows


def _predict(prop_ckpt: Path, table: dict[str, np.ndarray], rows: np.ndarray, device: str) -> np.ndarray:
    from dpcdvae.evaluation.io import table_to_tensor_dict
    from dpcdvae.models.property import predict_property

    return np.asarray(predict_property(Path(prop_ckpt), table_to_tensor_dict(table, rows), device=device),
                      dtype=np.float64).reshape(-1)


def property_wdist(prop_ckpt: Path | None, gen: dict[str, np.ndarray], rows: np.ndarray, gt: dict[str, np.ndarray],
                   device: str = "cpu", gt_cache: Path | None = None,
                   gt_known: dict[str, np.ndarray] | None = None,
                   ) -> tuple[dict[str, Any], np.ndarray | None, np.ndarray | None]:
    """W distance of predicted properties (CDVAE: the property model on BOTH the valid samples and
    the ground truth). ``gt_cache``: a folder where the ground truth's predictions are cached, keyed
    by the ground-truth table and the checkpoint's sha256. ``gt_known``: ground-truth predictions
    shipped with a ground-truth table, keyed by the first 16 hex digits of the checkpoint's sha256.
    Returns ({"wdist_prop": float | None, "reason"?: str}, gen preds, gt preds)."""
    from dpcdvae.evaluation.io import file_sha256
    from dpcdvae.evaluation.metrics import wasserstein

    if prop_ckpt is None:
        return {"wdist_prop": None, "reason": "no --prop-ckpt given (property model needed for W(E))"}, None, None
    if not Path(prop_ckpt).is_file():
        raise FileNotFoundError(f"property checkpoint {prop_ckpt} not found")
    try:
        import dpcdvae.models.property  # noqa: F401
    except ImportError as err:
        return {"wdist_prop": None, "reason": f"dpcdvae.models.property unavailable ({err})"}, None, None
    if rows.size == 0:
        return {"wdist_prop": None, "reason": "no valid crystals"}, None, None
    gen_p = _predict(prop_ckpt, gen, rows, device)
    gt_rows = np.flatnonzero(gt["constructed"])
    cache_file = gt_p = None
    ckpt_sha16 = file_sha256(Path(prop_ckpt))[:16]
    known = (gt_known or {}).get(ckpt_sha16)
    if known is not None and known.shape == (gt_rows.size,):
        gt_p = np.asarray(known, dtype=np.float64)
        return ({"wdist_prop": wasserstein(gen_p, gt_p), "prop_ckpt": str(prop_ckpt),
                 "gt_predictions_cached": "shipped"}, gen_p, gt_p)
    if gt_cache is not None:
        cache_file = Path(gt_cache) / f"prop-{ckpt_sha16}.npy"
        if cache_file.is_file():
            gt_p = np.load(cache_file, allow_pickle=False)
            if gt_p.shape != (gt_rows.size,):
                gt_p = None
    cached = gt_p is not None
    if gt_p is None:
        gt_p = _predict(prop_ckpt, gt, gt_rows, device)
        if cache_file is not None:
            atomic_write(cache_file, lambda fh: np.save(fh, gt_p, allow_pickle=False))
    return ({"wdist_prop": wasserstein(gen_p, gt_p), "prop_ckpt": str(prop_ckpt), "gt_predictions_cached": cached},
            gen_p, gt_p)


def _subset_items(items: list, max_samples: int | None, subset_seed: int) -> tuple[list, np.ndarray | None]:
    from dpcdvae.evaluation.metrics import choose_subset

    if max_samples is None or max_samples >= len(items):
        return items, None
    rows = choose_subset(np.arange(len(items)), max_samples, subset_seed)
    return [items[r] for r in rows], rows


def evaluate_gen(samples: Path, dataset: str, *, split: str = "test", source: Path | None = None,
                 out: Path | None = None, report_dir: Path | None = None, workers: int | None = None,
                 cache_dir: Path | None = None, use_cache: bool = True, prop_ckpt: Path | None = None,
                 prop_device: str = "cpu", n_wdist: int = 1000, seed: int = 0, max_samples: int | None = None,
                 subset_seed: int = 0, oxidation_states: str = "smact14", pauling_missing: str = "pass",
                 struct_cutoff: float | None = None, comp_cutoff: float | None = None,
                 shipped_table: bool = True, progress: bool = True) -> dict[str, Any]:
    """Generation metrics of the crystals in ``samples`` against ``<source>/<dataset>/<split>``.

    Args:
        samples: sample folder (samples.pt), folder of CIFs, one .extxyz, or a dataset CSV(.gz)
            (then preprocessed like the ground truth and cached).
        dataset: perov_5 | carbon_24 | mp_20 (aliases perovskite, carbon, mp20), or a custom dataset
            prepared with ``data prepare --csv-dir`` into ``cache_dir`` (COV cutoffs: its record's, by
            default CDVAE's mp_20 values 0.4 / 10); other names need ``struct_cutoff`` and ``comp_cutoff``.
        max_samples / subset_seed: score a fixed random subset of the input (reported).
        n_wdist / seed: number of random valid crystals for W distances and diversity, and its seed.
        out / report_dir: where to write metrics.json / report.md + PNGs (optional).
        prop_ckpt: property-predictor checkpoint for W(E), or ``"pretrained:NAME"`` for the predictor
            shipped with the pretrained model NAME (e.g. ``pretrained:perov_5``).
        shipped_table: reuse a ground-truth table shipped with the package when the split's CSV
            content and the settings match (``dpcdvae.evaluation.shipped``); False recomputes it.
    Returns: the metrics dict (also written to ``out``).
    """
    from dpcdvae.evaluation.cache import resolve_cache_dir
    from dpcdvae.data.custom import register_custom
    from dpcdvae.evaluation.io import (check_output_dir, check_output_file, dataset_split_csv, load_crystals,
                                       unparsable_cif_warnings)
    from dpcdvae.evaluation.metrics import COV_CUTOFFS, canonical_dataset
    from dpcdvae.evaluation.worker import default_workers

    t_start = time.perf_counter()
    dataset = canonical_dataset(dataset)
    ds_info = register_custom(dataset, cache_dir)
    cov = ds_info.cov_cutoffs if ds_info is not None and ds_info.custom else COV_CUTOFFS.get(dataset)
    if struct_cutoff is None or comp_cutoff is None:
        if cov is None:
            raise ValueError(f"unknown dataset {dataset!r} (known: {', '.join(sorted(COV_CUTOFFS))}); for another "
                             "dataset pass --struct-cutoff and --comp-cutoff")
        struct_cutoff = cov[0] if struct_cutoff is None else struct_cutoff
        comp_cutoff = cov[1] if comp_cutoff is None else comp_cutoff
    gt_csv = dataset_split_csv(source, dataset, split, cache_dir)
    # everything that can fail is checked before the (slow) fingerprints
    from dpcdvae.pretrained import resolve_prop_ckpt

    prop_ckpt = resolve_prop_ckpt(prop_ckpt, dataset)
    if prop_ckpt is not None and not Path(prop_ckpt).is_file():
        raise FileNotFoundError(f"--prop-ckpt {prop_ckpt} not found")
    check_output_file(out)
    check_output_dir(report_dir)
    workers = default_workers() if workers is None else max(1, int(workers))
    opts = EvalOptions(oxidation_states=oxidation_states, pauling_missing=pauling_missing)
    cdir = resolve_cache_dir(cache_dir) if use_cache else None
    samples = Path(samples)
    loaded = None if samples.name.lower().endswith((".csv", ".csv.gz")) else load_crystals(samples)

    timing: dict[str, float] = {}
    with LazyPool(workers) as pool:
        gt, gt_info = evaluate_csv_cached(gt_csv, dataset, split, opts, pool, cdir, progress,
                                          shipped=shipped_table)
        gt_known = gt_info.pop("gt_prop", None)
        input_warnings = gt_info.pop("warnings", [])
        timing["ground_truth_s"] = gt_info["seconds"]
        t0 = time.perf_counter()
        if loaded is None:  # a dataset CSV scored as if generated (e.g. the val split: data ceiling)
            import pandas as pd

            n_rows = len(pd.read_csv(samples, usecols=["cif"]))
            _, rows = _subset_items(list(range(n_rows)), max_samples, subset_seed)
            label = samples.name.split(".")[0] + ("" if rows is None else f"-subset{len(rows)}-seed{subset_seed}")
            gen, gen_info = evaluate_csv_cached(samples, dataset, label, opts, pool, cdir, progress, rows,
                                                shipped=shipped_table)
            gen_info.pop("gt_prop", None)
            input_warnings += gen_info.pop("warnings", [])
            input_info = {"kind": "csv", "note": f"{samples.name}: dataset rows, Niggli + canonical lattice",
                          "cache_hit": gen_info["cache_hit"]}
        else:
            items, rows = _subset_items(loaded.items, max_samples, subset_seed)
            gen, gen_hit = evaluate_items_cached(items, dataset, opts, pool, cdir, progress)
            input_warnings += unparsable_cif_warnings(items, gen)
            input_info = {"kind": loaded.kind, "note": loaded.note, "meta": loaded.meta, "cache_hit": gen_hit}
        timing["samples_s"] = round(time.perf_counter() - t0, 3)
    input_info.update(path=str(samples), n_input=(n_rows if loaded is None else len(loaded.items)),
                      n_scored=int(gen["valid"].shape[0]),
                      subset=None if rows is None else {"max_samples": max_samples, "seed": subset_seed})

    t0 = time.perf_counter()
    metrics, wrows = gen_metrics(gen, gt, struct_cutoff, comp_cutoff, n_wdist, seed)
    gt_cache = Path(gt_info["cache"]).with_suffix("") if gt_info["cache"] else None  # folder per ground-truth table
    if gt_cache is not None and gt_info["table_source"] == "shipped":  # predictions on the shipped table's rows
        gt_cache = gt_cache.with_name(f"{split}-shipped-{gt_info['shipped_table']['cif_sha256'][:16]}")
    gt_info.pop("shipped_path", None)
    prop, gen_p, gt_p = property_wdist(prop_ckpt, gen, wrows, gt, prop_device, gt_cache, gt_known)
    metrics["wdist"].update(prop)
    if input_warnings:
        metrics["warnings"] = input_warnings + metrics.get("warnings", [])
    timing["metrics_s"] = round(time.perf_counter() - t0, 3)
    timing["total_s"] = round(time.perf_counter() - t_start, 3)
    timing["workers"] = workers
    timing["mean_crystal_s"] = float(np.mean(gen["seconds"])) if gen["seconds"].size else None
    result = {
        "task": "gen", "dataset": dataset,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "input": input_info,
        "ground_truth": {"split": split, **gt_info},
        "settings": {
            "oxidation_states": oxidation_states, "pauling_missing_electronegativity": pauling_missing,
            "struct_cutoff": struct_cutoff, "comp_cutoff": comp_cutoff, "n_wdist": n_wdist, "seed": seed,
            "min_distance_A": opts.dist_cutoff, "min_volume_A3": 0.1,
            "struct_fingerprint": "matminer CrystalNNFingerprint ops, site mean",
            "comp_fingerprint": "matminer ElementProperty magpie impute_nan=False, CDVAE CompScaler, NaN->0",
            "versions": library_versions(), "code": code_provenance(),
        },
        **metrics,
        "timing": timing,
    }
    if out is not None:
        write_json(Path(out), result)
    if report_dir is not None:
        from dpcdvae.evaluation.report import write_gen_report

        write_gen_report(Path(report_dir), result, gen, gt, wrows, gen_p, gt_p)
    return result


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Write strict JSON (NaN/inf -> null; paths and other objects as strings)."""
    write_strict_json(Path(path), data, default=str)
