"""The divergence guard: a blown-up validation loss restores the best weights, optimizer state and weight
average, and lowers the run's peak learning rate."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from dpcdvae.training.schedule import WeightEMA
from dpcdvae.training.guard import DivergenceGuard


def _fake(model: nn.Module, opt: torch.optim.Optimizer):
    trainer = SimpleNamespace(callback_metrics={}, optimizers=[opt], sanity_checking=False, current_epoch=0,
                              global_step=0, is_global_zero=True)
    module = SimpleNamespace(model=model, lr_scale=1.0)
    return trainer, module


def _step(model, opt):
    opt.zero_grad()
    model(torch.ones(3, 2)).pow(2).sum().backward()
    opt.step()


def test_guard_restores_best_state_and_scales_lr():
    torch.manual_seed(0)
    model = nn.Linear(2, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    ema = WeightEMA(0.9)
    guard = DivergenceGuard(factor=1.5, lr_scale=0.7, ema=ema)
    trainer, module = _fake(model, opt)

    def validate(v, epoch):
        trainer.current_epoch, trainer.global_step = epoch, 10 * epoch
        trainer.callback_metrics["val_loss"] = torch.tensor(v)
        guard.on_validation_end(trainer, module)

    _step(model, opt); ema.update(model)
    validate(1.0, 1)
    _step(model, opt); ema.update(model)
    validate(0.9, 2)  # new best: snapshot of this state
    best_w = model.weight.detach().clone()
    best_m = opt.state_dict()["state"][0]["exp_avg"].clone()
    best_ema = ema.shadow["weight"].clone()
    validate(1.2, 3)  # worse but within the factor: nothing happens
    assert not guard.rollbacks and module.lr_scale == 1.0
    for _ in range(3):
        _step(model, opt); ema.update(model)
    with torch.no_grad():
        model.weight.mul_(100.0)
    validate(50.0, 4)  # diverged
    assert torch.equal(model.weight, best_w)
    assert torch.equal(opt.state_dict()["state"][0]["exp_avg"], best_m)
    assert torch.equal(ema.shadow["weight"], best_ema)
    assert module.lr_scale == pytest.approx(0.7)
    assert opt.param_groups[0]["lr"] == pytest.approx(7e-3)
    assert guard.rollbacks[0]["restored_epoch"] == 2 and guard.rollbacks[0]["epoch"] == 4
    validate(float("nan"), 5)  # a non-finite loss is a divergence too
    assert module.lr_scale == pytest.approx(0.49) and len(guard.rollbacks) == 2
    assert torch.equal(model.weight, best_w)
    assert json.loads(json.dumps(guard.state_dict()))["best"] == pytest.approx(0.9)


def test_guard_bad_arguments():
    with pytest.raises(ValueError, match="factor"):
        DivergenceGuard(factor=1.0)
    with pytest.raises(ValueError, match="lr_scale"):
        DivergenceGuard(lr_scale=0.0)


def test_budget_run_rolls_back_a_blown_validation(prepared_cache, tmp_path, monkeypatch):
    """Wiring through ``train()``: one validation reports a huge loss; the run rolls back once, records it
    in train_summary.json, keeps training at the lower LR and ends with finite weights."""
    from dpcdvae.models.checkpoint import load_model_file
    from dpcdvae.training import lightning
    from dpcdvae.training.train import train

    real = lightning.DPCDVAEModule.validation_step

    def spiky(self, batch, batch_idx):
        if self.current_epoch == 3:
            self.log("val_loss", torch.tensor(1e6), on_epoch=True, prog_bar=True, batch_size=batch.num_graphs,
                     sync_dist=True)
            return None
        return real(self, batch, batch_idx)

    monkeypatch.setattr(lightning.DPCDVAEModule, "validation_step", spiky)
    out = tmp_path / "run"
    r = train(config="tiny", out=out, cache_dir=prepared_cache, limit=64, progress=False,
              overrides=["train.max_epochs=6", "train.divergence_factor=1.5", "train.divergence_lr_scale=0.5",
                         "train.lr_schedule=cosine", "train.min_lr=1.0e-5"])
    assert r.divergence_rollbacks == 1
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["divergence_rollbacks"] == 1
    _, state = load_model_file(out / "model.pt")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert math.isclose(ckpt["lr_scale"], 0.5)
