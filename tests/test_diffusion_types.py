"""CDVAE initial-type scheme: round prob * N, fill the shortfall, shuffle, truncate."""

import pytest
import torch

from dpcdvae.diffusion import mean_composition, sample_composition_types


def _layout(num_atoms: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    na = torch.tensor(num_atoms)
    return torch.arange(len(num_atoms)).repeat_interleave(na), na


def _counts(z: torch.Tensor, batch: torch.Tensor, num_crystals: int) -> torch.Tensor:
    out = torch.zeros(num_crystals, 101, dtype=torch.long)
    out.index_put_((batch, z), torch.ones_like(z), accumulate=True)
    return out[:, 1:]


def test_exact_atom_counts_random_probs() -> None:
    g = torch.Generator().manual_seed(0)
    num_atoms = torch.randint(1, 21, (300,), generator=g).tolist()
    batch, na = _layout(num_atoms)
    probs = (torch.randn(len(batch), 100, generator=g) * 3).softmax(-1)
    z = sample_composition_types(probs, batch, na, generator=g)
    assert z.shape == batch.shape and z.dtype == torch.long
    assert int(z.min()) >= 1 and int(z.max()) <= 100
    assert torch.equal(_counts(z, batch, len(num_atoms)).sum(1), na)


def test_peaked_distribution_matches_rounded_counts() -> None:
    # per-crystal compositions whose rounded counts sum exactly to N
    comps = [({8: 2, 22: 1}, 3), ({8: 2, 22: 1}, 9), ({6: 1}, 24), ({3: 0.5, 8: 0.3, 26: 0.2}, 10),
             ({3: 0.5, 8: 0.3, 26: 0.2}, 4), ({1: 0.25, 2: 0.25, 3: 0.25, 4: 0.25}, 8)]
    num_atoms = [n for _, n in comps]
    batch, na = _layout(num_atoms)
    g = torch.Generator().manual_seed(1)
    probs = torch.zeros(len(batch), 100)
    for b, (comp, n) in enumerate(comps):
        total = sum(comp.values())
        row = torch.zeros(100)
        for zz, w in comp.items():
            row[zz - 1] = w / total
        # different per-atom rows with the right crystal mean: perturb and antisymmetrise
        rows = row.expand(n, 100).clone()
        if n % 2 == 0:
            delta = 0.5 * row * torch.rand(1, generator=g)
            rows[0::2] += delta
            rows[1::2] -= delta
        probs[batch == b] = rows
    expect = torch.round(mean_composition(probs, batch, len(comps)) * na[:, None]).long()
    assert torch.equal(expect.sum(1), na)
    for seed in range(3):
        z = sample_composition_types(probs, batch, na, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(_counts(z, batch, len(comps)), expect)


def test_shortfall_filled_from_residuals() -> None:
    # N = 1, p = (0.45, 0.45, 0.10): all counts round to 0 -> one draw from the residuals = p
    B = 6000
    batch, na = _layout([1] * B)
    probs = torch.zeros(B, 100)
    probs[:, 5], probs[:, 6], probs[:, 7] = 0.45, 0.45, 0.10
    z = sample_composition_types(probs, batch, na, generator=torch.Generator().manual_seed(2))
    freq = torch.bincount(z, minlength=101).double() / B
    assert freq[6].item() == pytest.approx(0.45, abs=0.03)
    assert freq[7].item() == pytest.approx(0.45, abs=0.03)
    assert freq[8].item() == pytest.approx(0.10, abs=0.02)


def test_partial_shortfall() -> None:
    # N = 5, p = (0.5, 0.5): round(2.5) = 2 (half to even, as torch.round in CDVAE) -> 4 atoms,
    # the fifth drawn from the equal residuals: every crystal is (3, 2) or (2, 3), about half each
    B = 2000
    batch, na = _layout([5] * B)
    probs = torch.zeros(5 * B, 100)
    probs[:, 13], probs[:, 7] = 0.5, 0.5
    z = sample_composition_types(probs, batch, na, generator=torch.Generator().manual_seed(5))
    counts = _counts(z, batch, B)
    si, o = counts[:, 13], counts[:, 7]
    assert bool(((si == 3) & (o == 2) | (si == 2) & (o == 3)).all())
    assert (si == 3).double().mean().item() == pytest.approx(0.5, abs=0.05)


def test_overcount_truncated_to_random_subset() -> None:
    # N = 2, p = (0.34, 0.33, 0.33): rounded counts (1, 1, 1) = 3 > 2 -> a random pair of distinct elements
    B = 3000
    batch, na = _layout([2] * B)
    probs = torch.zeros(2 * B, 100)
    probs[:, 0], probs[:, 1], probs[:, 2] = 0.34, 0.33, 0.33
    z = sample_composition_types(probs, batch, na, generator=torch.Generator().manual_seed(3))
    counts = _counts(z, batch, B)
    assert torch.equal(counts.sum(1), na)
    assert int(counts.max()) == 1  # never more than the rounded count of an element
    freq = counts[:, :3].double().mean(0)
    assert torch.allclose(freq, torch.full((3,), 2 / 3, dtype=torch.double), atol=0.04)


def test_shuffled_within_crystal_and_reproducible() -> None:
    B = 500
    batch, na = _layout([4] * B)
    probs = torch.zeros(4 * B, 100)
    probs[:, 7], probs[:, 11] = 0.5, 0.5  # 2 O + 2 Mg in every crystal
    z1 = sample_composition_types(probs, batch, na, generator=torch.Generator().manual_seed(4))
    z2 = sample_composition_types(probs, batch, na, generator=torch.Generator().manual_seed(4))
    assert torch.equal(z1, z2)
    first = z1.view(B, 4)[:, 0]
    frac_o = (first == 8).double().mean().item()
    assert 0.4 < frac_o < 0.6  # order is random, not element-sorted


def test_bad_input() -> None:
    batch, na = _layout([2])
    with pytest.raises(ValueError):
        sample_composition_types(torch.rand(3, 100), batch, na)
    with pytest.raises(ValueError):
        sample_composition_types(-torch.rand(2, 100), batch, na)
