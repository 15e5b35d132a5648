"""GemNet-T bases (docs/GEMNET.md §3): polynomial envelope, Gaussian radial basis, Legendre Y_l^0.

Every function here is an fp32 island (docs/GEMNET.md §11): it runs with autocast disabled and computes
in fp32, or in fp64 when its input is fp64 (for gradcheck). Nothing here has parameters.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dpcdvae.ops import geometry_dtype

__all__ = ["polynomial_envelope", "GaussianRBF", "legendre_harmonics"]


def polynomial_envelope(x: Tensor, exponent: int = 5) -> Tensor:
    """Smooth cutoff env(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2) for x < 1, else 0.

    env(1) = env'(1) = env''(1) = 0 (C^2 at the cutoff).

    Args:
        x: [...] scaled distance d / cutoff (>= 0).
        exponent: p (5 in the references: 1 - 21 x^5 + 35 x^6 - 15 x^7).

    Returns:
        [...] envelope values, same dtype as x.
    """
    p = float(exponent)
    a = -(p + 1.0) * (p + 2.0) / 2.0
    b = p * (p + 2.0)
    c = -p * (p + 1.0) / 2.0
    xp = x.pow(exponent)
    env = 1.0 + xp * (a + x * (b + c * x))
    return torch.where(x < 1.0, env, torch.zeros_like(x))


class GaussianRBF(nn.Module):
    """rbf_e = env(d_e / c) * exp(-(d_e / c - mu_k)^2 / (2 sigma^2)), mu_k = k / (R-1), sigma = 1 / (R-1).

    Args:
        num_radial: R (128).
        cutoff: c in Å (7.0).
        envelope_exponent: p of :func:`polynomial_envelope` (5).
    """

    def __init__(self, num_radial: int, cutoff: float, envelope_exponent: int = 5) -> None:
        super().__init__()
        if num_radial < 2:
            raise ValueError(f"num_radial must be >= 2, got {num_radial}")
        self.num_radial = num_radial
        self.cutoff = float(cutoff)
        self.envelope_exponent = envelope_exponent
        self.register_buffer("centers", torch.linspace(0.0, 1.0, num_radial), persistent=False)
        self.coeff = -0.5 * (num_radial - 1) ** 2  # -1 / (2 sigma^2)

    def forward(self, dist: Tensor) -> Tensor:
        """dist: [E] Å -> [E, R] (fp32, or fp64 for fp64 input); exactly 0 for d >= cutoff."""
        dtype = geometry_dtype(dist)
        with torch.autocast(device_type=dist.device.type, enabled=False):
            x = dist.to(dtype) / self.cutoff
            env = polynomial_envelope(x, self.envelope_exponent)
            diff = x.unsqueeze(-1) - self.centers.to(dtype)
            return env.unsqueeze(-1) * torch.exp(self.coeff * diff * diff)

    def extra_repr(self) -> str:
        return f"num_radial={self.num_radial}, cutoff={self.cutoff}, envelope_exponent={self.envelope_exponent}"


def legendre_harmonics(cos: Tensor, num_spherical: int) -> Tensor:
    """Zonal real spherical harmonics Y_l^0 = sqrt((2l+1)/(4 pi)) P_l(z) for l = 0 .. S-1.

    Args:
        cos: [...] z = cos(angle), assumed in [-1, 1].
        num_spherical: S (7).

    Returns:
        [..., S] in fp32 (fp64 for fp64 input), computed with autocast disabled via the recursion
        l P_l = (2l-1) z P_{l-1} - (l-1) P_{l-2}.
    """
    dtype = geometry_dtype(cos)
    with torch.autocast(device_type=cos.device.type, enabled=False):
        z = cos.to(dtype)
        polys = [torch.ones_like(z)]
        if num_spherical > 1:
            polys.append(z)
        for l in range(2, num_spherical):
            polys.append(((2 * l - 1) * z * polys[-1] - (l - 1) * polys[-2]) / l)
        norms = [math.sqrt((2 * l + 1) / (4.0 * math.pi)) for l in range(num_spherical)]
        return torch.stack([n * p for n, p in zip(norms, polys)], dim=-1)
