"""``dpcdvae train-property``: train the formation-energy (property) predictor used by W(E)."""

from __future__ import annotations

import time
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from dpcdvae.atomic import atomic_write_text
from dpcdvae.config_schema import defaults
from dpcdvae.data.batch import CrystalBatch
from dpcdvae.data.cache import CrystalDataset, load_split
from dpcdvae.jsonio import dumps_strict
from dpcdvae.training.datamodule import DeviceLoader, holdout_split, train_subset
from dpcdvae.models.checkpoint import lightning_model_state, save_property_model
from dpcdvae.models.property import PropertyPredictor
from dpcdvae.safeload import load_weights_only

__all__ = ["train_property", "PropertyModule"]

# the default encoder of the property predictor: the schema defaults (configs/base.yaml) of these keys
_ENCODER_KEYS = ("cutoff", "max_neighbors", "hidden_channels", "num_blocks", "int_emb_size", "basis_emb_size",
                 "out_emb_channels", "num_spherical", "num_radial")
DEFAULT_ENCODER = {k: _v for k, _v in defaults()["model"]["encoder_cfg"].items() if k in _ENCODER_KEYS}


def _with_property(ds: CrystalDataset, col: int) -> CrystalDataset:
    keep = torch.isfinite(ds.props[:, col]).nonzero().squeeze(-1)
    if keep.numel() == 0:
        raise ValueError(f"split {ds.meta.get('split')} of {ds.meta.get('dataset')} has no values of "
                         f"{ds.prop_names[col]}; train on a split that has them (--train-split val)")
    return ds.subset(keep)


class PropertyModule(pl.LightningModule):
    """Thin training shell: MSE on the standardised target, MAE (property units) for validation."""

    def __init__(self, model: PropertyPredictor, col: int, lr: float, patience: int, train_ds: CrystalDataset,
                 val_ds: CrystalDataset, batch_size: int, seed: int) -> None:
        super().__init__()
        self.model, self.col, self.lr, self.patience = model, col, lr, patience
        self.train_ds, self.val_ds, self.batch_size, self.seed = train_ds, val_ds, batch_size, seed
        self.loader: DeviceLoader | None = None

    def _pred(self, b: CrystalBatch) -> torch.Tensor:
        return self.model.forward_scaled(b.frac_coords, b.atom_types, b.num_atoms, b.batch, b.lengths, b.angles)

    def training_step(self, b: CrystalBatch, idx: int) -> torch.Tensor:
        target = (b.props[:, self.col] - self.model.prop_mean) / self.model.prop_std
        loss = F.mse_loss(self._pred(b), target)
        if not bool(torch.isfinite(loss)):
            raise RuntimeError(f"non-finite property loss at step {self.global_step}; stopping")
        self.log("train_mse", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=b.num_graphs)
        return loss

    def validation_step(self, b: CrystalBatch, idx: int) -> None:
        pred = self._pred(b) * self.model.prop_std + self.model.prop_mean
        mae = (pred - b.props[:, self.col]).abs().mean()
        self.log("val_mae", mae, on_epoch=True, prog_bar=True, batch_size=b.num_graphs, sync_dist=True)

    def on_train_epoch_start(self) -> None:
        if self.loader is not None:
            self.loader.set_epoch(self.current_epoch)

    def train_dataloader(self) -> DeviceLoader:
        self.loader = DeviceLoader(self.train_ds.to(self.device), self.batch_size, shuffle=True, seed=self.seed,
                                   drop_last=len(self.train_ds) > self.batch_size,
                                   rank=self.global_rank, world_size=self.trainer.world_size)
        return self.loader

    def val_dataloader(self) -> DeviceLoader:
        return DeviceLoader(self.val_ds.to(self.device), 512, shuffle=False)

    def configure_optimizers(self):
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.6, patience=self.patience, min_lr=1e-5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val_mae"}}


@torch.no_grad()
def _mae(model: PropertyPredictor, ds: CrystalDataset, col: int, device: torch.device) -> float:
    model.eval().to(device)
    ds = ds.to(device)
    err, n = 0.0, 0
    for b in ds.iter_batches(512):
        pred = model(b.frac_coords, b.atom_types, b.num_atoms, b.batch, b.lengths, b.angles)
        err += float((pred - b.props[:, col]).abs().sum())
        n += b.num_graphs
    return err / max(n, 1)


def train_property(
    dataset: str,
    out: Path | str,
    cache_dir: Path | str | None = None,
    train_split: str | None = None,
    max_minutes: float | None = 8.0,
    max_epochs: int = 1000,
    batch_size: int = 256,
    lr: float = 1e-3,
    holdout_fraction: float = 0.1,
    encoder_cfg: dict | None = None,
    seed: int = 42,
    limit: int | None = None,
    devices: int = 1,
    progress: bool = True,
) -> dict:
    """Train the property predictor of ``dataset`` on its property column and report the test MAE.

    The training split defaults to ``train`` where it has property values; ours of mp_20 has none and
    carbon_24 has no train split, so those train on ``val`` (the label says ``(val-trained)``). With a
    separate val split available it is used for early stopping / LR; otherwise ``holdout_fraction`` of
    the training split is held out. Writes ``out/property.pt`` (self-contained) and ``out/summary.json``.
    """
    from pytorch_lightning.callbacks import ModelCheckpoint
    from pytorch_lightning.loggers import CSVLogger

    from dpcdvae.data.datasets import get_dataset
    from dpcdvae.training.callbacks import TimeBudget

    info = get_dataset(dataset)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pl.seed_everything(seed, verbose=False)
    if train_split is None:
        train_split = "train" if dataset == "perov_5" else "val"
    full = load_split(cache_dir, dataset, train_split)
    col = full.prop_names.index(info.prop)
    full = _with_property(full, col)
    if train_split == "train":
        train_ds, val_ds = full, _with_property(load_split(cache_dir, dataset, "val"), col)
        val_desc = "val"
    else:
        train_ds, val_ds = holdout_split(full, holdout_fraction, seed)
        val_desc = f"{holdout_fraction:.0%} of {train_split} held out"
    if limit:
        train_ds, val_ds = train_subset(train_ds, limit), train_subset(val_ds, max(1, limit // 4))
    y = train_ds.props[:, col]
    enc = dict(DEFAULT_ENCODER, **(encoder_cfg or {}))
    model = PropertyPredictor(enc, 256, 1, info.max_atoms, float(y.mean()), float(y.std(unbiased=False)) + 1e-5)
    module = PropertyModule(model, col, lr, 20, train_ds, val_ds, batch_size, seed)
    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_mae", mode="min", save_top_k=1)
    callbacks: list = [best]
    if max_minutes:
        callbacks.append(TimeBudget(max_minutes))
    trainer = pl.Trainer(accelerator="auto", devices=devices, max_epochs=max_epochs, logger=CSVLogger(str(out), name="logs", version=0),
                         callbacks=callbacks, enable_progress_bar=progress, enable_model_summary=False,
                         num_sanity_val_steps=0, use_distributed_sampler=False,
                         precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
                         gradient_clip_val=0.5, gradient_clip_algorithm="value")
    t0 = time.monotonic()
    trainer.fit(module)
    minutes = (time.monotonic() - t0) / 60
    if best.best_model_path:
        model.load_state_dict(lightning_model_state(load_weights_only(best.best_model_path, "checkpoint")))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    test = _with_property(load_split(cache_dir, dataset, "test"), col)
    summary = {
        "dataset": dataset, "label": f"{dataset} ({train_split}-trained)" if train_split != "train" else dataset,
        "property": info.prop, "train_split": train_split, "n_train": len(train_ds), "validation": val_desc,
        "n_val": len(val_ds), "epochs": int(trainer.current_epoch), "minutes": minutes,
        "val_mae": _mae(model, val_ds, col, device), "test_mae": _mae(model, test, col, device),
        "n_test": len(test), "target_std": float(y.std(unbiased=False)),
    }
    meta = {"encoder_cfg": enc, "hidden_dim": 256, "fc_num_layers": 1, "max_atoms": info.max_atoms, **summary}
    save_property_model(out / "property.pt", model, meta)
    atomic_write_text(out / "summary.json", dumps_strict(summary) + "\n")
    return summary
