"""GINE crystal encoder of DP-CDVAE's DimeGIN / DimeGINNa variants (docs/REFERENCE.md §3.4).

Node features: ``Embedding(100, hidden)`` of Z - 1. Edge features: the periodic distance (Å) through
an MLP 1 -> hidden -> hidden (ReLU). Three GINE layers with sum aggregation

    h_i' = MLP((1 + eps) h_i + sum_{j -> i} act(h_j + e_ji)),   eps = 0 (not trained),

whose message activation is softplus as in the DP-CDVAE code (PyG's ``GINEConv`` uses ReLU;
``message_act="relu"`` reproduces it exactly), update MLP hidden -> hidden -> hidden with ReLU between
the two Linears, ReLU between layers (not after the last), residual shortcuts, global max pooling over
each crystal's atoms and a readout MLP hidden -> hidden -> out (ReLU).

It uses the same periodic radius graph as the DimeNet++ encoder (edge_index = [src, dst], messages
src -> dst) instead of the reference's CrystalNN bonds. The layer is written in plain torch (gather +
fp32 ``index_add_``) rather than subclassing PyG's ``MessagePassing``, to choose the message
activation and the accumulation dtype.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dpcdvae.geometry.graph import PeriodicGraph, radius_graph_pbc
from dpcdvae.nn.checks import check_crystal_inputs
from dpcdvae.nn.init import reset_modules
from dpcdvae.ops import geometry_dtype, segment_sum

__all__ = ["GINELayer", "GINEEncoder", "segment_max"]

_ACTS = {"softplus": F.softplus, "relu": F.relu}


def segment_max(x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Max over each crystal's atoms: x [N, C], batch [N] -> [B, C] (every crystal needs >= 1 atom)."""
    out = torch.zeros(num_graphs, x.shape[1], dtype=x.dtype, device=x.device)
    index = batch.unsqueeze(-1).expand_as(x)
    return out.scatter_reduce_(0, index, x, reduce="amax", include_self=False)


class GINELayer(nn.Module):
    """One GINE layer: h_i' = MLP((1 + eps) h_i + sum_{e: dst_e = i} act(h[src_e] + e_attr_e)).

    Args:
        channels: width C of node and edge features.
        message_act: "softplus" (DP-CDVAE) or "relu" (PyG ``GINEConv``).
        eps: fixed self weight (not trained).
    """

    def __init__(self, channels: int, message_act: Literal["softplus", "relu"] = "softplus",
                 eps: float = 0.0):
        super().__init__()
        if message_act not in _ACTS:
            raise ValueError(f"message_act must be one of {sorted(_ACTS)}, got {message_act!r}")
        self.message_act = message_act
        self.eps = float(eps)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))

    def forward(self, x: Tensor, src: Tensor, dst: Tensor, edge_attr: Tensor) -> Tensor:
        """x [N, C], src [E], dst [E], edge_attr [E, C] -> [N, C]."""
        msg = _ACTS[self.message_act](x.index_select(0, src) + edge_attr)
        agg = segment_sum(msg, dst, x.shape[0], fp32=True)
        return self.mlp(agg + (1.0 + self.eps) * x.to(agg.dtype))


class GINEEncoder(nn.Module):
    """GINE on a periodic graph with max pooling: crystal -> [B, out_channels].

    Args:
        hidden_channels: node / edge width (256 in DP-CDVAE).
        out_channels: output width (the latent width, 256).
        num_layers: GINE layers (3).
        max_z: largest atomic number (node table has ``max_z`` rows, indexed by Z - 1).
        message_act: "softplus" (reference) or "relu" (PyG).
        short_cut: residual connections around each layer.
        cutoff, max_neighbors, images, symmetrize: graph settings for the standalone ``forward``.
    """

    def __init__(
        self,
        hidden_channels: int = 256,
        out_channels: int = 256,
        num_layers: int = 3,
        max_z: int = 100,
        message_act: Literal["softplus", "relu"] = "softplus",
        short_cut: bool = True,
        cutoff: float = 7.0,
        max_neighbors: int | None = 20,
        images: Literal["ref", "exact"] = "ref",
        symmetrize: Literal["ref", "union"] = "ref",
    ):
        super().__init__()
        self.max_z, self.short_cut = max_z, short_cut
        self.cutoff, self.max_neighbors = float(cutoff), max_neighbors
        self.images, self.symmetrize = images, symmetrize
        self.node_emb = nn.Embedding(max_z, hidden_channels)
        self.edge_lin1 = nn.Linear(1, hidden_channels)
        self.edge_lin2 = nn.Linear(hidden_channels, hidden_channels)
        self.convs = nn.ModuleList([GINELayer(hidden_channels, message_act) for _ in range(num_layers)])
        self.fc = nn.Sequential(nn.Linear(hidden_channels, hidden_channels), nn.ReLU(),
                                nn.Linear(hidden_channels, out_channels))

    def reset_parameters(self) -> None:
        """PyTorch's default initialisation of every layer, in the order they are built (the
        constructor draws exactly these numbers)."""
        reset_modules(*self.children())

    def edge_features(self, dist: Tensor) -> Tensor:
        """dist [E] Å -> [E, hidden]; the first Linear (on the raw distance) runs in fp32."""
        with torch.autocast(dist.device.type, enabled=False):
            h = F.relu(self.edge_lin1(dist.unsqueeze(-1).to(self.edge_lin1.weight.dtype)))
        return self.edge_lin2(h)

    def forward_graph(self, atom_types: Tensor, graph: PeriodicGraph, batch: Tensor,
                      num_atoms: Tensor) -> Tensor:
        """Encode with a prebuilt graph: atom_types [N] Z, batch [N], num_atoms [B] -> [B, out]."""
        edge_attr = self.edge_features(graph.dist)
        h = self.node_emb(atom_types.long() - 1)
        for k, conv in enumerate(self.convs):
            out = conv(h, graph.src, graph.dst, edge_attr)
            if k < len(self.convs) - 1:
                out = F.relu(out)
            h = out + h if self.short_cut else out
        return self.fc(segment_max(h, batch, num_atoms.shape[0]))

    def forward(self, frac_coords: Tensor, atom_types: Tensor, num_atoms: Tensor, batch: Tensor,
                lattice: Tensor) -> Tensor:
        """frac_coords [N, 3], atom_types [N] Z, num_atoms [B], batch [N], lattice [B, 3, 3] Å
        -> [B, out_channels]. Builds its own periodic radius graph."""
        check_crystal_inputs(frac_coords, atom_types, num_atoms, batch, lattice, self.max_z)
        dtype = geometry_dtype(frac_coords)
        with torch.autocast(frac_coords.device.type, enabled=False):
            graph = radius_graph_pbc(frac_coords.to(dtype), lattice.to(dtype), num_atoms, self.cutoff,
                                     self.max_neighbors, self.images, self.symmetrize)
        return self.forward_graph(atom_types, graph, batch, num_atoms)
