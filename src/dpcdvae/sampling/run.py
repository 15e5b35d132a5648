"""``dpcdvae sample`` and ``dpcdvae reconstruct``: batch-by-batch generation with files users can open.

Every finished batch is written at once (``DIR/parts/part_000012.pt`` and its CIFs), so an interrupted
run keeps its work and ``resume=True`` continues with the missing batches. Batch ``b`` draws all of its
randomness from a generator seeded with ``(seed, b)``, so a resumed or sharded run produces exactly the
crystals of an uninterrupted single-device run. At the end the parts are merged into ``samples.pt``
and ``samples.extxyz`` (by whichever shard finds all parts present, or by the parent of
``dpcdvae sample --devices N``, see :mod:`dpcdvae.sampling.distributed`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from dpcdvae.jsonio import dumps_strict
from dpcdvae.sampling.checks import check_device, check_sample_args
from dpcdvae.atomic import atomic_torch_save, atomic_write_text
from dpcdvae.sampling.writers import cif_text, concat_samples, extxyz_text

__all__ = ["sample", "reconstruct", "SampleResult", "resolve_device", "batch_seed"]


@dataclass
class SampleResult:
    out_dir: str
    num_crystals: int
    batches_run: int
    batches_skipped: int
    seconds: float
    crystals_per_s: float
    device: str


def resolve_device(device: str = "auto") -> torch.device:
    check_device(device)
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but no CUDA device is available")
    return torch.device(device)


PRECISIONS = ("auto", "fp32", "bf16")


def inference_precision(device: torch.device, precision: str, cfg: dict) -> str:
    """The network precision of sampling: ``auto`` = bf16 autocast on CUDA when the model was trained
    with bf16 autocast (``train.precision: bf16-mixed``, the presets), else fp32. Geometry, the
    Fourier features and the reverse-step arithmetic stay fp32 either way (autocast only changes
    matmuls), and eps is returned in fp32."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        trained_bf16 = str(cfg.get("train", {}).get("precision", "")).startswith("bf16")
        return "bf16" if device.type == "cuda" and trained_bf16 else "fp32"
    if precision == "bf16" and device.type != "cuda":
        raise ValueError("--precision bf16 needs a CUDA device (use fp32 on the CPU)")
    return precision


def inference_context(device: torch.device, precision: str):
    """Autocast context for ``precision`` (from :func:`inference_precision`); enables TF32 matmuls on
    CUDA for the fp32 parts."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def batch_seed(seed: int, batch_index: int) -> int:
    """Seed of batch ``batch_index`` of a run with ``seed`` (independent of sharding and resumption)."""
    return (int(seed) * 1_000_003 + int(batch_index)) % (2**63 - 1)


def _run_batches(
    out: Path,
    num_batches: int,
    run_batch: Callable[[int, torch.Generator, Callable], dict],
    first_index: Callable[[int], int],
    meta: dict,
    device: torch.device,
    resume: bool,
    write_cifs: bool,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    merge: bool = True,
    steps_per_batch: int | None = None,
) -> SampleResult:
    from tqdm import tqdm

    bars: dict = {}  # the inner bar, opened at the first step (so it sits below the batches bar)

    def on_step(i: int, *_) -> None:  # DPCDVAE.decode's callback: one tick per reverse step of a batch
        if "steps" not in bars:
            bars["steps"] = tqdm(desc="reverse steps", unit="step", leave=False, disable=not progress)
        if i == 0:
            bars["steps"].reset(total=steps_per_batch)
        bars["steps"].update(1)

    parts_dir = out / "parts"
    cif_dir = out / "cif"
    parts_dir.mkdir(parents=True, exist_ok=True)
    if write_cifs:
        cif_dir.mkdir(exist_ok=True)
    meta_path = out / "run.json"
    # Shards of one run start side by side: with world_size > 1 an existing run.json is accepted if it
    # describes the same run (checked below); a different run in the folder still raises.
    if meta_path.exists() and not resume and world_size == 1:
        raise ValueError(f"{out} holds a previous run; pass --resume to continue it or choose another --out")
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        for key in ("ckpt", "n", "start", "batch_size", "seed", "steps", "sampler", "split", "frame"):
            if key == "frame" and key not in old:  # run.json of a version without --frame: the wrap chain
                old[key] = "wrap" if meta.get(key) is not None else None
            if key == "start" and key not in old:  # run.json of a version without --start: from row 0
                old[key] = 0 if meta.get(key) is not None else None
            if old.get(key) != meta.get(key):
                raise ValueError(f"--resume: {key} differs from the run in {out} ({old.get(key)!r} vs {meta.get(key)!r})")
    atomic_write_text(meta_path, dumps_strict(meta) + "\n")

    mine = [b for b in range(num_batches) if b % world_size == rank]
    todo = [b for b in mine if not (parts_dir / f"part_{b:06d}.pt").exists()]
    t0 = time.perf_counter()
    made = 0
    for b in tqdm(todo, desc="batches", disable=not progress):
        gen = torch.Generator(device=device).manual_seed(batch_seed(meta["seed"], b))
        res = {k: v.detach().cpu() for k, v in run_batch(b, gen, on_step).items()}
        if write_cifs:
            start = first_index(b)
            counts = res["num_atoms"].tolist()
            fr, ty = res["frac_coords"].split(counts), res["atom_types"].split(counts)
            for i in range(len(counts)):
                name = f"{start + i:06d}"
                # atomic, but no fsync per CIF: at ~4 ms each it would cost more than sampling them
                atomic_write_text(cif_dir / f"{name}.cif",
                                  cif_text(fr[i], ty[i], res["lengths"][i], res["angles"][i], name), fsync=False)
        atomic_torch_save(parts_dir / f"part_{b:06d}.pt", res)
        made += len(res["num_atoms"])
    seconds = time.perf_counter() - t0
    if "steps" in bars:
        bars["steps"].close()

    if merge:
        _merge(out, num_batches, meta)  # writes only once every shard's parts exist
    total = sum(len(torch.load(parts_dir / f"part_{b:06d}.pt", weights_only=True)["num_atoms"])
                for b in mine if (parts_dir / f"part_{b:06d}.pt").exists())
    return SampleResult(str(out), total, len(todo), len(mine) - len(todo), seconds,
                        made / seconds if seconds > 0 and made else math.nan, str(device))


def _merge(out: Path, num_batches: int, meta: dict) -> bool:
    """Merge the parts into ``samples.pt`` / ``samples.extxyz``; False (nothing written) while parts are
    missing."""
    paths = [out / "parts" / f"part_{b:06d}.pt" for b in range(num_batches)]
    if not all(p.exists() for p in paths):
        return False  # other shards still running; the last one to finish (or a --resume) merges
    parts = [torch.load(p, weights_only=True) for p in paths]
    merged = concat_samples(parts)
    merged["meta"] = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool)) or v is None}
    atomic_torch_save(out / "samples.pt", merged)
    atomic_write_text(out / "samples.extxyz", extxyz_text(merged))
    return True


def sample(
    ckpt: Path | str,
    n: int,
    out: Path | str,
    batch_size: int | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    write_cifs: bool = True,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = True,
    merge: bool = True,
    precision: str = "auto",
    frame: str | None = None,
    static_shapes: bool | None = None,
    cuda_graphs: bool | None = None,
) -> SampleResult:
    """Generate ``n`` crystals from z ~ N(0, I).

    Args:
        ckpt: ``model.pt`` or a Lightning ``.ckpt`` of a training run.
        n: number of crystals.
        out: output folder (``samples.pt``, ``samples.extxyz``, ``cif/``, ``parts/``, ``run.json``).
        batch_size: crystals per batch (default: the config's ``sample.batch_size``).
        steps: reverse steps K (None = T - 1, the full chain; K < T = respaced fast sampler). DDPM
            models only: a score (CDVAE) model refuses it (fixed 50 x 100 Langevin steps).
        sampler: None = the model's default; DDPM: ``eq7`` (default; paper, wrap every step), ``eq6``
            (plain DDPM step) or ``ddim``; score: ``langevin`` (the only one).
        seed: run seed; batch b uses seed (seed, b).
        device: ``auto``, ``cuda``, ``cuda:1`` or ``cpu``.
        resume: continue an interrupted run in ``out``.
        rank, world_size: shard the batches over processes/GPUs (batch b goes to rank b % world_size).
            Shards may run at the same time in one ``out``; the one that finishes last merges.
        merge: merge the parts when all exist (False: the caller merges, as ``sample_multi`` does).
        precision: network precision, see :func:`inference_precision` (``auto``: bf16 on CUDA for the
            presets, fp32 on the CPU).
        frame: reverse-chain state frame (DDPM: ``wrap`` or ``fmod``, ``model.diffusion.reverse_frame``);
            None = the model's configured one.
        static_shapes: every reverse step's network call on a padded batch with fixed shapes
            (:mod:`dpcdvae.sampling.static_net`); None = the config's ``sample.static_shapes`` (off).
        cuda_graphs: capture that call as CUDA graphs (``torch.compile(mode="reduce-overhead")``;
            implies ``static_shapes``; CUDA only); None = ``sample.cuda_graphs`` (off).
    """
    check_sample_args(out, n=n, batch_size=batch_size, steps=steps, rank=rank, world_size=world_size)
    dev, model, cfg, sampler, prec, bs, static = _open_model(ckpt, device, sampler, steps, precision, batch_size,
                                                             frame, static_shapes, cuda_graphs)
    num_batches = -(-n // bs)
    out = Path(out)
    meta = {"task": "generate", "ckpt": str(Path(ckpt).resolve()), "n": n, "batch_size": bs, "seed": seed,
            "steps": steps, "sampler": sampler, "split": None, "dataset": cfg["data"]["dataset"],
            "train_split": cfg["data"]["train_split"], "precision": prec, "frame": _frame(model),
            **_static_meta(static)}

    def run_batch(b: int, gen: torch.Generator, on_step: Callable) -> dict:
        size = min(bs, n - b * bs)
        z = torch.randn(size, model.latent_dim, device=dev, generator=gen)
        with inference_context(dev, prec):
            return model.decode(z, sampler=sampler, steps=steps, generator=gen, callback=on_step, static=static)

    return _run_batches(out, num_batches, run_batch, lambda b: b * bs, meta, dev, resume, write_cifs,
                        rank, world_size, progress, merge, reverse_steps(model, steps))


def reconstruct(
    ckpt: Path | str,
    out: Path | str,
    split: str = "test",
    cache_dir: Path | str | None = None,
    batch_size: int | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    device: str = "auto",
    resume: bool = False,
    limit: int | None = None,
    write_cifs: bool = True,
    progress: bool = True,
    precision: str = "auto",
    frame: str | None = None,
    static_shapes: bool | None = None,
    cuda_graphs: bool | None = None,
    start: int = 0,
) -> SampleResult:
    """Encode each crystal of ``split`` and decode it; ``samples.pt['index']`` pairs every output with
    the 0-based CSV row of its ground truth (``steps`` / ``sampler`` / ``frame`` / ``static_shapes`` /
    ``cuda_graphs`` as in :func:`sample`). ``start`` / ``limit``: only rows ``start .. start + limit - 1``
    (e.g. the rows a cut-short run did not reach, on another device; ``evaluate recon`` takes both runs)."""
    from dpcdvae.data.cache import load_split

    check_sample_args(out, batch_size=batch_size, steps=steps, limit=limit, start=start)
    dev, model, cfg, sampler, prec, bs, static = _open_model(ckpt, device, sampler, steps, precision, batch_size,
                                                             frame, static_shapes, cuda_graphs)
    data = load_split(cache_dir, cfg["data"]["dataset"], split)
    if start >= len(data):
        raise ValueError(f"--start {start} is past the {split} split's last row ({len(data) - 1})")
    n = len(data) - start if limit is None else min(limit, len(data) - start)
    data = data.to(dev)
    num_batches = -(-n // bs)
    meta = {"task": "reconstruct", "ckpt": str(Path(ckpt).resolve()), "n": n, "start": start, "batch_size": bs,
            "seed": seed, "steps": steps, "sampler": sampler, "split": split, "dataset": cfg["data"]["dataset"],
            "train_split": cfg["data"]["train_split"], "precision": prec, "frame": _frame(model),
            **_static_meta(static)}

    def run_batch(b: int, gen: torch.Generator, on_step: Callable) -> dict:
        idx = torch.arange(start + b * bs, start + min(n, (b + 1) * bs), device=dev)
        batch = data.batch(idx)
        with inference_context(dev, prec):
            mu, logvar = model.encode_stats(batch)
            z = mu + torch.randn(mu.shape, device=dev, generator=gen) * torch.exp(0.5 * logvar)
            res = model.decode(z, sampler=sampler, steps=steps, generator=gen, callback=on_step, static=static)
        res["index"] = batch.index
        return res

    return _run_batches(Path(out), num_batches, run_batch, lambda b: start + b * bs, meta, dev, resume,
                        write_cifs, progress=progress, steps_per_batch=reverse_steps(model, steps))


def _open_model(ckpt: Path | str, device: str, sampler: str | None, steps: int | None, precision: str,
                batch_size: int | None, frame: str | None = None, static_shapes: bool | None = None,
                cuda_graphs: bool | None = None) -> tuple[torch.device, Any, dict, str, str, int, Any]:
    """The model of ``ckpt`` on ``device`` (eval mode) -> (device, model, config, checked sampler, network
    precision, crystals per batch, static-path options or None); ``frame`` (not None) replaces the
    reverse-chain frame; ``static_shapes`` / ``cuda_graphs`` as in :func:`sample`."""
    from dpcdvae.models.checkpoint import load_model
    from dpcdvae.sampling.static_net import check_static_sampling, static_options

    dev = resolve_device(device)
    model, cfg = load_model(ckpt, dev)
    sampler = model.process.check_sampling(sampler, steps)
    model.process.set_reverse_frame(frame)
    prec = inference_precision(dev, precision, cfg)
    static = static_options(cfg, dev, static_shapes, cuda_graphs)
    if static is not None:
        check_static_sampling(model.denoiser)
    bs = int(batch_size or cfg.get("sample", {}).get("batch_size", 1024))
    return dev, model, cfg, sampler, prec, bs, static


def _static_meta(static) -> dict:
    """run.json / samples' meta keys of the static path (``static_shapes`` False for the eager path)."""
    return static.meta() if static is not None else {"static_shapes": False, "cuda_graphs": False}


def _frame(model) -> str | None:
    """The reverse-chain frame the run uses (None for processes without the choice)."""
    return getattr(model.process, "reverse_frame", None)


def reverse_steps(model, steps: int | None) -> int:
    """Number of network calls of one batch: DDPM K, or T - 1 for the full chain; score L x steps_per_level."""
    return int(model.process.network_calls(steps))


def result_json(res: SampleResult) -> str:
    return dumps_strict(asdict(res))
