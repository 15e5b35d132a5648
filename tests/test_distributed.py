"""Multi-device code paths on the CPU: batch sharding across DDP ranks, Lightning DDP training over 2
gloo processes, and ``dpcdvae sample --devices N`` (N spawned workers) against a one-process run."""

import json
import os
import queue
import subprocess
import sys

import pytest
import torch

from dpcdvae.training.datamodule import DeviceLoader

SAMPLE_KEYS = ("frac_coords", "atom_types", "num_atoms", "lengths", "angles")


@pytest.fixture(scope="module")
def train_split(prepared_cache):
    from dpcdvae.data.cache import load_split

    return load_split(prepared_cache, "perov_5", "train")


def _rows(loader: DeviceLoader) -> list[list[int]]:
    """CSV rows of every batch the loader yields in one epoch."""
    return [b.index.tolist() for b in loader]


def _epoch(data, world: int, rank: int, epoch: int, **kw) -> list[list[int]]:
    loader = DeviceLoader(data, 32, shuffle=True, seed=5, drop_last=True, rank=rank, world_size=world, **kw)
    loader.epoch = epoch
    return _rows(loader)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_train_shards_disjoint_lockstep_and_cover_the_epoch(train_split, world):
    g = len(train_split) // 32  # global batches per epoch (drop_last)
    for epoch in (0, 1):
        single = _epoch(train_split, 1, 0, epoch)
        shards = [_epoch(train_split, world, r, epoch) for r in range(world)]
        assert {len(s) for s in shards} == {g // world}  # same step count on every rank (DDP lock-step)
        rows = [row for s in shards for batch in s for row in batch]
        assert len(rows) == len(set(rows)) == (g // world) * world * 32  # disjoint, full batches
        # rank r runs global batch i * world + r of the permutation shared by all ranks
        for r, s in enumerate(shards):
            assert s == single[r::world][: g // world]
    # a new epoch draws a new permutation
    assert _epoch(train_split, 2, 0, 0) != _epoch(train_split, 2, 0, 1)


@pytest.mark.parametrize("max_batches", [None, 3])
def test_validation_shards_cover_the_split_exactly_once(train_split, max_batches):
    def rows(world, rank):
        loader = DeviceLoader(train_split, 48, shuffle=False, rank=rank, world_size=world, max_batches=max_batches,
                              equal_shards=False)
        assert len(loader) == len(_rows(loader))
        return [row for batch in _rows(loader) for row in batch]

    single = rows(1, 0)
    expect = len(train_split) if max_batches is None else max_batches * 48
    assert len(single) == expect
    for world in (2, 3):
        shards = [rows(world, r) for r in range(world)]
        assert all(shards)  # every rank validates something (epoch-end sync_dist needs all ranks)
        assert sorted(row for s in shards for row in s) == sorted(single)  # same crystals, once each


def test_fewer_batches_than_ranks_still_gives_every_rank_a_batch(train_split):
    small = train_split.subset(torch.arange(20))
    for equal in (True, False):
        lens = [len(_rows(DeviceLoader(small, 32, shuffle=False, rank=r, world_size=3, equal_shards=equal)))
                for r in range(3)]
        assert lens == [1, 1, 1]


def _cli_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    env.pop("MASTER_PORT", None)  # let Lightning pick a free port
    return env


def test_ddp_training_two_cpu_processes(prepared_cache, tmp_path):
    """Lightning DDP, gloo backend, 2 processes (Lightning relaunches the command line for rank 1, hence a
    subprocess); then the same run with devices=1 in this process takes twice the steps per epoch."""
    from dpcdvae.models.checkpoint import load_model_file
    from dpcdvae.training.train import train

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "dpcdvae.cli", "train", "--config", "tiny", "--out", str(out),
           "--cache-dir", str(prepared_cache), "--devices", "2", "--strategy", "ddp", "--accelerator", "cpu",
           "--limit", "128", "--set", "train.max_epochs=2", "--no-progress"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:  # the single-device run meanwhile (the DDP launch is mostly one process importing at a time)
        one = train("tiny", tmp_path / "one", overrides=["train.max_epochs=2"], cache_dir=prepared_cache,
                    devices=1, accelerator="cpu", limit=128, progress=False)
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, stderr[-3000:]
    assert "GLOBAL_RANK: 1" in stderr and "distributed_backend=gloo" in stderr
    printed = json.loads(stdout)  # one JSON document: only global rank 0 prints
    summary = json.loads((out / "train_summary.json").read_text())
    for path in ("checkpoints/last.ckpt", "checkpoints/best.ckpt", "model.pt", "config.json"):
        assert (out / path).is_file(), path
    assert summary["world_size"] == printed["world_size"] == 2
    assert summary["epochs"] == 2 and summary["stopped_by"] == "max_epochs"
    ddp_steps = summary["global_step"]
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == ddp_steps and ckpt["epoch"] == 2
    # model.pt (rank 0) holds the weights of the final checkpoint
    _, state = load_model_file(out / "model.pt")
    _, ck_state = load_model_file(out / "checkpoints" / "last.ckpt")
    assert state.keys() == ck_state.keys() and all(torch.equal(state[k], ck_state[k]) for k in state)

    assert one.world_size == 1 and one.epochs == 2
    # limit 128 at batch 32: 4 global batches per epoch, 4 steps on one device, 2 per rank with two
    assert one.global_step == 2 * 4 and ddp_steps == 2 * 2


from conftest import load_samples as _load  # noqa: E402


def test_sample_devices_equals_single_run(tiny_model, tmp_path):
    """``dpcdvae sample --devices 2 --device cpu``: 2 spawned workers, merged once by the parent, equal to
    a one-process run with the same seed (same crystals, same order, no duplicates)."""
    from dpcdvae.cli import main
    from dpcdvae.sampling.run import sample

    single = tmp_path / "single"
    sample(tiny_model, 8, single, batch_size=3, steps=3, seed=3, device="cpu", progress=False)
    multi = tmp_path / "multi"
    args = ["sample", "--ckpt", str(tiny_model), "-n", "8", "--batch-size", "3", "--steps", "3", "--seed", "3",
            "--device", "cpu", "--devices", "2", "--out", str(multi), "--no-progress"]
    assert main(args) == 0
    a, b = _load(single), _load(multi)
    for k in SAMPLE_KEYS:
        assert torch.equal(a[k], b[k]), k
    assert b["num_atoms"].numel() == 8 and a["meta"] == b["meta"]
    assert sorted(p.name for p in (multi / "parts").iterdir()) == [f"part_{i:06d}.pt" for i in range(3)]
    assert sorted(p.name for p in (multi / "cif").iterdir()) == sorted(p.name for p in (single / "cif").iterdir())
    assert (multi / "samples.extxyz").read_text() == (single / "samples.extxyz").read_text()

def test_sample_devices_refuses_a_used_folder(tiny_model, tmp_path, capsys):
    """Without --resume an existing run is refused with a one-line error, before any worker starts."""
    from dpcdvae.cli import main
    from dpcdvae.sampling.run import sample

    sample(tiny_model, 2, tmp_path / "s", batch_size=2, steps=2, device="cpu", progress=False, write_cifs=False)
    args = ["sample", "--ckpt", str(tiny_model), "-n", "2", "--device", "cpu", "--devices", "2",
            "--out", str(tmp_path / "s")]
    assert main(args) == 1
    assert "pass --resume" in capsys.readouterr().err


def test_sample_devices_rejects_mixed_sharding(tiny_model, tmp_path):
    from dpcdvae.cli import main

    assert main(["sample", "--ckpt", str(tiny_model), "-n", "4", "--out", str(tmp_path / "x"), "--device", "cpu",
                 "--devices", "2", "--world-size", "2"]) != 0
    assert not (tmp_path / "x").exists()


def test_worker_devices():
    from dpcdvae.sampling.distributed import worker_devices

    assert worker_devices("cpu", 3) == ["cpu"] * 3
    with pytest.raises(ValueError, match="CUDA_VISIBLE_DEVICES"):
        worker_devices("cuda:1", 2)
    with pytest.raises(ValueError, match=">= 1"):
        worker_devices("cpu", 0)
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        assert worker_devices("cuda", n) == [f"cuda:{i}" for i in range(n)]
        with pytest.raises(ValueError, match="visible"):
            worker_devices("cuda", n + 1)
    else:
        assert worker_devices("auto", 2) == ["cpu", "cpu"]
        with pytest.raises(ValueError, match="no CUDA"):
            worker_devices("cuda", 2)


def test_worker_reports_errors_in_one_line(tiny_model, tmp_path):
    """A failing worker sends one line to the parent and exits with status 1 (run here in-process)."""
    from dpcdvae.sampling.distributed import _worker
    from dpcdvae.sampling.run import sample

    out = tmp_path / "w"
    sample(tiny_model, 4, out, batch_size=2, steps=2, seed=1, device="cpu", progress=False, write_cifs=False)
    q: queue.Queue = queue.Queue()
    kwargs = dict(ckpt=tiny_model, n=4, out=out, batch_size=2, steps=2, sampler="eq7", seed=2, resume=True,
                  write_cifs=False, progress=False)
    with pytest.raises(SystemExit) as exc:
        _worker(1, 2, "cpu", kwargs, q)
    assert exc.value.code == 1
    rank, status, msg = q.get_nowait()
    assert (rank, status) == (1, "error") and msg.startswith("ValueError: --resume: seed differs")


def test_side_by_side_shards_need_no_resume_and_merge_once(tiny_model, tmp_path):
    """``--rank/--world-size`` shards started without --resume in one folder; the last one merges."""
    from dpcdvae.sampling.run import sample

    single = tmp_path / "single"
    sample(tiny_model, 5, single, batch_size=2, steps=2, seed=4, device="cpu", progress=False, write_cifs=False)
    shard = tmp_path / "shard"
    kw = dict(batch_size=2, steps=2, seed=4, device="cpu", progress=False, write_cifs=False, world_size=2)
    r0 = sample(tiny_model, 5, shard, rank=0, **kw)
    assert not (shard / "samples.pt").exists()  # rank 1's batch is missing
    r1 = sample(tiny_model, 5, shard, rank=1, **kw)
    assert (r0.num_crystals, r1.num_crystals) == (3, 2)
    a, b = _load(single), _load(shard)
    for k in SAMPLE_KEYS:
        assert torch.equal(a[k], b[k]), k
    # a shard of a different run in the same folder is refused
    with pytest.raises(ValueError, match="seed differs"):
        sample(tiny_model, 5, shard, rank=0, **{**kw, "seed": 9})
