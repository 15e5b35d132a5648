"""Reverse-process plans: which levels to visit and the per-step coefficients.

A plan visits levels tau_K = T-1 > ... > tau_1 = 1 and then lands on level tau_0 = 0 (the output).
For the full chain (``steps=None``) tau_i = i, which is exactly the reference loop j = T-1 .. 1.
For K < T-1 the chain is *respaced* (Nichol & Dhariwal 2021): the forward process restricted to the
subsequence is again a DDPM, with per-step

    alpha~_i = prod_{j = tau_{i-1}+1 .. tau_i} alpha_j          (= abar_{tau_i} / abar_{tau_{i-1}})
    beta~_i  = 1 - alpha~_i
    sigma_i  = sqrt(beta~_i (1 - abar_{tau_{i-1}}) / (1 - abar_{tau_i}))   (posterior std)

and the same eps-network is queried at the original level index tau_i.  Taking alpha~ as the
product of the skipped alphas (rather than a ratio of alpha-bars) makes the full chain reproduce
the reference coefficients exactly, including the alpha-bar quirk at t = 1 (there abar_1 / alpha_1
= 1, i.e. the product convention lands on a clean level, while sigma_1 uses the stored abar_0 as
the reference does).  See docs/SAMPLER.md for the derivation and the spacing choice.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from dpcdvae.diffusion.schedule import DiffusionSchedule

SPACINGS = ("uniform", "quadratic", "logsnr")


def _strictly_increasing(ts: Tensor, lo: int, hi: int) -> list[int]:
    """Round an ascending float sequence [K] to distinct ints in [lo, hi] with ts[0]=lo, ts[-1]=hi."""
    vals = [int(v) for v in torch.round(ts).tolist()]
    k = len(vals)
    vals[0], vals[-1] = lo, hi
    for i in range(1, k):
        vals[i] = max(vals[i], vals[i - 1] + 1)
    for i in range(k - 2, -1, -1):
        vals[i] = min(vals[i], vals[i + 1] - 1)
    return vals


def timestep_subsequence(alpha_bars: Tensor, num_steps: int, spacing: str = "uniform") -> list[int]:
    """K = ``num_steps`` distinct levels in [1, T-1], DESCENDING, starting at T-1 and ending at 1.

    Args:
        alpha_bars: [T] cumulative alphas (float64 preferred).
        num_steps: K, 1 <= K; K >= T-1 gives every level.
        spacing: "uniform" (evenly strided in t; for the sigmoid schedule log-SNR is close to
            linear in t for t >~ 200, so this is also near-uniform in log-SNR where the noise
            actually changes), "quadratic" (t ~ s^2, dense near t = 1, DDIM's CIFAR choice; wasteful
            here since abar barely moves for t < 300), "logsnr" (uniform in log(abar / (1 - abar));
            spends about half the steps at t < 200, noise std < 0.03 fractional).
    """
    T = int(alpha_bars.shape[0])
    if num_steps < 1:
        raise ValueError(f"steps must be >= 1, got {num_steps}")
    if num_steps >= T - 1:
        return list(range(T - 1, 0, -1))
    if num_steps == 1:
        return [T - 1]
    s = torch.linspace(0.0, 1.0, num_steps, dtype=torch.float64)
    if spacing == "uniform":
        ts = 1 + (T - 2) * s
    elif spacing == "quadratic":
        ts = 1 + (T - 2) * s**2
    elif spacing == "logsnr":
        ab = alpha_bars.to(torch.float64)
        lam = torch.log(ab / (1 - ab))[1:]  # levels 1..T-1, decreasing in t
        targets = lam[0] + (lam[-1] - lam[0]) * s  # decreasing
        # first level whose log-SNR is <= target (lam is decreasing -> search on -lam)
        idx = torch.searchsorted((-lam).contiguous(), (-targets).contiguous())
        ts = (idx.clamp(max=T - 2) + 1).to(torch.float64)
    else:
        raise ValueError(f"unknown spacing {spacing!r} (expected one of {', '.join(SPACINGS)})")
    return _strictly_increasing(ts, 1, T - 1)[::-1]


@dataclass
class SamplerPlan:
    """Per-step tables of a reverse chain, K steps, in visiting order (level tau_K first).

    Attributes:
        timesteps: python list [K] of level indices tau (descending), fed to the eps network.
        sqrt_ab: [K] sqrt(abar_tau).
        sqrt_one_minus_ab: [K] sqrt(1 - abar_tau).
        sqrt_alpha_step: [K] sqrt(alpha~) of the (respaced) step.
        beta_step: [K] beta~ = 1 - alpha~.
        sigma: [K] posterior std of the step, times eta.
        sqrt_ab_prev: [K] sqrt(abar_tau / alpha~), the level the step lands on (DDIM).
        dir_coef: [K] sqrt(max(1 - abar_prev - sigma^2, 0)), DDIM's eps-direction coefficient.
    """

    timesteps: list[int]
    sqrt_ab: Tensor
    sqrt_one_minus_ab: Tensor
    sqrt_alpha_step: Tensor
    beta_step: Tensor
    sigma: Tensor
    sqrt_ab_prev: Tensor
    dir_coef: Tensor

    def __len__(self) -> int:
        return len(self.timesteps)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> "SamplerPlan":
        return replace(self, **{f.name: getattr(self, f.name).to(device=device, dtype=dtype)
                                for f in fields(self) if f.name != "timesteps"})


def make_plan(schedule: DiffusionSchedule, steps: int | None = None, spacing: str = "uniform",
              eta: float = 1.0) -> SamplerPlan:
    """Coefficient tables (float64, CPU) for a reverse chain of ``steps`` levels (None = all T-1).

    ``eta`` scales the posterior std (1 = DDPM ancestral noise, 0 = deterministic; DDIM's eta).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    tab = schedule.float64()
    ab = tab["alpha_bars"]
    T = int(ab.shape[0])
    taus = timestep_subsequence(ab, T - 1 if steps is None else int(steps), spacing)
    cur = torch.tensor(taus, dtype=torch.long)
    prev = torch.tensor(taus[1:] + [0], dtype=torch.long)
    log_cum = torch.cumsum(torch.log1p(-tab["betas"]), dim=0)  # log prod_{j<=i} alpha_j
    log_step = log_cum[cur] - log_cum[prev]  # log prod over (prev, cur]
    alpha_step = torch.exp(log_step)
    beta_step = -torch.expm1(log_step)
    ab_t, ab_prev_stored = ab[cur], ab[prev]
    sigma = eta * torch.sqrt(beta_step * (1.0 - ab_prev_stored) / (1.0 - ab_t))
    ab_prev = ab_t / alpha_step
    dir_coef = torch.sqrt((1.0 - ab_prev - sigma**2).clamp(min=0.0))
    return SamplerPlan(
        timesteps=taus,
        sqrt_ab=ab_t.sqrt(),
        sqrt_one_minus_ab=(1.0 - ab_t).sqrt(),
        sqrt_alpha_step=alpha_step.sqrt(),
        beta_step=beta_step,
        sigma=sigma,
        sqrt_ab_prev=ab_prev.sqrt(),
        dir_coef=dir_coef,
    )
