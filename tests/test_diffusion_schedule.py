"""Schedule numbers, respaced plans and the forward process (Eqs. 2, 3, 9)."""

import math

import pytest
import torch

from dpcdvae.diffusion import (
    DiffusionSchedule,
    SPACINGS,
    make_plan,
    noise_atom_types,
    q_sample,
    remove_crystal_mean,
    sample_timesteps,
    timestep_subsequence,
    wrap,
)


@pytest.fixture(scope="module")
def schedule() -> DiffusionSchedule:
    return DiffusionSchedule()


def test_reference_numbers(schedule: DiffusionSchedule) -> None:
    tab = schedule.float64()
    betas, ab = tab["betas"], tab["alpha_bars"]
    assert betas[0].item() == pytest.approx(4.54e-7, rel=1e-2)
    assert betas[-1].item() == pytest.approx(9.975e-3, rel=1e-3)
    assert bool((betas[1:] > betas[:-1]).all())
    assert ab[500].item() == pytest.approx(0.923, abs=1e-3)
    assert ab[750].item() == pytest.approx(0.261, abs=1e-3)
    assert ab[999].item() == pytest.approx(0.023, abs=5e-4)
    # the quirk: beta_0 excluded from the product for t >= 1
    assert ab[0].item() == pytest.approx(1 - betas[0].item(), rel=0, abs=1e-15)
    assert ab[1].item() == pytest.approx(1 - betas[1].item(), rel=0, abs=1e-15)
    assert ab[999].item() == pytest.approx(torch.prod(1 - betas[1:]).item(), rel=1e-12)
    std = DiffusionSchedule(alphabar_quirk=False).float64()["alpha_bars"]
    assert torch.allclose(std, torch.cumprod(1 - betas, 0), rtol=1e-14, atol=0)
    assert not torch.equal(std, ab)
    # float32 buffers, derived in float64
    assert schedule.alpha_bars.dtype == torch.float32
    assert schedule.sqrt_one_minus_alpha_bars[1].item() == pytest.approx(math.sqrt(betas[1].item()), rel=1e-5)


def test_posterior_std_and_type_sigmas(schedule: DiffusionSchedule) -> None:
    tab = schedule.float64()
    b, ab, ps = tab["betas"], tab["alpha_bars"], tab["posterior_std"]
    assert ps[0].item() == 0.0
    for t in (1, 2, 500, 999):
        ref = math.sqrt(b[t].item() * (1 - ab[t - 1].item()) / (1 - ab[t].item()))
        assert ps[t].item() == pytest.approx(ref, rel=1e-9)
    ts = tab["type_sigmas"]
    assert ts[0].item() == pytest.approx(0.01) and ts[-1].item() == pytest.approx(5.0)
    ratio = ts[1:] / ts[:-1]
    assert bool((ratio > 1).all()) and torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-10)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        DiffusionSchedule(num_steps=1)
    with pytest.raises(ValueError):
        DiffusionSchedule(kind="nope")
    with pytest.raises(ValueError):
        make_plan(DiffusionSchedule(num_steps=10), steps=0)
    with pytest.raises(ValueError):
        make_plan(DiffusionSchedule(num_steps=10), steps=5, spacing="nope")


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("k", [1, 2, 10, 50, 100, 998, 999, 5000])
def test_subsequence(schedule: DiffusionSchedule, spacing: str, k: int) -> None:
    taus = timestep_subsequence(schedule.float64()["alpha_bars"], k, spacing)
    assert len(taus) == min(k, 999)
    assert taus[0] == 999
    if k > 1:
        assert taus[-1] == 1
    assert all(a > b for a, b in zip(taus, taus[1:]))


def test_full_plan_is_reference_chain(schedule: DiffusionSchedule) -> None:
    tab = schedule.float64()
    plan = make_plan(schedule, steps=None)
    assert plan.timesteps == list(range(999, 0, -1))
    t = torch.tensor(plan.timesteps)
    assert torch.allclose(plan.beta_step, tab["betas"][t], rtol=1e-9, atol=0)
    assert torch.allclose(plan.sqrt_alpha_step, (1 - tab["betas"][t]).sqrt(), rtol=1e-12, atol=0)
    assert torch.allclose(plan.sigma, tab["posterior_std"][t], rtol=1e-7, atol=0)
    # quirk at t = 1: the reference's sigma_1 = sqrt(beta_0)
    assert plan.sigma[-1].item() == pytest.approx(math.sqrt(tab["betas"][0].item()), rel=1e-6)


@pytest.mark.parametrize("k", [7, 50, 100])
def test_respaced_plan_consistency(schedule: DiffusionSchedule, k: int) -> None:
    tab = schedule.float64()
    plan = make_plan(schedule, steps=k)
    # the respaced alphas multiply to the same abar_{T-1}; each step lands on the next visited level
    assert torch.prod(plan.sqrt_alpha_step**2).item() == pytest.approx(tab["alpha_bars"][999].item(), rel=1e-9)
    nxt = torch.tensor(plan.timesteps[1:])
    assert torch.allclose(plan.sqrt_ab_prev[:-1] ** 2, tab["alpha_bars"][nxt], rtol=1e-9)
    assert bool((plan.sigma > 0).all())
    # respaced posterior variance is bounded by the step's beta
    assert bool((plan.sigma**2 <= plan.beta_step * (1 + 1e-9)).all())
    assert float(make_plan(schedule, steps=k, eta=0.0).sigma.abs().max()) == 0.0


def test_q_sample_statistics(schedule: DiffusionSchedule) -> None:
    g = torch.Generator().manual_seed(0)
    B, n = 3000, 4
    batch = torch.arange(B).repeat_interleave(n)
    x0 = torch.rand(B * n, 3, generator=g)
    levels = torch.tensor([1, 300, 500, 750, 999])
    t = levels[torch.arange(B) % len(levels)]
    ab = schedule.float64()["alpha_bars"]
    xt, eps = q_sample(schedule, x0, t, batch, recenter=False, generator=g)
    for lv in levels.tolist():
        m = (t[batch] == lv)
        a = ab[lv].item()
        resid = xt[m] - math.sqrt(a) * x0[m]
        assert resid.mean().abs().item() < 4 * math.sqrt((1 - a) / resid.numel()) + 1e-6
        assert resid.var().item() == pytest.approx(1 - a, rel=0.06)
        assert torch.allclose(resid, math.sqrt(1 - a) * eps[m], atol=1e-6)
    # with recentering: x0 and eps per-crystal mean-removed, x_t mean-zero per crystal
    xt_c, eps_c = q_sample(schedule, x0, t, batch, recenter=True, generator=g)
    means = torch.zeros(B, 3).index_add_(0, batch, xt_c) / n
    assert means.abs().max().item() < 1e-5
    x0c = remove_crystal_mean(x0, batch, B)
    a = schedule.sqrt_alpha_bars[t][batch].unsqueeze(1)
    s = schedule.sqrt_one_minus_alpha_bars[t][batch].unsqueeze(1)
    assert torch.allclose(xt_c, a * x0c + s * eps_c, atol=1e-6)
    big = t[batch] == 999
    assert eps_c[big].var().item() == pytest.approx(1 - 1 / n, rel=0.06)  # mean removal over n atoms
    w = wrap(torch.cat([xt, xt_c, torch.tensor([[-1e-9, -2.0, 1.0]])]))
    assert bool((w >= 0).all()) and bool((w < 1).all())


def test_sample_timesteps() -> None:
    g = torch.Generator().manual_seed(1)
    t = sample_timesteps(20000, 1000, generator=g)
    assert t.dtype == torch.long and int(t.min()) == 1 and int(t.max()) == 999
    t2 = sample_timesteps(20000, 1000, generator=torch.Generator().manual_seed(1))
    assert torch.equal(t, t2)
    assert abs(t.double().mean().item() - 500.0) < 5.0


def test_noise_atom_types() -> None:
    g = torch.Generator().manual_seed(2)
    n = 20000
    z = torch.full((n,), 6)
    probs = torch.zeros(n, 100)
    probs[:, 5] = 0.5  # Z = 6
    probs[:, 7] = 0.3  # Z = 8
    probs[:, 25] = 0.2  # Z = 26
    tiny = noise_atom_types(z, probs, torch.full((n,), 1e-9), generator=g)
    assert torch.equal(tiny, z)
    sigma = 2.0
    zs = noise_atom_types(z, probs, torch.full((n,), sigma), generator=g)
    freq = torch.bincount(zs, minlength=101).double() / n
    # P(Z_s = e) = (onehot_e + sigma p_e) / (1 + sigma)
    assert freq[6].item() == pytest.approx((1 + sigma * 0.5) / (1 + sigma), abs=0.01)
    assert freq[8].item() == pytest.approx(sigma * 0.3 / (1 + sigma), abs=0.01)
    assert freq[26].item() == pytest.approx(sigma * 0.2 / (1 + sigma), abs=0.01)
    assert freq.sum().item() == pytest.approx(1.0)
