"""Roll a budget run back when it diverges, instead of spending the rest of the budget on a broken model.

A run at too high a learning rate can diverge within a few steps and never recover (RESULTS.md, the
batch-2048 run at LR 2e-3: the validation KL jumped from 35 to 3,006 at 18 % of the budget and the type
loss stayed at ~40 for the rest of the call). :class:`DivergenceGuard` keeps an in-memory copy of the
weights, the optimizer state and the weight average at the best validation so far; when a validation
loss is not finite or exceeds ``factor`` x the best, it restores that copy and multiplies the run's peak
learning rate by ``lr_scale`` (``DPCDVAEModule.lr_scale``, saved in checkpoints). The validation
criterion (coordinate + type loss, without the x10 coordinate weight) is comparable over the whole run.
"""

from __future__ import annotations

import copy
import math

import pytorch_lightning as pl
import torch

__all__ = ["DivergenceGuard"]


def _clone(obj):
    """A detached copy of a (nested) state dict, tensors cloned on their device."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_clone(v) for v in obj)
    return copy.deepcopy(obj)


class DivergenceGuard(pl.Callback):
    """Restore the best state and lower the LR when the validation loss blows up.

    Args:
        factor: a validation loss > ``factor`` x the best so far (or not finite) counts as divergence.
        lr_scale: multiply the run's peak LR by this at each roll-back (0 < lr_scale <= 1).
        ema: the run's :class:`~dpcdvae.training.schedule.WeightEMA` (restored with the weights), if any.
    """

    def __init__(self, factor: float = 1.5, lr_scale: float = 0.7, ema=None) -> None:
        if not factor > 1.0:
            raise ValueError(f"divergence factor must be > 1, got {factor}")
        if not 0.0 < lr_scale <= 1.0:
            raise ValueError(f"divergence lr_scale must be in (0, 1], got {lr_scale}")
        self.factor = float(factor)
        self.lr_scale = float(lr_scale)
        self.ema = ema
        self.best: float | None = None
        self.rollbacks: list[dict] = []
        self._snapshot: dict | None = None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get("val_loss")
        if value is None:
            return
        v = float(value)
        if self.best is not None and (not math.isfinite(v) or v > self.factor * self.best):
            if self._snapshot is not None:
                self._restore(trainer, pl_module, v)
            return
        if math.isfinite(v) and (self.best is None or v < self.best):
            self.best = v
            self._snapshot = {
                "model": _clone(pl_module.model.state_dict()),
                "optimizers": [_clone(opt.state_dict()) for opt in trainer.optimizers],
                "ema": _clone(self.ema.state_dict()) if self.ema is not None and self.ema.shadow else None,
                "epoch": int(trainer.current_epoch), "step": int(trainer.global_step),
            }

    def _restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule, v: float) -> None:
        snap = self._snapshot
        pl_module.model.load_state_dict(snap["model"])
        for opt, state in zip(trainer.optimizers, snap["optimizers"]):
            opt.load_state_dict(_clone(state))
        if self.ema is not None:
            if snap["ema"] is not None:
                self.ema.load_state_dict(_clone(snap["ema"]))
            else:  # the average had not started at the snapshot: start it afresh
                self.ema.shadow, self.ema.num_updates = {}, 0
        old = float(getattr(pl_module, "lr_scale", 1.0))
        pl_module.lr_scale = old * self.lr_scale
        for opt in trainer.optimizers:  # the plateau scheduler owns the LR there: scale it too
            for group in opt.param_groups:
                group["lr"] = group["lr"] * self.lr_scale
        event = {"epoch": int(trainer.current_epoch), "step": int(trainer.global_step), "val_loss": v,
                 "best": self.best, "restored_epoch": snap["epoch"], "restored_step": snap["step"],
                 "lr_scale": pl_module.lr_scale}
        self.rollbacks.append(event)
        rank_zero = getattr(trainer, "is_global_zero", True)
        if rank_zero:
            print(f"divergence: val_loss {v:.4g} > {self.factor:g} x best {self.best:.4g} at epoch {event['epoch']}; "
                  f"restored the state of epoch {snap['epoch']} (step {snap['step']}), peak LR x{pl_module.lr_scale:.3g}",
                  flush=True)

    def state_dict(self) -> dict:
        return {"best": self.best, "rollbacks": list(self.rollbacks)}

    def load_state_dict(self, state: dict) -> None:
        self.rollbacks = list(state.get("rollbacks", []))
        # the in-memory snapshot does not survive a restart: the first validation after --resume sets it
        self.best = None
