"""Input checks of the networks (one-line ValueErrors), shared by the encoders and the denoiser."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_crystal_shapes", "check_crystal_inputs"]


def check_crystal_shapes(frac_coords: Tensor, atom_types: Tensor, num_atoms: Tensor, batch: Tensor,
                         lattice: Tensor) -> None:
    """Shapes and integer dtypes of a batch of crystals (no tensor value is read: no host sync).

    Args:
        frac_coords: [N, 3]. atom_types: [N] int. num_atoms: [B] int. batch: [N] int.
        lattice: [B, 3, 3].
    """
    n, b = frac_coords.shape[0], num_atoms.shape[0]
    if frac_coords.dim() != 2 or frac_coords.shape[1] != 3:
        raise ValueError(f"frac_coords must be [N, 3], got {tuple(frac_coords.shape)}")
    if atom_types.shape != (n,) or batch.shape != (n,):
        raise ValueError(
            f"atom_types and batch must be [N={n}], got {tuple(atom_types.shape)} and {tuple(batch.shape)}"
        )
    if num_atoms.dim() != 1 or lattice.shape != (b, 3, 3):
        raise ValueError(f"num_atoms must be [B] and lattice [B, 3, 3], got {tuple(num_atoms.shape)} "
                         f"and {tuple(lattice.shape)}")
    if atom_types.is_floating_point() or num_atoms.is_floating_point() or batch.is_floating_point():
        raise ValueError("atom_types, num_atoms and batch must be integer tensors")


def check_crystal_inputs(
    frac_coords: Tensor,
    atom_types: Tensor,
    num_atoms: Tensor,
    batch: Tensor,
    lattice: Tensor,
    max_z: int,
    max_atoms: int | None = None,
) -> None:
    """Raise a one-line ValueError for malformed encoder inputs (one host sync for the values).

    Args:
        frac_coords: [N, 3] fractional. atom_types: [N] int Z in 1..max_z. num_atoms: [B] >= 1
        (<= max_atoms if given). batch: [N] crystal index, equal to repeat_interleave(arange(B),
        num_atoms). lattice: [B, 3, 3] Å, rows = lattice vectors.
    """
    check_crystal_shapes(frac_coords, atom_types, num_atoms, batch, lattice)
    n, b = frac_coords.shape[0], num_atoms.shape[0]
    if b == 0:
        raise ValueError("empty batch: num_atoms has no crystals")
    counts = torch.bincount(batch.clamp(0, b - 1), minlength=b)
    batch_ok = ((batch >= 0) & (batch < b)).all() & (counts == num_atoms).all()
    if n > 1:
        batch_ok &= (batch[1:] >= batch[:-1]).all()
    no_max = max_atoms is None
    bad = torch.stack([
        (atom_types < 1).any() | (atom_types > max_z).any(),
        (num_atoms < 1).any() | (num_atoms.sum() != n),
        (num_atoms > (0 if no_max else max_atoms)).any() & (not no_max),
        ~torch.isfinite(frac_coords).all() | ~torch.isfinite(lattice).all(),
        ~batch_ok,
    ])
    flags = bad.tolist()  # the one host sync
    msgs = [
        f"atom_types must be atomic numbers in 1..{max_z}",
        "num_atoms must be >= 1 and sum to N",
        f"num_atoms must be <= max_atoms={max_atoms}",
        "frac_coords and lattice must be finite",
        "batch must be the crystal index of each atom (repeat_interleave(arange(B), num_atoms))",
    ]
    for flag, msg in zip(flags, msgs):
        if flag:
            raise ValueError(msg)
