"""Thin PyTorch Lightning shell around :class:`~dpcdvae.models.dpcdvae.DPCDVAE`: steps, optimiser,
LR schedule and logging. All math lives in the plain module."""

from __future__ import annotations

import math

import pytorch_lightning as pl
import torch

from dpcdvae.data.batch import CrystalBatch
from dpcdvae.models.dpcdvae import LOSS_KEYS, DPCDVAE

__all__ = ["DPCDVAEModule", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """Raised when a training loss becomes NaN or Inf."""


class DPCDVAEModule(pl.LightningModule):
    """Training shell.

    Args:
        model: the DP-CDVAE module.
        config: the full run config (saved in every checkpoint as ``hyper_parameters['config']``).
    """

    def __init__(self, model: DPCDVAE, config: dict) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.save_hyperparameters({"config": config})
        self.tcfg = config["train"]

    def _flags(self) -> tuple[bool, float]:
        epoch = self.current_epoch
        teacher = epoch < int(self.tcfg["teacher_forcing_max_epoch"])
        mult = float(self.config["model"]["loss"]["mul_cost_coord"]) if epoch >= int(self.tcfg["mul_cost_coord_epoch"]) else 1.0
        return teacher, mult

    def on_train_batch_start(self, batch: CrystalBatch, batch_idx: int) -> None:
        """Linear LR warm-up over ``train.warmup_steps`` (not in the reference: it removes the loss
        spikes that Adam's first, sign-like updates cause in the 548-wide denoiser)."""
        warmup = int(self.tcfg.get("warmup_steps", 0) or 0)
        if warmup and self.global_step < warmup:
            scale = (self.global_step + 1) / warmup
            for group in self.optimizers().optimizer.param_groups:
                group["lr"] = float(self.tcfg["lr"]) * scale

    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        loader = getattr(dm, "train_loader", None)
        if loader is not None:
            loader.epoch = self.current_epoch

    def training_step(self, batch: CrystalBatch, batch_idx: int) -> torch.Tensor:
        teacher, mult = self._flags()
        out = self.model(batch, teacher_forcing=teacher, coord_multiplier=mult)
        loss = out["loss"]
        if not bool(torch.isfinite(loss)):
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

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.model.parameters(), lr=float(self.tcfg["lr"]), betas=(0.9, 0.999), eps=1e-8)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode="min", factor=float(self.tcfg["lr_factor"]), patience=int(self.tcfg["lr_patience"]),
            min_lr=float(self.tcfg["min_lr"]),
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_loss", "interval": "epoch",
                                                   "frequency": int(self.tcfg["check_val_every_n_epoch"])}}
