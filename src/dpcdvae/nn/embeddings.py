"""Time and position embeddings of the DP-CDVAE denoiser (docs/GEMNET.md §4.1, docs/REFERENCE.md §3.3).

Both are fp32 islands (autocast off): the sinusoid arguments are too large for bf16.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from dpcdvae.nn.gemnet.init import variance_scaling_uniform_
from dpcdvae.nn.init import reset_after_build
from dpcdvae.ops import geometry_dtype

__all__ = ["sinusoidal_embedding", "TimeEmbedding", "fourier_features", "num_fourier_features"]


def sinusoidal_embedding(s: Tensor, dim: int = 128, max_positions: float = 1e4) -> Tensor:
    """Score-SDE / DDPM sinusoidal embedding.

    Args:
        s: [B] positions (DP-CDVAE passes the normalised step t / T in (0, 1)).
        dim: output width (even: dim/2 frequencies; odd widths get one zero pad column).
        max_positions: base of the geometric frequency ladder.

    Returns:
        [B, dim] = [sin(s w_k) | cos(s w_k)] with w_k = exp(-k ln(max_positions) / (dim/2 - 1)),
        k = 0 .. dim/2 - 1 (fp32).
    """
    half = dim // 2
    if half < 2:
        raise ValueError(f"sinusoidal embedding width must be >= 4, got {dim}")
    dtype = geometry_dtype(s)
    with torch.autocast(device_type=s.device.type, enabled=False):
        k = torch.arange(half, device=s.device, dtype=dtype)
        freqs = torch.exp(-math.log(max_positions) / (half - 1) * k)
        args = s.to(dtype).unsqueeze(-1) * freqs
        emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
        if dim % 2 == 1:
            emb = torch.nn.functional.pad(emb, (0, 1))
        return emb


class TimeEmbedding(nn.Module):
    """tau = Lin(H -> D)(ReLU(Lin(D -> H)(sinusoidal(s)))), variance-scaling init, zero biases.

    Runs in fp32 with autocast disabled (B rows only).

    Args:
        dim: D, sinusoid and output width (128).
        hidden: H (512 = 4 D).
        max_positions: sinusoid base (1e4).
    """

    @reset_after_build
    def __init__(self, dim: int = 128, hidden: int = 512, max_positions: float = 1e4) -> None:
        super().__init__()
        self.dim = dim
        self.max_positions = max_positions
        self.lin1 = nn.Linear(dim, hidden)
        self.lin2 = nn.Linear(hidden, dim)

    def reset_parameters(self) -> None:
        """Variance-scaling weights, zero biases. PyTorch's default init runs first, as when the layers
        are built, so that a seed gives the weights it always gave."""
        for lin in (self.lin1, self.lin2):
            lin.reset_parameters()
        for lin in (self.lin1, self.lin2):
            variance_scaling_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, s: Tensor) -> Tensor:
        """s: [B] normalised time t / T -> [B, dim]."""
        with torch.autocast(device_type=s.device.type, enabled=False):
            e = sinusoidal_embedding(s, self.dim, self.max_positions).to(self.lin1.weight.dtype)
            return self.lin2(torch.relu(self.lin1(e)))


def num_fourier_features(n_min: int = 3, n_max: int = 8) -> int:
    """Width of :func:`fourier_features`: 2 (sin, cos) x 3 coordinates x (n_max - n_min + 1)."""
    if n_max < n_min:
        raise ValueError(f"fourier n_max ({n_max}) must be >= n_min ({n_min})")
    return 6 * (n_max - n_min + 1)


def fourier_features(frac_coords: Tensor, n_min: int = 3, n_max: int = 8) -> Tensor:
    """Periodic Fourier features of fractional coordinates.

    Args:
        frac_coords: [N, 3] fractional (wrapped or not: the features have period 1).
        n_min, n_max: frequencies 2 pi 2^q for q = n_min .. n_max (3 .. 8 in DP-CDVAE).

    Returns:
        [N, 6 Q] with Q = n_max - n_min + 1: all sines, then all cosines; within each half the column
        of (q, coordinate k) is 3 (q - n_min) + k (frequency-major). fp32 (fp64 for fp64 input).

    The phase 2^q f is reduced modulo 1 before the sine (exact for powers of two), so the argument
    stays in [0, 2 pi) and integer shifts of f change the features only by the rounding of f itself.
    """
    if frac_coords.ndim != 2 or frac_coords.shape[1] != 3:
        raise ValueError(f"frac_coords must be [N, 3], got {tuple(frac_coords.shape)}")
    num_fourier_features(n_min, n_max)
    dtype = geometry_dtype(frac_coords)
    with torch.autocast(device_type=frac_coords.device.type, enabled=False):
        f = frac_coords.to(dtype)
        # 2^q as integer shifts on the device: exact, and no host-to-device copy (which would sync)
        q = torch.arange(n_min, n_max + 1, device=f.device)
        mult = torch.bitwise_left_shift(torch.ones_like(q), q).to(dtype)
        phase = f.unsqueeze(1) * mult.view(1, -1, 1)  # [N, Q, 3]
        phase = phase - torch.floor(phase).detach()
        args = (2.0 * math.pi) * phase.reshape(f.shape[0], -1)
        return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
