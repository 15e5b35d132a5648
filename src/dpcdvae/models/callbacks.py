"""Training callbacks: the run's wall-clock budget, the weight average, throughput measurement."""

from __future__ import annotations

import time

import pytorch_lightning as pl
import torch

from dpcdvae.models.schedule import BudgetClock, WeightEMA


class TimeBudget(pl.Callback):
    """Stop cleanly once the run has trained for its budget, or this invocation for its segment.

    The clock (:class:`~dpcdvae.models.schedule.BudgetClock`) is saved in every checkpoint, so the
    budget counts over all ``--resume`` invocations of a run and the schedule that reads its progress
    (:class:`~dpcdvae.models.lightning.DPCDVAEModule`) continues where it stopped. Under DDP the
    elapsed time of rank 0 is broadcast at every step, so every rank uses the same progress (the same
    learning rate) and stops at the same step.

    Args:
        minutes: the run's whole budget (None: no budget; the clock still measures).
        segment_minutes: stop this invocation after this long (``--resume`` continues).
        clock: share an existing clock (the training module reads the same one).
    """

    def __init__(self, minutes: float | None = None, segment_minutes: float | None = None,
                 clock: BudgetClock | None = None) -> None:
        self.clock = clock if clock is not None else BudgetClock(
            None if minutes is None else float(minutes) * 60.0,
            None if segment_minutes is None else float(segment_minutes) * 60.0)
        self.triggered = False
        self.now_s = 0.0

    @property
    def seconds(self) -> float | None:
        return self.clock.budget_s

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.clock.start()
        self.now_s = self.clock.elapsed_s()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = self.clock.elapsed_s()
        if trainer.world_size > 1:  # one progress for all ranks (same LR, same stop step)
            now = float(trainer.strategy.broadcast(now, src=0))
        self.now_s = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.clock.should_stop(self.now_s):
            self.triggered = True
            trainer.should_stop = True

    def on_train_end(self, trainer, pl_module) -> None:
        self.clock.stop()

    def state_dict(self) -> dict:
        return self.clock.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.clock.load_state_dict(state_dict)


class EMACallback(pl.Callback):
    """Keeps a :class:`~dpcdvae.models.schedule.WeightEMA` of ``pl_module.model`` from progress
    ``start`` on (progress as the module's schedule sees it), updated after every optimizer step and
    saved in checkpoints."""

    def __init__(self, decay: float, start: float = 0.0) -> None:
        self.ema = WeightEMA(decay)
        self.start = float(start)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        progress = getattr(pl_module, "progress", None)
        if progress is None or progress() >= self.start:
            self.ema.update(pl_module.model)

    def state_dict(self) -> dict:
        return self.ema.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict.get("shadow"):
            self.ema.load_state_dict(state_dict)


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
