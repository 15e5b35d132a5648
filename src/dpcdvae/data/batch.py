"""A batch of crystals as flat tensors (no PyG dependency, no per-crystal Python objects)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor


@dataclass
class CrystalBatch:
    """B crystals with N atoms in total.

    Attributes:
        frac_coords: [N, 3] float32, fractional coordinates in [0, 1).
        atom_types:  [N] int64, atomic numbers Z (1..100).
        num_atoms:   [B] int64, atoms per crystal (N = num_atoms.sum()).
        lengths:     [B, 3] float32, lattice lengths a, b, c in Å.
        angles:      [B, 3] float32, lattice angles alpha, beta, gamma in degrees.
        batch:       [N] int64, crystal index of each atom (sorted, 0..B-1).
        props:       [B, P] float32 raw (unstandardised) property columns, NaN where missing;
                     P may be 0.
        index:       [B] int64, 0-based row of each crystal in its source CSV split (pairs outputs
                     with ground truth; rows skipped in preprocessing leave gaps).
    """

    frac_coords: Tensor
    atom_types: Tensor
    num_atoms: Tensor
    lengths: Tensor
    angles: Tensor
    batch: Tensor
    props: Tensor
    index: Tensor

    @property
    def num_graphs(self) -> int:
        return int(self.num_atoms.shape[0])

    @property
    def num_nodes(self) -> int:
        return int(self.frac_coords.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "CrystalBatch":
        return replace(
            self,
            **{f.name: getattr(self, f.name).to(device, non_blocking=non_blocking) for f in fields(self)},
        )

    @staticmethod
    def batch_vector(num_atoms: Tensor) -> Tensor:
        """[B] counts -> [N] crystal index of every atom."""
        return torch.repeat_interleave(
            torch.arange(num_atoms.shape[0], device=num_atoms.device), num_atoms
        )
