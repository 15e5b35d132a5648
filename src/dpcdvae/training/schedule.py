"""Training for a budget: the budget clock, the learning-rate schedule and a weight average.

A run is given a budget (``train.max_minutes``, wall-clock minutes of ``trainer.fit``, carried
across ``--resume``) or, without one, its epochs (``train.max_epochs``). Everything that the paper
schedules by epoch is scheduled here by the *progress* p in [0, 1] of that budget:

- learning rate (``train.lr_schedule``):
    ``cosine``:  lr(p, step) = w(step) * (min_lr + (lr - min_lr) * (1 + cos(pi p)) / 2),
                 w(step) = min(1, (step + 1) / warmup_steps)  (linear warm-up in optimizer steps);
    ``plateau``: the reference's ReduceLROnPlateau on the validation loss (factor, patience, min_lr),
                 with the same linear warm-up; p is not used.
- teacher forcing while p < ``teacher_forcing_fraction`` (the paper: 400 of 3000 epochs = 0.133);
- the x``mul_cost_coord`` coordinate-loss weight once p >= ``mul_cost_coord_fraction`` (null = never),
  reached linearly over ``mul_cost_coord_ramp`` of the budget (0 = the reference's step switch; a step
  from 1 to 10 makes Adam's first moment jump while its second moment lags, and one such switch early
  in a run blew the loss up, RESULTS.md).

With ``*_fraction`` null the epoch keys (``teacher_forcing_max_epoch``, ``mul_cost_coord_epoch``) apply,
which reproduces the reference schedule (preset ``perov_5_paper``).

:class:`WeightEMA` is an exponential moving average of the weights, started at progress
``train.ema_start`` with the warmed-up decay min(decay, (1 + n) / (10 + n)) after n updates, so no
weight from before the start (in particular no early, random-ish weight) enters the average.
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor, nn

__all__ = ["BudgetClock", "cosine_lr", "warmup_factor", "coord_multiplier", "WeightEMA", "ema_state_dict"]


class BudgetClock:
    """Wall-clock seconds trained by a run, over all of its invocations (``--resume``).

    Args:
        budget_s: the run's whole budget in seconds (None: no time budget).
        segment_s: stop *this invocation* after this many seconds (None: only the budget stops it);
            a later ``--resume`` continues the same budget and schedule.
    """

    def __init__(self, budget_s: float | None, segment_s: float | None = None) -> None:
        self.budget_s = float(budget_s) if budget_s else None
        self.segment_s = float(segment_s) if segment_s else None
        self.carried_s = 0.0  # seconds trained by earlier invocations (from the checkpoint)
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.monotonic()

    def stop(self) -> None:
        """Freeze the clock (end of an invocation): later reads no longer grow."""
        self.carried_s = self.elapsed_s()
        self._t0 = None

    def this_call_s(self) -> float:
        return 0.0 if self._t0 is None else time.monotonic() - self._t0

    def elapsed_s(self) -> float:
        """Seconds trained so far by the whole run."""
        return self.carried_s + self.this_call_s()

    def fraction(self, elapsed_s: float | None = None) -> float | None:
        """Progress of the budget in [0, 1] (None without a time budget)."""
        if self.budget_s is None:
            return None
        e = self.elapsed_s() if elapsed_s is None else elapsed_s
        return min(1.0, max(0.0, e / self.budget_s))

    def should_stop(self, elapsed_s: float | None = None) -> bool:
        e = self.elapsed_s() if elapsed_s is None else elapsed_s
        if self.budget_s is not None and e >= self.budget_s:
            return True
        return self.segment_s is not None and self._t0 is not None and (e - self.carried_s) >= self.segment_s

    def state_dict(self) -> dict:
        return {"elapsed_s": float(self.elapsed_s()), "budget_s": self.budget_s}

    def load_state_dict(self, state: dict) -> None:
        self.carried_s = float(state.get("elapsed_s", 0.0))


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warm-up factor in (0, 1] for optimizer step ``step`` (0-based)."""
    if warmup_steps <= 0:
        return 1.0
    return min(1.0, (step + 1) / warmup_steps)


def cosine_lr(progress: float, lr: float, min_lr: float) -> float:
    """Cosine annealing from ``lr`` (progress 0) to ``min_lr`` (progress 1)."""
    p = min(1.0, max(0.0, float(progress)))
    return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * p))


def coord_multiplier(progress: float, start: float, mult: float, ramp: float = 0.0) -> float:
    """Coordinate-loss multiplier at ``progress``: 1 before ``start``, then linear from 1 to ``mult`` over
    ``ramp`` (a fraction of the budget; 0 = switch at once), ``mult`` after."""
    p = float(progress)
    if p < start:
        return 1.0
    if ramp <= 0.0:
        return float(mult)
    return 1.0 + (float(mult) - 1.0) * min(1.0, (p - start) / float(ramp))


class WeightEMA:
    """Exponential moving average of a module's floating-point parameters (fp32 shadow copies).

    Args:
        decay: the target decay (e.g. 0.999); the n-th update uses min(decay, (1 + n) / (10 + n)).
    """

    def __init__(self, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow: dict[str, Tensor] = {}

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        params = {k: p for k, p in module.named_parameters() if p.is_floating_point()}
        if not self.shadow:
            self.shadow = {k: p.detach().float().clone() for k, p in params.items()}
            self.num_updates = 1
            return
        d = self.current_decay()
        first = next(iter(params.values()))
        if next(iter(self.shadow.values())).device != first.device:  # restored from a CPU checkpoint
            self.shadow = {k: v.to(first.device) for k, v in self.shadow.items()}
        keys = list(self.shadow)
        shadow = [self.shadow[k] for k in keys]
        live = [params[k].detach().float() for k in keys]
        torch._foreach_lerp_(shadow, live, 1.0 - d)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"decay": self.decay, "num_updates": self.num_updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state: dict) -> None:
        self.decay = float(state["decay"])
        self.num_updates = int(state["num_updates"])
        self.shadow = {k: v.float() for k, v in state["shadow"].items()}


def ema_state_dict(module: nn.Module, ema: WeightEMA, prefix: str = "") -> dict[str, Tensor]:
    """``module.state_dict()`` with the parameters whose name starts with ``prefix`` ("" = all,
    "denoiser." = the denoiser only) replaced by their averages (buffers stay as they are)."""
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for key, avg in ema.shadow.items():
        if key.startswith(prefix) and key in state:
            state[key] = avg.to(state[key].dtype).to(state[key].device)
    return state
