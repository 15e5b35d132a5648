"""Periodic DimeNet++ crystal encoder (docs/GEMNET.md §8-9).

The network blocks are PyG's (``torch_geometric.nn.models.dimenet``: ``BesselBasisLayer``,
``EmbeddingBlock``, ``InteractionPPBlock``, ``OutputPPBlock``, ``ResidualLayer``), fed with periodic
edges and triplets from :mod:`dpcdvae.geometry`. Deviations from the PyG blocks, all deliberate:

* The spherical basis is our own (:class:`SphericalBasis`): PyG's ``SphericalBasisLayer`` evaluates
  sympy closed forms in fp32, which lose the small-argument values of j_l for l >= 5 (40 % error for
  l = 6 near the origin), and takes ~25 s to build. Ours evaluates the [E, 7, 6] radial table in
  float64 (power series for small arguments, upward recurrence for large ones) and casts once.
* The atom embedding has ``max_z + 1`` rows (default 101: Z = 1..100 work; PyG/ref: 95 rows).
* Edge->atom and triplet->edge sums go through fp32 ``index_add_`` buffers even under bf16 autocast.
* The output blocks' ``lin_up`` has a bias by default, as in CDVAE/DP-CDVAE (PyG: no bias).
* Row gathers use ``index_select`` (backward: atomic ``index_add_``), not ``x[idx]``: the backward of
  advanced indexing sorts the indices and sums each repeated index serially in one warp
  (pytorch/pytorch#41162), which made the padded step (~10^5 sink triplets on a few sink edges) 7-9x
  slower than eager on the GPU.

Parameter count with the encoder configuration of the references (hidden 128, 4 blocks, ...):
2,214,278 (max_z = 100, lin_up bias); 2,213,510 with ``max_z=94`` (the reference's 95-row table,
identical to CDVAE/DP-CDVAE); 2,212,230 with ``max_z=94`` and no lin_up bias (PyG HEAD).

Graph: unlike the references (precomputed CrystalNN bonds), the encoder uses the on-the-fly periodic
radius graph of the decoder (``radius_graph_pbc``: 7 Å cutoff, at most 20 neighbours per target,
reference symmetrisation). This avoids pymatgen at training time and slow preprocessing; graphs are
larger (about 20 neighbours instead of CrystalNN's ~4-12), so triplets are more numerous.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Literal

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch_geometric.nn.models.dimenet import (
    BesselBasisLayer,
    EmbeddingBlock,
    InteractionPPBlock,
    OutputPPBlock,
)

from dpcdvae.geometry.graph import PeriodicGraph, radius_graph_pbc
from dpcdvae.geometry.triplets import dimenet_triplets
from dpcdvae.nn.checks import check_crystal_inputs
from dpcdvae.ops import acc_dtype, geometry_dtype, segment_mean, segment_sum

__all__ = [
    "spherical_jn",
    "spherical_bessel_roots",
    "SphericalBasis",
    "PeriodicDimeNetPP",
    "check_crystal_inputs",
    "envelope",
]

_SERIES_SWITCH = 8.0  # power series below this argument, upward recurrence above
_SERIES_TERMS = 30  # enough for |t| < 8 to float64 round-off


# ----------------------------------------------------------------------------------------------
# spherical Bessel functions and the DimeNet spherical basis
# ----------------------------------------------------------------------------------------------
def spherical_jn(order: Tensor, t: Tensor, lmax: int) -> Tensor:
    """Spherical Bessel functions of the first kind, j_order(t), elementwise, accurate in float64.

    Power series for t < 8 (no cancellation of the small-argument values), upward recurrence from
    j_0, j_1 for t >= 8 (stable there since order <= lmax < 8 is assumed). Differentiable.

    Args:
        order: integer tensor broadcastable with ``t``, values in 0..lmax.
        t: float tensor (use float64), t > 0.
        lmax: the largest order present (a Python int, no host sync).

    Returns:
        j_order(t), shape broadcast(order, t), dtype of ``t``.
    """
    if lmax >= _SERIES_SWITCH:
        raise ValueError(f"spherical_jn supports orders < {_SERIES_SWITCH:g}, got lmax={lmax}")
    small = t < _SERIES_SWITCH
    lf = order.to(t.dtype)
    # power series: j_l(t) = t^l/(2l+1)!! * sum_k (-t^2/2)^k / (k! (2l+3)(2l+5)...(2l+2k+1))
    ts = torch.where(small, t, torch.ones_like(t))
    u = -0.5 * ts * ts
    term = torch.ones_like(u * lf)
    acc = term
    for k in range(1, _SERIES_TERMS + 1):
        term = term * u / (k * (2.0 * lf + 2 * k + 1))
        acc = acc + term
    dfact = torch.ones_like(lf)  # (2l+1)!!, exact, built on the device (no host copy)
    for m in range(1, lmax + 1):
        dfact = dfact * torch.where(order >= m, 2.0 * m + 1.0, 1.0).to(t.dtype)
    series = acc * ts.pow(lf) / dfact
    # upward recurrence: j_{l+1} = (2l+1)/t j_l - j_{l-1}
    tl = torch.where(small, torch.full_like(t, _SERIES_SWITCH), t)
    sin, cos = torch.sin(tl), torch.cos(tl)
    j_prev, j_cur = sin / tl, sin / (tl * tl) - cos / tl
    rec = torch.where(order == 0, j_prev, j_cur)
    for l in range(1, lmax):
        j_prev, j_cur = j_cur, (2 * l + 1) / tl * j_cur - j_prev
        rec = torch.where(order == l + 1, j_cur, rec)
    return torch.where(small, series, rec)


def _jn_values(l: int, x: Tensor) -> Tensor:
    """j_l at float64 points x (same accurate series/recurrence as :func:`spherical_jn`)."""
    return spherical_jn(torch.full_like(x, l, dtype=torch.long), x, lmax=max(l, 1))


@functools.lru_cache(maxsize=8)
def spherical_bessel_roots(lmax: int, num_roots: int) -> tuple[tuple[float, ...], ...]:
    """First ``num_roots`` positive roots of j_l for l = 0..lmax, float64 (vectorised bisection).

    Roots of j_l interlace with those of j_{l-1}, so each is bracketed by two consecutive roots of
    the previous order (z_0n = n pi). No scipy needed at model construction (GPU images may lack it).
    """
    n_total = num_roots + lmax
    prev = torch.tensor([math.pi * (k + 1) for k in range(n_total)], dtype=torch.float64)
    roots = [tuple(prev[:num_roots].tolist())]
    for l in range(1, lmax + 1):
        lo, hi = prev[:-1].clone(), prev[1:].clone()
        f_lo = _jn_values(l, lo)
        for _ in range(64):
            mid = 0.5 * (lo + hi)
            f_mid = _jn_values(l, mid)
            left = torch.sign(f_mid) == torch.sign(f_lo)
            lo = torch.where(left, mid, lo)
            f_lo = torch.where(left, f_mid, f_lo)
            hi = torch.where(left, hi, mid)
        cur = 0.5 * (lo + hi)
        roots.append(tuple(cur[:num_roots].tolist()))
        prev = cur
    return tuple(roots)


def envelope(x: Tensor, exponent: int) -> Tensor:
    """DimeNet envelope with the 1/x folded in, u(x) = 1/x + a x^(p-1) + b x^p + c x^(p+1),
    p = exponent + 1, masked to 0 for x >= 1 (C^2 at x = 1)."""
    p = exponent + 1
    a, b, c = -(p + 1) * (p + 2) / 2, p * (p + 2), -p * (p + 1) / 2
    xp0 = x.pow(p - 1)
    return (1.0 / x + a * xp0 + b * xp0 * x + c * xp0 * x * x) * (x < 1.0).to(x.dtype)


class SphericalBasis(nn.Module):
    """DimeNet 2D spherical basis (no parameters): per triplet (k->j->i),
    sbf[l, n] = u(d_kj/c) * N_ln * j_l(z_ln d_kj/c) * Y_l0(cos theta), flattened l-major to S*R.

    z_ln is the n-th root of j_l and N_ln = sqrt(2)/|j_{l+1}(z_ln)|. The radial table is evaluated
    per edge in float64 (docs/GEMNET.md §8) and cast to the dtype of ``dist``.
    """

    def __init__(self, num_spherical: int, num_radial: int, cutoff: float, envelope_exponent: int = 5):
        super().__init__()
        if not 1 <= num_spherical <= 8:
            raise ValueError(f"num_spherical must be in 1..8, got {num_spherical}")
        self.num_spherical, self.num_radial = num_spherical, num_radial
        self.cutoff, self.envelope_exponent = float(cutoff), envelope_exponent
        roots = spherical_bessel_roots(num_spherical - 1, num_radial)
        norms = [[math.sqrt(2.0) / abs(v) for v in _jn_values(l + 1, torch.tensor(roots[l], dtype=torch.float64)).tolist()]
                 for l in range(num_spherical)]
        self._tables = {"roots": roots, "norms": norms}
        for name, val in self._tables.items():
            self.register_buffer(name, torch.tensor(val, dtype=torch.float64), persistent=False)
        self.register_buffer("order", torch.arange(num_spherical).unsqueeze(-1), persistent=False)

    def _apply(self, fn, recurse: bool = True):  # keep the constant tables in float64
        super()._apply(fn, recurse)
        for name, val in self._tables.items():
            setattr(self, name, torch.tensor(val, dtype=torch.float64, device=self.order.device))
        return self

    def radial(self, dist: Tensor) -> Tensor:
        """dist [E] Å -> [E, S, R] radial table u(x) N_ln j_l(z_ln x), dtype of ``dist``."""
        x = (dist.to(torch.float64) / self.cutoff).view(-1, 1, 1)
        t = self.roots * x  # [E, S, R]
        j = spherical_jn(self.order, t, self.num_spherical - 1)
        out = envelope(x, self.envelope_exponent) * self.norms * j
        return out.to(dist.dtype)

    def angular(self, cos_angle: Tensor) -> Tensor:
        """cos theta [T] -> [T, S] Y_l0 = sqrt((2l+1)/(4 pi)) P_l(cos theta) (Legendre recursion)."""
        z = cos_angle
        p = [torch.ones_like(z), z]
        for l in range(2, self.num_spherical):
            p.append(((2 * l - 1) * z * p[l - 1] - (l - 1) * p[l - 2]) / l)
        coef = [math.sqrt((2 * l + 1) / (4 * math.pi)) for l in range(self.num_spherical)]
        return torch.stack([c * pl for c, pl in zip(coef, p[: self.num_spherical])], dim=-1)

    def forward(self, dist: Tensor, cos_angle: Tensor, idx_kj: Tensor) -> Tensor:
        """dist [E], cos_angle [T], idx_kj [T] -> sbf [T, S*R] (radial part from edge kj)."""
        rad = self.radial(dist).index_select(0, idx_kj)  # [T, S, R]
        return (rad * self.angular(cos_angle).unsqueeze(-1)).flatten(1)


# ----------------------------------------------------------------------------------------------
# PyG blocks, adapted
# ----------------------------------------------------------------------------------------------
class AtomEmbeddingBlock(EmbeddingBlock):
    """PyG ``EmbeddingBlock`` with a ``max_z + 1``-row table indexed by Z (row 0 unused)."""

    def __init__(self, num_radial: int, hidden_channels: int, act: Callable, max_z: int = 100):
        super().__init__(num_radial, hidden_channels, act)
        self.emb = nn.Embedding(max_z + 1, hidden_channels)
        self.reset_parameters()

    def forward(self, x: Tensor, rbf: Tensor, i: Tensor, j: Tensor) -> Tensor:
        """x [N] Z, rbf [E, R], i / j [E] target / source atoms -> edge features [E, hidden]."""
        x = self.emb(x)
        rbf = self.act(self.lin_rbf(rbf))
        return self.act(self.lin(torch.cat([x.index_select(0, i), x.index_select(0, j), rbf], dim=-1)))


class InteractionPP(InteractionPPBlock):
    """PyG ``InteractionPPBlock`` whose triplet -> edge sum accumulates in fp32 under autocast."""

    def forward(self, x: Tensor, rbf: Tensor, sbf: Tensor, idx_kj: Tensor, idx_ji: Tensor) -> Tensor:
        x_ji = self.act(self.lin_ji(x))
        x_kj = self.act(self.lin_kj(x))
        x_kj = x_kj * self.lin_rbf2(self.lin_rbf1(rbf))
        x_kj = self.act(self.lin_down(x_kj))
        msg = x_kj.index_select(0, idx_kj) * self.lin_sbf2(self.lin_sbf1(sbf))  # [T, int_emb]
        x_kj = self.act(self.lin_up(segment_sum(msg, idx_ji, x.shape[0], fp32=True)))
        h = x_ji + x_kj
        for layer in self.layers_before_skip:
            h = layer(h)
        h = self.act(self.lin(h)) + x
        for layer in self.layers_after_skip:
            h = layer(h)
        return h


class OutputPP(OutputPPBlock):
    """PyG ``OutputPPBlock`` with the reference's optional ``lin_up`` bias and an fp32 edge -> atom
    sum. The bias keeps PyTorch's default Linear init (the reference never resets it)."""

    def __init__(self, num_radial: int, hidden_channels: int, out_emb_channels: int, out_channels: int,
                 num_layers: int, act: Callable, output_initializer: str = "zeros",
                 lin_up_bias: bool = True):
        super().__init__(num_radial, hidden_channels, out_emb_channels, out_channels, num_layers, act,
                         output_initializer)
        if lin_up_bias:
            self.lin_up = nn.Linear(hidden_channels, out_emb_channels, bias=True)
            self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        if self.lin_up.bias is not None:
            bound = 1.0 / math.sqrt(self.lin_up.in_features)
            nn.init.uniform_(self.lin_up.bias, -bound, bound)

    def forward(self, x: Tensor, rbf: Tensor, i: Tensor, num_nodes: int | None = None) -> Tensor:
        if num_nodes is None:
            raise ValueError("OutputPP needs num_nodes (the number of atoms)")
        x = segment_sum(self.lin_rbf(rbf) * x, i, num_nodes, fp32=True)
        x = self.lin_up(x)
        for lin in self.lins:
            x = self.act(lin(x))
        return self.lin(x)


# ----------------------------------------------------------------------------------------------
# the model
# ----------------------------------------------------------------------------------------------
class PeriodicDimeNetPP(nn.Module):
    """DimeNet++ on a periodic radius graph, mean readout: crystal -> [B, out_channels].

    Edges j -> i with vectors ``vec = r_i - (r_j + n L)``; triplets k -> j -> i from
    :func:`~dpcdvae.geometry.triplets.dimenet_triplets` (``triplet_exclusion="edge"`` drops only the
    backtrack e_kj = rev(e_ji); ``"atom"`` drops every k == i, the reference quirk). The angle is the
    reference's θ = atan2(|a x b|, a.b) with a = w_ji, b = w_kj (the supplement of the bond angle at
    j); only cos θ = vec_ji . vec_kj / (d_ji d_kj) enters the basis, so it is computed directly
    (no atan2: smooth gradients at collinear triplets). Geometry and bases run in fp32 (the Bessel
    table in float64) with autocast disabled; the blocks run under whatever autocast is active.
    """

    def __init__(
        self,
        hidden_channels: int = 128,
        out_channels: int = 256,
        num_blocks: int = 4,
        int_emb_size: int = 64,
        basis_emb_size: int = 8,
        out_emb_channels: int = 256,
        num_spherical: int = 7,
        num_radial: int = 6,
        cutoff: float = 7.0,
        max_neighbors: int | None = 20,
        envelope_exponent: int = 5,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_output_layers: int = 3,
        max_z: int = 100,
        triplet_exclusion: Literal["edge", "atom"] = "edge",
        images: Literal["ref", "exact"] = "ref",
        symmetrize: Literal["ref", "union"] = "ref",
        output_initializer: Literal["zeros", "glorot_orthogonal"] = "zeros",
        output_lin_up_bias: bool = True,
    ):
        build_args = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        super().__init__()
        self._build_args = build_args  # for reset_parameters
        if triplet_exclusion not in ("edge", "atom"):
            raise ValueError(f"triplet_exclusion must be 'edge' or 'atom', got {triplet_exclusion!r}")
        self.cutoff, self.max_neighbors, self.max_z = float(cutoff), max_neighbors, max_z
        self.triplet_exclusion, self.images, self.symmetrize = triplet_exclusion, images, symmetrize
        self.out_channels = out_channels
        act = F.silu
        self.rbf = BesselBasisLayer(num_radial, cutoff, envelope_exponent)
        self.sbf = SphericalBasis(num_spherical, num_radial, cutoff, envelope_exponent)
        self.emb = AtomEmbeddingBlock(num_radial, hidden_channels, act, max_z)
        self.output_blocks = nn.ModuleList([
            OutputPP(num_radial, hidden_channels, out_emb_channels, out_channels, num_output_layers, act,
                     output_initializer, output_lin_up_bias)
            for _ in range(num_blocks + 1)
        ])
        self.interaction_blocks = nn.ModuleList([
            InteractionPP(hidden_channels, int_emb_size, basis_emb_size, num_spherical, num_radial,
                          num_before_skip, num_after_skip, act)
            for _ in range(num_blocks)
        ])

    def reset_parameters(self) -> None:
        """Draw every weight again exactly as the constructor does (same seed -> same weights).

        PyG's blocks draw their weights while they are built (PyTorch's default init of each Linear,
        then PyG's glorot-orthogonal / zero init; the embedding and output blocks replace a layer
        after that), so the only way to repeat those draws is to build a fresh copy, which is done
        here on the CPU; its parameters are copied in (the constant tables are buffers, kept).
        """
        fresh = dict(PeriodicDimeNetPP(**self._build_args).named_parameters())
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(fresh[name])

    def build_graph(self, frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor) -> PeriodicGraph:
        """Periodic radius graph with this model's cutoff / cap / image / symmetrisation settings."""
        dtype = geometry_dtype(frac_coords)
        with torch.autocast(frac_coords.device.type, enabled=False):
            return radius_graph_pbc(frac_coords.to(dtype), lattice.to(dtype), num_atoms, self.cutoff,
                                    self.max_neighbors, self.images, self.symmetrize)

    def triplets(self, graph: PeriodicGraph) -> tuple[Tensor, Tensor]:
        """(idx_kj [T], idx_ji [T]) with this model's exclusion rule."""
        return dimenet_triplets(graph, self.triplet_exclusion)

    def bases(self, graph: PeriodicGraph, idx_kj: Tensor, idx_ji: Tensor) -> tuple[Tensor, Tensor]:
        """rbf [E, R] and sbf [T, S*R], in fp32 (or the graph's float64), autocast disabled."""
        with torch.autocast(graph.vec.device.type, enabled=False):
            vec, dist = graph.vec, graph.dist
            v_ji, v_kj = vec.index_select(0, idx_ji), vec.index_select(0, idx_kj)
            cos = (v_ji * v_kj).sum(-1) / (dist.index_select(0, idx_ji) * dist.index_select(0, idx_kj))
            cos = cos.clamp(-1.0, 1.0)
            return self.rbf(dist), self.sbf(dist, cos, idx_kj)

    def atom_outputs(self, atom_types: Tensor, graph: PeriodicGraph, idx_kj: Tensor,
                     idx_ji: Tensor) -> Tensor:
        """Per-atom sum of the output blocks, P_i = sum_k P_i^(k): [N, out_channels] (fp32 or wider)."""
        rbf, sbf = self.bases(graph, idx_kj, idx_ji)
        n, i, j = graph.num_nodes, graph.dst, graph.src
        x = self.emb(atom_types.long(), rbf, i, j)
        out = self.output_blocks[0](x, rbf, i, num_nodes=n)
        total = out.to(acc_dtype(out))
        for interaction, output in zip(self.interaction_blocks, self.output_blocks[1:]):
            x = interaction(x, rbf, sbf, idx_kj, idx_ji)
            total = total + output(x, rbf, i, num_nodes=n).to(total.dtype)
        return total

    def forward_graph(self, atom_types: Tensor, graph: PeriodicGraph, idx_kj: Tensor, idx_ji: Tensor,
                      batch: Tensor, num_atoms: Tensor) -> Tensor:
        """Encode with a prebuilt graph: atom_types [N] Z, batch [N], num_atoms [B] -> [B, out]."""
        out = self.atom_outputs(atom_types, graph, idx_kj, idx_ji)
        return segment_mean(out, batch, num_atoms.shape[0], fp32=True, counts=num_atoms)

    def forward(self, frac_coords: Tensor, atom_types: Tensor, num_atoms: Tensor, batch: Tensor,
                lattice: Tensor) -> Tensor:
        """frac_coords [N, 3] fractional, atom_types [N] Z (1..max_z), num_atoms [B], batch [N],
        lattice [B, 3, 3] Å (rows = lattice vectors) -> per-crystal vectors [B, out_channels]."""
        check_crystal_inputs(frac_coords, atom_types, num_atoms, batch, lattice, self.max_z)
        graph = self.build_graph(frac_coords, lattice, num_atoms)
        idx_kj, idx_ji = self.triplets(graph)
        return self.forward_graph(atom_types, graph, idx_kj, idx_ji, batch, num_atoms)
