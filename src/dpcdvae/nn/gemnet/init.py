"""Weight initialisers used by GemNet-T and the DP-CDVAE denoiser (docs/GEMNET.md §4.1, §6)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["he_orthogonal_", "variance_scaling_uniform_"]


@torch.no_grad()
def he_orthogonal_(weight: Tensor, eps: float = 1e-6) -> Tensor:
    """He-orthogonal init, in place (docs/GEMNET.md §6).

    1. Draw a random (semi-)orthogonal matrix; a 3-D tensor ``(d0, d1, d2)`` is drawn as
       ``(d0, d1 * d2)`` (``torch.nn.init.orthogonal_`` flattens the trailing dimensions).
    2. Standardise each output unit's incoming weights to mean 0 and unbiased variance 1:
       over the input axis (dim 1) of a 2-D ``[out, in]`` weight, over the first two axes of a
       3-D ``(d0, d1, out)`` weight.
    3. Multiply by ``1 / sqrt(fan_in)`` with fan_in = ``in`` (2-D) or ``d0 * d1`` (3-D).

    Args:
        weight: 2-D ``[out, in]`` (``nn.Linear`` layout) or 3-D ``[d0, d1, out]``.
    """
    if weight.ndim == 2:
        dims: tuple[int, ...] = (1,)
        fan_in = weight.shape[1]
    elif weight.ndim == 3:
        dims = (0, 1)
        fan_in = weight.shape[0] * weight.shape[1]
    else:
        raise ValueError(f"he_orthogonal_ expects a 2-D or 3-D tensor, got shape {tuple(weight.shape)}")
    torch.nn.init.orthogonal_(weight)
    if weight.numel() > 1 and all(weight.shape[d] > 1 for d in dims):
        var, mean = torch.var_mean(weight, dim=dims, unbiased=True, keepdim=True)
        weight.sub_(mean).div_(torch.sqrt(var + eps))
    weight.mul_(1.0 / math.sqrt(fan_in))
    return weight


@torch.no_grad()
def variance_scaling_uniform_(weight: Tensor, scale: float = 1.0) -> Tensor:
    """DDPM ``default_init``: variance scaling, mode fan_avg, uniform distribution, in place.

    Draws U(-b, b) with ``b = sqrt(3 * scale / ((fan_in + fan_out) / 2))`` for an ``[out, in]`` weight.
    """
    if weight.ndim != 2:
        raise ValueError(f"variance_scaling_uniform_ expects a 2-D weight, got shape {tuple(weight.shape)}")
    fan_out, fan_in = weight.shape
    bound = math.sqrt(3.0 * scale / ((fan_in + fan_out) / 2.0))
    return weight.uniform_(-bound, bound)
