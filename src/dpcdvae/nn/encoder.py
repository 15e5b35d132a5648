"""Crystal encoders of DP-CDVAE: DimeNet++, optionally fused with GINE and an atom-count embedding.

Variants (docs/REFERENCE.md §3.4, DP-CDVAE ``DimeNetppEncoder`` / ``DimeNaEncoder`` / ``DimeGINEncoder`` /
``DimeGINNaEncoder``), with D = ``out_channels`` (256):

* ``"dime"``: the periodic DimeNet++ crystal vector, [B, D].
* ``"dime+na"``: concat(DimeNet++ D, Embedding(max_atoms + 1, d_na = D)(N_atoms))
  -> Linear(2D, 4D) - ReLU - Linear(4D, D)   (512 -> 1024 -> 256).
* ``"dime+gine"``: concat(DimeNet++ D, GINE D) -> 2D -> 2D -> 2D -> D with ReLUs (512 -> 512 -> 512 -> 256).
* ``"dime+na+gine"``: concat(DimeNet++ D, GINE D, N_a embedding d_na = D/2)
  -> (2.5D) -> 2.5D -> 2.5D -> D with ReLUs (640 -> 640 -> 640 -> 256).

One periodic radius graph (cutoff 7 Å, <= 20 neighbours, reference symmetrisation) is built per
forward and shared by DimeNet++ and GINE. The references use precomputed CrystalNN bonds instead;
we use the decoder's on-the-fly graph to avoid pymatgen at training time and slow preprocessing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor, nn

from dpcdvae.nn.checks import check_crystal_inputs
from dpcdvae.nn.dimenet import PeriodicDimeNetPP
from dpcdvae.nn.gine import GINEEncoder
from dpcdvae.nn.init import reset_after_build, reset_modules
from dpcdvae.registry import ENCODERS

if TYPE_CHECKING:
    from dpcdvae.geometry.graph import PeriodicGraph

__all__ = ["CrystalEncoder", "VARIANTS", "Variant", "ENCODERS"]

Variant = Literal["dime", "dime+na", "dime+gine", "dime+na+gine"]
# the registered encoders (dpcdvae.registry.ENCODERS) that are variants of CrystalEncoder
VARIANTS: tuple[str, ...] = ENCODERS.names(cls="CrystalEncoder")

# CrystalEncoder.tiny: the sizes of the ``tiny`` preset's encoder_cfg, the reference graph (these
# keys are left at the constructor defaults) and, for unit tests, a 16-wide output, lighter DimeNet++
# output blocks and a non-zero output init (so that the output is not identically 0 at init).
_TINY_GRAPH_KEYS = ("cutoff", "max_neighbors", "images", "symmetrize", "out_channels")
_TINY_UNIT: dict[str, Any] = dict(out_channels=16, num_output_layers=1, num_after_skip=1,
                                  output_initializer="glorot_orthogonal")


def tiny_sizes() -> dict[str, Any]:
    """The network sizes of the ``tiny`` preset's encoder (``configs/tiny.yaml``; graph keys left out)."""
    from dpcdvae.config import load_preset

    enc = load_preset("tiny")["model"]["encoder_cfg"]
    return {k: v for k, v in enc.items() if k not in _TINY_GRAPH_KEYS}


def _mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for k in range(len(dims) - 1):
        layers.append(nn.Linear(dims[k], dims[k + 1]))
        if k < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class CrystalEncoder(nn.Module):
    """Crystal -> [B, out_channels], the vector that feeds fc_mu / fc_var.

    Args:
        variant: one of :data:`VARIANTS`.
        out_channels: width of the output and of each sub-encoder's output (latent width, 256).
        max_atoms: largest atom count (size of the N_a table is max_atoms + 1; checked for the
            ``+na`` variants).
        cutoff, max_neighbors, images, symmetrize: periodic graph settings (``radius_graph_pbc``).
        triplet_exclusion: "edge" (geometric) or "atom" (reference quirk), see ``PeriodicDimeNetPP``.
        max_z: largest atomic number accepted.
        hidden_channels ... output_lin_up_bias: DimeNet++ hyperparameters (reference defaults).
        gine_hidden, gine_layers, gine_message_act: GINE hyperparameters.
        na_channels: width of the N_a embedding; default D for "dime+na", D // 2 for "dime+na+gine".
    """

    @reset_after_build
    def __init__(
        self,
        variant: Variant = "dime",
        out_channels: int = 256,
        max_atoms: int = 20,
        cutoff: float = 7.0,
        max_neighbors: int | None = 20,
        images: Literal["ref", "exact"] = "ref",
        symmetrize: Literal["ref", "union"] = "ref",
        triplet_exclusion: Literal["edge", "atom"] = "edge",
        max_z: int = 100,
        hidden_channels: int = 128,
        num_blocks: int = 4,
        int_emb_size: int = 64,
        basis_emb_size: int = 8,
        out_emb_channels: int = 256,
        num_spherical: int = 7,
        num_radial: int = 6,
        envelope_exponent: int = 5,
        num_before_skip: int = 1,
        num_after_skip: int = 2,
        num_output_layers: int = 3,
        output_initializer: Literal["zeros", "glorot_orthogonal"] = "zeros",
        output_lin_up_bias: bool = True,
        gine_hidden: int = 256,
        gine_layers: int = 3,
        gine_message_act: Literal["softplus", "relu"] = "softplus",
        na_channels: int | None = None,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant, self.max_atoms, self.max_z = variant, max_atoms, max_z
        self.out_channels = out_channels
        self.use_gine = "gine" in variant
        self.use_na = "na" in variant.split("+")
        self.dimenet = PeriodicDimeNetPP(
            hidden_channels=hidden_channels, out_channels=out_channels, num_blocks=num_blocks,
            int_emb_size=int_emb_size, basis_emb_size=basis_emb_size, out_emb_channels=out_emb_channels,
            num_spherical=num_spherical, num_radial=num_radial, cutoff=cutoff, max_neighbors=max_neighbors,
            envelope_exponent=envelope_exponent, num_before_skip=num_before_skip,
            num_after_skip=num_after_skip, num_output_layers=num_output_layers, max_z=max_z,
            triplet_exclusion=triplet_exclusion, images=images, symmetrize=symmetrize,
            output_initializer=output_initializer, output_lin_up_bias=output_lin_up_bias,
        )
        self.gine = (
            GINEEncoder(gine_hidden, out_channels, gine_layers, max_z, gine_message_act, cutoff=cutoff,
                        max_neighbors=max_neighbors, images=images, symmetrize=symmetrize)
            if self.use_gine else None
        )
        if self.use_na:
            na = na_channels if na_channels is not None else (
                out_channels // 2 if self.use_gine else out_channels)
            self.na_emb: nn.Embedding | None = nn.Embedding(max_atoms + 1, na)
        else:
            self.na_emb = None
        if variant == "dime":
            self.fuse: nn.Module | None = None
        elif variant == "dime+na":
            fc = out_channels + self.na_emb.embedding_dim
            self.fuse = _mlp([fc, 2 * fc, out_channels])
        else:
            fc = 2 * out_channels + (self.na_emb.embedding_dim if self.na_emb is not None else 0)
            self.fuse = _mlp([fc, fc, fc, out_channels])

    def reset_parameters(self) -> None:
        """Draw every weight again, in the order the parts are built: DimeNet++ (PyG's init), GINE,
        the N_a embedding and the fusion MLP (PyTorch's defaults)."""
        reset_modules(*[m for m in (self.dimenet, self.gine, self.na_emb, self.fuse) if m is not None])

    @classmethod
    def tiny(cls, variant: Variant = "dime", **overrides: Any) -> "CrystalEncoder":
        """A few-thousand-parameter configuration for CPU tests: the sizes of the ``tiny`` preset
        (1 block, widths 16, small bases; :func:`tiny_sizes`) on the reference graph, output width 16,
        non-zero output init so that the DimeNet++ output is not identically 0 at init."""
        return cls(variant, **{**tiny_sizes(), **_TINY_UNIT, **overrides})

    def forward(self, frac_coords: Tensor, atom_types: Tensor, num_atoms: Tensor, batch: Tensor,
                lattice: Tensor) -> Tensor:
        """Encode a batch of crystals.

        Args:
            frac_coords: [N, 3] fractional coordinates (any real values; wrapped internally).
            atom_types: [N] int64 atomic numbers Z in 1..max_z.
            num_atoms: [B] int64 atoms per crystal (atoms of a crystal contiguous).
            batch: [N] int64 crystal index of each atom.
            lattice: [B, 3, 3] Å, rows = lattice vectors.

        Returns:
            [B, out_channels] float32 (fp32 also under autocast).
        """
        check_crystal_inputs(frac_coords, atom_types, num_atoms, batch, lattice, self.max_z,
                             self.max_atoms if self.use_na else None)
        graph = self.dimenet.build_graph(frac_coords, lattice, num_atoms)
        idx_kj, idx_ji = self.dimenet.triplets(graph)
        return self.forward_graph(atom_types, graph, idx_kj, idx_ji, batch, num_atoms)

    def forward_graph(self, atom_types: Tensor, graph: PeriodicGraph, idx_kj: Tensor,
                      idx_ji: Tensor, batch: Tensor, num_atoms: Tensor,
                      na_counts: Tensor | None = None) -> Tensor:
        """Encode with a prebuilt graph and DimeNet triplets (no input checks).

        Args:
            atom_types: [N] Z. graph: periodic graph (or a padded one, whose sink edges and sink
                triplets only reach sink atoms). idx_kj, idx_ji: [T] DimeNet triplets.
            batch: [N] crystal index. num_atoms: [B] atoms per crystal (the readout's counts).
            na_counts: [B] atom counts for the N_a embedding of the ``+na`` variants (default
                ``num_atoms``; a padded batch passes its counts clamped to ``max_atoms``).

        Returns:
            [B, out_channels] float32.
        """
        parts = [self.dimenet.forward_graph(atom_types, graph, idx_kj, idx_ji, batch, num_atoms)]
        if self.gine is not None:
            parts.append(self.gine.forward_graph(atom_types, graph, batch, num_atoms))
        if self.na_emb is not None:
            parts.append(self.na_emb((num_atoms if na_counts is None else na_counts).long()))
        if self.fuse is None:
            return parts[0]
        out = self.fuse(torch.cat([p.to(parts[0].dtype) for p in parts], dim=-1))
        return out.to(parts[0].dtype)

    def encode_batch(self, batch: "CrystalBatch") -> Tensor:  # noqa: F821
        """Encode a :class:`~dpcdvae.data.batch.CrystalBatch` (lattice from lengths / angles)."""
        from dpcdvae.geometry.lattice import lattice_from_params

        lattice = lattice_from_params(batch.lengths.float(), batch.angles.float())
        return self(batch.frac_coords, batch.atom_types, batch.num_atoms, batch.batch, lattice)
