"""Noise schedules of DP-CDVAE: the coordinate DDPM schedule and the atom-type sigmas.

Coordinate schedule (docs/REFERENCE.md §3.1): T = ``num_steps`` levels indexed t = 0..T-1,

    beta_t = sigmoid(linspace(-10, 6, T)_t) * (beta_end - beta_start) + beta_start,
    alpha_t = 1 - beta_t.

alpha-bar quirk of the reference code (``alphabar_quirk=True``, the default):

    abar_0 = 1 - beta_0,        abar_t = prod_{i=1..t} (1 - beta_i)   for t >= 1,

i.e. beta_0 is left out of the product.  Equivalently, the product convention treats the (never
sampled) level "0" as clean and abar_0 is only a stored value, used by the posterior std at t = 1.
With ``alphabar_quirk=False`` the standard ``abar_t = prod_{i=0..t} alpha_i`` is used.  The two
differ by a factor (1 - beta_0) ~ 1 - 4.5e-7, i.e. numerically nothing; the flag exists to
reproduce the reference exactly.

Atom-type noise: sigma_type[s] is geometric from ``type_sigma_begin`` (s = 0) to ``type_sigma_end``
(s = T-1), increasing with s.

All derived quantities are computed in float64 (1 - abar_t is ~1e-7 at small t, below float32
resolution near 1) and stored as float32 buffers.  :meth:`DiffusionSchedule.float64` recomputes
them in float64 on the CPU for building sampler coefficient tables.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

SIGMOID_START = -10.0
SIGMOID_END = 6.0


def make_betas(
    num_steps: int,
    beta_start: float = 1e-10,
    beta_end: float = 0.01,
    kind: str = "sigmoid",
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Beta schedule [T] (dimensionless).

    ``kind``: "sigmoid" (reference, endpoints -10/6), "linear", or "cosine" (Nichol & Dhariwal 2021,
    s = 0.008, betas clipped at 0.999; beta_start/beta_end unused).
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    if kind == "sigmoid":
        x = torch.linspace(SIGMOID_START, SIGMOID_END, num_steps, dtype=dtype)
        return torch.sigmoid(x) * (beta_end - beta_start) + beta_start
    if kind == "linear":
        return torch.linspace(beta_start, beta_end, num_steps, dtype=dtype)
    if kind == "cosine":
        s = 0.008
        steps = torch.arange(num_steps + 1, dtype=dtype) / num_steps
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        return (1 - f[1:] / f[:-1]).clamp(max=0.999)
    raise ValueError(f"unknown beta schedule kind {kind!r} (expected sigmoid, linear or cosine)")


def make_alpha_bars(betas: Tensor, alphabar_quirk: bool = True) -> Tensor:
    """Cumulative products abar [T] from betas [T] (see the module docstring for the quirk)."""
    alphas = 1.0 - betas
    if not alphabar_quirk:
        return torch.cumprod(alphas, dim=0)
    out = torch.empty_like(alphas)
    out[0] = alphas[0]
    out[1:] = torch.cumprod(alphas[1:], dim=0)
    return out


def make_type_sigmas(num_steps: int, sigma_begin: float = 0.01, sigma_end: float = 5.0,
                     dtype: torch.dtype = torch.float64) -> Tensor:
    """Geometric type-noise levels [T] from ``sigma_begin`` (s = 0) to ``sigma_end`` (s = T-1)."""
    if sigma_begin <= 0 or sigma_end <= 0:
        raise ValueError("type sigmas must be positive")
    return torch.exp(torch.linspace(math.log(sigma_begin), math.log(sigma_end), num_steps, dtype=dtype))


def posterior_std(alpha_bars: Tensor, betas: Tensor) -> Tensor:
    """sigma_t = sqrt(beta_t (1 - abar_{t-1}) / (1 - abar_t)) [T], with sigma_0 = 0 (abar_{-1} = 1)."""
    prev = torch.cat([alpha_bars.new_ones(1), alpha_bars[:-1]])
    return torch.sqrt(betas * (1.0 - prev) / (1.0 - alpha_bars))


class DiffusionSchedule(nn.Module):
    """Coordinate DDPM schedule + type-noise sigmas, as float32 buffers on the module's device.

    Buffers (all [T] float32):
        betas, alphas, alpha_bars, sqrt_alpha_bars, sqrt_one_minus_alpha_bars,
        posterior_std (sigma_t = sqrt(beta_t (1 - abar_{t-1}) / (1 - abar_t)), sigma_0 = 0),
        type_sigmas (geometric, increasing).

    Args:
        num_steps: T (reference 1000). Training draws t in {1, ..., T-1}.
        beta_start, beta_end: beta range (reference 1e-10, 0.01).
        kind: "sigmoid" (reference), "linear" or "cosine".
        alphabar_quirk: reproduce the reference's abar (beta_0 excluded from the product).
        type_sigma_begin, type_sigma_end: type-noise range (reference 0.01 -> 5.0).
    """

    betas: Tensor
    alphas: Tensor
    alpha_bars: Tensor
    sqrt_alpha_bars: Tensor
    sqrt_one_minus_alpha_bars: Tensor
    posterior_std: Tensor
    type_sigmas: Tensor

    def __init__(
        self,
        num_steps: int = 1000,
        beta_start: float = 1e-10,
        beta_end: float = 0.01,
        kind: str = "sigmoid",
        alphabar_quirk: bool = True,
        type_sigma_begin: float = 0.01,
        type_sigma_end: float = 5.0,
    ) -> None:
        super().__init__()
        self.num_steps = int(num_steps)
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        self.kind = str(kind)
        self.alphabar_quirk = bool(alphabar_quirk)
        self.type_sigma_begin = float(type_sigma_begin)
        self.type_sigma_end = float(type_sigma_end)
        tables = self.float64()
        if not bool((tables["alpha_bars"] > 0).all()) or not bool((tables["betas"] > 0).all()):
            raise ValueError("schedule must have 0 < beta_t and abar_t > 0")
        for name, value in tables.items():
            self.register_buffer(name, value.to(torch.float32), persistent=False)

    def float64(self) -> dict[str, Tensor]:
        """All schedule tables recomputed in float64 on the CPU (same keys as the buffers)."""
        betas = make_betas(self.num_steps, self.beta_start, self.beta_end, self.kind)
        alpha_bars = make_alpha_bars(betas, self.alphabar_quirk)
        return {
            "betas": betas,
            "alphas": 1.0 - betas,
            "alpha_bars": alpha_bars,
            "sqrt_alpha_bars": alpha_bars.sqrt(),
            "sqrt_one_minus_alpha_bars": (1.0 - alpha_bars).sqrt(),
            "posterior_std": posterior_std(alpha_bars, betas),
            "type_sigmas": make_type_sigmas(self.num_steps, self.type_sigma_begin, self.type_sigma_end),
        }

    def extra_repr(self) -> str:
        return (f"num_steps={self.num_steps}, kind={self.kind}, beta=({self.beta_start:g}, {self.beta_end:g}), "
                f"alphabar_quirk={self.alphabar_quirk}, type_sigmas=({self.type_sigma_begin:g}, "
                f"{self.type_sigma_end:g})")
