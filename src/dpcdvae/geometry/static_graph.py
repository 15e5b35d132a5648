"""Fixed-size periodic radius graphs and DimeNet triplets for padded batches (docs/GEMNET.md §12).

The same graph as :func:`~dpcdvae.geometry.graph.radius_graph_pbc` with ``images="ref"``,
``symmetrize="ref"`` and a neighbour cap, built without any host sync and with output sizes fixed by
Python ints, so that a training step on a padded batch can be captured as a CUDA graph. There is no
``nonzero``, boolean indexing, ``unique``, ``bincount`` or ``.item()``: candidates live in dense
tensors with validity masks, and the kept edges are moved to the front by one sort of fixed length.

Padded batch convention (``dpcdvae.data.padding``): the real atoms come first, then the sink atoms,
which belong to one extra sink crystal and are never targets of a candidate (``atom_mask`` False).
The last atom ``N_pad - 1`` is always a sink atom.

Edge layout: the real edges ``0 .. E-1`` in exactly the order of ``radius_graph_pbc`` (sorted by
target, each target's kept edges first, then the reverses of the edges other atoms kept), followed
by sink edges ``E .. E_pad-1``: ``src = dst = N_pad - 1``, offset 0, ``vec = 0``, ``dist = cutoff``
(so every envelope is exactly 0) and ``id_swap`` pointing to itself. Sizes beyond what fits give
``overflow = True`` (a 0-d bool tensor) instead of an error; the caller falls back to the eager graph.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from dpcdvae.geometry.graph import PeriodicGraph, _lex_negative, _shift_vectors, image_offsets
from dpcdvae.geometry.lattice import frac_to_cart, wrap
from dpcdvae.ops import exclusive_cumsum

__all__ = ["StaticGraph", "StaticSizes", "static_sizes", "radius_graph_static", "dimenet_triplets_static",
           "round_up"]


def round_up(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= n."""
    return -(-int(n) // int(multiple)) * int(multiple)


@dataclass(frozen=True)
class StaticSizes:
    """Fixed sizes of one graph of a padded batch (Python ints, so they are compile-time constants).

    Attributes:
        num_edges: E_pad, edges including sink edges.
        num_triplets: T_pad, DimeNet triplets including sink triplets.
        max_degree: D, bound on the in-degree of a real atom (width of the GemNet-T triplet layout and
            of the DimeNet triplet enumeration).
        max_atoms: M, bound on the atoms of one real crystal (width of the candidate enumeration).
    """

    num_edges: int
    num_triplets: int
    max_degree: int
    max_atoms: int


def static_sizes(num_nodes: int, max_neighbors: int, max_atoms: int, edge_factor: float = 1.1,
                 max_degree: int | None = None) -> StaticSizes:
    """Sizes for a padded batch of ``num_nodes`` atoms (N_pad).

    E_pad = ceil(edge_factor * N_pad * K) rounded up to a multiple of 64 (at most 2 N_pad K, the
    number of candidate edge slots); T_pad = ceil(edge_factor * E_pad * (K - 1)), rounded the same way;
    D = ``max_degree`` (default 2 K). On the three benchmarks E / (N K) and T / (E (K - 1)) stay below
    1.03 and the in-degree below 37 at K = 20, 7 Å.
    """
    k = int(max_neighbors)
    if k < 1 or num_nodes < 2:
        raise ValueError(f"static graphs need max_neighbors >= 1 and >= 2 atoms, got {k}, {num_nodes}")
    e_pad = min(round_up(math.ceil(edge_factor * num_nodes * k), 64), 2 * num_nodes * k)
    d = int(max_degree) if max_degree is not None else 2 * k
    t_pad = round_up(math.ceil(edge_factor * e_pad * max(k - 1, 1)), 64)
    return StaticSizes(num_edges=e_pad, num_triplets=t_pad, max_degree=d, max_atoms=int(max_atoms))


@dataclass
class StaticGraph:
    """A fixed-size :class:`~dpcdvae.geometry.graph.PeriodicGraph` of a padded batch.

    Attributes:
        graph: E_pad edges, ``num_nodes = N_pad`` (layout in the module doc).
        edge_mask: [E_pad] bool, True for the real edges (a prefix).
        degree: [N_pad] int64 number of real edges entering each atom.
        overflow: 0-d bool tensor, True when the real graph did not fit (more than E_pad - 1 edges, an
            in-degree above ``sizes.max_degree`` or a crystal with more than ``sizes.max_atoms`` atoms).
        sizes: the sizes it was built with.
    """

    graph: PeriodicGraph
    edge_mask: Tensor
    degree: Tensor
    overflow: Tensor
    sizes: StaticSizes


def radius_graph_static(frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor, batch: Tensor,
                        atom_mask: Tensor, cutoff: float, max_neighbors: int, sizes: StaticSizes) -> StaticGraph:
    """The reference-window, capped, reference-symmetrised radius graph of a padded batch.

    Args:
        frac_coords: [N_pad, 3] fractional coordinates (wrapped here).
        lattice: [B_pad, 3, 3] Å, rows = lattice vectors (the sink crystal's included).
        num_atoms: [B_pad] int64 atoms per crystal (sink crystal included; sums to N_pad).
        batch: [N_pad] int64 crystal index of each atom.
        atom_mask: [N_pad] bool, True for real atoms (a prefix; atom N_pad - 1 must be a sink).
        cutoff: Å. max_neighbors: K, the cap per target (as in ``radius_graph_pbc``).
        sizes: from :func:`static_sizes`.

    Returns:
        :class:`StaticGraph`; its real part equals ``radius_graph_pbc(real atoms, ...)`` edge for edge.
    """
    device = frac_coords.device
    n = frac_coords.shape[0]
    m, k_cap, e_pad = sizes.max_atoms, int(max_neighbors), sizes.num_edges
    lattice = lattice.to(frac_coords.dtype)
    pos = frac_to_cart(wrap(frac_coords), lattice, batch)
    sink = n - 1
    with torch.no_grad():
        # candidates: target t, source j-th atom of t's crystal, image o -> [N, M, 27]
        ptr = exclusive_cumsum(num_atoms)
        n_t = num_atoms[batch]
        col = torch.arange(m, device=device)
        tgt = torch.arange(n, device=device)
        pair_ok = (col.unsqueeze(0) < n_t.unsqueeze(1)) & atom_mask.unsqueeze(1)
        src = torch.where(pair_ok, ptr[batch].unsqueeze(1) + col.unsqueeze(0), tgt.unsqueeze(1))  # [N, M]
        offs = image_offsets((1, 1, 1), device)  # [27, 3]
        shifts = _shift_vectors(offs.unsqueeze(0), lattice.unsqueeze(1))  # [B, 27, 3]
        # the same arithmetic as radius_graph_pbc: (r_s - r_t) + n L, then the squared norm
        w = (pos[src] - pos.unsqueeze(1)).unsqueeze(2) + shifts[batch].unsqueeze(1)  # [N, M, 27, 3]
        d2 = (w * w).sum(-1)
        is_zero_off = (offs == 0).all(-1)
        keep = pair_ok.unsqueeze(2) & (d2 <= cutoff * cutoff) & (d2 > 1e-8)
        keep &= ~((src == tgt.unsqueeze(1)).unsqueeze(2) & is_zero_off.view(1, 1, -1))
        # per-target cap: stable sort by d2 (ties in (source, image) order, as the eager graph)
        key = torch.where(keep, d2, torch.full_like(d2, math.inf)).reshape(n, -1)
        k = min(k_cap, key.shape[1])
        vals, order = torch.sort(key, dim=1, stable=True)
        sel_ok = torch.isfinite(vals[:, :k])  # [N, K]
        order = order[:, :k]
        s_sel = torch.gather(src, 1, torch.div(order, offs.shape[0], rounding_mode="floor"))
        o_sel = offs[order % offs.shape[0]]  # [N, K, 3]
        t_sel = tgt.unsqueeze(1).expand(n, k)
        canonical = (s_sel < t_sel) | ((s_sel == t_sel) & _lex_negative(o_sel.reshape(-1, 3)).view(n, k))
        fwd_ok = (sel_ok & canonical).reshape(-1)  # [N K] kept pairs, in (target, rank) order
        # candidate edge slots: the kept pairs, then their reverses (the eager [kept | reversed] order)
        nk = n * k
        c_src = torch.cat([s_sel.reshape(-1), t_sel.reshape(-1)])
        c_dst = torch.cat([t_sel.reshape(-1), s_sel.reshape(-1)])
        c_off = torch.cat([o_sel.reshape(-1, 3), -o_sel.reshape(-1, 3)])
        c_ok = torch.cat([fwd_ok, fwd_ok])
        # key = target (n for unused slots), stable sort: within a target the slots keep their order. (A
        # key target * 2NK + slot overflows int32 inside compiled kernels from N ~ 10^4 atoms.)
        skey = torch.where(c_ok, c_dst, n)
        e_take = min(e_pad, 2 * nk)
        perm = torch.sort(skey, stable=True).indices[:e_take]  # real edges by target, then the unused slots
        if e_take < e_pad:
            perm = torch.cat([perm, perm.new_full((e_pad - e_take,), 2 * nk - 1)])
        n_real = c_ok.sum()
        idx = torch.arange(e_pad, device=device)
        edge_mask = idx < n_real
        e_src = torch.where(edge_mask, c_src[perm], sink)
        e_dst = torch.where(edge_mask, c_dst[perm], sink)
        e_off = torch.where(edge_mask.unsqueeze(1), c_off[perm], 0)
        # reverse edge: slot i <-> i +- N K; inverse of perm over the slots that were taken
        inv = torch.full((2 * nk,), -1, dtype=torch.long, device=device).scatter_(0, perm[:e_take], idx[:e_take])
        partner = torch.where(perm < nk, perm + nk, perm - nk)
        rev = inv[partner]
        id_swap = torch.where(edge_mask & (rev >= 0), rev, idx)
        degree = torch.zeros(n, dtype=torch.long, device=device).index_add_(0, e_dst, edge_mask.long())
        crystal_too_big = (atom_mask & (n_t > m)).any()
        overflow = (n_real > e_pad - 1) | (degree.amax() > sizes.max_degree) | crystal_too_big

    vec = pos[e_dst] - pos[e_src] - _shift_vectors(e_off, lattice[batch[e_src]])
    vec = torch.where(edge_mask.unsqueeze(1), vec, torch.zeros_like(vec))
    dist = torch.where(edge_mask, vec.norm(dim=-1), float(cutoff))  # the norm's gradient at 0 is 0
    graph = PeriodicGraph(src=e_src, dst=e_dst, offsets=e_off, vec=vec, dist=dist, id_swap=id_swap, num_nodes=n)
    return StaticGraph(graph=graph, edge_mask=edge_mask, degree=degree, overflow=overflow, sizes=sizes)


def dimenet_triplets_static(sg: StaticGraph, exclude: Literal["edge", "atom"] = "edge"
                            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """DimeNet triplets ``k -> j -> i`` of a :class:`StaticGraph`, ``T_pad = sg.sizes.num_triplets`` long.

    The real triplets come first, in the order of :func:`~dpcdvae.geometry.triplets.dimenet_triplets`
    (``idx_ji`` ascending, then the in-edges of j in edge order); the rest are sink triplets with
    ``idx_kj = idx_ji`` = a sink edge, which only write into that sink edge. Sink triplet p (counted
    from the first) uses sink edge ``E + p mod (E_pad - E)``: spread over all sink edges, so that no
    edge row takes ~10^5 atomic adds (or, for ``x[idx]`` gathers, one serial backward sum).

    Returns:
        idx_kj [T_pad], idx_ji [T_pad], trip_mask [T_pad] bool, overflow (0-d bool: more real
        triplets than T_pad).
    """
    g, sizes = sg.graph, sg.sizes
    device = g.src.device
    e_pad, d, t_pad = g.src.shape[0], sizes.max_degree, sizes.num_triplets
    with torch.no_grad():
        ptr = exclusive_cumsum(sg.degree)
        r = torch.arange(d, device=device)
        kj = ptr[g.src].unsqueeze(1) + r.unsqueeze(0)  # [E_pad, D]: the edges entering j = src(ji)
        ok = sg.edge_mask.unsqueeze(1) & (r.unsqueeze(0) < sg.degree[g.src].unsqueeze(1))
        kj = torch.where(ok, kj, e_pad - 1)
        ji = torch.arange(e_pad, device=device).unsqueeze(1).expand(e_pad, d)
        if exclude == "edge":
            ok &= kj != g.id_swap.unsqueeze(1)
        elif exclude == "atom":
            ok &= g.src[kj] != g.dst.unsqueeze(1)
        else:
            raise ValueError(f"exclude must be 'edge' or 'atom', got {exclude!r}")
        ok = ok.reshape(-1)
        pos = torch.cumsum(ok.long(), 0) - 1
        dest = torch.where(ok & (pos < t_pad), pos, t_pad)
        sink_edge = e_pad - 1
        count = ok.sum()
        n_edges = sg.edge_mask.sum()  # real edges; the sink edges are E .. E_pad - 1 (at least one)
        slots = torch.arange(t_pad + 1, device=device)
        spread = n_edges + torch.remainder(slots - count, (e_pad - n_edges).clamp(min=1))
        spread = torch.where(spread < e_pad, spread, sink_edge)  # only when the edges overflowed
        idx_kj = spread.scatter(0, dest, torch.where(ok, kj.reshape(-1), sink_edge))[:t_pad]
        idx_ji = spread.scatter(0, dest, torch.where(ok, ji.reshape(-1), sink_edge))[:t_pad]
        trip_mask = torch.arange(t_pad, device=device) < count
        overflow = count > t_pad
    return idx_kj, idx_ji, trip_mask, overflow
