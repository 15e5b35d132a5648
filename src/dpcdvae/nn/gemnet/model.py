"""GemNet-T core for periodic crystals (docs/GEMNET.md §3-§4), direct vector output, no energy gradient."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from dpcdvae.nn.gemnet.bases import GaussianRBF, legendre_harmonics
from dpcdvae.nn.gemnet.blocks import EdgeBases, InteractionBlock, OutputBlock
from dpcdvae.nn.gemnet.init import he_orthogonal_
from dpcdvae.nn.gemnet.layers import Dense, EdgeConcatDense
from dpcdvae.nn.gemnet.scaling import REFERENCE_SCALES, ScaleFactor, scale_factors
from dpcdvae.nn.init import reset_after_build, reset_modules
from dpcdvae.ops import exclusive_cumsum, geometry_dtype, segment_count, segment_sum

if TYPE_CHECKING:
    from dpcdvae.geometry.graph import PeriodicGraph
    from dpcdvae.geometry.triplets import GemNetTriplets

__all__ = ["GemNetT"]


class GemNetT(nn.Module):
    """GemNet-T (triplets only) acting on given atom features and a periodic graph.

    Inputs are atom features ``h [N, A]`` (the caller embeds and conditions atoms) and a
    :class:`~dpcdvae.geometry.graph.PeriodicGraph` (edges sorted by target, with reverse-edge index).
    Outputs are

    - ``vec [N, 3]``: ``vec_i = sum_{e: dst_e = i} F_e u_e`` with ``u_e = graph.vec_e / graph.dist_e``
      (pointing from the source image to the target) and invariant per-edge scalars
      ``F_e = sum_k F^(k)_e`` of the ``num_blocks + 1`` output blocks. It lives in the **Cartesian frame
      of ``graph.vec``**, i.e. of the lattice rows used to build the graph (for lattices from
      ``lattice_from_params``: the pymatgen convention, a in the xz plane, c along z). It rotates with
      the structure (vec' = vec Q^T for L' = L Q^T) and flips sign under inversion.
    - ``h_final [N, A]``: atom features after the last interaction block (output blocks never change h).

    Shape and hyperparameter names follow the reference GemNet-T (defaults = the CDVAE/DP-CDVAE decoder
    except ``emb_size_atom``, which DP-CDVAE sets to 548).

    Args:
        emb_size_atom: A. emb_size_edge: H. num_blocks: interaction blocks (output blocks = +1).
        num_radial: R Gaussians. num_spherical: S Legendre orders (l = 0..S-1).
        emb_size_rbf / emb_size_cbf: radial / circular projections. emb_size_trip: triplet down-projection.
        emb_size_bil_trip: bilinear output width.
        num_before_skip / num_after_skip / num_concat / num_atom: residual layer counts.
        cutoff: Å (must match the graph's). envelope_exponent: p of the polynomial envelope.
        energy_branch: also build the reference's (dead) per-atom energy branch of every output block,
            for parameter-count / state-dict parity (it is never evaluated; 1.87 M parameters per block
            at A = 548, plus 4 ``OutBlock_k_sum`` scale factors).
        scale_init: ``"reference"`` initialises the scale factors with the reference constants
            (docs/GEMNET.md §5; marked fitted); names absent from the table (more than 3 blocks) start at 1
            unfitted. ``"ones"``: all start at 1, unfitted (fit them with
            :func:`~dpcdvae.nn.gemnet.scaling.fit_scale_factors`).
    """

    @reset_after_build
    def __init__(
        self,
        emb_size_atom: int = 128,
        emb_size_edge: int = 128,
        num_blocks: int = 3,
        num_radial: int = 128,
        num_spherical: int = 7,
        emb_size_rbf: int = 16,
        emb_size_cbf: int = 16,
        emb_size_trip: int = 64,
        emb_size_bil_trip: int = 64,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_concat: int = 1,
        num_atom: int = 3,
        cutoff: float = 7.0,
        envelope_exponent: int = 5,
        energy_branch: bool = False,
        scale_init: Literal["reference", "ones"] = "reference",
    ) -> None:
        super().__init__()
        for name, val in [("emb_size_atom", emb_size_atom), ("emb_size_edge", emb_size_edge),
                          ("num_blocks", num_blocks), ("num_spherical", num_spherical),
                          ("emb_size_rbf", emb_size_rbf), ("emb_size_cbf", emb_size_cbf),
                          ("emb_size_trip", emb_size_trip), ("emb_size_bil_trip", emb_size_bil_trip)]:
            if val < 1:
                raise ValueError(f"{name} must be >= 1, got {val}")
        if scale_init not in ("reference", "ones"):
            raise ValueError(f"scale_init must be 'reference' or 'ones', got {scale_init!r}")
        if cutoff <= 0:
            raise ValueError(f"cutoff must be > 0, got {cutoff}")
        self.emb_size_atom = emb_size_atom
        self.emb_size_edge = emb_size_edge
        self.num_blocks = num_blocks
        self.num_spherical = num_spherical
        self.emb_size_rbf = emb_size_rbf
        self.emb_size_cbf = emb_size_cbf
        self.cutoff = float(cutoff)
        self.energy_branch = energy_branch

        names = []
        for i in range(1, num_blocks + 1):
            names += [f"TripInteraction_{i}_had_rbf", f"TripInteraction_{i}_sum_cbf", f"AtomUpdate_{i}_sum"]
        for k in range(num_blocks + 1):
            names += [f"OutBlock_{k}_had", f"OutBlock_{k}_sum"]
        use_ref = scale_init == "reference"
        scales = {n: ((REFERENCE_SCALES[n], True) if use_ref and n in REFERENCE_SCALES else (1.0, False))
                  for n in names}

        self.radial_basis = GaussianRBF(num_radial, cutoff, envelope_exponent)
        # Shared projections of the radial basis (docs/GEMNET.md §4.2), evaluated as one fused GEMM.
        self.mlp_rbf3 = Dense(num_radial, emb_size_rbf, activation=False)
        self.mlp_rbf_h = Dense(num_radial, emb_size_rbf, activation=False)
        self.mlp_rbf_out = Dense(num_radial, emb_size_rbf, activation=False)
        self.mlp_cbf3 = nn.Parameter(torch.empty(num_spherical, num_radial, emb_size_cbf))  # W_cbf[l, r, j]

        self.edge_emb = EdgeConcatDense(emb_size_atom, num_radial, emb_size_edge)
        self.int_blocks = nn.ModuleList(
            InteractionBlock(i + 1, emb_size_atom, emb_size_edge, emb_size_rbf, emb_size_cbf, emb_size_trip,
                             emb_size_bil_trip, num_before_skip, num_after_skip, num_concat, num_atom, scales)
            for i in range(num_blocks)
        )
        self.out_blocks = nn.ModuleList(
            OutputBlock(k, emb_size_atom, emb_size_edge, emb_size_rbf, num_atom, energy_branch, scales)
            for k in range(num_blocks + 1)
        )

    def reset_parameters(self) -> None:
        """Draw every weight again (He-orthogonal, docs/GEMNET.md §6), in the order the layers are built;
        the scale factors keep their values."""
        for dense in (self.mlp_rbf3, self.mlp_rbf_h, self.mlp_rbf_out):
            dense.reset_parameters()
        he_orthogonal_(self.mlp_cbf3)
        reset_modules(self.edge_emb, self.int_blocks, self.out_blocks)

    def scale_factors(self) -> dict[str, ScaleFactor]:
        """{reference name: ScaleFactor} of this model."""
        return scale_factors(self)

    def edge_bases(self, graph: PeriodicGraph, width: int | None = None,
                   edge_mask: Tensor | None = None) -> tuple[EdgeBases, Tensor]:
        """Per-forward shared tensors (docs/GEMNET.md §4.2) and unit edge vectors u [E, 3].

        Geometry, bases and the angular table are computed with autocast off in fp32 (fp64 for fp64
        graphs); the rbf projections run in the autocast dtype.

        Args:
            graph: periodic graph (edges sorted by target).
            width: D >= max in-degree of the padded triplet layout; None computes it (one host sync).
            edge_mask: [E] bool for a padded graph (:mod:`dpcdvae.geometry.static_graph`): False marks
                sink edges, which all share one slot of the last atom's row (a sink atom without real
                edges), so they form no triplet; real edges beyond ``width`` go there too (the graph's
                ``overflow`` flag reports them) instead of failing an assert. None: every edge is real.
        """
        src, dst, id_swap = graph.src, graph.dst, graph.id_swap
        n = int(graph.num_nodes)
        num_edges = src.shape[0]
        device = dst.device
        gdtype = geometry_dtype(graph.vec)
        deg = segment_count(dst, n)  # in-degrees, no host sync
        if edge_mask is not None and width is None:
            raise ValueError("GemNetT.edge_bases: a padded graph (edge_mask) needs its fixed width")
        if width is None:
            width = int(deg.max()) if num_edges > 0 else 1
        width = max(int(width), 1)
        s_dim = self.num_spherical
        with torch.autocast(device_type=device.type, enabled=False):
            vec = graph.vec.to(gdtype)
            dist = graph.dist.to(gdtype)
            u = vec / dist.unsqueeze(-1)
            rbf = self.radial_basis(dist)  # [E, R]
            rank = torch.arange(num_edges, device=device) - exclusive_cumsum(deg)[dst]
            if edge_mask is None:
                if num_edges > 0:
                    torch._assert_async((rank < width).all(), "GemNetT: padded width < max in-degree")
                slot = dst * width + rank
            else:
                slot = torch.where(edge_mask & (rank < width), dst * width + rank, (n - 1) * width)
            u_pad = u.new_zeros(n * width, 3).index_copy(0, slot, u).view(n, width, 3)
            cos = (u_pad.unsqueeze(2) * u_pad.unsqueeze(1)).sum(-1).clamp(-1.0, 1.0)  # [N, D, D]
            valid = torch.zeros(n * width, dtype=torch.bool, device=device).index_fill(0, slot, True)
            valid = valid.view(n, width)
            mask = valid.unsqueeze(2) & valid.unsqueeze(1)
            mask &= ~torch.eye(width, dtype=torch.bool, device=device)
            ylm = legendre_harmonics(cos, s_dim) * mask.unsqueeze(-1).to(gdtype)  # [N, D(out), D(in), S]
            trip_y = ylm.permute(0, 1, 3, 2).reshape(n, width * s_dim, width)
            trip_weight = (deg[dst] - 1).to(gdtype)

        r, cb, drbf = rbf.shape[1], self.emb_size_cbf, self.emb_size_rbf
        w_fused = torch.cat([self.mlp_rbf3.weight, self.mlp_rbf_h.weight, self.mlp_rbf_out.weight,
                             self.mlp_cbf3.permute(0, 2, 1).reshape(s_dim * cb, r)], dim=0)
        proj = F.linear(rbf, w_fused)  # [E, 3 D_rbf + S D_cbf]
        rbf3, rbf_h, rbf_out = proj[:, :drbf], proj[:, drbf : 2 * drbf], proj[:, 2 * drbf : 3 * drbf]
        cbf_t = proj[:, 3 * drbf :].reshape(num_edges, s_dim, cb).transpose(1, 2).contiguous()
        if torch.is_autocast_enabled(device.type):
            trip_y = trip_y.to(torch.get_autocast_dtype(device.type))
        bases = EdgeBases(
            src=src, dst=dst, id_swap=id_swap, num_nodes=n, rbf=rbf, rbf3=rbf3, rbf_h=rbf_h, rbf_out=rbf_out,
            cbf_t=cbf_t, trip_y=trip_y, slot=slot, width=width, trip_weight=trip_weight,
        )
        return bases, u

    def forward(
        self, h: Tensor, graph: PeriodicGraph, triplets: GemNetTriplets | None = None, *,
        width: int | None = None, edge_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Run GemNet-T.

        Args:
            h: [N, A] atom features.
            graph: periodic graph with ``num_nodes == N``, built with this model's cutoff.
            triplets: optional GemNet triplets of ``graph``; only ``triplets.kmax`` is read (the padded
                width is kmax + 1, so no host sync happens here). Without it the width is computed from
                the in-degrees (one host sync). The atom-padded layout enumerates exactly the triplets
                of :func:`~dpcdvae.geometry.triplets.gemnet_triplets` (ordered pairs of distinct edges
                with the same target), so the index lists are not needed.
            width: the padded width directly (overrides ``triplets``; a padded graph's max degree).
            edge_mask: [E] bool real edges of a padded graph (see :meth:`edge_bases`).

        Returns:
            vec [N, 3] (fp32, fp64 for fp64 graphs; Cartesian frame of ``graph.vec``) and
            h_final [N, A].
        """
        if h.ndim != 2 or h.shape[1] != self.emb_size_atom:
            raise ValueError(f"h must be [N, {self.emb_size_atom}], got {tuple(h.shape)}")
        if h.shape[0] != graph.num_nodes:
            raise ValueError(f"h has {h.shape[0]} rows but the graph has {graph.num_nodes} nodes")
        if width is None:
            width = None if triplets is None else triplets.kmax + 1
        bases, u = self.edge_bases(graph, width, edge_mask)
        return self.run_blocks(h, bases, u)

    def run_blocks(self, h: Tensor, bases: EdgeBases, u: Tensor) -> tuple[Tensor, Tensor]:
        """The network body on precomputed :meth:`edge_bases` (no host syncs, no data-dependent
        shapes: the part to ``torch.compile``).

        Args:
            h: [N, A] atom features. bases, u: from :meth:`edge_bases`.

        Returns:
            vec [N, 3] and h_final [N, A] as in :meth:`forward`.
        """
        m = self.edge_emb(h, bases.rbf, bases.src, bases.dst)
        f_edge = self.out_blocks[0](m, bases.rbf_out)
        for block, out_block in zip(self.int_blocks, self.out_blocks[1:]):
            h, m = block(h, m, bases)
            f_edge = f_edge + out_block(m, bases.rbf_out)
        with torch.autocast(device_type=u.device.type, enabled=False):
            vec = segment_sum(f_edge.to(u.dtype).unsqueeze(-1) * u, bases.dst, bases.num_nodes, fp32=True)
        return vec, h
