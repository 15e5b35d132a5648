"""CDVAE's coordinate process: Cartesian noise-conditional score matching + annealed Langevin dynamics.

Network-free (like :mod:`dpcdvae.diffusion.ddpm`): the sampler takes a ``net_fn`` callback, so it is
tested with exact scores. docs/REFERENCE.md §1-§2 (CDVAE, Xie et al. 2022):

- Noise levels: L = 50 geometric sigmas from ``sigma_max`` = 10 Å down to ``sigma_min`` = 0.01 Å. Here
  the table is stored ASCENDING, ``sigmas[t]`` for t = 0..L-1, so that the level index t grows with
  the noise as the DDPM step does (the network may read t / L); CDVAE stores the same values
  descending. Each training crystal draws one level uniformly.
- Training input: ``x~ = wrap(cart_to_frac(frac_to_cart(x0, L) + sigma xi, L))`` with xi ~ N(0, I) in
  Cartesian Å and L the lattice the network sees (predicted or teacher-forced).
- Target: ``d / sigma^2`` with d the minimum-image Cartesian displacement from x~ to x0 in the
  GROUND-TRUTH lattice (Å); the prediction is ``out / sigma`` (out = the network's Cartesian vector,
  Å); per atom ``0.5 ||out / sigma - d / sigma^2||^2 sigma^2``, averaged per crystal, then over crystals.
  So ``out / sigma`` estimates the score grad log p_sigma(x~) in 1/Å, and ``out`` ~ sigma * score.
- Sampling (annealed Langevin): x ~ U[0, 1)^3 (fractional); for each sigma from the largest down,
  ``step = step_lr (sigma / sigma_min)^2`` and ``steps_per_level`` times
  ``x_cart <- x_cart + step * out / sigma + sqrt(2 step) xi``, then back to fractional and wrapped.
  50 levels x 100 steps = 5,000 network calls.

Shapes: B crystals, N atoms, ``batch`` [N] the crystal index of each atom; lattices [B, 3, 3] with rows
= lattice vectors (Å). No tensor value is read on the host inside the sampling loop.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable

import torch
from torch import Tensor

from dpcdvae.geometry.lattice import frac_to_cart, wrap

__all__ = ["geometric_sigmas", "sample_levels", "invert_lattice", "cart_noise_frac", "min_image_displacement",
           "annealed_langevin", "langevin_step_sizes"]

NetFn = Callable[[Tensor, Tensor, int], "tuple[Tensor, Any]"]
Callback = Callable[[int, int, Tensor, Any], None]


def geometric_sigmas(sigma_max: float, sigma_min: float, num_levels: int,
                     dtype: torch.dtype = torch.float64) -> Tensor:
    """Ascending geometric noise levels [L]: ``sigmas[0] = sigma_min``, ``sigmas[L-1] = sigma_max``."""
    if not (0 < sigma_min < sigma_max):
        raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
    if num_levels < 2:
        raise ValueError(f"num_levels must be >= 2, got {num_levels}")
    return torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), num_levels, dtype=dtype))


def sample_levels(num_crystals: int, num_levels: int, device: torch.device | str | None = None,
                  generator: torch.Generator | None = None) -> Tensor:
    """One level index per crystal [B] int64, uniform in {0, ..., L-1}."""
    return torch.randint(0, num_levels, (num_crystals,), device=device, generator=generator)


def invert_lattice(lattice: Tensor) -> Tensor:
    """[B, 3, 3] -> inverse [B, 3, 3] (fp32 math); a singular cell gets NaN rows (that crystal alone
    becomes NaN instead of aborting the batch)."""
    with torch.autocast(device_type=lattice.device.type, enabled=False):
        inv, info = torch.linalg.inv_ex(lattice.float())
        return torch.where((info == 0).view(-1, 1, 1), inv, torch.full_like(inv, math.nan))


def _cart_to_frac(cart: Tensor, inv_lattice: Tensor, batch: Tensor) -> Tensor:
    return _apply(cart, inv_lattice[batch])


def _apply(v: Tensor, per_atom: Tensor) -> Tensor:
    """Row vectors v [N, 3] times per-atom matrices [N, 3, 3] (fp32 multiply-adds, never TF32)."""
    return (v.unsqueeze(-1) * per_atom).sum(dim=-2)


def cart_noise_frac(frac0: Tensor, noise_cart: Tensor, lattice: Tensor, batch: Tensor) -> Tensor:
    """Add a Cartesian displacement ``noise_cart`` [N, 3] (Å) to ``frac0`` [N, 3] in ``lattice`` and
    return the wrapped fractional coordinates [N, 3] in [0, 1) (CDVAE's ``cart_to_frac_coords`` wraps)."""
    cart = frac_to_cart(frac0, lattice, batch) + noise_cart
    return wrap(_cart_to_frac(cart, invert_lattice(lattice), batch))


_SHIFTS = tuple(itertools.product((-1.0, 0.0, 1.0), repeat=3))


def min_image_displacement(diff_frac: Tensor, lattice: Tensor, batch: Tensor) -> Tensor:
    """Shortest Cartesian image [N, 3] (Å) of the fractional displacement ``diff_frac`` [N, 3].

    The displacement is first reduced to [-0.5, 0.5] per component, then the 27 neighbouring images
    (shifts in {-1, 0, 1}^3) are compared by Cartesian length, which finds the minimum image also in
    oblique cells (CDVAE compares the same 27 cells around the raw difference).
    """
    d = diff_frac - torch.round(diff_frac)
    shifts = torch.tensor(_SHIFTS, dtype=d.dtype, device=d.device)  # [27, 3]
    cand = d.unsqueeze(1) + shifts  # [N, 27, 3]
    cart = (cand.unsqueeze(-1) * lattice[batch].unsqueeze(1).to(d.dtype)).sum(dim=-2)  # [N, 27, 3]
    best = cart.pow(2).sum(-1).argmin(dim=1)
    return cart[torch.arange(d.shape[0], device=d.device), best]


def langevin_step_sizes(sigmas: Tensor, step_lr: float) -> list[float]:
    """Step size (Å^2) of each level t (ascending like ``sigmas``): ``step_lr (sigma_t / sigma_min)^2``."""
    tab = [float(s) for s in sigmas.detach().double().cpu()]
    return [step_lr * (s / tab[0]) ** 2 for s in tab]


def annealed_langevin(
    net_fn: NetFn,
    x_init: Tensor,
    batch: Tensor,
    lattice: Tensor,
    sigmas: Tensor,
    steps_per_level: int = 100,
    step_lr: float = 1e-4,
    min_sigma: float = 0.0,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Annealed Langevin dynamics on the torus of each cell; returns fractional coordinates [N, 3] in [0, 1).

    Args:
        net_fn: ``net_fn(x [N, 3] fractional in [0, 1), t [B] int64 level, call_index) -> (out [N, 3], extra)``
            with ``out`` the network's Cartesian vector in Å such that ``out / sigma_t`` is the score
            grad log p_sigma(x) (1/Å); ``extra`` (e.g. the atom types) is passed to ``callback``.
        x_init: [N, 3] start state (CDVAE: uniform in [0, 1)).
        batch: [N] int64 crystal index; lattice: [B, 3, 3] rows = lattice vectors (Å).
        sigmas: [L] ascending noise levels (Å); levels run from L-1 down to 0.
        steps_per_level: Langevin steps per level (CDVAE's n_step_each, 100).
        step_lr: CDVAE's step_lr (1e-4); step size = step_lr (sigma / sigma_min)^2 in Å^2.
        min_sigma: skip the levels with sigma < min_sigma (CDVAE's min_sigma, 0 = none).
        generator: torch.Generator on x_init's device (None = global RNG).
        callback: ``callback(call_index, t, x [N, 3] wrapped, extra)`` after every step.
    """
    if x_init.dim() != 2 or x_init.shape[1] != 3 or batch.shape[0] != x_init.shape[0]:
        raise ValueError(f"x_init must be [N, 3] with batch [N]; got {tuple(x_init.shape)}, {tuple(batch.shape)}")
    if steps_per_level < 1:
        raise ValueError(f"steps_per_level must be >= 1, got {steps_per_level}")
    num_crystals = int(lattice.shape[0])
    sig_host = [float(s) for s in sigmas.detach().double().cpu()]
    steps = langevin_step_sizes(sigmas, step_lr)
    lattice = lattice.float()
    lat_atom = lattice[batch]  # [N, 3, 3], gathered once for all 5,000 steps
    inv_atom = invert_lattice(lattice)[batch]
    x = wrap(x_init.float())
    call = 0
    for t in range(len(sig_host) - 1, -1, -1):
        sigma, step = sig_host[t], steps[t]
        if sigma < min_sigma:
            break
        t_vec = torch.full((num_crystals,), t, dtype=torch.long, device=x.device)
        noise_scale = math.sqrt(2.0 * step)
        for _ in range(steps_per_level):
            noise = torch.randn(tuple(x.shape), generator=generator, device=x.device, dtype=x.dtype) * noise_scale
            out, extra = net_fn(x, t_vec, call)
            cart = _apply(x, lat_atom) + (step / sigma) * out.float() + noise
            x = wrap(_apply(cart, inv_atom))
            if callback is not None:
                callback(call, t, x, extra)
            call += 1
    return x
