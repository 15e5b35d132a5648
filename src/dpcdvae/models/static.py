"""The training losses of :class:`~dpcdvae.models.dpcdvae.DPCDVAE` on a padded batch, with fixed shapes
and no host sync (docs/GEMNET.md §12), so that a whole step can be captured as CUDA graphs.

:func:`static_forward` computes exactly the quantities of ``DPCDVAE.forward`` (Eq. S1) on a
:class:`~dpcdvae.data.padding.PaddedBatch`: both graphs come from
:func:`~dpcdvae.geometry.static_graph.radius_graph_static` (sink edges) and the DimeNet++ triplets
from :func:`~dpcdvae.geometry.static_graph.dimenet_triplets_static` (sink triplets); every
per-crystal loss is averaged over the real crystals only (``crystal_mask``). Sink atoms, edges and
triplets reach only the sink crystal, whose loss terms are masked out, so the real crystals' losses,
outputs and gradients are those of the eager forward up to floating-point summation order.

Randomness is drawn outside (:func:`draw_step_noise`), in fixed shapes; the atom-type noise (Eq. 9)
uses the exponential-race form of a one-sample multinomial (``argmax(w / q)`` with ``q ~ Exp(1)``),
the algorithm ``torch.multinomial`` itself uses for one sample, minus its host-side sanity check.

Supported: ``model.process = ddpm`` with a DimeNet++-based encoder (every ``CrystalEncoder``
variant) and both graphs on the reference window / symmetrisation with a neighbour cap
(:func:`check_static_support`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from dpcdvae.data.padding import PaddedBatch
from dpcdvae.diffusion import ddpm
from dpcdvae.diffusion.process import DDPMProcess
from dpcdvae.geometry.lattice import lattice_from_params
from dpcdvae.geometry.static_graph import StaticSizes, dimenet_triplets_static, radius_graph_static, static_sizes
from dpcdvae.models.dpcdvae import DPCDVAE, sanitize_lattice
from dpcdvae.nn.gemnet.scaling import scale_factors
from dpcdvae.ops import geometry_dtype, segment_mean

__all__ = ["StepNoise", "draw_step_noise", "static_forward", "check_static_support", "model_sizes",
           "noisy_types"]


@dataclass
class StepNoise:
    """The random draws of one training step of a padded batch (B_pad crystals, N_pad atoms).

    Attributes:
        eps_z: [B_pad, D] N(0, 1), the reparameterisation noise of z.
        t: [B_pad] int64 coordinate levels in 1..T-1. s: [B_pad] int64 type levels in 1..T-1.
        eps: [N_pad, 3] N(0, 1) coordinate noise (fractional units).
        type_exp: [N_pad, num_types] Exp(1) draws of the type noise.
    """

    eps_z: Tensor
    t: Tensor
    s: Tensor
    eps: Tensor
    type_exp: Tensor


def draw_step_noise(model: DPCDVAE, num_graphs: int, num_nodes: int, device: torch.device | str,
                    generator: torch.Generator | None = None) -> StepNoise:
    """Draw a :class:`StepNoise` for ``num_graphs`` = B_pad crystals and ``num_nodes`` = N_pad atoms."""
    levels = model.process.num_levels
    return StepNoise(
        eps_z=torch.randn((num_graphs, model.latent_dim), device=device, generator=generator),
        t=ddpm.sample_timesteps(num_graphs, levels, device=device, generator=generator),
        s=ddpm.sample_timesteps(num_graphs, levels, device=device, generator=generator),
        eps=torch.randn((num_nodes, 3), device=device, generator=generator),
        type_exp=torch.empty((num_nodes, model.num_types), device=device).exponential_(generator=generator),
    )


def noisy_types(atom_types: Tensor, composition_probs: Tensor, type_sigma: Tensor, type_exp: Tensor) -> Tensor:
    """Eq. 9 without a host sync: Z_s ~ Multinomial(onehot(Z - 1) + probs * sigma) as
    ``argmax(w / q) + 1`` with ``q = type_exp`` [N, C] ~ Exp(1). atom_types [N] Z, composition_probs
    [N, C], type_sigma [N] -> [N] int64 Z."""
    classes = torch.arange(composition_probs.shape[1], device=atom_types.device)
    onehot = (classes.unsqueeze(0) == (atom_types - 1).unsqueeze(1)).to(composition_probs.dtype)  # no range check
    weights = onehot + composition_probs * type_sigma.to(composition_probs.dtype).unsqueeze(1)
    return torch.argmax(weights / type_exp.to(weights.dtype), dim=-1) + 1


def check_static_support(model: DPCDVAE) -> None:
    """One-line ValueError when ``model`` cannot take the static-shape step."""
    if not isinstance(model.process, DDPMProcess):
        raise ValueError("train.static_shapes supports model.process=ddpm only")
    dimenet = getattr(model.encoder, "dimenet", None)
    if dimenet is None or not hasattr(model.encoder, "forward_graph"):
        raise ValueError("train.static_shapes needs a DimeNet++ encoder (model.encoder dime, dime+na, ...)")
    for name, part in (("encoder_cfg", dimenet), ("denoiser_cfg", model.denoiser)):
        if part.max_neighbors is None or part.images != "ref" or part.symmetrize != "ref":
            raise ValueError(f"train.static_shapes needs model.{name}.max_neighbors set and images / symmetrize "
                             f"= ref, got {part.max_neighbors}, {part.images}, {part.symmetrize}")
    bad = [f.name for f in scale_factors(model).values() if f.mode != "apply"]
    if bad:
        raise ValueError(f"the static-shape step cannot fit scale factors (fit them on the eager forward): {bad[0]}")


def model_sizes(model: DPCDVAE, num_nodes: int, edge_factor: float = 1.1, max_degree: int | None = None,
                max_atoms: int | None = None) -> tuple[StaticSizes, StaticSizes]:
    """(encoder, decoder) :class:`~dpcdvae.geometry.static_graph.StaticSizes` for N_pad = ``num_nodes``;
    the crystal-size bound is ``max_atoms`` (default ``model.max_atoms``)."""
    enc, den = model.encoder.dimenet, model.denoiser
    m = model.max_atoms if max_atoms is None else int(max_atoms)
    return (static_sizes(num_nodes, enc.max_neighbors, m, edge_factor, max_degree),
            static_sizes(num_nodes, den.max_neighbors, m, edge_factor, max_degree))


def _crystal_mean(values: Tensor, mask: Tensor, count: Tensor) -> Tensor:
    """Mean of ``values`` [B_pad] over the real crystals (``mask``; ``count`` = their number)."""
    return torch.where(mask, values, torch.zeros_like(values)).sum() / count


def static_forward(model: DPCDVAE, pb: PaddedBatch, noise: StepNoise, teacher_forcing: bool | Tensor = True,
                   coord_multiplier: float | Tensor = 1.0, *, edge_factor: float = 1.1,
                   max_degree: int | None = None, max_atoms: int | None = None,
                   return_outputs: bool = False) -> dict[str, Tensor]:
    """The losses of ``DPCDVAE.forward`` on a padded batch, with fixed shapes and no host sync.

    Args:
        model: the model (see :func:`check_static_support`).
        pb: the padded batch. noise: its draws (:func:`draw_step_noise`, shapes of ``pb``).
        teacher_forcing: the denoiser sees the true lattice (else the predicted one, detached); a 0-d
            bool tensor selects on the device, so one compiled graph serves both.
        coord_multiplier: factor on the coordinate loss (a 0-d tensor avoids recompiling per value).
        edge_factor, max_degree: the graph sizes (:func:`~dpcdvae.geometry.static_graph.static_sizes`).
        max_atoms: bound on the atoms of one crystal (default ``model.max_atoms``; a tighter bound, e.g.
            the training split's largest cell, shrinks the candidate tensors of both graphs).
        return_outputs: also return the denoiser's ``pred`` [N_pad, 3] and ``type_logits`` [N_pad, C].

    Returns:
        The keys of ``DPCDVAE.forward`` (``loss``, the terms of ``LOSS_KEYS``, ``val_criterion``; fp32
        scalars over the real crystals) and ``overflow``: a 0-d bool tensor, True when a graph or the
        triplets did not fit the fixed sizes (the losses are then wrong; recompute the step eagerly).
    """
    enc_sizes, dec_sizes = model_sizes(model, pb.num_nodes, edge_factor, max_degree, max_atoms)
    cmask, bpad = pb.crystal_mask, pb.num_graphs
    n_real = cmask.sum().clamp(min=1).to(torch.float32)
    true_lattice = lattice_from_params(pb.lengths, pb.angles)

    # encoder: DimeNet++ (+ GINE) on the padded graph of the true structure
    dimenet = model.encoder.dimenet
    gdtype = geometry_dtype(pb.frac_coords)
    with torch.autocast(pb.frac_coords.device.type, enabled=False):
        eg = radius_graph_static(pb.frac_coords.to(gdtype), true_lattice.to(gdtype), pb.num_atoms, pb.batch,
                                 pb.atom_mask, dimenet.cutoff, dimenet.max_neighbors, enc_sizes)
    idx_kj, idx_ji, _, trip_overflow = dimenet_triplets_static(eg, dimenet.triplet_exclusion)
    na_counts = pb.num_atoms.clamp(max=model.encoder.max_atoms)
    hidden = model.encoder.forward_graph(pb.atom_types, eg.graph, idx_kj, idx_ji, pb.batch, pb.num_atoms, na_counts)
    logvar = model.fc_var(hidden).float().clamp(min=-20.0, max=10.0)
    mu = model.fc_mu(hidden).float()
    z = mu + noise.eps_z * torch.exp(0.5 * logvar)
    kld = _crystal_mean(-0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1), cmask, n_real)

    # heads
    natom_target = torch.where(cmask, pb.num_atoms, torch.zeros_like(pb.num_atoms))
    natom_ce = F.cross_entropy(model.predict_num_atoms(z).float(), natom_target, reduction="none")
    natom_loss = _crystal_mean(natom_ce, cmask, n_real)
    scaled, lengths, angles = model.predict_lattice(z, pb.num_atoms)
    lat_err = ((scaled - model.lattice_target(pb)) ** 2).mean(dim=1)
    lattice_loss = _crystal_mean(lat_err, cmask, n_real)
    comp_logits = model.composition_logits(z, pb.batch)
    target_types = pb.atom_types - 1
    comp_ce = F.cross_entropy(comp_logits, target_types, reduction="none")
    comp_loss = _crystal_mean(segment_mean(comp_ce.float(), pb.batch, bpad), cmask, n_real)

    if isinstance(teacher_forcing, Tensor):
        predicted = lattice_from_params(*sanitize_lattice(lengths.detach(), angles.detach()))
        lattice = torch.where(teacher_forcing, true_lattice, predicted)
    elif teacher_forcing:
        lattice = true_lattice
    else:
        lattice = lattice_from_params(*sanitize_lattice(lengths.detach(), angles.detach()))
    # DDPM noise (Eqs. 2 and 9) with the given draws
    proc = model.process
    sched = proc.schedule
    x_t, eps = ddpm.q_sample(sched, pb.frac_coords, noise.t, pb.batch, noise=noise.eps, recenter=proc.recenter)
    type_sigma = sched.type_sigmas[noise.s][pb.batch]
    types = noisy_types(pb.atom_types, F.softmax(comp_logits.detach(), -1), type_sigma, noise.type_exp)

    # denoiser on the padded graph of the noisy structure
    den = model.denoiser
    dg = radius_graph_static(x_t, lattice, pb.num_atoms, pb.batch, pb.atom_mask, den.cutoff, den.max_neighbors,
                             dec_sizes)
    pred, type_logits = den(z, noise.t, proc.num_levels, x_t, types, pb.num_atoms, pb.batch, lattice,
                            graph=dg.graph, width=dec_sizes.max_degree, edge_mask=dg.edge_mask)
    err = ((pred.float() - eps) ** 2).sum(-1)
    coord_loss = _crystal_mean(ddpm.crystal_mean(err.unsqueeze(1), pb.batch, bpad).squeeze(1), cmask, n_real)
    type_ce = F.cross_entropy(type_logits.float(), target_types, reduction="none") / type_sigma
    type_loss = _crystal_mean(segment_mean(type_ce.float(), pb.batch, bpad), cmask, n_real)

    out = model.combine_losses({"natom": natom_loss, "lattice": lattice_loss, "composition": comp_loss,
                                "coord": coord_loss, "type": type_loss, "kld": kld}, coord_multiplier)
    out["overflow"] = eg.overflow | trip_overflow | dg.overflow
    if return_outputs:
        out["pred"], out["type_logits"] = pred, type_logits
    return out
