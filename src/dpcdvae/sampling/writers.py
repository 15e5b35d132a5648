"""Writers for generated crystals: P1 CIF, extended XYZ and a compact ``samples.pt`` (no pymatgen).

All functions take the flat tensor layout of ``samples.pt`` (docs/ARCHITECTURE.md "Sample folder"):
frac_coords [N,3] fractional, atom_types [N] Z, num_atoms [B], lengths [B,3] Å, angles [B,3] degrees.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from dpcdvae.geometry.lattice import lattice_from_params
from dpcdvae.sampling.elements import symbol

__all__ = ["iter_crystals", "cif_text", "extxyz_text", "concat_samples"]

SAMPLE_KEYS = ("frac_coords", "atom_types", "num_atoms", "lengths", "angles")


def iter_crystals(samples: dict) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Yield (frac [n,3], Z [n], lengths [3], angles [3]) per crystal, on the CPU."""
    counts = samples["num_atoms"].tolist()
    frac = samples["frac_coords"].detach().cpu().split(counts)
    types = samples["atom_types"].detach().cpu().split(counts)
    for i in range(len(counts)):
        yield frac[i], types[i], samples["lengths"][i].cpu(), samples["angles"][i].cpu()


def cif_text(frac: Tensor, types: Tensor, lengths: Tensor, angles: Tensor, name: str = "generated") -> str:
    """A P1 CIF of one crystal (readable by pymatgen, ASE, VESTA)."""
    a, b, c = (float(x) for x in lengths)
    al, be, ga = (float(x) for x in angles)
    lines = [
        f"data_{name}",
        "_symmetry_space_group_name_H-M   'P 1'",
        "_symmetry_Int_Tables_number   1",
        f"_cell_length_a   {a:.8f}",
        f"_cell_length_b   {b:.8f}",
        f"_cell_length_c   {c:.8f}",
        f"_cell_angle_alpha   {al:.8f}",
        f"_cell_angle_beta   {be:.8f}",
        f"_cell_angle_gamma   {ga:.8f}",
        "loop_",
        " _symmetry_equiv_pos_site_id",
        " _symmetry_equiv_pos_as_xyz",
        "  1  'x, y, z'",
        "loop_",
        " _atom_site_type_symbol",
        " _atom_site_label",
        " _atom_site_symmetry_multiplicity",
        " _atom_site_fract_x",
        " _atom_site_fract_y",
        " _atom_site_fract_z",
        " _atom_site_occupancy",
    ]
    for i, (z, f) in enumerate(zip(types.tolist(), frac.tolist())):
        sym = symbol(int(z))
        lines.append(f"  {sym}  {sym}{i}  1  {f[0]:.8f}  {f[1]:.8f}  {f[2]:.8f}  1")
    return "\n".join(lines) + "\n"


def extxyz_text(samples: dict, start_index: int = 0) -> str:
    """All crystals as extended XYZ frames (Cartesian Å, ``Lattice`` rows = lattice vectors)."""
    out: list[str] = []
    for i, (frac, types, lengths, angles) in enumerate(iter_crystals(samples)):
        lat = lattice_from_params(lengths.double().unsqueeze(0), angles.double().unsqueeze(0))[0]
        cart = frac.double() @ lat
        out.append(str(frac.shape[0]))
        lat_s = " ".join(f"{x:.8f}" for x in lat.reshape(-1).tolist())
        out.append(f'Lattice="{lat_s}" Properties=species:S:1:pos:R:3 pbc="T T T" id={start_index + i}')
        for z, r in zip(types.tolist(), cart.tolist()):
            out.append(f"{symbol(int(z))} {r[0]:.8f} {r[1]:.8f} {r[2]:.8f}")
    return "\n".join(out) + ("\n" if out else "")


def concat_samples(parts: list[dict]) -> dict:
    """Concatenate per-batch sample dicts (tensor keys of SAMPLE_KEYS plus optional ``index``)."""
    keys = [k for k in (*SAMPLE_KEYS, "index") if all(k in p for p in parts)]
    return {k: torch.cat([p[k].cpu() for p in parts]) for k in keys}
