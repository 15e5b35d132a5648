"""Quality per GPU-minute: train the budget recipe for B minutes, reconstruct the whole test split
with the full Eq. 7 chain, score it. Not a test.

    # on the GPU machine (no pymatgen needed): train every budget and reconstruct when a run is done
    python benchmarks/learning_curve.py run --out /root/lc --cache-dir .cache --budgets 5 10 20 \\
        [--variant b1024:data.batch_size=1024,train.lr=1.4e-3] [--parallel] [--deadline-minutes 9.3]
    # issue 10: DP-CDVAE and the two CDVAE baselines on Carbon-24, same budget each, side by side, 100 samples each
    python benchmarks/learning_curve.py run --out /root/c24 --config carbon_24 --cache-dir .cache --budgets 8 \\
        --variant cdvae=carbon_24_cdvae: --variant cdvae_fourier=carbon_24_cdvae_fourier: --parallel --gen-n 100
    # anywhere with the chem extras: score every reconstruction, print and write the curve
    python benchmarks/learning_curve.py score --out /root/lc --source ../shared/data

``run`` is resumable and deadline-aware: each training invocation stops (``train.segment_minutes``)
before ``--deadline-minutes`` and the next ``run`` with the same arguments continues every unfinished
budget (``--resume``) and reconstructs the finished ones. ``--parallel`` trains the runs side by side on
one GPU (the step is host-bound at the paper's batch sizes, so runs share the card well; each run's
throughput is in its ``train_summary.json``). Reconstructions are made from each weight file the run
wrote (``model_raw.pt``, ``model_ema.pt``, ``model_ema_denoiser.pt``, or ``model.pt``).

Run folder: ``OUT/<name>/`` (``name`` = ``b<minutes>`` or ``<variant>_b<minutes>``) holds the training
run; ``OUT/<name>/recon_<weights>/`` the reconstruction; ``score`` writes
``OUT/<name>/recon_<weights>/metrics.json`` and ``OUT/curve.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

WEIGHT_FILES = ("model_raw.pt", "model_ema.pt", "model_ema_denoiser.pt")


def _runs(budgets: list[float], variants: list[str]) -> list[tuple[str, float, list[str], str | None]]:
    """(name, budget minutes, overrides, preset or None = --config) of every run. A variant is
    ``NAME[@B[+B...]][=PRESET]:key=value,...``; ``=PRESET`` trains it from another preset (e.g. the CDVAE
    baseline ``cdvae=carbon_24_cdvae:``) with the same budget."""
    out = [(f"b{b:g}", b, [], None) for b in budgets]
    for spec in variants:
        name, _, sets = spec.partition(":")
        name, _, preset = name.partition("=")
        base, _, at = name.partition("@")
        vb = [float(x) for x in at.split("+")] if at else [max(budgets)]
        out += [(f"{base}_b{b:g}", b, [s for s in sets.split(",") if s], preset or None) for b in vb]
    return out


def _summary(run_dir: Path) -> dict | None:
    p = run_dir / "train_summary.json"
    return json.loads(p.read_text()) if p.is_file() else None


def _done(run_dir: Path) -> bool:
    s = _summary(run_dir)
    return bool(s and s.get("budget_done"))


def _weights(run_dir: Path) -> list[Path]:
    found = [run_dir / w for w in WEIGHT_FILES if (run_dir / w).is_file()]
    return found or [run_dir / "model.pt"]


def _recon_dir(run_dir: Path, weights: Path) -> Path:
    tag = weights.stem.replace("model_", "") if weights.stem != "model" else "model"
    return run_dir / f"recon_{tag}"


def cmd_run(args: argparse.Namespace) -> int:
    t_start = time.monotonic()
    deadline = t_start + args.deadline_minutes * 60.0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dp = [sys.executable, "-m", "dpcdvae.cli"]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(args.threads))
    runs = _runs(args.budgets, args.variant)
    procs: dict[str, subprocess.Popen] = {}

    def left_min() -> float:
        return (deadline - time.monotonic()) / 60.0

    def start_train(name: str, budget: float, sets: list[str], preset: str | None = None) -> None:
        run_dir = out / name
        seg = left_min() - args.margin_minutes
        if seg < 0.5:
            return
        resume = (run_dir / "checkpoints" / "last.ckpt").is_file()
        cmd = dp + ["train", "--config", preset or args.config, "--out", str(run_dir), "--cache-dir", args.cache_dir,
                    "--no-progress", "--set", f"train.max_minutes={budget:g}", f"train.segment_minutes={seg:.2f}",
                    *sets, *args.set]
        if resume:
            cmd.append("--resume")
        log = open(out / f"{name}.train.log", "a")
        print(f"[{time.strftime('%H:%M:%S')}] train {name} (budget {budget:g} min, segment {seg:.2f} min"
              f"{', resumed' if resume else ''})", flush=True)
        procs[f"train:{name}"] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    recon_queue: list[tuple[str, Path]] = []

    def start_recons(name: str) -> None:
        gen = [(name, None)] if args.gen_n else []  # None: generate --gen-n crystals with model.pt
        recons = [] if args.no_recon else [(name, w) for w in _weights(out / name)]
        for item in (gen + recons if args.gen_first else recons + gen):
            if item not in recon_queue:
                recon_queue.append(item)

    def launch_recons() -> None:
        while recon_queue and sum(k.startswith("recon:") for k in procs) < args.max_recon_procs:
            name, w = recon_queue.pop(0)
            run_dir = out / name
            if w is None:
                gdir = run_dir / "gen"
                if (gdir / "samples.pt").is_file() or f"gen:{gdir}" in procs:
                    continue
                cmd = dp + ["sample", "--ckpt", str(run_dir / "model.pt"), "-n", str(args.gen_n), "--out", str(gdir),
                            "--batch-size", str(args.recon_batch_size), "--no-cif", "--no-progress", "--seed", "0"]
                if gdir.exists():
                    cmd.append("--resume")
                log = open(out / f"{name}.gen.log", "a")
                print(f"[{time.strftime('%H:%M:%S')}] generate {args.gen_n} with {name}/model.pt", flush=True)
                procs[f"recon:gen:{gdir}"] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
                continue
            rdir = _recon_dir(run_dir, w)
            if (rdir / "samples.pt").is_file() or f"recon:{rdir}" in procs:
                continue
            tag = rdir.name[len("recon_"):]
            limit = args.recon_limit if tag in args.primary_weights else args.subset_limit
            cmd = dp + ["reconstruct", "--ckpt", str(w), "--out", str(rdir), "--split", "test", "--cache-dir",
                        args.cache_dir, "--batch-size", str(args.recon_batch_size), "--no-cif", "--no-progress",
                        "--seed", "0"]
            if rdir.exists():
                cmd.append("--resume")
            if limit:
                cmd += ["--limit", str(limit)]
            log = open(out / f"{name}.recon.log", "a")
            print(f"[{time.strftime('%H:%M:%S')}] reconstruct {name} with {w.name}", flush=True)
            procs[f"recon:{rdir}"] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    pending = [r for r in runs if not _done(out / r[0])]
    for name, *_ in runs:
        if _done(out / name):
            start_recons(name)
    if args.parallel:
        for r in pending:
            start_train(*r)
        pending = []
    launch_recons()
    while procs or pending or recon_queue:
        for key, p in list(procs.items()):
            if p.poll() is None:
                continue
            del procs[key]
            kind, _, name = key.partition(":")
            print(f"[{time.strftime('%H:%M:%S')}] {key} exited {p.returncode}", flush=True)
            if kind == "train" and p.returncode == 0 and _done(out / name):
                start_recons(name)
        if pending and not any(k.startswith("train:") for k in procs):
            start_train(*pending.pop(0))
        if time.monotonic() < deadline:
            launch_recons()
        else:
            recon_queue.clear()
            for key, p in procs.items():
                if key.startswith("recon:") and p.poll() is None:
                    print(f"deadline reached: stopping {key} (a rerun resumes it)", flush=True)
                    p.terminate()
            if time.monotonic() > deadline + args.margin_minutes * 60.0:  # training overran its segment
                for key, p in procs.items():
                    if p.poll() is None:
                        print(f"killing {key}", flush=True)
                        p.kill()
                break
        time.sleep(2.0)
    status = {r[0]: {"done": _done(out / r[0]), "summary": _summary(out / r[0])} for r in runs}
    (out / "status.json").write_text(json.dumps(status, indent=2) + "\n")
    print(json.dumps({k: v["done"] for k, v in status.items()}))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from dpcdvae.evaluation.recon import evaluate_recon

    out = Path(args.out)
    rows = []
    for run_dir in sorted(p for p in out.iterdir() if (p / "train_summary.json").is_file()):
        s = _summary(run_dir)
        for rdir in sorted(run_dir.glob("recon_*")):
            if not (rdir / "samples.pt").is_file():
                continue
            mpath = rdir / "metrics.json"
            if not mpath.is_file() or args.rescore:
                dataset = json.loads((run_dir / "config.json").read_text())["data"]["dataset"]
                evaluate_recon(rdir, dataset,
                               source=args.source, out=mpath, report_dir=None, workers=args.workers,
                               fp_check=not args.no_fp_check, progress=False)
            m = json.loads(mpath.read_text())
            rows.append({"run": run_dir.name, "weights": rdir.name[len("recon_"):],
                         "budget_minutes": s.get("budget_minutes"), "trained_minutes": s.get("trained_minutes_total"),
                         "epochs": s.get("epochs"), "steps": s.get("global_step"),
                         "crystals_per_s": s.get("crystals_per_s"), "device": s.get("device_name"),
                         "match_rate": _get(m, "match_rate"), "rms": _get(m, "rms_dist"), "n_pred": _get(m, "n_pred"),
                         "match_rate_over_predicted": _get(m, "match_rate_over_predicted")})
    (out / "curve.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("| run | weights | budget min | epochs | steps | crystals/s | n reconstructed | match % | RMS |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        mr = r["match_rate_over_predicted"]
        print(f"| {r['run']} | {r['weights']} | {r['budget_minutes']} | {r['epochs']} | {r['steps']} | "
              f"{(r['crystals_per_s'] or 0):,.0f} | {r['n_pred']} | {100 * mr if mr is not None else float('nan'):.2f} | "
              f"{r['rms'] if r['rms'] is not None else float('nan'):.4f} |")
    return 0


def _get(m: dict, key: str):
    """Find ``key`` at any nesting level of a metrics dict (first hit)."""
    if key in m:
        return m[key]
    for v in m.values():
        if isinstance(v, dict):
            hit = _get(v, key)
            if hit is not None:
                return hit
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--config", default="perov_5")
    r.add_argument("--cache-dir", default=".cache")
    r.add_argument("--budgets", type=float, nargs="+", default=[5.0, 10.0, 20.0])
    r.add_argument("--variant", action="append", default=[],
                   help="NAME[@B1+B2]:KEY=VAL,KEY=VAL (extra runs with overrides, default at the largest budget)")
    r.add_argument("--set", nargs="*", default=[], help="overrides for every run")
    r.add_argument("--parallel", action="store_true", help="train all runs side by side")
    r.add_argument("--deadline-minutes", type=float, default=1e9, help="end this invocation by then")
    r.add_argument("--margin-minutes", type=float, default=0.6, help="start-up/save time kept free")
    r.add_argument("--recon-batch-size", type=int, default=1300)
    r.add_argument("--gen-n", type=int, default=0, help="also generate N crystals with each finished model.pt")
    r.add_argument("--gen-first", action="store_true", help="generate before reconstructing")
    r.add_argument("--no-recon", action="store_true", help="train (and generate) only")
    r.add_argument("--recon-limit", type=int, default=None, help="crystals reconstructed with the primary weights")
    r.add_argument("--primary-weights", nargs="+", default=["raw", "model"],
                   help="weights reconstructed on the whole split (or --recon-limit)")
    r.add_argument("--subset-limit", type=int, default=1000, help="crystals reconstructed with the other weights")
    r.add_argument("--max-recon-procs", type=int, default=1, help="reconstructions running at once")
    r.add_argument("--threads", type=int, default=2, help="OMP threads per process")
    r.set_defaults(func=cmd_run)
    s = sub.add_parser("score")
    s.add_argument("--out", required=True)
    s.add_argument("--source", default=None)
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--no-fp-check", action="store_true")
    s.add_argument("--rescore", action="store_true")
    s.set_defaults(func=cmd_score)
    args = ap.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
