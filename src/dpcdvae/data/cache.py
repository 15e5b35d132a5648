"""The preprocessed-data cache and the in-memory dataset used for training.

Layout (docs/ARCHITECTURE.md): ``<cache_dir>/<dataset>/<split>.pt`` is a dict that
``torch.load(path, weights_only=True)`` reads:

    frac_coords  [N, 3] float32  fractional coordinates in [0, 1)
    atom_types   [N]    int64    atomic numbers Z
    num_atoms    [B]    int64
    lengths      [B, 3] float32  Å
    angles       [B, 3] float32  degrees
    props        [B, P] float32  raw property values, NaN where missing
    index        [B]    int64    0-based row of the crystal in its CSV split
    material_ids list[str] (B), prop_names list[str] (P)
    meta         dict: dataset, split, label, train_split, n_rows, n_skipped, max_atoms, version

and ``<cache_dir>/<dataset>/scalers.json`` holds the scalers (``dpcdvae.data.scalers``).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor

from dpcdvae.atomic import atomic_torch_save
from dpcdvae.data.batch import CrystalBatch
from dpcdvae.data.scalers import Scalers, load_scalers_file

CACHE_VERSION = 1
TENSOR_KEYS = ("frac_coords", "atom_types", "num_atoms", "lengths", "angles", "props", "index")


def resolve_cache_dir(arg: str | os.PathLike | None) -> Path:
    """Cache root: ``arg``, else ``$DPCDVAE_CACHE``, else ``~/.cache/dpcdvae``."""
    if arg:
        return Path(arg).expanduser()
    env = os.environ.get("DPCDVAE_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "dpcdvae"


def split_path(cache_dir: Path, dataset: str, split: str) -> Path:
    return Path(cache_dir) / dataset / f"{split}.pt"


def scalers_path(cache_dir: Path, dataset: str) -> Path:
    return Path(cache_dir) / dataset / "scalers.json"


def save_split_dict(path: Path, data: dict) -> Path:
    """Atomically ``torch.save`` a split dict (temporary file in the same folder + os.replace)."""
    return atomic_torch_save(path, data)


def load_split_dict(path: Path) -> dict:
    """``torch.load(path, weights_only=True)`` with a one-line error for a missing/unreadable file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no cached split at {path}; run `dpcdvae data prepare <dataset>` first")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling problem means a corrupt cache
        raise ValueError(f"cannot read cache file {path} ({type(err).__name__}: {err}); prepare it again") from None
    missing = [k for k in (*TENSOR_KEYS, "material_ids", "prop_names", "meta") if k not in data]
    if missing:
        raise ValueError(f"cache file {path} lacks {', '.join(missing)}; prepare it again")
    return data


class CrystalDataset:
    """One split held as flat tensors; batches are gathered with tensor ops only.

    Attributes:
        frac_coords [N,3] float32, atom_types [N] int64, num_atoms [B] int64, lengths [B,3] float32 Å,
        angles [B,3] float32 deg, props [B,P] float32 (NaN = missing), index [B] int64 (CSV row),
        ptr [B+1] int64 (atoms of crystal i are ptr[i]:ptr[i+1]), material_ids list[str],
        prop_names list[str], meta dict.
    """

    def __init__(
        self,
        frac_coords: Tensor,
        atom_types: Tensor,
        num_atoms: Tensor,
        lengths: Tensor,
        angles: Tensor,
        props: Tensor,
        index: Tensor,
        material_ids: list[str] | None = None,
        prop_names: list[str] | None = None,
        meta: dict | None = None,
    ) -> None:
        b = int(num_atoms.shape[0])
        n = int(frac_coords.shape[0])
        if int(num_atoms.sum()) != n or atom_types.shape[0] != n:
            raise ValueError(f"inconsistent dataset: sum(num_atoms)={int(num_atoms.sum())}, atoms={n}")
        for name, t in (("lengths", lengths), ("angles", angles), ("props", props), ("index", index)):
            if t.shape[0] != b:
                raise ValueError(f"inconsistent dataset: {name} has {t.shape[0]} rows for {b} crystals")
        self.frac_coords = frac_coords
        self.atom_types = atom_types
        self.num_atoms = num_atoms
        self.lengths = lengths
        self.angles = angles
        self.props = props
        self.index = index
        self.ptr = torch.cat([num_atoms.new_zeros(1), torch.cumsum(num_atoms, 0)])
        self.material_ids = list(material_ids) if material_ids is not None else [str(i) for i in index.tolist()]
        self.prop_names = list(prop_names) if prop_names is not None else [f"prop{i}" for i in range(props.shape[1])]
        self.meta = dict(meta or {})

    @classmethod
    def from_dict(cls, data: dict) -> "CrystalDataset":
        return cls(**{k: data[k] for k in TENSOR_KEYS}, material_ids=data.get("material_ids"),
                   prop_names=data.get("prop_names"), meta=data.get("meta"))

    def to_dict(self) -> dict:
        """The cache-file dict (tensors moved to CPU)."""
        out = {k: getattr(self, k).cpu() for k in TENSOR_KEYS}
        out.update(material_ids=list(self.material_ids), prop_names=list(self.prop_names), meta=dict(self.meta))
        return out

    def __len__(self) -> int:
        return int(self.num_atoms.shape[0])

    @property
    def device(self) -> torch.device:
        return self.frac_coords.device

    @property
    def num_nodes(self) -> int:
        return int(self.frac_coords.shape[0])

    def to(self, device: torch.device | str) -> "CrystalDataset":
        """A copy with every tensor on ``device`` (e.g. the whole split on the GPU)."""
        out = CrystalDataset.__new__(CrystalDataset)
        out.__dict__.update(self.__dict__)
        for k in (*TENSOR_KEYS, "ptr"):
            setattr(out, k, getattr(self, k).to(device))
        return out

    def batch(self, idx: Tensor) -> CrystalBatch:
        """CrystalBatch of the crystals ``idx`` ([b] int64, any order, repeats allowed), in that order."""
        idx = torch.as_tensor(idx, dtype=torch.long).to(self.device).reshape(-1)
        counts = self.num_atoms[idx]
        starts = self.ptr[idx]
        total = int(counts.sum())
        batch = torch.repeat_interleave(torch.arange(idx.shape[0], device=self.device), counts, output_size=total)
        # offset of each atom inside its crystal = global position - start of its crystal in the output
        out_start = torch.cumsum(counts, 0) - counts
        atom = starts[batch] + torch.arange(total, device=self.device) - out_start[batch]
        return CrystalBatch(
            frac_coords=self.frac_coords[atom],
            atom_types=self.atom_types[atom],
            num_atoms=counts,
            lengths=self.lengths[idx],
            angles=self.angles[idx],
            batch=batch,
            props=self.props[idx],
            index=self.index[idx],
        )

    __getitem__ = batch

    def subset(self, idx: Tensor) -> "CrystalDataset":
        """A new dataset of the crystals ``idx`` ([b] int64, in that order), ids and meta kept."""
        b = self.batch(idx)
        ids = [self.material_ids[i] for i in torch.as_tensor(idx).reshape(-1).tolist()]
        return CrystalDataset(b.frac_coords, b.atom_types, b.num_atoms, b.lengths, b.angles, b.props, b.index,
                              material_ids=ids, prop_names=self.prop_names, meta=self.meta)

    def iter_batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[CrystalBatch]:
        """Yield CrystalBatches of ``batch_size`` crystals (one permutation per call when shuffling)."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        n = len(self)
        if shuffle:
            gen_device = generator.device if generator is not None else torch.device("cpu")
            order = torch.randperm(n, generator=generator, device=gen_device).to(self.device)
        else:
            order = torch.arange(n, device=self.device)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            yield self.batch(order[start : start + batch_size])

    def num_batches(self, batch_size: int, drop_last: bool = False) -> int:
        return len(self) // batch_size if drop_last else -(-len(self) // batch_size)

    def __repr__(self) -> str:
        label = self.meta.get("label", "?")
        return f"CrystalDataset({label} {self.meta.get('split', '?')}: {len(self)} crystals, {self.num_nodes} atoms, {self.device})"


def load_split(cache_dir: Path | str | None, dataset: str, split: str) -> CrystalDataset:
    """Load ``<cache_dir>/<dataset>/<split>.pt`` (``cache_dir`` None -> ``resolve_cache_dir``)."""
    return CrystalDataset.from_dict(load_split_dict(split_path(resolve_cache_dir(cache_dir), dataset, split)))


def load_scalers(cache_dir: Path | str | None, dataset: str) -> Scalers:
    """Load ``<cache_dir>/<dataset>/scalers.json``."""
    return load_scalers_file(scalers_path(resolve_cache_dir(cache_dir), dataset))
