"""Device-resident loaders: a whole split lives on the training device and batches are gathered
with tensor indexing, so data loading costs no host work per crystal."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytorch_lightning as pl
import torch

from dpcdvae.data.batch import CrystalBatch
from dpcdvae.data.cache import CrystalDataset, load_scalers, load_split
from dpcdvae.data.scalers import Scalers

__all__ = ["DeviceLoader", "CrystalDataModule", "holdout_split"]


class DeviceLoader:
    """Iterable of :class:`CrystalBatch` over a (device-resident) dataset, sharded across ranks.

    Each epoch draws a fresh permutation from ``seed + epoch`` (same on every rank), and rank r takes
    the global batches b with b % world_size == r, so DDP ranks see disjoint crystals.

    ``equal_shards=True`` (training): every rank runs the same number of steps, floor(G / world_size)
    of the G global batches (DDP's gradient all-reduce needs lock-step ranks; the G % world_size
    left-over batches change every epoch with the permutation). ``equal_shards=False`` (validation):
    the first min(G, max_batches) global batches are split over the ranks exactly once each, so the
    evaluated crystals do not depend on world_size (ranks may then run one batch more or less).
    ``max_batches`` caps the batches per rank with equal shards, the global batches otherwise.
    A rank that would get no batch at all (G < world_size, tiny sets only) repeats a batch.

    Exact mid-epoch resume: the loader is *stateful* in Lightning's sense (``state_dict`` /
    ``load_state_dict``), so every checkpoint records ``{"epoch", "batches_done"}`` of the iteration in
    progress, and a restart mid-epoch continues the same epoch (same permutation) at the next batch:
    ``load_state_dict`` sets ``epoch`` and ``start_batch``, and the next iteration skips the first
    ``start_batch`` batches of this rank (once; :meth:`set_epoch` or the end of that iteration clears it).
    The count is exact because the loader has a length, so Lightning's fetcher does not prefetch: a batch
    is yielded when the training loop takes it.
    """

    def __init__(
        self,
        dataset: CrystalDataset,
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int | None = None,
        equal_shards: bool = True,
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.max_batches = max_batches
        self.equal_shards = equal_shards
        self.epoch = 0          # the permutation of the next iteration is drawn from seed + epoch
        self.start_batch = 0    # the next iteration skips this many of its batches (exact resume)
        self._iter_epoch = 0    # epoch of the iteration in progress (or last run)
        self._yielded = 0       # batches that iteration has yielded, skipped ones included

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its first batch at the next iteration."""
        self.epoch = int(epoch)
        self.start_batch = 0
        self._yielded = 0

    def state_dict(self) -> dict:
        """Position in the data: the epoch of the iteration in progress and how many of its batches were
        taken (saved in checkpoints by Lightning; plain ints)."""
        if self._yielded == 0:  # no iteration started since the last set_epoch / load_state_dict
            return {"epoch": int(self.epoch), "batches_done": int(self.start_batch)}
        return {"epoch": int(self._iter_epoch), "batches_done": int(self._yielded)}

    def load_state_dict(self, state: dict) -> None:
        """Continue at batch ``batches_done`` of epoch ``epoch`` at the next iteration."""
        self.epoch = int(state.get("epoch", 0))
        self.start_batch = max(0, int(state.get("batches_done", 0)))
        self._yielded = 0

    def _num_global_batches(self) -> int:
        return self.dataset.num_batches(self.batch_size, self.drop_last)

    def global_batches(self) -> list[int]:
        """Indices of the global batches (into this epoch's permutation) that this rank runs, in order."""
        g, w, r = self._num_global_batches(), self.world_size, self.rank
        if self.equal_shards:
            n = max(g // w, 1)
            n = min(n, self.max_batches) if self.max_batches else n
            return [i * w + r for i in range(n)]
        g = min(g, self.max_batches) if self.max_batches else g
        mine = list(range(r, g, w))
        return mine if mine else [r % max(g, 1)]

    def __len__(self) -> int:
        return len(self.global_batches())

    def __iter__(self) -> Iterator[CrystalBatch]:
        n = len(self.dataset)
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(n, generator=gen).to(self.dataset.device)
        else:
            order = torch.arange(n, device=self.dataset.device)
        skip, self.start_batch = self.start_batch, 0
        self._iter_epoch, self._yielded = self.epoch, skip
        self.epoch += 1
        for b in self.global_batches()[skip:]:
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if idx.numel() == 0:
                idx = order[: self.batch_size]
            self._yielded += 1
            yield self.dataset.batch(idx)


def holdout_split(dataset: CrystalDataset, fraction: float, seed: int) -> tuple[CrystalDataset, CrystalDataset]:
    """Split a dataset into (train, holdout) with a fixed seed (used when no separate val split exists)."""
    n = len(dataset)
    n_hold = max(1, int(round(n * fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    hold, train = perm[:n_hold].sort().values, perm[n_hold:].sort().values

    return dataset.subset(train), dataset.subset(hold)


class CrystalDataModule(pl.LightningDataModule):
    """Loads the cached splits named in ``config['data']`` and serves device-resident batches."""

    def __init__(self, config: dict, cache_dir: Path | str | None, limit: int | None = None) -> None:
        super().__init__()
        self.cfg = config["data"]
        self.seed = int(config["train"]["seed"])
        self.cache_dir = cache_dir
        self.limit = limit
        self.train_loader: DeviceLoader | None = None
        self.train_set: CrystalDataset | None = None
        self.val_set: CrystalDataset | None = None
        self.scalers: Scalers | None = None

    def load(self) -> None:
        """Read the cache (CPU). Idempotent."""
        if self.train_set is not None:
            return
        name = self.cfg["dataset"]
        train = load_split(self.cache_dir, name, self.cfg["train_split"])
        if self.cfg["val_split"] == "holdout":
            train, val = holdout_split(train, float(self.cfg.get("holdout_fraction", 0.1)), self.seed)
        else:
            val = load_split(self.cache_dir, name, self.cfg["val_split"])
        if self.limit:
            train = train_subset(train, self.limit)
            val = train_subset(val, max(1, self.limit // 4))
        self.train_set, self.val_set = train, val
        self.scalers = load_scalers(self.cache_dir, name)

    def setup(self, stage: str | None = None) -> None:
        self.load()
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        self.train_set = self.train_set.to(device)
        self.val_set = self.val_set.to(device)

    def _rank_world(self) -> tuple[int, int]:
        if self.trainer is None:
            return 0, 1
        return self.trainer.global_rank, self.trainer.world_size

    def train_dataloader(self) -> DeviceLoader:
        rank, world = self._rank_world()
        self.train_loader = DeviceLoader(self.train_set, int(self.cfg["batch_size"]), shuffle=True, seed=self.seed,
                                         drop_last=len(self.train_set) > int(self.cfg["batch_size"]), rank=rank,
                                         world_size=world)
        return self.train_loader

    def val_dataloader(self) -> DeviceLoader:
        rank, world = self._rank_world()
        return DeviceLoader(self.val_set, int(self.cfg["eval_batch_size"]), shuffle=False, rank=rank,
                            world_size=world, max_batches=self.cfg.get("num_val_batches"), equal_shards=False)


def train_subset(dataset: CrystalDataset, n: int) -> CrystalDataset:
    """The first ``n`` crystals (tests and demos)."""
    return dataset if n >= len(dataset) else dataset.subset(torch.arange(n))
