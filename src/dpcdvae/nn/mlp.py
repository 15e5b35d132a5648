"""Small MLP used by the VAE heads and fusion layers."""

from __future__ import annotations

from torch import nn


def build_mlp(in_dim: int, hidden_dim: int, fc_num_layers: int, out_dim: int) -> nn.Sequential:
    """Linear(in, h)-ReLU-[Linear(h, h)-ReLU] x (fc_num_layers-1)-Linear(h, out) (CDVAE's heads)."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim), nn.ReLU()]
    for _ in range(fc_num_layers - 1):
        layers += [nn.Linear(hidden_dim, hidden_dim), nn.ReLU()]
    layers.append(nn.Linear(hidden_dim, out_dim))
    return nn.Sequential(*layers)
