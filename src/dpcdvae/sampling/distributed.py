"""``dpcdvae sample --devices N``: one command, N worker processes, one device each.

Worker ``i`` runs :func:`dpcdvae.sampling.run.sample` with ``rank=i, world_size=N`` on ``cuda:i`` (or on
the CPU), so it generates the batches ``b`` with ``b % N == i``. Every batch draws its randomness from
a generator seeded with ``(seed, b)``, hence the union of the shards is exactly the set of crystals of a
one-process run with the same seed and batch size: same count, same order, no duplicates. Workers do
not talk to each other (no process group, no NCCL); the parent merges the parts once, after all
workers have exited successfully.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch

from dpcdvae.sampling.checks import visible_cuda_devices
from dpcdvae.sampling.run import SampleResult

__all__ = ["sample_multi", "worker_devices", "ShardFailedError"]


class ShardFailedError(RuntimeError):
    """A sampling worker failed; the message names it and says how to resume."""


def worker_devices(device: str, devices: int) -> list[str]:
    """The device of each of ``devices`` workers: ``cuda:0 .. cuda:N-1`` for ``auto`` / ``cuda`` when
    CUDA is available, else ``cpu`` for every worker (CPU worker processes)."""
    if devices < 1:
        raise ValueError(f"--devices must be >= 1, got {devices}")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return ["cpu"] * devices
    if device not in ("auto", "cuda"):
        raise ValueError(f"--devices {devices} runs on cuda:0..cuda:{devices - 1}; choose the GPUs with "
                         f"CUDA_VISIBLE_DEVICES instead of --device {device}")
    count = visible_cuda_devices()
    if devices > count:
        raise ValueError(f"--devices {devices} but only {count} CUDA device(s) are visible")
    return [f"cuda:{i}" for i in range(devices)]


def _worker(rank: int, world: int, device: str, kwargs: dict, queue) -> None:
    """Body of worker ``rank`` (spawned process): sample its shard, report to the parent via ``queue``."""
    try:
        from dpcdvae.sampling.run import sample

        if device.startswith("cuda"):
            torch.cuda.set_device(torch.device(device))
        elif "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
        res = sample(rank=rank, world_size=world, device=device, merge=False,
                     progress=bool(kwargs.pop("progress")) and rank == 0, **kwargs)
        queue.put((rank, "ok", asdict(res)))
    except Exception as exc:  # one line to the parent, which raises it
        queue.put((rank, "error", f"{type(exc).__name__}: {exc}"))
        raise SystemExit(1)


def _check_sampling(ckpt: Path | str, sampler: str | None, steps: int | None, frame: str | None = None) -> str:
    """Refuse ``--steps`` / ``--sampler`` / ``--frame`` the model's process does not take, before any
    worker starts."""
    from dpcdvae.diffusion.process import build_process
    from dpcdvae.models.checkpoint import load_model_file

    cfg, _ = load_model_file(ckpt)
    process = build_process(cfg["model"])
    process.set_reverse_frame(frame)
    return process.check_sampling(sampler, steps)


def sample_multi(
    ckpt: Path | str,
    n: int,
    out: Path | str,
    devices: int,
    device: str = "auto",
    batch_size: int | None = None,
    steps: int | None = None,
    sampler: str | None = None,
    seed: int = 0,
    resume: bool = False,
    write_cifs: bool = True,
    progress: bool = True,
    precision: str = "auto",
    frame: str | None = None,
    static_shapes: bool | None = None,
    cuda_graphs: bool | None = None,
) -> SampleResult:
    """Generate ``n`` crystals with ``devices`` worker processes (arguments as in ``sample``).

    The output folder is the one of a single-process run with the same ``seed`` and ``batch_size``
    (``samples.pt`` identical on the CPU; on GPUs identical up to the run-to-run float noise of atomic
    reductions). A failed or interrupted run keeps its finished batches; ``resume=True`` completes it,
    with any number of devices.

    Returns:
        SampleResult summed over the workers: ``seconds`` is the wall time of the whole command (process
        start and model loading included), ``crystals_per_s`` the crystals made per second of the
        slowest worker's sampling loop, ``device`` the comma-separated worker devices.
    """
    import multiprocessing as mp
    from multiprocessing.connection import wait

    from dpcdvae.sampling.checks import check_sample_args
    from dpcdvae.sampling.run import _merge

    check_sample_args(out, n=n, batch_size=batch_size, steps=steps)
    sampler = _check_sampling(ckpt, sampler, steps, frame)
    devs = worker_devices(device, devices)
    out = Path(out)
    if (out / "run.json").exists() and not resume:
        raise ValueError(f"{out} holds a previous run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    kwargs = dict(ckpt=ckpt, n=n, out=out, batch_size=batch_size, steps=steps, sampler=sampler, seed=seed,
                  resume=resume, write_cifs=write_cifs, progress=progress, precision=precision, frame=frame,
                  static_shapes=static_shapes, cuda_graphs=cuda_graphs)
    t0 = time.perf_counter()
    ctx = mp.get_context("spawn")  # CUDA cannot be used in forked children
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_worker, args=(i, devices, devs[i], dict(kwargs), queue), daemon=True)
             for i in range(devices)]
    for p in procs:
        p.start()
    running = {p.sentinel: p for p in procs}
    failed = False
    while running and not failed:
        for sentinel in wait(list(running)):
            p = running.pop(sentinel)
            p.join()
            failed = failed or p.exitcode != 0
    if failed:  # stop the others: their finished batches are on disk for a --resume
        for p in running.values():
            p.terminate()
        for p in running.values():
            p.join()
    reports: dict[int, tuple[str, object]] = {}
    while not queue.empty():
        rank, status, payload = queue.get()
        reports[rank] = (status, payload)
    errors: dict[str, list[str]] = {}  # message -> workers (identical failures are reported once)
    for r, (status, payload) in sorted(reports.items()):
        if status == "error":
            errors.setdefault(str(payload), []).append(f"{r} ({devs[r]})")
    if failed or errors or len(reports) != devices:
        codes = {i: p.exitcode for i, p in enumerate(procs) if p.exitcode != 0}
        detail = "; ".join(f"worker {', '.join(ws)}: {msg}" for msg, ws in errors.items())
        raise ShardFailedError(f"sampling failed: {detail or f'worker exit codes {codes}'} (finished batches "
                               f"are kept in {out / 'parts'}; --resume continues the run)")

    meta = json.loads((out / "run.json").read_text())
    num_batches = -(-int(meta["n"]) // int(meta["batch_size"]))
    if not _merge(out, num_batches, meta):
        raise ShardFailedError(f"sampling finished but batches are missing in {out / 'parts'}; rerun with --resume")
    results = [SampleResult(**reports[r][1]) for r in range(devices)]
    made = sum(round(r.crystals_per_s * r.seconds) for r in results if math.isfinite(r.crystals_per_s))
    loop_s = max(r.seconds for r in results)
    return SampleResult(
        out_dir=str(out), num_crystals=sum(r.num_crystals for r in results),
        batches_run=sum(r.batches_run for r in results), batches_skipped=sum(r.batches_skipped for r in results),
        seconds=time.perf_counter() - t0, crystals_per_s=made / loop_s if made and loop_s > 0 else math.nan,
        device=",".join(devs),
    )
