"""Padded batches with a fixed number of atoms per bucket, for static-shape training steps
(docs/GEMNET.md §12).

A :class:`~dpcdvae.data.batch.CrystalBatch` of B crystals and N atoms becomes B + 1 crystals and
N_pad > N atoms: the real crystals and atoms first, unchanged, then one *sink crystal* holding the
N_pad - N >= 1 sink atoms (a 10 Å cubic cell, all atoms hydrogen at the origin). The sink crystal is
an ordinary crystal for every per-crystal sum and mean, so nothing in the networks needs a special
case; the masks remove it from the losses. N_pad comes from :func:`atom_bucket`, so only a handful of
shapes ever occur (with a fixed batch size B, the bucket is the only shape that varies).

Padding needs only the batch's shapes, which the host knows: no tensor value is read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from dpcdvae.data.batch import CrystalBatch

__all__ = ["PaddedBatch", "pad_batch", "pad_index", "sink_lattice", "atom_bucket", "one_bucket_atoms", "SINK_LENGTH"]

SINK_LENGTH = 10.0  # Å, edge of the sink crystal's cubic cell


def atom_bucket(num_nodes: int, multiple: int) -> int:
    """N_pad for a batch of ``num_nodes`` atoms: the smallest multiple of ``multiple`` above
    ``num_nodes`` (strictly above, so that there is always at least one sink atom)."""
    if multiple < 1:
        raise ValueError(f"the atom bucket multiple must be >= 1, got {multiple}")
    return (int(num_nodes) // int(multiple) + 1) * int(multiple)


def one_bucket_atoms(num_atoms: Tensor, batch_size: int, sigmas: float, round_to: int = 64) -> int:
    """One N_pad for (nearly) every batch of ``batch_size`` crystals drawn without replacement from a split
    with per-crystal atom counts ``num_atoms`` [M]: the batch total's mean + ``sigmas`` standard deviations
    (finite-population variance), plus one sink atom, rounded up to a multiple of ``round_to``. At 4 sigmas
    ~3 in 10^5 batches are larger (those take :func:`atom_bucket`'s next multiple instead): one compile
    per run instead of one per bucket that the batches happen to hit."""
    counts = num_atoms.double().flatten()
    m, b = int(counts.numel()), int(batch_size)
    if m == 0 or b < 1 or float(sigmas) < 0 or int(round_to) < 1:
        raise ValueError(f"one_bucket_atoms needs crystals, batch_size >= 1, sigmas >= 0 and round_to >= 1 "
                         f"(got {m} crystals, {batch_size}, {sigmas}, {round_to})")
    b = min(b, m)
    var = float(counts.var(unbiased=True)) if m > 1 else 0.0
    fpc = (m - b) / (m - 1) if m > 1 else 0.0
    need = b * float(counts.mean()) + float(sigmas) * math.sqrt(max(b * var * fpc, 0.0))
    need = max(math.ceil(need - 1e-9), int(counts.max())) + 1  # at least the largest crystal, plus a sink atom
    return -(-need // int(round_to)) * int(round_to)


def pad_index(num_atoms: Tensor, batch: Tensor, num_nodes: int) -> tuple[Tensor, Tensor, Tensor]:
    """The crystal index of a batch (B crystals, N atoms) padded to ``num_nodes`` = N_pad > N atoms and
    B + 1 crystals: (num_atoms [B + 1] int64 with N_pad - N for the sink crystal, batch [N_pad] int64
    with B for the sink atoms, atom_mask [N_pad] bool, True for the N real atoms)."""
    n, b = int(batch.shape[0]), int(num_atoms.shape[0])
    pad = int(num_nodes) - n
    if pad < 1:
        raise ValueError(f"a padded batch needs at least one sink atom: {num_nodes} atoms for a batch of {n}")
    num_atoms_pad = torch.cat([num_atoms.long(), num_atoms.new_full((1,), pad).long()])
    batch_pad = torch.cat([batch, batch.new_full((pad,), b)])
    atom_mask = torch.arange(int(num_nodes), device=batch.device) < n
    return num_atoms_pad, batch_pad, atom_mask


def sink_lattice(dtype: torch.dtype, device: torch.device | str) -> Tensor:
    """[1, 3, 3] Å, the sink crystal's cell (a SINK_LENGTH cube) as a lattice matrix."""
    return torch.eye(3, dtype=dtype, device=device).unsqueeze(0) * SINK_LENGTH


@dataclass
class PaddedBatch:
    """B real crystals + 1 sink crystal, N real atoms + N_pad - N sink atoms (B_pad = B + 1).

    Attributes:
        frac_coords: [N_pad, 3] fractional (sink atoms: 0).
        atom_types: [N_pad] int64 Z (sink atoms: 1).
        num_atoms: [B_pad] int64 (the sink crystal: N_pad - N).
        lengths: [B_pad, 3] Å. angles: [B_pad, 3] degrees (sink crystal: 10 Å cube).
        batch: [N_pad] int64 crystal index (sink atoms: B).
        atom_mask: [N_pad] bool, True for real atoms (the first N).
        crystal_mask: [B_pad] bool, True for real crystals (the first B).
        num_real_atoms: N. num_real_crystals: B.
    """

    frac_coords: Tensor
    atom_types: Tensor
    num_atoms: Tensor
    lengths: Tensor
    angles: Tensor
    batch: Tensor
    atom_mask: Tensor
    crystal_mask: Tensor
    num_real_atoms: int
    num_real_crystals: int

    @property
    def num_nodes(self) -> int:
        return int(self.frac_coords.shape[0])

    @property
    def num_graphs(self) -> int:
        return int(self.num_atoms.shape[0])

    @property
    def shape_key(self) -> tuple[int, int]:
        """(N_pad, B_pad): what a compiled step specialises on."""
        return self.num_nodes, self.num_graphs


def pad_batch(batch: CrystalBatch, num_nodes: int) -> PaddedBatch:
    """Pad ``batch`` (N atoms, B crystals) to ``num_nodes`` = N_pad > N atoms and B + 1 crystals."""
    n, b = batch.num_nodes, batch.num_graphs
    num_atoms_pad, batch_pad, atom_mask = pad_index(batch.num_atoms, batch.batch, num_nodes)
    pad = int(num_nodes) - n
    dev = batch.frac_coords.device
    ones = torch.ones(1, 3, dtype=batch.lengths.dtype, device=dev)
    return PaddedBatch(
        frac_coords=torch.cat([batch.frac_coords, batch.frac_coords.new_zeros(pad, 3)]),
        atom_types=torch.cat([batch.atom_types, batch.atom_types.new_ones(pad)]),
        num_atoms=num_atoms_pad,
        lengths=torch.cat([batch.lengths, ones * SINK_LENGTH]),
        angles=torch.cat([batch.angles, ones.to(batch.angles.dtype) * 90.0]),
        batch=batch_pad,
        atom_mask=atom_mask,
        crystal_mask=torch.cat([torch.ones(b, dtype=torch.bool, device=dev), torch.zeros(1, dtype=torch.bool, device=dev)]),
        num_real_atoms=n,
        num_real_crystals=b,
    )
