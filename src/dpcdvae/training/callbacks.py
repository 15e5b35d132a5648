"""Training callbacks: the run's wall-clock budget, the weight average, throughput measurement."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_warn

from dpcdvae.training.schedule import BudgetClock, WeightEMA


class TimeBudget(pl.Callback):
    """Stop cleanly once the run has trained for its budget, or this invocation for its segment.

    The clock (:class:`~dpcdvae.training.schedule.BudgetClock`) is saved in every checkpoint, so the
    budget counts over all ``--resume`` invocations of a run and the schedule that reads its progress
    (:class:`~dpcdvae.training.lightning.DPCDVAEModule`) continues where it stopped. Under DDP the
    elapsed time of rank 0 is broadcast at every step, so every rank uses the same progress (the same
    learning rate) and stops at the same step.

    Exact resume of a stop inside an epoch (``stop_checkpoint`` given): Lightning, told to stop
    mid-epoch, would still validate on the partial epoch and close it, so a checkpoint written after
    ``fit`` marks that epoch finished and ``--resume`` starts the next one (the rest of the epoch is
    never trained). Instead, at the stop batch this callback

    1. writes ``stop_checkpoint`` right there, in ``on_train_batch_end``: Lightning's own mid-epoch
       checkpoint form (the one ``ModelCheckpoint(every_n_train_steps=...)`` writes), with the epoch,
       the batches done in it, the global step, the optimizer, the weight average (this callback runs
       after :class:`EMACallback`) and the clock at the stop. The training loader
       (:class:`~dpcdvae.training.datamodule.DeviceLoader`) is stateful, so the checkpoint also holds its
       position ``{epoch, batches_done}``;
    2. skips the validation that ``should_stop`` would run on the partial epoch (so the partial epoch
       neither logs a ``val_loss`` nor feeds the plateau scheduler or ``best.ckpt``).

    The caller (:func:`~dpcdvae.training.train.train`) then installs ``stop_checkpoint`` as
    ``last.ckpt`` instead of saving the finished-looking state after ``fit``. ``--resume`` from it
    restarts the *same* epoch: ``trainer.current_epoch`` is the stopped epoch, the loader draws the same
    permutation and skips the batches already done, ``global_step`` continues, and the epoch then ends
    (validation, plateau step) exactly where an uninterrupted run's would. A stop on the last batch of
    an epoch is an ordinary epoch end (validated, saved after ``fit``, resumed at the next epoch).
    ``stop`` in :meth:`state_dict` records the stop position; a resume checks it at its first batch.
    The state also holds torch's random generators (CPU, and the current CUDA device's) at the save and
    a resume restores them, so the noise draws continue too and a resumed run repeats the uninterrupted
    one step for step (where the kernels are deterministic). Every rank starts from the same seed
    (``seed_everything``), so rank 0's state, the one in the checkpoint, is every rank's.

    Args:
        minutes: the run's whole budget (None: no budget; the clock still measures).
        segment_minutes: stop this invocation after this long (``--resume`` continues).
        clock: share an existing clock (the training module reads the same one).
        stop_checkpoint: where to write the mid-epoch state at a stop inside an epoch (None: stop as
            Lightning does, validating and closing the partial epoch).
    """

    def __init__(self, minutes: float | None = None, segment_minutes: float | None = None,
                 clock: BudgetClock | None = None, stop_checkpoint: str | Path | None = None) -> None:
        self.clock = clock if clock is not None else BudgetClock(
            None if minutes is None else float(minutes) * 60.0,
            None if segment_minutes is None else float(segment_minutes) * 60.0)
        self.triggered = False
        self.now_s = 0.0
        self.stop_checkpoint = Path(stop_checkpoint) if stop_checkpoint is not None else None
        self.stop: dict | None = None      # {"epoch", "batches_done", "global_step"} of a mid-epoch stop
        self.stopped_mid_epoch = False     # this invocation wrote stop_checkpoint
        self.resumed_from: dict | None = None  # the stop position read from the checkpoint
        self._rng: dict | None = None          # random generator states read from the checkpoint

    @property
    def seconds(self) -> float | None:
        return self.clock.budget_s

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._rng is not None:
            rng, self._rng = self._rng, None
            if isinstance(rng.get("cpu"), torch.Tensor):
                torch.set_rng_state(rng["cpu"].cpu())
            if isinstance(rng.get("cuda"), torch.Tensor) and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"].cpu())
        self.clock.start()
        self.now_s = self.clock.elapsed_s()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.resumed_from is not None:
            want, self.resumed_from = self.resumed_from, None
            got = {"epoch": int(trainer.current_epoch), "batches_done": int(batch_idx),
                   "global_step": int(trainer.global_step)}
            if any(got[k] != int(want.get(k, -1)) for k in got):
                rank_zero_warn(f"--resume: the run stopped at {want} but continues at {got}; the resumed "
                               "run is not an exact continuation")
        now = self.clock.elapsed_s()
        if trainer.world_size > 1:  # one progress for all ranks (same LR, same stop step)
            now = float(trainer.strategy.broadcast(now, src=0))
        self.now_s = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.clock.should_stop(self.now_s):
            return
        self.triggered = True
        trainer.should_stop = True
        done = int(batch_idx) + 1  # batches of this epoch done, this one included
        if self.stop_checkpoint is None or done >= int(trainer.num_training_batches):
            return  # no snapshot wanted, or the epoch ends here anyway
        # no validation on the partial epoch (Lightning's flag, consumed by the epoch loop right after)
        trainer.fit_loop.epoch_loop._skip_next_val = True
        self.stop = {"epoch": int(trainer.current_epoch), "batches_done": done,
                     "global_step": int(trainer.global_step)}
        trainer.save_checkpoint(self.stop_checkpoint)  # every rank calls it (rank 0 writes)
        self.stopped_mid_epoch = True

    def on_train_end(self, trainer, pl_module) -> None:
        self.clock.stop()

    def state_dict(self) -> dict:
        state = self.clock.state_dict()
        state["rng"] = {"cpu": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_initialized() else None}
        if self.stop is not None:
            state["stop"] = dict(self.stop)
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self.clock.load_state_dict(state_dict)
        stop = state_dict.get("stop")
        self.resumed_from = dict(stop) if isinstance(stop, dict) else None
        rng = state_dict.get("rng")
        self._rng = dict(rng) if isinstance(rng, dict) else None


class EMACallback(pl.Callback):
    """Keeps a :class:`~dpcdvae.training.schedule.WeightEMA` of ``pl_module.model`` from progress
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
    """Crystals per second of training steps (data loading and validation included), after ``warmup``
    steps, and peak GPU memory. ``crystals_per_s_second_half`` is the rate over the second half of the
    timed steps (host clock at each step's end): it leaves out compiles of late shape buckets
    (``train.cuda_graphs``) and start-up, i.e. the steady state."""

    def __init__(self, warmup: int = 10) -> None:
        self.warmup = warmup
        self.steps = 0
        self.crystals = 0
        self.atoms = 0
        self.t0: float | None = None
        self.elapsed = 0.0
        self.marks: list[tuple[float, int]] = []  # (host time, crystals so far) after each timed step

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
            self.marks.append((time.perf_counter(), self.crystals))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.t0 is not None:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.elapsed = time.perf_counter() - self.t0

    def summary(self) -> dict:
        rate = self.crystals / self.elapsed if self.elapsed > 0 else float("nan")
        peak = torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else None
        half = float("nan")
        if len(self.marks) >= 4:
            (t_a, c_a), (t_b, c_b) = self.marks[len(self.marks) // 2], self.marks[-1]
            half = (c_b - c_a) / (t_b - t_a) if t_b > t_a else float("nan")
        return {"crystals_per_s": rate, "crystals_per_s_second_half": half,
                "timed_steps": max(0, self.steps - self.warmup), "timed_seconds": self.elapsed,
                "peak_gpu_mem_gib": peak}
