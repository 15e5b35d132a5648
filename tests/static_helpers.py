"""Helpers of tests/test_static_shapes.py: random crystal batches and the eager forward with given draws."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dpcdvae.config import load_config
from dpcdvae.data.batch import CrystalBatch
from dpcdvae.data.scalers import fit_scalers
from dpcdvae.diffusion import ddpm
from dpcdvae.diffusion.process import NoisyBatch
from dpcdvae.models.build import build_model
from dpcdvae.models.static import StepNoise, noisy_types


def random_batch(num_crystals: int, seed: int, max_atoms: int = 6) -> CrystalBatch:
    """Random crystals: 1..max_atoms atoms, lengths 3-6 Å, angles 65-115 deg, random Z."""
    g = torch.Generator().manual_seed(seed)
    num_atoms = torch.randint(1, max_atoms + 1, (num_crystals,), generator=g)
    n = int(num_atoms.sum())
    return CrystalBatch(
        frac_coords=torch.rand(n, 3, generator=g), atom_types=torch.randint(1, 101, (n,), generator=g),
        num_atoms=num_atoms, lengths=3.0 + 3.0 * torch.rand(num_crystals, 3, generator=g),
        angles=65.0 + 50.0 * torch.rand(num_crystals, 3, generator=g), batch=CrystalBatch.batch_vector(num_atoms),
        props=torch.zeros(num_crystals, 0), index=torch.arange(num_crystals),
    )


def tiny_model(batch: CrystalBatch, encoder: str = "dime", seed: int = 0, overrides: list[str] | None = None):
    """The ``tiny`` preset with scalers fitted on ``batch``."""
    cfg = load_config("tiny", overrides or [], encoder=encoder)
    scalers = fit_scalers(batch.lengths, batch.angles, batch.num_atoms, torch.zeros(batch.num_graphs, 0), [],
                          "perov_5", "train", "perov_5")
    torch.manual_seed(seed)
    return build_model(cfg, scalers)


def eager_forward(model, batch: CrystalBatch, noise: StepNoise, teacher_forcing: bool, coord_multiplier: float,
                  outputs: dict | None = None) -> dict:
    """``model(batch)`` (the unchanged eager forward) with its random draws replaced by the first B / N rows
    of ``noise``; ``outputs`` receives the denoiser's (pred, type_logits)."""
    b, n = batch.num_graphs, batch.num_nodes
    encode_stats, proc = model.encode_stats, model.process

    def encode(batch_, sample=True):
        mu, logvar = encode_stats(batch_)
        return mu, logvar, mu + noise.eps_z[:b] * torch.exp(0.5 * logvar)

    def noise_fn(frac0, atom_types, batch_vec, num_atoms, lattice, true_lattice, probs, generator=None):
        x, eps = ddpm.q_sample(proc.schedule, frac0, noise.t[:b], batch_vec, noise=noise.eps[:n], recenter=proc.recenter)
        sigma = proc.schedule.type_sigmas[noise.s[:b]][batch_vec]
        types = noisy_types(atom_types, probs, sigma, noise.type_exp[:n])
        return NoisyBatch(x=x, t=noise.t[:b], target=eps, weights=torch.ones(b), types=types, type_sigma=sigma)

    hook = None
    if outputs is not None:
        hook = model.denoiser.register_forward_hook(lambda m, i, o: outputs.update(pred=o[0], type_logits=o[1]))
    model.encode, proc.noise = encode, noise_fn
    try:
        return model(batch, teacher_forcing=teacher_forcing, coord_multiplier=coord_multiplier)
    finally:
        del model.encode, proc.noise
        if hook is not None:
            hook.remove()
