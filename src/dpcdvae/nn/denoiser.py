"""DP-CDVAE denoiser: conditioned atom features -> GemNet-T -> (eps, type logits) (docs/GEMNET.md §4)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from dpcdvae.geometry.graph import PeriodicGraph, radius_graph_pbc
from dpcdvae.nn.checks import check_crystal_shapes
from dpcdvae.nn.embeddings import TimeEmbedding, fourier_features, num_fourier_features
from dpcdvae.nn.gemnet.model import GemNetT
from dpcdvae.nn.init import reset_after_build, reset_modules

__all__ = ["DPDenoiser"]


class DPDenoiser(nn.Module):
    """Noise predictor of DP-CDVAE (and, with ``conditioning="cdvae"``, the CDVAE decoder body).

    Per atom i of crystal b the input features are

    - ``"dpcdvae"``: ``[Emb(Z_i - 1) (atom_emb_dim) | z_b (latent_dim) | tau_b (time_dim) | phi_i (6Q)]``
      -> Linear-ReLU-Linear (all A -> A, A = the sum, 548 by default) -> GemNet-T(A). tau is the time
      embedding of t/T, phi the Fourier features of the noisy fractional coordinates.
    - ``"cdvae"``: ``Linear(atom_emb_dim + latent_dim -> atom_emb_dim)([Emb(Z_i - 1) | z_b])`` ->
      GemNet-T(A = atom_emb_dim); no time input (t is ignored). With ``fourier=True`` the Fourier
      features are appended: ``Linear(atom_emb_dim + latent_dim + 6Q -> atom_emb_dim)([Emb | z_b | phi_i])``
      (the CDVAE + Fourier baseline).

    ``fourier``: None (default) = the conditioning's own choice (dpcdvae: on, cdvae: off); True / False
    switches phi on or off for either conditioning (dpcdvae without phi is an ablation).

    The graph is rebuilt from the (wrapped) coordinates and the given lattice in every call
    (``radius_graph_pbc``: cutoff, neighbour cap, image window and symmetrisation as configured; the
    defaults reproduce the reference). Type logits = Linear(A -> num_types)(h_final).

    **Frame of eps** (``eps_frame``). GemNet-T's output ``v_i = sum_e F_e u_e`` is a Cartesian vector in
    the frame of the lattice rows. The diffusion noise it is regressed against is fractional.

    - ``"fractional"`` (default) returns ``eps_i = v_i L_b^{-1}``, the fractional displacement whose
      Cartesian image is ``v_i``. This is the frame of the target: eps is invariant under rotations
      and reflections of the Cartesian frame (L' = L Q^T), and the conversion itself is covariant under
      a change of lattice basis (the Fourier features, which read absolute fractional coordinates, are
      not). It also makes the network's job local: for a noisy structure
      ``x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps`` the optimum is ``v = eps L``, the Cartesian
      displacement caused by the noise (divided by its scale), which GemNet can read off the local
      geometry; the lattice-dependent conversion back to fractional units is exact. In the
      ``"cartesian"`` frame the network must itself apply ``L^{-1}`` (lengths up to ~20 Å, mixing of
      components in oblique cells) although it only sees geometry within the cutoff.
    - ``"cartesian"`` returns ``v_i`` unchanged, as the reference does (it regresses the Cartesian
      vector sum directly against fractional noise). The output rotates with the lattice frame (eps'
      = eps Q^T), so it is only meaningful for lattices in a fixed convention (``lattice_from_params``).

    Args:
        latent_dim: width of z (256). atom_emb_dim: atom-type embedding width (128).
        time_dim: sinusoid / time-embedding width (128); time_hidden: its MLP width (None: 4 time_dim,
            i.e. 512 as in the reference).
        fourier_min, fourier_max: Fourier frequencies 2 pi 2^q, q = fourier_min..fourier_max (3..8).
        num_types: atom classes (100; class = Z - 1).
        cutoff: graph radius in Å (7.0). max_neighbors: neighbour cap per target (20; None = no cap).
        images, symmetrize: see :func:`~dpcdvae.geometry.graph.radius_graph_pbc` ("ref", "ref").
        conditioning: ``"dpcdvae"`` or ``"cdvae"`` (see above).
        fourier: Fourier features of the noisy coordinates on the nodes (None: per conditioning, see above).
        eps_frame: ``"fractional"`` or ``"cartesian"`` (see above).
        emb_size_edge ... scale_init: GemNet-T hyperparameters (:class:`~dpcdvae.nn.gemnet.GemNetT`).
    """

    @reset_after_build
    def __init__(
        self,
        latent_dim: int = 256,
        atom_emb_dim: int = 128,
        time_dim: int = 128,
        time_hidden: int | None = None,
        fourier_min: int = 3,
        fourier_max: int = 8,
        num_types: int = 100,
        cutoff: float = 7.0,
        max_neighbors: int | None = 20,
        images: Literal["ref", "exact"] = "ref",
        symmetrize: Literal["ref", "union"] = "ref",
        conditioning: Literal["dpcdvae", "cdvae"] = "dpcdvae",
        fourier: bool | None = None,
        eps_frame: Literal["fractional", "cartesian"] = "fractional",
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
        envelope_exponent: int = 5,
        energy_branch: bool = False,
        scale_init: Literal["reference", "ones"] = "reference",
    ) -> None:
        super().__init__()
        if conditioning not in ("dpcdvae", "cdvae"):
            raise ValueError(f"conditioning must be 'dpcdvae' or 'cdvae', got {conditioning!r}")
        if fourier is not None and not isinstance(fourier, bool):
            raise ValueError(f"fourier must be True, False or None, got {fourier!r}")
        if eps_frame not in ("fractional", "cartesian"):
            raise ValueError(f"eps_frame must be 'fractional' or 'cartesian', got {eps_frame!r}")
        if images not in ("ref", "exact"):
            raise ValueError(f"images must be 'ref' or 'exact', got {images!r}")
        if symmetrize not in ("ref", "union"):
            raise ValueError(f"symmetrize must be 'ref' or 'union', got {symmetrize!r}")
        if max_neighbors is not None and max_neighbors < 1:
            raise ValueError(f"max_neighbors must be >= 1 or None, got {max_neighbors}")
        self.latent_dim = latent_dim
        self.num_types = num_types
        self.cutoff = float(cutoff)
        self.max_neighbors = max_neighbors
        self.images = images
        self.symmetrize = symmetrize
        self.conditioning = conditioning
        self.eps_frame = eps_frame
        self.fourier_min = fourier_min
        self.fourier_max = fourier_max
        self.fourier = (conditioning == "dpcdvae") if fourier is None else fourier
        num_phi = num_fourier_features(fourier_min, fourier_max) if self.fourier else 0

        self.atom_emb = nn.Embedding(num_types, atom_emb_dim)
        self.time_emb: TimeEmbedding | None = None
        if conditioning == "dpcdvae":
            self.time_emb = TimeEmbedding(time_dim, 4 * time_dim if time_hidden is None else time_hidden)
            width = atom_emb_dim + latent_dim + time_dim + num_phi
            self.cond: nn.Module = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Linear(width, width))
        else:
            width = atom_emb_dim
            self.cond = nn.Linear(atom_emb_dim + latent_dim + num_phi, atom_emb_dim)
        self.emb_size_atom = width
        self.gemnet = GemNetT(
            emb_size_atom=width, emb_size_edge=emb_size_edge, num_blocks=num_blocks, num_radial=num_radial,
            num_spherical=num_spherical, emb_size_rbf=emb_size_rbf, emb_size_cbf=emb_size_cbf,
            emb_size_trip=emb_size_trip, emb_size_bil_trip=emb_size_bil_trip, num_before_skip=num_before_skip,
            num_after_skip=num_after_skip, num_concat=num_concat, num_atom=num_atom, cutoff=cutoff,
            envelope_exponent=envelope_exponent, energy_branch=energy_branch, scale_init=scale_init,
        )
        self.type_head = nn.Linear(width, num_types)

    def reset_parameters(self) -> None:
        """Draw every weight again, in the order the layers are built: the atom embedding U(-sqrt 3,
        sqrt 3), the time embedding (variance scaling, zero biases), PyTorch's default for the
        conditioning and type layers, GemNet-T's He-orthogonal init. The atom embedding first draws
        PyTorch's default, as when it is built, so that a seed gives the weights it always gave."""
        self.atom_emb.reset_parameters()
        nn.init.uniform_(self.atom_emb.weight, -(3.0**0.5), 3.0**0.5)
        reset_modules(*[m for m in (self.time_emb, self.cond, self.gemnet, self.type_head) if m is not None])

    def build_graph(self, frac_coords: Tensor, lattice: Tensor, num_atoms: Tensor) -> PeriodicGraph:
        """The decoder graph (docs/GEMNET.md §1) of wrapped ``frac_coords`` [N, 3] in ``lattice`` [B, 3, 3]."""
        return radius_graph_pbc(frac_coords, lattice, num_atoms, self.cutoff, self.max_neighbors,
                                self.images, self.symmetrize)

    def atom_features(
        self, z: Tensor, t: Tensor, num_steps: int, frac_coords: Tensor, atom_types: Tensor, batch: Tensor
    ) -> Tensor:
        """Conditioned atom features h [N, A] (before GemNet)."""
        h0 = self.atom_emb(atom_types - 1)
        dtype = h0.dtype
        parts = [h0, z.index_select(0, batch).to(dtype)]
        if self.conditioning == "dpcdvae":
            assert self.time_emb is not None
            tau = self.time_emb(t.to(torch.float32) / float(num_steps))
            parts.append(tau.index_select(0, batch).to(dtype))
        if self.fourier:
            parts.append(fourier_features(frac_coords, self.fourier_min, self.fourier_max).to(dtype))
        return self.cond(torch.cat(parts, dim=-1))

    def forward(
        self,
        z: Tensor,
        t: Tensor,
        T: int,
        frac_coords: Tensor,
        atom_types: Tensor,
        num_atoms: Tensor,
        batch: Tensor,
        lattice: Tensor,
        graph: PeriodicGraph | None = None,
        *,
        width: int | None = None,
        edge_mask: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Predict the coordinate noise and the atom-type logits.

        Args:
            z: [B, latent_dim] latent per crystal.
            t: [B] int diffusion steps (the network sees t / T).
            T: number of diffusion steps (1000).
            frac_coords: [N, 3] noisy fractional coordinates (unwrapped is fine).
            atom_types: [N] int64 atomic numbers Z in 1..num_types.
            num_atoms: [B] atoms per crystal (atoms of a crystal contiguous).
            batch: [N] crystal index of each atom.
            lattice: [B, 3, 3] rows = lattice vectors, Å.
            graph: optional prebuilt :meth:`build_graph` result for these inputs (or a padded graph
                of :func:`~dpcdvae.geometry.static_graph.radius_graph_static`).
            width, edge_mask: for a padded graph, its fixed in-degree bound and [E] real-edge mask
                (:meth:`~dpcdvae.nn.gemnet.GemNetT.edge_bases`); None for an ordinary graph.

        Returns:
            eps [N, 3] (fp32; frame per ``eps_frame``) and type logits [N, num_types] (class = Z - 1).
        """
        check_crystal_shapes(frac_coords, atom_types, num_atoms, batch, lattice)
        b = num_atoms.shape[0]
        if z.shape != (b, self.latent_dim):
            raise ValueError(f"z must be [B={b}, {self.latent_dim}], got {tuple(z.shape)}")
        if t.shape != (b,):
            raise ValueError(f"t must be [B={b}], got {tuple(t.shape)}")
        if T < 1:
            raise ValueError(f"T must be >= 1, got {T}")
        if graph is None:
            graph = self.build_graph(frac_coords, lattice, num_atoms)
        h = self.atom_features(z, t, T, frac_coords, atom_types, batch)
        if width is None and edge_mask is None:
            vec, h_final = self.gemnet(h, graph)
        else:
            vec, h_final = self.gemnet(h, graph, width=width, edge_mask=edge_mask)
        logits = self.type_head(h_final)
        if self.eps_frame == "fractional":
            with torch.autocast(device_type=vec.device.type, enabled=False):
                # inv_ex: a degenerate (predicted) cell must not abort a run; its rows become 0
                inv, info = torch.linalg.inv_ex(lattice.to(vec.dtype))
                inv = torch.where((info == 0).view(-1, 1, 1), inv, torch.zeros_like(inv))
                vec = (vec.unsqueeze(-1) * inv[batch]).sum(dim=-2)
        return vec, logits
