"""Thin PyTorch Lightning shell around :class:`~dpcdvae.models.dpcdvae.DPCDVAE`: steps, optimiser,
LR schedule (:mod:`dpcdvae.training.schedule`) and logging. All math lives in the plain module."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from dpcdvae.data.batch import CrystalBatch
from dpcdvae.models.dpcdvae import LOSS_KEYS, DPCDVAE
from dpcdvae.training.callbacks import TimeBudget
from dpcdvae.training.schedule import coord_multiplier, cosine_lr, warmup_factor

__all__ = ["DPCDVAEModule", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss becomes NaN or Inf."""


class DPCDVAEModule(pl.LightningModule):
    """Training shell.

    Args:
        model: the DP-CDVAE module.
        config: the full run config (saved in every checkpoint as ``hyper_parameters['config']``).
        budget: the run's :class:`~dpcdvae.training.callbacks.TimeBudget` (its clock gives the progress of
            a time-budgeted run; None: progress counts optimizer steps of ``max_epochs``).
        max_atoms: the training split's largest cell, the crystal-size bound of the static-shape step
            (``train.static_shapes``; None: ``data.max_atoms``).
        fixed_atoms: the one atom bucket of ``train.static_atom_sigmas`` (None: buckets by multiples).
    """

    def __init__(self, model: DPCDVAE, config: dict, budget: TimeBudget | None = None,
                 max_atoms: int | None = None, fixed_atoms: int | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.save_hyperparameters({"config": config})
        self.tcfg = config["train"]
        self.budget = budget  # the run's TimeBudget callback (also in the trainer's callbacks)
        self._progress_now: float | None = None
        self.lr_scale = 1.0  # lowered by the divergence guard (training/guard.py); saved in checkpoints
        self.static_step = None  # train.static_shapes: padded, host-sync-free losses (training/static_step.py)
        if self.tcfg.get("static_shapes"):
            from dpcdvae.training.static_step import StaticStep

            self.static_step = StaticStep.from_config(model, self.tcfg, max_atoms, fixed_atoms)

    def progress(self) -> float:
        """Progress p in [0, 1] of the run: of its time budget (``train.max_minutes``, counted over
        ``--resume``) when it has one, else of its optimizer steps (``train.max_epochs``)."""
        if self.budget is not None and self.budget.clock.budget_s is not None:
            return float(self.budget.clock.fraction(self.budget.now_s))
        try:
            total = float(self.trainer.estimated_stepping_batches)
        except Exception:  # noqa: BLE001 - no trainer attached (direct use of the module)
            return 0.0
        return min(1.0, self.global_step / total) if math.isfinite(total) and total > 0 else 0.0

    def _flags(self, progress: float) -> tuple[bool, float]:
        """(teacher forcing?, coordinate-loss multiplier) at this point of the schedule (module doc of
        :mod:`dpcdvae.training.schedule`)."""
        tc = self.tcfg
        epoch = self.current_epoch
        tf_frac = tc.get("teacher_forcing_fraction")
        teacher = progress < float(tf_frac) if tf_frac is not None else epoch < int(tc["teacher_forcing_max_epoch"])
        mc_frac = tc.get("mul_cost_coord_fraction")
        full = float(self.config["model"]["loss"]["mul_cost_coord"])
        if mc_frac is not None:
            return teacher, coord_multiplier(progress, float(mc_frac), full, float(tc.get("mul_cost_coord_ramp") or 0.0))
        return teacher, full if epoch >= int(tc["mul_cost_coord_epoch"]) else 1.0

    def on_train_batch_start(self, batch: CrystalBatch, batch_idx: int) -> None:
        """Set this step's learning rate: linear warm-up over ``train.warmup_steps`` optimizer steps
        (not in the reference: it removes the loss spikes that Adam's first, sign-like updates cause in
        the 548-wide denoiser), then cosine annealing over the budget (``lr_schedule: cosine``) or the
        plateau scheduler's value (``plateau``)."""
        tc = self.tcfg
        p = self.progress()
        self._progress_now = p
        w = warmup_factor(self.global_step, int(tc.get("warmup_steps", 0) or 0))
        sched = tc.get("lr_schedule", "plateau")
        if sched == "plateau" and w >= 1.0:
            return  # ReduceLROnPlateau owns the LR after warm-up
        peak = float(tc["lr"]) * self.lr_scale
        lr = cosine_lr(p, peak, min(peak, float(tc["min_lr"]))) if sched == "cosine" else peak
        for group in self.optimizers().optimizer.param_groups:
            group["lr"] = lr * w

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["lr_scale"] = float(self.lr_scale)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.lr_scale = float(checkpoint.get("lr_scale", 1.0))

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        loader = getattr(dm, "train_loader", None)
        if loader is not None:
            loader.set_epoch(self.current_epoch)

    def on_train_epoch_end(self) -> None:
        """Step the plateau scheduler at the end of an epoch that was resumed in its middle.

        Lightning skips plateau schedulers at the end of the epoch a checkpoint restarted in (the metric
        they read was not saved), but a mid-epoch ``--resume`` (:class:`~dpcdvae.training.callbacks.TimeBudget`)
        validates that epoch in full, as the uninterrupted run does; stepping here keeps the LR schedule of
        the resumed run equal to the uninterrupted one. (Called before the loop's own step, which does
        not run while restarting, so no epoch is stepped twice.)"""
        trainer = self.trainer
        loop = trainer.fit_loop
        if not loop.restarting or trainer.num_training_batches == float("inf"):
            return
        if "val_loss" not in trainer.callback_metrics:  # this epoch was not validated (in this invocation)
            return
        if loop.epoch_loop.batch_progress.current.ready >= trainer.num_training_batches:  # a whole epoch
            loop.epoch_loop.update_lr_schedulers("epoch", update_plateau_schedulers=True)

    def training_step(self, batch: CrystalBatch, batch_idx: int) -> torch.Tensor:
        teacher, mult = self._flags(self._progress_now if self._progress_now is not None else self.progress())
        if self.static_step is not None:
            out, nonfinite = self.static_step(batch, teacher, mult)
            self.log("static_fallbacks", float(self.static_step.fallbacks), on_step=False, on_epoch=True,
                     reduce_fx="max", batch_size=batch.num_graphs)
        else:
            out = self.model(batch, teacher_forcing=teacher, coord_multiplier=mult)
            nonfinite = not bool(torch.isfinite(out["loss"]))
        loss = out["loss"]
        if nonfinite:
            bad = [k for k in LOSS_KEYS if not math.isfinite(float(out[k]))]
            raise NonFiniteLossError(
                f"non-finite training loss at epoch {self.current_epoch}, step {self.global_step} "
                f"(terms: {', '.join(bad) or 'total'}); stopping. Lower train.lr or check the data; "
                "the last good checkpoint is kept."
            )
        bsz = batch.num_graphs
        self.log("train_loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=bsz)
        self.log_dict({f"train_{k}": out[k] for k in LOSS_KEYS}, on_step=False, on_epoch=True, batch_size=bsz,
                      sync_dist=True)
        return loss

    def validation_step(self, batch: CrystalBatch, batch_idx: int) -> None:
        out = self.model(batch, teacher_forcing=False, coord_multiplier=1.0)
        bsz = batch.num_graphs
        self.log("val_loss", out["val_criterion"], on_epoch=True, prog_bar=True, batch_size=bsz, sync_dist=True)
        self.log_dict({f"val_{k}": out[k] for k in LOSS_KEYS}, on_epoch=True, batch_size=bsz, sync_dist=True)

    def on_before_optimizer_step(self, optimizer) -> None:
        """Clip every gradient element to +-``train.grad_clip_value`` (the reference's clipping by
        value). Done here rather than by the Trainer, whose clipping refuses fused optimizers."""
        clip = float(self.tcfg.get("grad_clip_value") or 0.0)
        if clip > 0:
            torch.nn.utils.clip_grad_value_(self.model.parameters(), clip)

    def configure_optimizers(self):
        tc = self.tcfg
        kwargs = {}
        if tc.get("fused_adam") and torch.cuda.is_available():
            kwargs["fused"] = True
        opt = torch.optim.Adam(self.model.parameters(), lr=float(tc["lr"]), betas=(0.9, 0.999), eps=1e-8, **kwargs)
        sched = tc.get("lr_schedule", "plateau")
        if sched == "cosine":
            return opt  # the LR is set every step in on_train_batch_start
        if sched != "plateau":
            raise ValueError(f"train.lr_schedule must be 'cosine' or 'plateau', got {sched!r}")
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=float(tc["lr_factor"]), patience=int(tc["lr_patience"]),
            min_lr=float(tc["min_lr"]),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss", "interval": "epoch",
                                                   "frequency": int(tc["check_val_every_n_epoch"])}}
