"""The DP-CDVAE model: VAE (encoder, latent heads) + a denoiser driven by a coordinate process.

Plain ``nn.Module``: the math of the paper (Pakornchote et al. 2024), the loss of its Eq. (S1) and the
samplers. The coordinate process (:mod:`dpcdvae.diffusion.process`) is a strategy: ``"ddpm"`` (DP-CDVAE,
DDPM on fractional coordinates) or ``"score"`` (CDVAE, Cartesian score matching + annealed Langevin);
the VAE, heads, type loss and loss weighting are shared. Training loops, optimisers and logging live in
:mod:`dpcdvae.training.lightning`.

Shapes: B crystals, N atoms (N = num_atoms.sum()), latent size D.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dpcdvae.data.batch import CrystalBatch
from dpcdvae.data.scalers import lattice_features, lattice_from_features
from dpcdvae.diffusion.process import CoordinateProcess, DDPMProcess
from dpcdvae.diffusion.schedule import DiffusionSchedule
from dpcdvae.diffusion.types import sample_composition_types
from dpcdvae.geometry.lattice import lattice_from_params
from dpcdvae.nn.mlp import build_mlp
from dpcdvae.ops import segment_mean

if TYPE_CHECKING:
    from dpcdvae.sampling.static_net import StaticSampling

__all__ = ["DPCDVAE", "sanitize_lattice", "LOSS_KEYS"]

LOSS_KEYS = ("natom", "lattice", "composition", "coord", "type", "kld")


def sanitize_lattice(lengths: Tensor, angles: Tensor, min_length: float = 1.0,
                     angle_range: tuple[float, float] = (30.0, 150.0)) -> tuple[Tensor, Tensor]:
    """Clamp predicted lattice parameters ([B,3] Å, [B,3] deg) into a physical range so that an
    untrained or wild lattice head cannot produce a zero or negative cell (real cells of the three
    benchmarks lie well inside it)."""
    return lengths.clamp(min=min_length), angles.clamp(min=angle_range[0], max=angle_range[1])


class DPCDVAE(nn.Module):
    """DP-CDVAE.

    Args:
        encoder: maps (frac_coords [N,3], atom_types [N], num_atoms [B], batch [N], lattice [B,3,3])
            to a crystal vector [B, encoder_dim].
        denoiser: maps (z [B,D], t [B], num_levels, x_t [N,3], atom_types [N], num_atoms [B], batch [N],
            lattice [B,3,3]) to (coordinate output [N,3] in the process's frame, type_logits [N, num_types]).
        schedule: the DDPM schedule (betas, alpha-bars, type-noise sigmas) as buffers; used to build the
            default ``DDPMProcess`` when ``process`` is None (None with a ``process``).
        encoder_dim: width of the encoder output.
        latent_dim: D.
        hidden_dim, fc_num_layers: MLP heads (CDVAE: 256, 1).
        max_atoms: the N_a head predicts classes 0..max_atoms.
        num_types: atom-type classes (Z - 1 for Z = 1..num_types).
        lattice_mean, lattice_std: [6] scaler of [a,b,c / N^(1/3), alpha, beta, gamma] (train split);
            stored as buffers so checkpoints are self-contained.
        recenter: remove per-crystal means of x_0 and noise (reference default; DDPM only).
        loss_weights: cost_natom, cost_lattice, cost_composition, cost_coord, cost_type, beta.
        process: the coordinate process (None: ``DDPMProcess(schedule, recenter)``).
    """

    def __init__(
        self,
        encoder: nn.Module,
        denoiser: nn.Module,
        schedule: DiffusionSchedule | None,
        encoder_dim: int,
        latent_dim: int,
        hidden_dim: int,
        fc_num_layers: int,
        max_atoms: int,
        num_types: int,
        lattice_mean: Tensor,
        lattice_std: Tensor,
        recenter: bool = True,
        loss_weights: dict[str, float] | None = None,
        process: CoordinateProcess | None = None,
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.denoiser = denoiser
        if process is None:
            if schedule is None:
                raise ValueError("DPCDVAE needs a schedule or a process")
            process = DDPMProcess(schedule, recenter=recenter)
        self.process = process
        # the DDPM schedule (None for other processes), kept as an attribute for existing callers
        self.schedule = process.schedule if isinstance(process, DDPMProcess) else None
        self.latent_dim = latent_dim
        self.max_atoms = max_atoms
        self.num_types = num_types
        self.recenter = recenter
        self.fc_mu = nn.Linear(encoder_dim, latent_dim)
        self.fc_var = nn.Linear(encoder_dim, latent_dim)
        self.natom_head = build_mlp(latent_dim, hidden_dim, fc_num_layers, max_atoms + 1)
        self.lattice_head = build_mlp(latent_dim, hidden_dim, fc_num_layers, 6)
        self.composition_head = build_mlp(latent_dim, hidden_dim, fc_num_layers, num_types)
        self.register_buffer("lattice_mean", torch.as_tensor(lattice_mean, dtype=torch.float32).clone())
        self.register_buffer("lattice_std", torch.as_tensor(lattice_std, dtype=torch.float32).clone())
        w = dict(cost_natom=1.0, cost_lattice=100.0, cost_composition=1.0, cost_coord=1.0, cost_type=0.1, beta=0.01)
        w.update(loss_weights or {})
        self.loss_weights = w

    # ----------------------------------------------------------------------------------- VAE
    def encode_stats(self, batch: CrystalBatch) -> tuple[Tensor, Tensor]:
        """-> (mu [B,D], logvar [B,D]) of q(z | crystal).

        logvar is clamped to [-20, 10]: early in training the summed DimeNet++ features of a large
        cell can push it past 80, where exp() overflows and one batch turns every weight into NaN.
        The clamp never binds for a trained model (|logvar| stays O(1)).
        """
        lattice = lattice_from_params(batch.lengths, batch.angles)
        hidden = self.encoder(batch.frac_coords, batch.atom_types, batch.num_atoms, batch.batch, lattice)
        logvar = self.fc_var(hidden).float().clamp(min=-20.0, max=10.0)
        return self.fc_mu(hidden).float(), logvar

    def encode(self, batch: CrystalBatch, sample: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """-> (mu [B,D], logvar [B,D], z [B,D]); z = mu when ``sample`` is False."""
        mu, logvar = self.encode_stats(batch)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if sample else mu
        return mu, logvar, z

    def predict_num_atoms(self, z: Tensor) -> Tensor:
        """[B, D] -> [B, max_atoms + 1] logits."""
        return self.natom_head(z)

    def predict_lattice(self, z: Tensor, num_atoms: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """-> (standardised 6-vector [B,6], lengths [B,3] Å, angles [B,3] deg)."""
        scaled = self.lattice_head(z).float()
        feats = scaled * self.lattice_std + self.lattice_mean
        lengths, angles = lattice_from_features(feats, num_atoms)
        return scaled, lengths, angles

    def composition_logits(self, z: Tensor, batch: Tensor) -> Tensor:
        """Per-atom composition logits A_z: [B, D], [N] -> [N, num_types]."""
        return self.composition_head(z.index_select(0, batch)).float()

    def lattice_target(self, batch: CrystalBatch) -> Tensor:
        feats = lattice_features(batch.lengths, batch.angles, batch.num_atoms)
        return (feats - self.lattice_mean) / self.lattice_std

    # ------------------------------------------------------------------------------ training
    def forward(
        self, batch: CrystalBatch, teacher_forcing: bool = True, coord_multiplier: float = 1.0
    ) -> dict[str, Tensor]:
        """Losses of one batch (Eq. S1). Returns the per-term losses and ``loss`` (weighted sum)."""
        bsz = batch.num_graphs
        mu, logvar, z = self.encode(batch)
        kld = torch.mean(-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1))

        natom_loss = F.cross_entropy(self.predict_num_atoms(z).float(), batch.num_atoms)
        scaled, lengths, angles = self.predict_lattice(z, batch.num_atoms)
        lattice_loss = F.mse_loss(scaled, self.lattice_target(batch))
        comp_logits = self.composition_logits(z, batch.batch)
        target_types = batch.atom_types - 1
        comp_ce = F.cross_entropy(comp_logits, target_types, reduction="none")
        comp_loss = segment_mean(comp_ce.float(), batch.batch, bsz).mean()

        true_lattice = lattice_from_params(batch.lengths, batch.angles)
        if teacher_forcing:
            lattice = true_lattice
        else:
            lattice = lattice_from_params(*sanitize_lattice(lengths.detach(), angles.detach()))

        # coordinates and types noised at independent levels (the process's job)
        noisy = self.process.noise(batch.frac_coords, batch.atom_types, batch.batch, batch.num_atoms, lattice,
                                   true_lattice, F.softmax(comp_logits.detach(), -1))
        pred, type_logits = self.denoiser(z, noisy.t, self.process.num_levels, noisy.x, noisy.types,
                                          batch.num_atoms, batch.batch, lattice)
        coord_loss = self.process.loss(pred.float(), noisy, batch.batch, bsz)
        type_ce = F.cross_entropy(type_logits.float(), target_types, reduction="none") / noisy.type_sigma
        type_loss = segment_mean(type_ce.float(), batch.batch, bsz).mean()

        return self.combine_losses({"natom": natom_loss, "lattice": lattice_loss, "composition": comp_loss,
                                    "coord": coord_loss, "type": type_loss, "kld": kld}, coord_multiplier)

    def combine_losses(self, terms: dict[str, Tensor], coord_multiplier: float = 1.0) -> dict[str, Tensor]:
        """The weighted total (``loss``) and the validation criterion of the loss ``terms`` (keys natom,
        lattice, composition, coord, type, kld: scalars); returns the terms with both added."""
        w = self.loss_weights
        total = (
            w["cost_natom"] * terms["natom"]
            + w["cost_lattice"] * terms["lattice"]
            + w["cost_composition"] * terms["composition"]
            + w["cost_coord"] * coord_multiplier * terms["coord"]
            + w["cost_type"] * terms["type"]
            + w["beta"] * terms["kld"]
        )
        # the reference's validation / checkpoint criterion: cost_coord*coord + cost_type*type
        val = w["cost_coord"] * terms["coord"] + w["cost_type"] * terms["type"]
        return {"loss": total, **terms, "val_criterion": val}

    # ------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def initial_atoms(
        self,
        z: Tensor,
        num_atoms: Tensor | None = None,
        generator: torch.Generator | None = None,
        draw_types: bool = True,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """What decoding starts from: the atom counts and the atom types drawn from A_z (count scheme).

        Args:
            z: [B, D] latents.
            num_atoms: [B] force the atom counts (default: argmax of the N_a head, at least 1).
            generator: torch.Generator on z's device for the type draw.
            draw_types: False skips the draw (the types are then None).

        Returns:
            num_atoms [B] (long), batch [N] (crystal index of each atom), types [N] (Z) or None.
        """
        if num_atoms is None:
            num_atoms = self.predict_num_atoms(z).float().argmax(-1).clamp(min=1)
        batch = torch.repeat_interleave(torch.arange(z.shape[0], device=z.device), num_atoms)
        if not draw_types:
            return num_atoms, batch, None
        probs = F.softmax(self.composition_logits(z, batch), -1)
        return num_atoms, batch, sample_composition_types(probs, batch, num_atoms, generator=generator)

    @torch.no_grad()
    def decode(
        self,
        z: Tensor,
        sampler: str | None = None,
        steps: int | None = None,
        generator: torch.Generator | None = None,
        num_atoms: Tensor | None = None,
        atom_types: Tensor | None = None,
        callback: Callable[..., None] | None = None,
        return_initial_types: bool = False,
        static: "StaticSampling | None" = None,
    ) -> dict[str, Tensor]:
        """Decode latents into crystals with the reverse process of ``self.process``.

        Args:
            z: [B, D] latents.
            sampler: None = the process's default. DDPM: "eq7" (default; paper's modified step, wraps
                every step), "eq6" (plain DDPM) or "ddim". Score: "langevin" (the only one).
            steps: DDPM: number of reverse steps K (None = all T - 1 steps; K < T uses the respaced
                sampler). Score: must be None (fixed schedule, ``process.network_calls()`` calls).
            generator: torch.Generator on z's device for reproducible noise.
            num_atoms: [B] force the atom counts (default: argmax of the N_a head, at least 1).
            atom_types: [N] force the atom types (default: initialised from A_z, then argmax of the
                denoiser's type logits after every step).
            callback: ``callback(step_index, t, x [N, 3], types [N])`` after every network call.
            return_initial_types: also return ``initial_types`` [N], the types drawn from A_z.
            static: a :class:`~dpcdvae.sampling.static_net.StaticSampling`: every network call on a
                padded batch with fixed shapes (CUDA-graph capturable; overflowing steps fall back to
                the eager call). None (default): the eager call.

        Returns:
            dict with frac_coords [N,3] in [0,1), atom_types [N] (Z), num_atoms [B], lengths [B,3] Å,
            angles [B,3] deg.
        """
        sampler = self.process.check_sampling(sampler, steps)
        force_types = atom_types is not None
        num_atoms, batch, drawn = self.initial_atoms(z, num_atoms, generator, draw_types=not force_types)
        if not force_types:
            atom_types = drawn
        _, lengths, angles = self.predict_lattice(z, num_atoms)
        lengths, angles = sanitize_lattice(lengths, angles)
        lattice = lattice_from_params(lengths, angles)
        state = {"types": atom_types}
        initial_types = atom_types
        num_levels = self.process.num_levels

        static_net = None
        if static is not None:
            from dpcdvae.sampling.static_net import StaticNet

            static_net = StaticNet(self.denoiser, static, z, num_atoms, batch, lattice, num_levels, self.max_atoms)

        def net_fn(x_t: Tensor, t: Tensor, step_index: int) -> tuple[Tensor, Tensor]:
            # types follow the network after every call (argmax + 1), as both references do
            if static_net is not None:
                pred, logits = static_net(x_t, t, state["types"])
            else:
                pred, logits = self.denoiser(z, t, num_levels, x_t, state["types"], num_atoms, batch, lattice)
            if not force_types:
                state["types"] = logits.float().argmax(-1) + 1
            return pred.float(), state["types"]

        x0 = self.process.sample(net_fn, batch, num_atoms, lattice, sampler=sampler, steps=steps,
                                 generator=generator, callback=callback)
        out = {
            "frac_coords": x0,
            "atom_types": state["types"],
            "num_atoms": num_atoms,
            "lengths": lengths,
            "angles": angles,
        }
        if return_initial_types:
            out["initial_types"] = initial_types
        return out
