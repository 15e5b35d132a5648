"""``dpcdvae demo``: prepare Perov-5, train a small model, generate crystals, write CIFs and metrics.

On a GPU it trains the full ``perov_5`` preset; on a CPU the ``tiny`` config, so the whole demo takes a
few minutes anywhere. Every step is the same public function a user would call.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dpcdvae.jsonio import dumps_strict


__all__ = ["demo", "register"]


def demo(source: Path | str | None, out: Path | str = "demo_out", minutes: float = 3.0, n_samples: int = 256,
         steps: int = 100, device: str = "auto", workers: int = 2, progress: bool = True) -> dict:
    """Run the demo end to end and return the generation metrics (also in ``out/metrics.json``)."""
    from dpcdvae.data.prepare import prepare_dataset
    from dpcdvae.data.source import resolve_source
    from dpcdvae.evaluation.gen import evaluate_gen
    from dpcdvae.models.train import train
    from dpcdvae.sampling.run import resolve_device, sample

    out = Path(out)
    cache = out / "cache"
    dev = resolve_device(device)
    # one source for preparing and evaluating (a downloaded copy lands in <out>/cache/raw)
    source = resolve_source(source, "perov_5", download_to=cache / "raw")
    if not (cache / "perov_5" / "test.pt").exists():
        rep = prepare_dataset("perov_5", source, cache, workers=workers, progress=progress)
        print(f"[demo] prepared perov_5: {rep}")
    gpu = dev.type == "cuda"
    run = out / "run"
    overrides = [f"train.max_minutes={minutes}"]
    if not gpu:
        overrides += ["train.max_epochs=100000", "train.teacher_forcing_max_epoch=5", "train.mul_cost_coord_epoch=1000"]
    resume = (run / "checkpoints" / "last.ckpt").exists()
    res = train(config="perov_5" if gpu else "tiny", out=run, overrides=overrides, cache_dir=cache, resume=resume,
                accelerator="gpu" if gpu else "cpu", progress=progress)
    print(f"[demo] trained {res.epochs} epochs in {res.minutes:.1f} min; last val loss {res.last_val_loss}")
    samples = out / "samples"
    sres = sample(run / "model.pt", n_samples, samples, steps=steps, device=str(dev), resume=(samples / "run.json").exists(),
                  progress=progress)
    print(f"[demo] generated {sres.num_crystals} crystals ({sres.crystals_per_s:.1f}/s) -> {samples}/cif/")
    metrics = evaluate_gen(samples, "perov_5", source=source, out=out / "metrics.json",
                           report_dir=out / "report", workers=workers, cache_dir=cache,
                           n_wdist=min(1000, n_samples), progress=progress)
    print(f"[demo] metrics -> {out / 'metrics.json'}, report -> {out / 'report' / 'report.md'}")
    return metrics


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="prepare Perov-5, train a small model, generate and evaluate crystals")
    p.add_argument("--source", default=None, help="folder with perov_5/*.csv(.gz) (default: $DPCDVAE_DATA or download)")
    p.add_argument("--out", default="demo_out", type=Path)
    p.add_argument("--minutes", type=float, default=3.0, help="training time budget")
    p.add_argument("-n", type=int, default=256, help="crystals to generate")
    p.add_argument("--steps", type=int, default=100, help="reverse diffusion steps (fast sampler)")
    p.add_argument("--device", default="auto")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    metrics = demo(args.source, args.out, args.minutes, args.n, args.steps, args.device, args.workers,
                   progress=not args.no_progress)
    keys = ("comp_valid", "struct_valid", "valid", "cov_recall", "cov_precision", "wdist_density", "wdist_num_elems")
    flat = {k: v for k, v in metrics.items() if k in keys}
    print(dumps_strict(flat or metrics, default=str))
    return 0


