"""Periodic radius graphs in plain torch (batched, CPU and GPU, no compiled extensions).

Edge convention (docs/GEMNET.md §0): an edge ``e = (s, t, n)`` goes from the image ``r_s + n @ L`` of the
source atom ``s`` to the target atom ``t``; ``vec_e = r_t - (r_s + n @ L)``. Messages flow
source -> target and every edge-to-atom reduction groups edges by target. Edges are returned sorted by
target, each with the index of its reverse edge ``(t, s, -n)`` in ``id_swap``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

import torch
from torch import Tensor

from dpcdvae.geometry.lattice import frac_to_cart, wrap
from dpcdvae.ops import exclusive_cumsum

__all__ = ["PeriodicGraph", "radius_graph_pbc", "image_offsets", "exact_image_range"]


@dataclass
class PeriodicGraph:
    """A directed periodic graph, sorted by target, symmetric (every edge has its reverse).

    Attributes:
        src: [E] int64 source atom.
        dst: [E] int64 target atom, ascending.
        offsets: [E, 3] int64 lattice image of the source.
        vec: [E, 3] float32 Å, ``r_dst - (r_src + offsets @ L)`` (differentiable w.r.t. inputs).
        dist: [E] float32 Å, ``|vec|``.
        id_swap: [E] int64 index of the reverse edge ``(dst, src, -offsets)``.
        num_nodes: N.
    """

    src: Tensor
    dst: Tensor
    offsets: Tensor
    vec: Tensor
    dist: Tensor
    id_swap: Tensor
    num_nodes: int

    @property
    def num_edges(self) -> int:
        return int(self.src.shape[0])

    def to(self, device: torch.device | str) -> "PeriodicGraph":
        return replace(
            self,
            **{f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "num_nodes"},
        )


def image_offsets(ranges: tuple[int, int, int], device: torch.device | None = None) -> Tensor:
    """All integer image offsets with |n_k| <= ranges[k]: [M, 3] int64, the zero offset included."""
    axes = [torch.arange(-r, r + 1, device=device) for r in ranges]
    return torch.cartesian_prod(*axes).reshape(-1, 3)


def exact_image_range(lattice: Tensor, cutoff: float) -> tuple[int, int, int]:
    """Smallest per-axis image range that contains every neighbour within ``cutoff``.

    With wrapped coordinates the fractional difference of two atoms lies in (-1, 1), so an image
    ``n_k`` can only be within the cutoff if ``|n_k| <= ceil(cutoff / h_k)``, where
    ``h_k = V / |a_l x a_m|`` is the spacing of the lattice planes normal to reciprocal axis k.
    The maximum over the batch is returned (one host sync).
    """
    a, b, c = lattice.double().unbind(-2)
    vol = (torch.cross(a, b, dim=-1) * c).sum(-1).abs()
    areas = torch.stack(
        [torch.cross(b, c, dim=-1).norm(dim=-1), torch.cross(c, a, dim=-1).norm(dim=-1),
         torch.cross(a, b, dim=-1).norm(dim=-1)], dim=-1
    )
    spacing = vol.unsqueeze(-1) / areas  # [B, 3]
    reps = torch.ceil(cutoff / spacing - 1e-9).amax(dim=0).clamp(min=1).long().tolist()
    return (int(reps[0]), int(reps[1]), int(reps[2]))


def _lex_negative(n: Tensor) -> Tensor:
    """[E, 3] int -> [E] bool: the first non-zero component is negative."""
    first_nz = torch.where(n[:, 0] != 0, n[:, 0], torch.where(n[:, 1] != 0, n[:, 1], n[:, 2]))
    return first_nz < 0


def _shift_vectors(offsets: Tensor, lattice: Tensor) -> Tensor:
    """offsets [..., 3] int, lattice [..., 3, 3] -> n @ L [..., 3] with fp32 multiply-adds."""
    return (offsets.to(lattice.dtype).unsqueeze(-1) * lattice).sum(dim=-2)


def radius_graph_pbc(
    frac_coords: Tensor,
    lattice: Tensor,
    num_atoms: Tensor,
    cutoff: float,
    max_neighbors: int | None = None,
    images: Literal["ref", "exact"] = "ref",
    symmetrize: Literal["ref", "union"] = "ref",
) -> PeriodicGraph:
    """Periodic radius graph of a batch of crystals.

    Args:
        frac_coords: [N, 3] fractional coordinates (wrapped to [0, 1) here).
        lattice: [B, 3, 3] rows = lattice vectors in Å.
        num_atoms: [B] atoms per crystal; atoms of a crystal are contiguous.
        cutoff: radius in Å (a neighbour at distance d is kept when d <= cutoff).
        max_neighbors: keep only the ``max_neighbors`` nearest candidates of each target (ties broken
            deterministically by a stable sort); None keeps every neighbour within the cutoff.
        images: ``"ref"`` searches the 27 images {-1, 0, 1}^3 (the CDVAE / DP-CDVAE window, which misses
            neighbours beyond the smallest plane spacing); ``"exact"`` searches every image that can
            hold a neighbour within the cutoff (cells smaller than the cutoff included).
        symmetrize: how a capped list is made symmetric. ``"ref"``: a pair is kept iff it was selected
            by its canonical endpoint (the higher atom index; for self-images the lexicographically
            negative offset), as the reference codes do. ``"union"``: a pair is kept if either
            endpoint selected it (independent of atom order). Without a cap both give the full graph.

    Returns:
        :class:`PeriodicGraph` sorted by target.
    """
    device = frac_coords.device
    n_total = frac_coords.shape[0]
    lattice = lattice.to(frac_coords.dtype)
    batch = torch.repeat_interleave(torch.arange(num_atoms.shape[0], device=device), num_atoms)
    pos = frac_to_cart(wrap(frac_coords), lattice, batch)

    # All ordered pairs (s, t) inside each crystal, self pairs included.
    ptr = exclusive_cumsum(num_atoms)
    sq = num_atoms * num_atoms
    n_pairs = int(sq.sum())
    pair_batch = torch.repeat_interleave(torch.arange(num_atoms.shape[0], device=device), sq,
                                         output_size=n_pairs)
    local = torch.arange(n_pairs, device=device) - exclusive_cumsum(sq)[pair_batch]
    n_b = num_atoms[pair_batch]
    src = ptr[pair_batch] + torch.div(local, n_b, rounding_mode="floor")
    dst = ptr[pair_batch] + local % n_b

    ranges = (1, 1, 1) if images == "ref" else exact_image_range(lattice, cutoff)
    offs = image_offsets(ranges, device)  # [M, 3]
    shifts = _shift_vectors(offs.unsqueeze(0), lattice.unsqueeze(1))  # [B, M, 3]
    # w = r_s + n L - r_t, candidate (pair, image)
    with torch.no_grad():
        w = (pos[src] - pos[dst]).unsqueeze(1) + shifts[pair_batch]  # [P, M, 3]
        d2 = (w * w).sum(-1)
        is_zero_off = (offs == 0).all(-1)
        keep = (d2 <= cutoff * cutoff) & (d2 > 1e-8)
        keep &= ~((src == dst).unsqueeze(1) & is_zero_off.unsqueeze(0))
        pair_idx, img_idx = keep.nonzero(as_tuple=True)
        c_src, c_dst, c_off = src[pair_idx], dst[pair_idx], offs[img_idx]
        c_d2 = d2[pair_idx, img_idx]

        if max_neighbors is not None:
            order = torch.argsort(c_d2, stable=True)  # deterministic tie-breaking
            order = order[torch.argsort(c_dst[order], stable=True)]
            c_src, c_dst, c_off, c_d2 = c_src[order], c_dst[order], c_off[order], c_d2[order]
            deg = torch.bincount(c_dst, minlength=n_total)
            rank = torch.arange(c_dst.shape[0], device=device) - exclusive_cumsum(deg)[c_dst]
            sel = rank < max_neighbors
            c_src, c_dst, c_off = c_src[sel], c_dst[sel], c_off[sel]

        canonical = (c_src < c_dst) | ((c_src == c_dst) & _lex_negative(c_off))
        if max_neighbors is not None and symmetrize == "union":
            # Map every selected edge to its canonical direction and deduplicate.
            a = torch.where(canonical, c_src, c_dst)
            b = torch.where(canonical, c_dst, c_src)
            o = torch.where(canonical.unsqueeze(-1), c_off, -c_off)
            m = int(o.abs().max()) if o.numel() else 0
            base = 2 * m + 1
            key = ((a * n_total + b) * base + (o[:, 0] + m)) * base * base + (o[:, 1] + m) * base + (o[:, 2] + m)
            _, first = _unique_first(key)
            k_src, k_dst, k_off = a[first], b[first], o[first]
        elif symmetrize in ("ref", "union"):
            k_src, k_dst, k_off = c_src[canonical], c_dst[canonical], c_off[canonical]
        else:
            raise ValueError(f"symmetrize must be 'ref' or 'union', got {symmetrize!r}")

        n_kept = k_src.shape[0]
        e_src = torch.cat([k_src, k_dst])
        e_dst = torch.cat([k_dst, k_src])
        e_off = torch.cat([k_off, -k_off])
        id_swap = torch.cat([torch.arange(n_kept, 2 * n_kept, device=device),
                             torch.arange(0, n_kept, device=device)])
        perm = torch.argsort(e_dst, stable=True)
        inv = torch.empty_like(perm)
        inv[perm] = torch.arange(perm.shape[0], device=device)
        e_src, e_dst, e_off = e_src[perm], e_dst[perm], e_off[perm]
        id_swap = inv[id_swap[perm]]

    # Differentiable geometry of the final edges (fp32 multiply-adds).
    vec = pos[e_dst] - pos[e_src] - _shift_vectors(e_off, lattice[batch[e_src]])
    dist = vec.norm(dim=-1)
    return PeriodicGraph(src=e_src, dst=e_dst, offsets=e_off, vec=vec, dist=dist, id_swap=id_swap,
                         num_nodes=n_total)


def _unique_first(key: Tensor) -> tuple[Tensor, Tensor]:
    """Unique values of ``key`` and the index of the first occurrence of each."""
    uniq, inverse = torch.unique(key, return_inverse=True)
    first = torch.full((uniq.shape[0],), key.shape[0], dtype=torch.long, device=key.device)
    first.scatter_reduce_(0, inverse, torch.arange(key.shape[0], device=key.device), reduce="amin")
    return uniq, first


