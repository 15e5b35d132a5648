"""Lattice parameters <-> matrices and fractional <-> Cartesian conversions, batched.

Convention (pymatgen ``Lattice.from_parameters``): the lattice matrix ``L`` has the lattice vectors
as ROWS, and a Cartesian position is the row vector ``r = f @ L`` for fractional ``f``::

    a = (a sin(beta), 0, a cos(beta))
    b = (-b sin(alpha) cos(gamma*), b sin(alpha) sin(gamma*), b cos(alpha))
    c = (0, 0, c)
    cos(gamma*) = (cos(alpha) cos(beta) - cos(gamma)) / (sin(alpha) sin(beta))   (clamped to [-1, 1])

Conversions use elementwise multiply-adds (never a matmul) so that they stay exact fp32 even when
TF32 matmuls or bf16 autocast are enabled.
"""

from __future__ import annotations


import torch
from torch import Tensor

__all__ = [
    "lattice_from_params",
    "params_from_lattice",
    "frac_to_cart",
    "cart_to_frac",
    "wrap",
    "min_image_frac",
    "lattice_volume",
]


def lattice_from_params(lengths: Tensor, angles: Tensor) -> Tensor:
    """Lattice matrices from parameters.

    Args:
        lengths: [B, 3] a, b, c in Å.
        angles: [B, 3] alpha, beta, gamma in degrees.

    Returns:
        [B, 3, 3] lattice matrices, rows = lattice vectors, in Å.
    """
    rad = torch.deg2rad(angles)
    cos, sin = torch.cos(rad), torch.sin(rad)
    cos_a, cos_b, cos_g = cos.unbind(-1)
    sin_a, sin_b, _ = sin.unbind(-1)
    val = ((cos_a * cos_b - cos_g) / (sin_a * sin_b)).clamp(-1.0, 1.0)
    gamma_star = torch.arccos(val)
    zeros = torch.zeros_like(cos_a)
    a, b, c = lengths.unbind(-1)
    vec_a = torch.stack([a * sin_b, zeros, a * cos_b], dim=-1)
    vec_b = torch.stack(
        [-b * sin_a * torch.cos(gamma_star), b * sin_a * torch.sin(gamma_star), b * cos_a], dim=-1
    )
    vec_c = torch.stack([zeros, zeros, c], dim=-1)
    return torch.stack([vec_a, vec_b, vec_c], dim=-2)


def params_from_lattice(lattice: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`lattice_from_params`.

    Args:
        lattice: [B, 3, 3] rows = lattice vectors (Å).

    Returns:
        lengths [B, 3] in Å and angles [B, 3] (alpha = angle(b, c), beta = angle(a, c),
        gamma = angle(a, b)) in degrees.
    """
    lengths = lattice.norm(dim=-1)
    a, b, c = lattice.unbind(-2)
    la, lb, lc = lengths.unbind(-1)

    def _angle(u: Tensor, v: Tensor, nu: Tensor, nv: Tensor) -> Tensor:
        cosv = ((u * v).sum(-1) / (nu * nv)).clamp(-1.0, 1.0)
        return torch.rad2deg(torch.arccos(cosv))

    angles = torch.stack([_angle(b, c, lb, lc), _angle(a, c, la, lc), _angle(a, b, la, lb)], -1)
    return lengths, angles


def lattice_volume(lattice: Tensor) -> Tensor:
    """[B, 3, 3] -> [B] absolute cell volume in Å^3."""
    a, b, c = lattice.unbind(-2)
    return (torch.cross(a, b, dim=-1) * c).sum(-1).abs()


def frac_to_cart(frac_coords: Tensor, lattice: Tensor, batch: Tensor) -> Tensor:
    """Fractional -> Cartesian.

    Args:
        frac_coords: [N, 3] fractional.
        lattice: [B, 3, 3] rows = lattice vectors (Å).
        batch: [N] crystal index of each atom.

    Returns:
        [N, 3] Cartesian positions in Å (``f @ L`` evaluated with multiply-adds in fp32).
    """
    lat = lattice[batch]
    return (frac_coords.unsqueeze(-1) * lat).sum(dim=-2)


def cart_to_frac(cart_coords: Tensor, lattice: Tensor, batch: Tensor) -> Tensor:
    """Cartesian [N, 3] Å -> fractional [N, 3] (not wrapped)."""
    inv = torch.linalg.inv(lattice)
    return (cart_coords.unsqueeze(-1) * inv[batch]).sum(dim=-2)


def wrap(frac_coords: Tensor) -> Tensor:
    """pi(r) = r - floor(r): map fractional coordinates into [0, 1).

    Values that round to exactly 1.0 in floating point are mapped to 0.0.
    """
    out = frac_coords - torch.floor(frac_coords)
    return torch.where(out >= 1.0, out - 1.0, out)


def min_image_frac(diff: Tensor) -> Tensor:
    """Fractional difference -> its minimum-image representative in [-0.5, 0.5]."""
    return diff - torch.round(diff)


