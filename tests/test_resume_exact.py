"""Exact resume of a time-budget / segment stop (issue 11): a stop inside an epoch continues that epoch at
the next batch (same shuffled order, same global step, no validation or plateau step on the partial
epoch); a stop at an epoch end continues at the next epoch."""

from __future__ import annotations

import pytest
import torch

# tiny preset at batch 8 on 64 crystals: 8 training batches per epoch, validation every epoch
SETS = ["train.max_epochs=1000", "train.max_minutes=100", "train.segment_minutes=50", "data.batch_size=8"]
PER_EPOCH = 8
TOTAL = 20  # optimizer steps of every compared run: ends inside epoch 2


@pytest.fixture
def recorder(monkeypatch):
    """Stop each ``train()`` call after ``rec.stop_after`` steps (in place of the wall clock) and record
    the trained batches (epoch, batch, step, crystal rows), validations and plateau steps in order."""
    from dpcdvae.training import lightning as L
    from dpcdvae.training.schedule import BudgetClock

    class Rec:
        events: list = []
        stop_after: int | None = None
        calls = 0

    rec = Rec()
    rec.events = []
    train_step = L.DPCDVAEModule.training_step
    sched_step = L.DPCDVAEModule.lr_scheduler_step

    def training_step(self, batch, batch_idx):
        rec.events.append(("train", self.current_epoch, batch_idx, self.global_step, tuple(batch.index.tolist())))
        return train_step(self, batch, batch_idx)

    def on_validation_epoch_start(self):
        rec.events.append(("val", self.current_epoch, self.global_step))

    def lr_scheduler_step(self, scheduler, metric):
        rec.events.append(("plateau", self.current_epoch, self.global_step, round(float(metric), 5)))
        return sched_step(self, scheduler, metric)

    def should_stop(self, elapsed_s=None):  # called once per training batch, at its end
        rec.calls += 1
        return rec.stop_after is not None and rec.calls >= rec.stop_after

    monkeypatch.setattr(L.DPCDVAEModule, "training_step", training_step)
    monkeypatch.setattr(L.DPCDVAEModule, "on_validation_epoch_start", on_validation_epoch_start, raising=False)
    monkeypatch.setattr(L.DPCDVAEModule, "lr_scheduler_step", lr_scheduler_step)
    monkeypatch.setattr(BudgetClock, "should_stop", should_stop)
    return rec


def _run(rec, cache, out, steps, resume=False):
    from dpcdvae.training.train import train

    rec.stop_after, rec.calls = steps, 0
    start = len(rec.events)
    res = train(config="tiny", out=out, overrides=SETS, cache_dir=cache, limit=64, progress=False, resume=resume,
                accelerator="cpu")
    return res, rec.events[start:]


def _weights(out):
    from dpcdvae.models.checkpoint import load_model_file

    return load_model_file(out / "model.pt")[1]


def _ckpt(out):
    return torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def test_loader_skips_the_first_batches_of_an_epoch_deterministically(prepared_cache):
    from dpcdvae.data.cache import load_split
    from dpcdvae.training.datamodule import DeviceLoader, train_subset

    ds = train_subset(load_split(prepared_cache, "perov_5", "train"), 64)
    loader = DeviceLoader(ds, 8, shuffle=True, seed=3, drop_last=True)
    loader.set_epoch(5)
    assert loader.state_dict() == {"epoch": 5, "batches_done": 0}
    full = [b.index.tolist() for b in loader]
    assert loader.state_dict() == {"epoch": 5, "batches_done": PER_EPOCH}
    other = DeviceLoader(ds, 8, shuffle=True, seed=3, drop_last=True)
    other.set_epoch(5)
    it = iter(other)
    seen = [next(it).index.tolist() for _ in range(3)]
    state = other.state_dict()
    assert seen == full[:3] and state == {"epoch": 5, "batches_done": 3}
    resumed = DeviceLoader(ds, 8, shuffle=True, seed=3, drop_last=True)
    resumed.load_state_dict(state)
    assert len(resumed) == PER_EPOCH  # the epoch's length, as Lightning counts it
    assert [b.index.tolist() for b in resumed] == full[3:]
    assert resumed.state_dict() == {"epoch": 5, "batches_done": PER_EPOCH}
    resumed.set_epoch(6)  # the next epoch starts from its first batch again
    assert len(list(resumed)) == PER_EPOCH


def test_stop_inside_an_epoch_resumes_the_same_epoch_at_the_next_batch(recorder, prepared_cache, tmp_path):
    full, full_events = _run(recorder, prepared_cache, tmp_path / "full", TOTAL)
    assert full.global_step == TOTAL

    out = tmp_path / "split"
    r1, ev1 = _run(recorder, prepared_cache, out, 11)  # epoch 1, batch 3 of 8
    assert r1.stopped_by == "segment" and not r1.budget_done
    assert (r1.global_step, r1.epochs, r1.resume_batch) == (11, 1, 3)
    assert not any(e[0] in ("val", "plateau") and e[2] > PER_EPOCH for e in ev1)  # none on the partial epoch
    ck = _ckpt(out)
    assert ck["epoch"] == 1 and ck["global_step"] == 11
    assert ck["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"epoch": 1, "batches_done": 3}]
    assert not (out / "checkpoints" / "stop.ckpt").exists()

    r2, ev2 = _run(recorder, prepared_cache, out, TOTAL - 11, resume=True)
    assert ev2[0][:4] == ("train", 1, 3, 11)  # the same epoch, the next batch, the same step
    assert r2.global_step == full.global_step == TOTAL
    assert ev1 + ev2 == full_events  # same batches in the same order, same validations and plateau steps
    a, b = _weights(tmp_path / "full"), _weights(out)
    assert all(torch.equal(a[k], b[k]) for k in a)  # the random draws continue too


def test_stop_at_an_epoch_end_resumes_at_the_next_epoch(recorder, prepared_cache, tmp_path):
    full, full_events = _run(recorder, prepared_cache, tmp_path / "full", TOTAL)
    out = tmp_path / "split"
    r1, ev1 = _run(recorder, prepared_cache, out, 2 * PER_EPOCH)  # the last batch of epoch 1
    assert (r1.global_step, r1.epochs, r1.resume_batch) == (16, 2, None)
    assert ev1[-2:] == [("val", 1, 16), ("plateau", 1, 16, ev1[-1][3])]  # the epoch was closed as usual
    assert _ckpt(out)["epoch"] == 2
    r2, ev2 = _run(recorder, prepared_cache, out, TOTAL - 16, resume=True)
    assert ev2[0][:4] == ("train", 2, 0, 16)
    assert r2.global_step == TOTAL and ev1 + ev2 == full_events
