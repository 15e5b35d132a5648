"""Triplets of a :class:`~dpcdvae.geometry.graph.PeriodicGraph`, built with sort-free index arithmetic.

Both builders assume the graph's edges are sorted by target (as ``radius_graph_pbc`` returns them),
so that the edges entering atom ``a`` are the contiguous range ``[ptr_a, ptr_a + deg_a)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dpcdvae.geometry.graph import PeriodicGraph
from dpcdvae.ops import exclusive_cumsum

__all__ = ["GemNetTriplets", "gemnet_triplets", "dimenet_triplets"]


@dataclass
class GemNetTriplets:
    """GemNet-T triplets ``b -> a <- c``: pairs of distinct edges with the same target ``a``.

    Attributes:
        id_ba: [T] input edge (b -> a).
        id_ca: [T] output edge (c -> a), ascending.
        slot: [T] position of the triplet among those of its output edge (0 .. kmax-1).
        kmax: the largest number of triplets of one output edge (max in-degree - 1), >= 1.
    """

    id_ba: Tensor
    id_ca: Tensor
    slot: Tensor
    kmax: int


def _pairs_within_groups(group_of_edge: Tensor, deg: Tensor) -> tuple[Tensor, Tensor]:
    """For every edge e, enumerate all edges entering atom ``group_of_edge[e]``.

    Returns (out, inp): out [S] repeats each edge id deg[group] times; inp [S] runs over the edges
    whose target is that group.
    """
    ptr = exclusive_cumsum(deg)
    counts = deg[group_of_edge]
    total = int(counts.sum())
    edge_ids = torch.arange(group_of_edge.shape[0], device=deg.device)
    out = torch.repeat_interleave(edge_ids, counts, output_size=total)
    k = torch.arange(total, device=deg.device) - torch.repeat_interleave(
        exclusive_cumsum(counts), counts, output_size=total
    )
    inp = ptr[group_of_edge[out]] + k
    return out, inp


def gemnet_triplets(graph: PeriodicGraph) -> GemNetTriplets:
    """GemNet-T triplets (docs/GEMNET.md §2): T = sum_a deg_a (deg_a - 1); edge ids, not atom ids, are
    compared, so ``b`` may be an image of ``c``'s atom."""
    deg = torch.bincount(graph.dst, minlength=graph.num_nodes)
    out, inp = _pairs_within_groups(graph.dst, deg)
    keep = inp != out
    id_ca, id_ba = out[keep], inp[keep]
    per_edge = torch.bincount(id_ca, minlength=graph.num_edges)
    slot = torch.arange(id_ca.shape[0], device=id_ca.device) - exclusive_cumsum(per_edge)[id_ca]
    kmax = int(per_edge.max()) if per_edge.numel() else 0
    return GemNetTriplets(id_ba=id_ba, id_ca=id_ca, slot=slot, kmax=max(kmax, 1))


def dimenet_triplets(
    graph: PeriodicGraph, exclude: Literal["edge", "atom"] = "edge"
) -> tuple[Tensor, Tensor]:
    """DimeNet triplets ``k -> j -> i``: pairs (e_kj, e_ji) with target(e_kj) = j = source(e_ji).

    Args:
        graph: periodic graph sorted by target.
        exclude: ``"edge"`` drops only the immediate backtrack e_kj = rev(e_ji) (geometrically
            correct; k may be another image of i); ``"atom"`` drops every triplet with atom k == i,
            reproducing the reference DimeNet++ (no triplets at all in a 1-atom cell).

    Returns:
        idx_kj [T], idx_ji [T] (idx_ji ascending).
    """
    deg = torch.bincount(graph.dst, minlength=graph.num_nodes)
    idx_ji, idx_kj = _pairs_within_groups(graph.src, deg)
    if exclude == "edge":
        keep = idx_kj != graph.id_swap[idx_ji]
    elif exclude == "atom":
        keep = graph.src[idx_kj] != graph.dst[idx_ji]
    else:
        raise ValueError(f"exclude must be 'edge' or 'atom', got {exclude!r}")
    return idx_kj[keep], idx_ji[keep]
