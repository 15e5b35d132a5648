"""DDPM on fractional coordinates (DP-CDVAE Eqs. 2, 3, 6, 7) and the atom-type noise (Eq. 9).

Network-free: the reverse process takes an ``eps_fn`` callback, so it runs with oracle epsilons in
tests and with the GemNet denoiser in the model.  Shapes: B crystals, N atoms; ``batch`` [N] is the
crystal index of each atom.  Coordinates are fractional (lattice units); no tensor value is read on
the host inside the reverse loop (no ``.item()``, no branching on tensor values), and all randomness
goes through an optional ``torch.Generator`` on the tensors' device.

Reverse step, in terms of the state w the network sees (wrapped, then recentred if ``recenter``):

    x0_hat = (w - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    eq7:  x' = x0_hat + sigma xi                                        (paper's modified step)
    eq6:  x' = (w - beta~/sqrt(1 - abar_t) eps_hat) / sqrt(alpha~) + sigma xi     (DDPM mean)
    ddim: x' = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma xi

with xi ~ N(0, I) (mean-removed per crystal if ``recenter``), then x' is wrapped (Eq. 3) if
``wrap_state``.  Coefficients come from :func:`dpcdvae.diffusion.respace.make_plan`.

State frame (``frame``): ``wrap`` (reference) maps the state to [0, 1) before recentring. That is not
idempotent: re-wrapping a recentred state shifts it by (number of negative coordinates) / N, so at low t
the network input alternates between two frames on consecutive steps while training shows one
(``benchmarks/frame_audit.py``: eps MSE 1.38x / 1.14x / 1.05x at t = 5 / 50 / 150).  ``fmod``
truncates toward zero into (-1, 1) instead: a recentred state is left unchanged, so every step sees the
training frame; the output is wrapped to [0, 1) either way.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import Tensor

from dpcdvae.diffusion.respace import SamplerPlan, make_plan
from dpcdvae.diffusion.schedule import DiffusionSchedule
from dpcdvae.geometry.lattice import wrap
from dpcdvae.ops import segment_mean
from dpcdvae.registry import REVERSE_FRAMES as _REVERSE_FRAMES
from dpcdvae.registry import SAMPLERS as _SAMPLER_REGISTRY

__all__ = [
    "wrap", "crystal_mean", "remove_crystal_mean", "sample_timesteps", "q_sample", "noise_atom_types",
    "prior_sample", "step_eq7", "step_eq6", "step_ddim", "reverse_sample", "SAMPLERS", "REVERSE_FRAMES",
    "plan_step_eq7", "plan_step_eq6", "plan_step_ddim",
]

SAMPLERS: tuple[str, ...] = _SAMPLER_REGISTRY.names(process="ddpm")  # ("eq7", "eq6", "ddim")
REVERSE_FRAMES = _REVERSE_FRAMES  # state frame of the reverse chain (module docstring)

EpsFn = Callable[[Tensor, Tensor, int], "tuple[Tensor, Any]"]
Callback = Callable[[int, int, Tensor, Any], None]


# ----------------------------------------------------------------------------------------------
# per-crystal helpers
def crystal_mean(x: Tensor, batch: Tensor, num_crystals: int) -> Tensor:
    """Per-crystal mean [B, D] of x [N, D] (crystals without atoms get 0)."""
    return segment_mean(x, batch, num_crystals)


def remove_crystal_mean(x: Tensor, batch: Tensor, num_crystals: int) -> Tensor:
    """x [N, D] minus its per-crystal mean."""
    return x - crystal_mean(x, batch, num_crystals)[batch]


def _randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)


# ----------------------------------------------------------------------------------------------
# forward process (training)
def sample_timesteps(num_crystals: int, num_steps: int, device: torch.device | str | None = None,
                     generator: torch.Generator | None = None) -> Tensor:
    """Training levels [B] int64, uniform in {1, ..., T-1} (T = ``num_steps``).

    Draw it twice for the independent coordinate step t and type step s (same_time_step = false).
    """
    if num_steps < 2:
        raise ValueError(f"num_steps must be >= 2, got {num_steps}")
    return torch.randint(1, num_steps, (num_crystals,), device=device, generator=generator)


def q_sample(
    schedule: DiffusionSchedule,
    frac0: Tensor,
    t: Tensor,
    batch: Tensor,
    noise: Tensor | None = None,
    recenter: bool = True,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Forward noising (Eq. 2): x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps.

    Args:
        schedule: the coordinate schedule (buffers on frac0's device).
        frac0: [N, 3] clean fractional coordinates.
        t: [B] int64 levels (one per crystal; B = t.shape[0]).
        batch: [N] int64 crystal index of each atom.
        noise: [N, 3] eps, or None to draw N(0, I) with ``generator``.
        recenter: remove the per-crystal mean of x0 and of eps first (reference default).
    Returns:
        (x_t [N, 3], eps [N, 3]): x_t is NOT wrapped (the network wraps its input, Eq. 3); eps is
        the regression target (mean-removed if ``recenter``).
    """
    if frac0.dim() != 2 or frac0.shape[1] != 3:
        raise ValueError(f"frac0 must be [N, 3], got {tuple(frac0.shape)}")
    num_crystals = int(t.shape[0])
    eps = _randn(tuple(frac0.shape), frac0, generator) if noise is None else noise
    x0 = frac0
    if recenter:
        x0 = remove_crystal_mean(x0, batch, num_crystals)
        eps = remove_crystal_mean(eps, batch, num_crystals)
    a = schedule.sqrt_alpha_bars.to(frac0.dtype)[t][batch].unsqueeze(1)
    s = schedule.sqrt_one_minus_alpha_bars.to(frac0.dtype)[t][batch].unsqueeze(1)
    return a * x0 + s * eps, eps


def noise_atom_types(atom_types: Tensor, composition_probs: Tensor, sigma_type: Tensor,
                     generator: torch.Generator | None = None) -> Tensor:
    """Type noise (Eq. 9): Z_s ~ Multinomial(A_s), A_s = onehot(Z - 1) + probs * sigma_s.

    Args:
        atom_types: [N] int64 atomic numbers Z in 1..100.
        composition_probs: [N, 100] per-atom composition softmax (detach it for training).
        sigma_type: [N] type-noise level of each atom's crystal (schedule.type_sigmas[s][batch]).
    Returns:
        [N] int64 noisy atomic numbers in 1..100.
    """
    num_types = composition_probs.shape[1]
    weights = torch.nn.functional.one_hot(atom_types - 1, num_types).to(composition_probs.dtype)
    weights = weights + composition_probs * sigma_type.to(composition_probs.dtype).unsqueeze(1)
    return torch.multinomial(weights, 1, generator=generator).squeeze(1) + 1


# ----------------------------------------------------------------------------------------------
# reverse process
def prior_sample(batch: Tensor, num_crystals: int, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """x_T [N, 3] ~ N(0, I) with the per-crystal mean removed, on ``batch``'s device."""
    x = torch.randn((batch.shape[0], 3), generator=generator, device=batch.device, dtype=dtype)
    return remove_crystal_mean(x, batch, num_crystals)


def step_eq7(w: Tensor, eps_hat: Tensor, sqrt_ab: Tensor, sqrt_one_minus_ab: Tensor,
             sigma: Tensor, noise: Tensor) -> Tensor:
    """Paper's modified step (Eq. 7): x' = (w - sqrt(1-abar) eps_hat) / sqrt(abar) + sigma noise.

    All arguments broadcast against w [N, 3]; w is the (wrapped, recentred) state at level t.
    """
    return (w - sqrt_one_minus_ab * eps_hat) / sqrt_ab + sigma * noise


def step_eq6(w: Tensor, eps_hat: Tensor, sqrt_alpha_step: Tensor, beta_step: Tensor,
             sqrt_one_minus_ab: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
    """DDPM posterior mean (Eq. 6): x' = (w - beta/sqrt(1-abar) eps_hat) / sqrt(alpha) + sigma noise."""
    return (w - (beta_step / sqrt_one_minus_ab) * eps_hat) / sqrt_alpha_step + sigma * noise


def step_ddim(w: Tensor, eps_hat: Tensor, sqrt_ab: Tensor, sqrt_one_minus_ab: Tensor,
              sqrt_ab_prev: Tensor, dir_coef: Tensor, sigma: Tensor, noise: Tensor) -> Tensor:
    """DDIM step: x' = sqrt(abar') x0_hat + sqrt(1 - abar' - sigma^2) eps_hat + sigma noise."""
    x0_hat = (w - sqrt_one_minus_ab * eps_hat) / sqrt_ab
    return sqrt_ab_prev * x0_hat + dir_coef * eps_hat + sigma * noise


# The registered ddpm samplers (dpcdvae.registry.SAMPLERS): one step of the plan at index i.
def plan_step_eq7(w: Tensor, eps_hat: Tensor, p: SamplerPlan, i: int, noise: Tensor) -> Tensor:
    """:func:`step_eq7` with the coefficients of step ``i`` of ``p``."""
    return step_eq7(w, eps_hat, p.sqrt_ab[i], p.sqrt_one_minus_ab[i], p.sigma[i], noise)


def plan_step_eq6(w: Tensor, eps_hat: Tensor, p: SamplerPlan, i: int, noise: Tensor) -> Tensor:
    """:func:`step_eq6` with the coefficients of step ``i`` of ``p``."""
    return step_eq6(w, eps_hat, p.sqrt_alpha_step[i], p.beta_step[i], p.sqrt_one_minus_ab[i], p.sigma[i], noise)


def plan_step_ddim(w: Tensor, eps_hat: Tensor, p: SamplerPlan, i: int, noise: Tensor) -> Tensor:
    """:func:`step_ddim` with the coefficients of step ``i`` of ``p``."""
    return step_ddim(w, eps_hat, p.sqrt_ab[i], p.sqrt_one_minus_ab[i], p.sqrt_ab_prev[i], p.dir_coef[i],
                     p.sigma[i], noise)


def reverse_sample(
    eps_fn: EpsFn,
    x_T: Tensor,
    batch: Tensor,
    num_atoms: Tensor,
    schedule: DiffusionSchedule,
    sampler: str = "eq7",
    steps: int | None = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    *,
    spacing: str = "uniform",
    eta: float = 1.0,
    recenter: bool = True,
    wrap_state: bool = True,
    plan: SamplerPlan | None = None,
    frame: str = "wrap",
) -> Tensor:
    """Run the reverse chain from x_T and return wrapped fractional coordinates x_0 [N, 3] in [0, 1).

    Args:
        eps_fn: ``eps_fn(x_t [N, 3], t [B] int64, step_index) -> (eps_hat [N, 3], extra)``; x_t is
            the state the update uses (wrapped if ``wrap_state``, then per-crystal mean-removed if
            ``recenter``); t holds the ORIGINAL level index (respaced chains skip levels);
            step_index counts 0..K-1.  ``extra`` (e.g. type logits) is passed to ``callback``.
        x_T: [N, 3] start state, e.g. :func:`prior_sample`.
        batch: [N] int64 crystal index; num_atoms: [B] int64 (B = num_atoms.shape[0]).
        schedule: coordinate schedule.
        sampler: "eq7" (reference/paper), "eq6" (standard DDPM mean) or "ddim".
        steps: None = full chain T-1 .. 1 (T-1 network calls); K < T-1 = respaced chain of K levels.
        generator: torch.Generator on x_T's device (None = global RNG).
        callback: ``callback(step_index, t: int, x [N, 3], extra)`` after each step; x is the new
            state (at the next level of the plan, or level 0 after the last step), NOT wrapped.
        spacing: level subsequence for K < T-1 ("uniform", "quadratic", "logsnr").
        eta: noise scale (1 = ancestral posterior std; DDIM's eta; 0 = deterministic).
        recenter: recentre the state (and the injected noise) per crystal before each step.
        wrap_state: wrap the state to [0, 1) before each step (Eq. 3, reference); the output is
            always wrapped.
        plan: precomputed :func:`make_plan` (overrides steps/spacing/eta).
        frame: how the state is brought into the cell before each step (with ``wrap_state``): ``wrap``
            to [0, 1) (reference) or ``fmod`` into (-1, 1) (idempotent after recentring; module docstring).
    """
    if frame not in REVERSE_FRAMES:
        raise ValueError(f"unknown reverse frame {frame!r} (expected one of {', '.join(REVERSE_FRAMES)})")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r} (expected one of {', '.join(SAMPLERS)})")
    if x_T.dim() != 2 or x_T.shape[1] != 3 or batch.shape[0] != x_T.shape[0]:
        raise ValueError(f"x_T must be [N, 3] with batch [N]; got {tuple(x_T.shape)}, {tuple(batch.shape)}")
    step = _SAMPLER_REGISTRY[sampler]
    num_crystals = int(num_atoms.shape[0])
    if plan is None:
        plan = make_plan(schedule, steps, spacing, eta)
    p = plan.to(x_T.device, x_T.dtype)
    x = x_T
    for i, t in enumerate(plan.timesteps):
        if wrap_state:
            w = torch.fmod(x, 1.0) if frame == "fmod" else wrap(x)
        else:
            w = x
        if recenter:
            w = remove_crystal_mean(w, batch, num_crystals)
        t_vec = torch.full((num_crystals,), t, dtype=torch.long, device=x_T.device)
        eps_hat, extra = eps_fn(w, t_vec, i)
        noise = _randn(tuple(w.shape), w, generator)
        if recenter:
            noise = remove_crystal_mean(noise, batch, num_crystals)
        x = step(w, eps_hat, p, i, noise)
        if callback is not None:
            callback(i, t, x, extra)
    return wrap(x)
