"""dpcdvae.diffusion: network-free diffusion math (schedule, forward/reverse DDPM, type init).

See docs/SAMPLER.md for the reverse-step and respacing derivations.
"""

from dpcdvae.diffusion.ddpm import (
    SAMPLERS,
    crystal_mean,
    noise_atom_types,
    prior_sample,
    q_sample,
    remove_crystal_mean,
    reverse_sample,
    sample_timesteps,
    step_ddim,
    step_eq6,
    step_eq7,
    wrap,
)
from dpcdvae.diffusion.respace import SPACINGS, SamplerPlan, make_plan, timestep_subsequence
from dpcdvae.diffusion.schedule import DiffusionSchedule, make_alpha_bars, make_betas, make_type_sigmas
from dpcdvae.diffusion.types import mean_composition, sample_composition_types

__all__ = [
    "DiffusionSchedule", "make_betas", "make_alpha_bars", "make_type_sigmas",
    "SamplerPlan", "make_plan", "timestep_subsequence", "SPACINGS", "SAMPLERS",
    "wrap", "crystal_mean", "remove_crystal_mean", "sample_timesteps", "q_sample", "noise_atom_types",
    "prior_sample", "step_eq7", "step_eq6", "step_ddim", "reverse_sample",
    "mean_composition", "sample_composition_types",
]
