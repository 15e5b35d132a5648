"""GemNet-T blocks (docs/GEMNET.md §4.4-§4.7): triplet interaction, atom update, interaction, output.

The blocks read the per-forward shared tensors from an :class:`EdgeBases` built once by
:class:`~dpcdvae.nn.gemnet.model.GemNetT` (bases, projections, the padded triplet layout).

Padded triplet layout ("atom-padded", a variant of docs/GEMNET.md §10's I_pad layout). A GemNet-T triplet is
an ordered pair of distinct edges (b->a, c->a) entering the same atom a. With edges sorted by target,
the edges entering a occupy slots 0..deg_a-1 of a row of width D >= max in-degree, so every triplet of
atom a is a pair (i, j), i != j, of slots of that row. The angular factors are stored once as
``trip_y [N, D*S, D]`` (row (i, l), column j: Y_l(cos phi) of the triplet with output slot i and input
slot j; zero on the diagonal and in padding) and the triplet sum of a block is one batched matmul
``S = trip_y @ y_pad`` with ``y_pad [N, D, Dt]`` the edge features scattered to their slots. Compared
to the per-output-edge I_pad (E x Kmax x Dt gathered copy), nothing is duplicated per triplet: the
gather is a permutation of the edges, and its backward is a gather too.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from dpcdvae.nn.gemnet.init import he_orthogonal_
from dpcdvae.nn.gemnet.layers import INV_SQRT2, Dense, EdgeConcatDense, ResidualLayer
from dpcdvae.nn.gemnet.scaling import ScaleFactor
from dpcdvae.nn.init import reset_after_build, reset_modules
from dpcdvae.ops import segment_sum

__all__ = [
    "EdgeBases",
    "triplet_bilinear",
    "TripletInteraction",
    "AtomUpdate",
    "InteractionBlock",
    "OutputBlock",
]


@dataclass
class EdgeBases:
    """Per-forward tensors shared by all blocks (docs/GEMNET.md §4.2).

    Attributes:
        src, dst, id_swap: [E] int64 (dst ascending).
        num_nodes: N.
        rbf: [E, R] Gaussian x envelope (fp32 / fp64).
        rbf3, rbf_h, rbf_out: [E, D_rbf] shared linear projections of rbf.
        cbf_t: [E, D_cbf, S] per-edge cbf down-projection P_e^T (the output edge's radial part).
        trip_y: [N, D*S, D] angular factors in the atom-padded layout (see module doc).
        slot: [E] int64 row of edge e in the flattened [N*D] padded layout (dst * D + rank).
        width: D.
        trip_weight: [E] number of triplets that read edge e as input edge (deg(dst)-1), for the
            scale-factor statistics only.
    """

    src: Tensor
    dst: Tensor
    id_swap: Tensor
    num_nodes: int
    rbf: Tensor
    rbf3: Tensor
    rbf_h: Tensor
    rbf_out: Tensor
    cbf_t: Tensor
    trip_y: Tensor
    slot: Tensor
    width: int
    trip_weight: Tensor


def triplet_bilinear(y: Tensor, weight: Tensor, bases: EdgeBases) -> Tensor:
    """z_e[o] = sum_{tau: ca(tau)=e} sum_{j,i} W[i, j, o] c_tau[j] y_{ba(tau)}[i] (docs/GEMNET.md §4.5).

    With c_tau[j] = sum_l Y_l(phi_tau) P_e[l, j]. Evaluated as S_e = sum_tau Y_tau (x) y_tau (one bmm in
    the atom-padded layout), Q_e = P_e^T S_e (bmm), z = flatten(Q) W' (one GEMM, W' = W permuted to
    (j, i, o)).

    Args:
        y: [E, Dt] input-edge features.
        weight: [Dt, D_cbf, O] bilinear weight (indices i, j, o).
        bases: shared tensors.

    Returns:
        [E, O].
    """
    n, d = bases.num_nodes, bases.width
    num_edges, dt = y.shape
    s_dim = bases.cbf_t.shape[2]
    y_pad = y.new_zeros(n * d, dt).index_copy(0, bases.slot, y).view(n, d, dt)
    s = torch.bmm(bases.trip_y, y_pad)  # [N, D*S, Dt]
    s = s.view(n * d, s_dim, dt).index_select(0, bases.slot)  # [E, S, Dt]
    q = torch.bmm(bases.cbf_t, s)  # [E, D_cbf, Dt]
    w = weight.permute(1, 0, 2).reshape(weight.shape[1] * weight.shape[0], weight.shape[2])
    return torch.matmul(q.reshape(num_edges, q.shape[1] * q.shape[2]), w)


class TripletInteraction(nn.Module):
    """docs/GEMNET.md §4.5: m [E, H] -> x3 [E, H].

    Args:
        index: 1-based block index (names the scale factors).
        emb_size_edge: H. emb_size_rbf / emb_size_cbf: D_rbf / D_cbf. emb_size_trip: Dt.
        emb_size_bil_trip: O (bilinear output width).
        scales: {name: (value, fitted)} initial scale factors.
    """

    @reset_after_build
    def __init__(
        self,
        index: int,
        emb_size_edge: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
        emb_size_trip: int,
        emb_size_bil_trip: int,
        scales: dict[str, tuple[float, bool]],
    ) -> None:
        super().__init__()
        self.dense_ba = Dense(emb_size_edge, emb_size_edge, activation=True)
        self.mlp_rbf = Dense(emb_size_rbf, emb_size_edge, activation=False)
        self.scale_rbf = ScaleFactor(f"TripInteraction_{index}_had_rbf", *scales[f"TripInteraction_{index}_had_rbf"])
        self.down_projection = Dense(emb_size_edge, emb_size_trip, activation=True)
        self.bilinear_weight = nn.Parameter(torch.empty(emb_size_trip, emb_size_cbf, emb_size_bil_trip))
        self.scale_cbf_sum = ScaleFactor(f"TripInteraction_{index}_sum_cbf", *scales[f"TripInteraction_{index}_sum_cbf"])
        self.up_projection_ca = Dense(emb_size_bil_trip, emb_size_edge, activation=True)
        self.up_projection_ac = Dense(emb_size_bil_trip, emb_size_edge, activation=True)

    def reset_parameters(self) -> None:
        """The Dense layers in the order they are built, then the bilinear weight."""
        reset_modules(*self.children())
        he_orthogonal_(self.bilinear_weight)

    def forward(self, m: Tensor, bases: EdgeBases) -> Tensor:
        y = self.dense_ba(m)
        y = self.scale_rbf(y * self.mlp_rbf(bases.rbf3), ref=y)
        y = self.down_projection(y)  # [E, Dt]
        z = triplet_bilinear(y, self.bilinear_weight, bases)
        z = self.scale_cbf_sum(z, ref=y, ref_weight=bases.trip_weight)
        x_ca = self.up_projection_ca(z)
        x_ac = self.up_projection_ac(z).index_select(0, bases.id_swap)
        return (x_ca + x_ac) * INV_SQRT2


def _atom_mlp(emb_size_edge: int, emb_size_atom: int, num_layers: int) -> nn.Sequential:
    return nn.Sequential(
        Dense(emb_size_edge, emb_size_atom, activation=True),
        *[ResidualLayer(emb_size_atom) for _ in range(num_layers)],
    )


class AtomUpdate(nn.Module):
    """docs/GEMNET.md §4.6: q_i = s * sum_{e -> i} m_e * (rbf_h W_h)_e, then Dense(H->A) and Res(A) x num_atom.

    Args:
        name: scale-factor name (``"AtomUpdate_i_sum"`` or ``"OutBlock_k_sum"``).
    """

    def __init__(
        self, name: str, emb_size_atom: int, emb_size_edge: int, emb_size_rbf: int, num_atom: int,
        scales: dict[str, tuple[float, bool]],
    ) -> None:
        super().__init__()
        self.dense_rbf = Dense(emb_size_rbf, emb_size_edge, activation=False)
        self.scale_sum = ScaleFactor(name, *scales[name])
        self.layers = _atom_mlp(emb_size_edge, emb_size_atom, num_atom)

    def forward(self, m: Tensor, rbf_emb: Tensor, dst: Tensor, num_nodes: int) -> Tensor:
        """m [E, H], rbf_emb [E, D_rbf], dst [E] -> [N, A]."""
        q = segment_sum(m * self.dense_rbf(rbf_emb), dst, num_nodes, fp32=True)
        q = self.scale_sum(q, ref=m)
        return self.layers(q)


class InteractionBlock(nn.Module):
    """docs/GEMNET.md §4.4: (h [N, A], m [E, H]) -> (h, m)."""

    def __init__(
        self,
        index: int,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
        emb_size_trip: int,
        emb_size_bil_trip: int,
        num_before_skip: int,
        num_after_skip: int,
        num_concat: int,
        num_atom: int,
        scales: dict[str, tuple[float, bool]],
    ) -> None:
        super().__init__()
        self.dense_ca = Dense(emb_size_edge, emb_size_edge, activation=True)
        self.trip_interaction = TripletInteraction(
            index, emb_size_edge, emb_size_rbf, emb_size_cbf, emb_size_trip, emb_size_bil_trip, scales
        )
        self.layers_before_skip = nn.Sequential(*[ResidualLayer(emb_size_edge) for _ in range(num_before_skip)])
        self.layers_after_skip = nn.Sequential(*[ResidualLayer(emb_size_edge) for _ in range(num_after_skip)])
        self.atom_update = AtomUpdate(
            f"AtomUpdate_{index}_sum", emb_size_atom, emb_size_edge, emb_size_rbf, num_atom, scales
        )
        self.concat_layer = EdgeConcatDense(emb_size_atom, emb_size_edge, emb_size_edge)
        self.residual_m = nn.Sequential(*[ResidualLayer(emb_size_edge) for _ in range(num_concat)])

    def forward(self, h: Tensor, m: Tensor, bases: EdgeBases) -> tuple[Tensor, Tensor]:
        x = (self.dense_ca(m) + self.trip_interaction(m, bases)) * INV_SQRT2
        x = self.layers_before_skip(x)
        m = (m + x) * INV_SQRT2
        m = self.layers_after_skip(m)
        h = (h + self.atom_update(m, bases.rbf_h, bases.dst, bases.num_nodes)) * INV_SQRT2
        m2 = self.residual_m(self.concat_layer(h, m, bases.src, bases.dst))
        m = (m + m2) * INV_SQRT2
        return h, m


class OutputBlock(nn.Module):
    """docs/GEMNET.md §4.7: per-edge scalar F^(k)_e from m [E, H].

    The vector branch: g = Res^num_atom(Dense(m)); g = s * (g * rbf_out W_F); F = w_F^T g.
    With ``energy_branch`` the reference's per-atom energy branch (Dense(D_rbf->H), a sum scale factor,
    Dense(H->A), Res(A) x num_atom, Dense(A->1)) is built for parameter/state-dict parity only; CDVAE
    and DP-CDVAE discard its output, so it is never evaluated here.
    """

    def __init__(
        self,
        index: int,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_rbf: int,
        num_atom: int,
        energy_branch: bool,
        scales: dict[str, tuple[float, bool]],
    ) -> None:
        super().__init__()
        self.seq_forces = _atom_mlp(emb_size_edge, emb_size_edge, num_atom)
        self.dense_rbf_F = Dense(emb_size_rbf, emb_size_edge, activation=False)
        self.scale_rbf_F = ScaleFactor(f"OutBlock_{index}_had", *scales[f"OutBlock_{index}_had"])
        self.out_forces = Dense(emb_size_edge, 1, activation=False)
        self.energy: AtomUpdate | None = None
        self.out_energy: Dense | None = None
        if energy_branch:
            self.energy = AtomUpdate(
                f"OutBlock_{index}_sum", emb_size_atom, emb_size_edge, emb_size_rbf, num_atom, scales
            )
            self.out_energy = Dense(emb_size_atom, 1, activation=False)

    def forward(self, m: Tensor, rbf_out: Tensor) -> Tensor:
        """m [E, H], rbf_out [E, D_rbf] -> F^(k) [E]."""
        g = self.seq_forces(m)
        g = self.scale_rbf_F(g * self.dense_rbf_F(rbf_out), ref=g)
        return self.out_forces(g).squeeze(-1)
