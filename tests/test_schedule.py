"""The budget recipe: clock over --resume, cosine schedule, fractions, weight average, bad values."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from dpcdvae.training.schedule import BudgetClock, WeightEMA, coord_multiplier, cosine_lr, ema_state_dict, warmup_factor
from dpcdvae.training.train import check_train_config


def test_cosine_endpoints_and_monotone():
    assert cosine_lr(0.0, 1e-3, 1e-5) == pytest.approx(1e-3)
    assert cosine_lr(1.0, 1e-3, 1e-5) == pytest.approx(1e-5)
    assert cosine_lr(0.5, 1e-3, 1e-5) == pytest.approx(0.5 * (1e-3 + 1e-5))
    vals = [cosine_lr(p / 20, 1e-3, 1e-5) for p in range(21)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert cosine_lr(2.0, 1e-3, 1e-5) == pytest.approx(1e-5)  # clamped past the budget


def test_warmup_factor():
    assert warmup_factor(0, 200) == pytest.approx(1 / 200)
    assert warmup_factor(199, 200) == 1.0
    assert warmup_factor(5000, 200) == 1.0
    assert warmup_factor(0, 0) == 1.0


def test_clock_carries_over_resume_and_segments_stop_one_call(monkeypatch):
    now = [100.0]
    monkeypatch.setattr("dpcdvae.training.schedule.time.monotonic", lambda: now[0])
    c = BudgetClock(budget_s=600.0, segment_s=250.0)
    c.start()
    now[0] += 200
    assert c.fraction() == pytest.approx(200 / 600)
    assert not c.should_stop()
    now[0] += 60
    assert c.should_stop()  # the segment (250 s), not the budget
    c.stop()
    state = c.state_dict()
    now[0] += 1000  # time between invocations does not count
    c2 = BudgetClock(budget_s=600.0, segment_s=250.0)
    c2.load_state_dict(state)
    c2.start()
    assert c2.elapsed_s() == pytest.approx(260.0)
    now[0] += 240
    assert not c2.should_stop()
    now[0] += 100  # 600 s in total: the budget ends it
    assert c2.fraction() == 1.0 and c2.should_stop()


def test_ema_warmed_up_decay_ignores_weights_before_start():
    lin = nn.Linear(3, 2)
    ema = WeightEMA(0.999)
    with torch.no_grad():
        lin.weight.fill_(100.0)  # the "early" weights: never averaged in, since the EMA starts later
    with torch.no_grad():
        lin.weight.fill_(1.0)
    ema.update(lin)  # first update copies
    assert torch.allclose(ema.shadow["weight"], torch.ones(2, 3))
    with torch.no_grad():
        lin.weight.fill_(3.0)
    ema.update(lin)  # n = 1: decay min(0.999, 2/11)
    d = 2.0 / 11.0
    assert torch.allclose(ema.shadow["weight"], torch.full((2, 3), d * 1.0 + (1 - d) * 3.0))
    # round trip, and the state dict replaces only the chosen prefix
    ema2 = WeightEMA(0.5)
    ema2.load_state_dict(ema.state_dict())
    assert ema2.num_updates == 2 and ema2.decay == 0.999
    full = ema_state_dict(lin, ema, "")
    assert torch.allclose(full["weight"], ema.shadow["weight"]) and torch.allclose(full["bias"], ema.shadow["bias"])
    none = ema_state_dict(lin, ema, "nothing.")
    assert torch.equal(none["weight"], lin.weight)


def test_ema_converges_to_a_constant():
    lin = nn.Linear(2, 2)
    ema = WeightEMA(0.9)
    with torch.no_grad():
        lin.weight.zero_()
    ema.update(lin)
    with torch.no_grad():
        lin.weight.fill_(1.0)
    for _ in range(200):
        ema.update(lin)
    assert torch.allclose(ema.shadow["weight"], torch.ones(2, 2), atol=1e-6)


def test_coord_multiplier_step_and_ramp():
    assert coord_multiplier(0.29, 0.3, 10.0) == 1.0
    assert coord_multiplier(0.3, 0.3, 10.0) == 10.0  # ramp 0: the reference's switch
    assert coord_multiplier(0.29, 0.3, 10.0, 0.2) == 1.0
    assert coord_multiplier(0.4, 0.3, 10.0, 0.2) == pytest.approx(5.5)
    assert coord_multiplier(0.5, 0.3, 10.0, 0.2) == pytest.approx(10.0)
    assert coord_multiplier(0.9, 0.3, 10.0, 0.2) == pytest.approx(10.0)
    vals = [coord_multiplier(p / 100, 0.3, 10.0, 0.2) for p in range(101)]
    assert all(b >= a for a, b in zip(vals, vals[1:]))


def test_module_flags_read_the_ramp():
    from dpcdvae.config import load_config
    from dpcdvae.training.lightning import DPCDVAEModule

    cfg = load_config("perov_5")
    cfg["train"].update(mul_cost_coord_fraction=0.4, mul_cost_coord_ramp=0.2)
    module = DPCDVAEModule(nn.Linear(1, 1), cfg)
    assert module._flags(0.1) == (True, 1.0)
    teacher, mult = module._flags(0.5)
    assert not teacher and mult == pytest.approx(5.5)
    assert module._flags(0.7)[1] == pytest.approx(10.0)


@pytest.mark.parametrize("key,value", [
    ("mul_cost_coord_ramp", 1.5), ("checkpoint_minutes", 0), ("lr_schedule", "linear"), ("model_weights", "best"), ("teacher_forcing_fraction", 1.5),
    ("ema_decay", 1.0), ("ema_decay", "abc"), ("max_minutes", -1), ("segment_minutes", 0), ("min_lr", 1.0),
])
def test_bad_schedule_values_rejected(key, value):
    from dpcdvae.config import load_config

    tcfg = load_config("perov_5")["train"]
    check_train_config(tcfg)  # the preset itself is fine
    tcfg[key] = value
    with pytest.raises(ValueError, match=key if key != "min_lr" else "min_lr"):
        check_train_config(tcfg)


def test_presets_load_and_paper_preset_keeps_reference_schedule():
    from dpcdvae.config import list_presets, load_config

    assert {"perov_5", "perov_5_paper", "mp_20", "carbon_24", "tiny"} <= set(list_presets())
    paper = load_config("perov_5_paper")["train"]
    assert paper["lr_schedule"] == "plateau" and paper["max_minutes"] is None
    assert paper["teacher_forcing_fraction"] is None and paper["teacher_forcing_max_epoch"] == 400
    assert paper["ema_decay"] == 0.0
    recipe = load_config("perov_5")["train"]
    assert recipe["lr_schedule"] == "cosine" and recipe["max_minutes"] == 20.0


def test_budget_run_segments_resume_and_write_ema_weights(prepared_cache, tmp_path):
    """A time-budgeted tiny run stopped by its segment, then resumed: the budget counts over both
    invocations, the cosine LR continues from where it stopped, and the weight averages are written."""
    from dpcdvae.models.checkpoint import load_model_file
    from dpcdvae.training.train import train

    out = tmp_path / "run"
    sets = ["train.max_epochs=100000", "train.max_minutes=0.2", "train.segment_minutes=0.08",
            "train.lr_schedule=cosine", "train.min_lr=1.0e-5", "train.ema_decay=0.9", "train.ema_start=0.3",
            "train.teacher_forcing_fraction=0.5", "train.model_weights=ema_denoiser",
            "train.checkpoint_minutes=0.03"]
    r1 = train(config="tiny", out=out, overrides=sets, cache_dir=prepared_cache, limit=64, progress=False)
    assert r1.stopped_by == "segment" and not r1.budget_done
    assert 0.07 <= r1.trained_minutes_total < 0.2
    r2 = train(config="tiny", out=out, resume=True, cache_dir=prepared_cache, limit=64, progress=False,
               overrides=["train.segment_minutes=1.0"])
    assert r2.budget_done and r2.stopped_by == "time budget"
    assert r2.trained_minutes_total == pytest.approx(0.2, abs=0.03)
    assert r2.global_step > r1.global_step
    summary = json.loads((out / "train_summary.json").read_text())
    assert summary["budget_done"] is True
    for name in ("model_raw.pt", "model_ema.pt", "model_ema_denoiser.pt", "model.pt"):
        assert (out / name).is_file()
    _, raw = load_model_file(out / "model_raw.pt")
    _, ema = load_model_file(out / "model_ema.pt")
    _, emad = load_model_file(out / "model_ema_denoiser.pt")
    _, chosen = load_model_file(out / "model.pt")
    enc = next(k for k in raw if k.startswith("encoder.") and raw[k].is_floating_point())
    den = next(k for k in raw if k.startswith("denoiser.") and raw[k].is_floating_point() and raw[k].dim() == 2)
    assert not torch.equal(raw[den], ema[den]) and torch.equal(ema[den], emad[den])
    assert torch.equal(raw[enc], emad[enc]) and not torch.equal(raw[enc], ema[enc])
    assert torch.equal(chosen[den], emad[den])
    # the LR annealed towards min_lr over the whole budget (second invocation's log)
    import csv

    logs = sorted((out / "logs").glob("version_*/metrics.csv"))
    lrs = [float(r["lr-Adam"]) for f in logs for r in csv.DictReader(f.open()) if r.get("lr-Adam")]
    assert lrs[0] > lrs[-1]
    assert not any(math.isnan(x) for x in lrs)


def test_throughput_second_half_rate_leaves_out_a_slow_start(monkeypatch):
    """A step that compiles late (CUDA graphs for a new bucket) slows the whole-run rate but not the
    second-half rate: steps of 100 crystals every 0.1 s, one 10-s step in the first half."""
    from types import SimpleNamespace

    from dpcdvae.training import callbacks

    clock = {"t": 0.0}
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock["t"])
    tp = callbacks.Throughput(warmup=2)
    batch = SimpleNamespace(num_graphs=100, num_nodes=500)
    for i in range(42):
        tp.on_train_batch_start(None, None, batch, i)
        clock["t"] += 10.0 if i == 5 else 0.1
        tp.on_train_batch_end(None, None, None, batch, i)
    tp.on_train_end(None, None)
    s = tp.summary()
    assert s["timed_steps"] == 40 and s["crystals_per_s"] == pytest.approx(4000 / (39 * 0.1 + 10.0))
    assert s["crystals_per_s_second_half"] == pytest.approx(1000.0)
