"""Training callbacks: wall-clock budget per invocation and throughput measurement."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch


class TimeBudget(pl.Callback):
    """Stop cleanly once this invocation has trained for ``minutes`` (unlike Lightning's Timer, the
    budget is not carried across ``--resume``, so every call gets its own budget)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = float(minutes) * 60.0
        self.start = time.monotonic()
        self.triggered = False

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.start = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        stop = time.monotonic() - self.start >= self.seconds
        if trainer.world_size > 1:  # every rank must stop at the same step (DDP collectives)
            stop = trainer.strategy.broadcast(stop, src=0)
        if stop:
            self.triggered = True
            trainer.should_stop = True


class Throughput(pl.Callback):
    """Crystals per second of training steps (data loading included), after ``warmup`` steps, and peak
    GPU memory."""

    def __init__(self, warmup: int = 10) -> None:
        self.warmup = warmup
        self.steps = 0
        self.crystals = 0
        self.atoms = 0
        self.t0: float | None = None
        self.elapsed = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.steps == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()
            self.crystals = 0
            self.atoms = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        if self.t0 is not None:
            self.crystals += batch.num_graphs
            self.atoms += batch.num_nodes

    def on_train_end(self, trainer, pl_module) -> None:
        if self.t0 is not None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.elapsed = time.perf_counter() - self.t0

    def summary(self) -> dict:
        rate = self.crystals / self.elapsed if self.elapsed > 0 else float("nan")
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        return {"crystals_per_s": rate, "timed_steps": max(0, self.steps - self.warmup),
                "timed_seconds": self.elapsed, "peak_gpu_mem_gib": peak}
