"""GemNet-T building layers: ScaledSiLU, bias-free Dense, residual layer, split-weight concat layer.

All weights are He-orthogonal initialised (docs/GEMNET.md §6). Matmuls run in the autocast dtype when
autocast is on; nothing in this file needs fp32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dpcdvae.nn.gemnet.init import he_orthogonal_
from dpcdvae.nn.init import reset_after_build

__all__ = ["ScaledSiLU", "scaled_silu", "Dense", "ResidualLayer", "EdgeConcatDense"]

_INV_SILU_SCALE = 1.0 / 0.6
INV_SQRT2 = 1.0 / math.sqrt(2.0)


def scaled_silu(x: Tensor) -> Tensor:
    """SiLU(x) / 0.6 (keeps unit-variance inputs near unit variance)."""
    return F.silu(x) * _INV_SILU_SCALE


class ScaledSiLU(nn.Module):
    """Module form of :func:`scaled_silu`."""

    def forward(self, x: Tensor) -> Tensor:
        return scaled_silu(x)


class Dense(nn.Module):
    """y = act(x W^T), no bias; act is ScaledSiLU or identity.

    Args:
        in_features, out_features: widths.
        activation: apply ScaledSiLU after the product.
    """

    @reset_after_build
    def __init__(self, in_features: int, out_features: int, activation: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.empty(out_features, in_features))

    def reset_parameters(self) -> None:
        he_orthogonal_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., in] -> [..., out]."""
        y = F.linear(x, self.weight)
        return scaled_silu(y) if self.activation else y

    def extra_repr(self) -> str:
        return f"{self.in_features}->{self.out_features}, activation={self.activation}"


class ResidualLayer(nn.Module):
    """Res(w): y = (x + D2(D1(x))) / sqrt(2), D1 and D2 Dense(w -> w) with ScaledSiLU."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.dense1 = Dense(width, width, activation=True)
        self.dense2 = Dense(width, width, activation=True)

    def forward(self, x: Tensor) -> Tensor:
        """x: [..., w] -> [..., w]."""
        return (x + self.dense2(self.dense1(x))) * INV_SQRT2


class EdgeConcatDense(nn.Module):
    """m'_e = ScaledSiLU(W [h_src(e) | h_dst(e) | x_e]) with one bias-free weight W [out, 2A + D].

    The product is evaluated split by input block (docs/GEMNET.md §10): the two atom blocks are
    multiplied on the N atom rows in one GEMM and then gathered per edge, so the per-edge GEMM is only
    ``D -> out``. The stored weight and its He-orthogonal init are those of the unsplit layer.

    Args:
        atom_features: A, width of h.
        edge_features: D, width of the per-edge input x (R for the edge embedding, H for concat layers).
        out_features: output width (H).
    """

    @reset_after_build
    def __init__(self, atom_features: int, edge_features: int, out_features: int) -> None:
        super().__init__()
        self.atom_features = atom_features
        self.edge_features = edge_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, 2 * atom_features + edge_features))

    def reset_parameters(self) -> None:
        he_orthogonal_(self.weight)

    def forward(self, h: Tensor, x: Tensor, src: Tensor, dst: Tensor) -> Tensor:
        """h: [N, A] atoms, x: [E, D] edges, src/dst: [E] -> [E, out]."""
        a, o = self.atom_features, self.out_features
        w_atoms = torch.cat([self.weight[:, :a], self.weight[:, a : 2 * a]], dim=0)  # [2 out, A]
        hw = F.linear(h, w_atoms)  # [N, 2 out]
        y = F.linear(x, self.weight[:, 2 * a :])
        y = y + hw[:, :o].index_select(0, src) + hw[:, o:].index_select(0, dst)
        return scaled_silu(y)

    def extra_repr(self) -> str:
        return f"[2x{self.atom_features} | {self.edge_features}]->{self.out_features}"
