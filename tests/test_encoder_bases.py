"""DimeNet++ bases against scipy, parameter counts, and the GINE layer against PyG's GINEConv."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import eval_legendre
from scipy.special import spherical_jn as sp_jn

from dpcdvae.nn.dimenet import PeriodicDimeNetPP, SphericalBasis, envelope, spherical_jn
from dpcdvae.nn.encoder import CrystalEncoder
from dpcdvae.nn.gine import GINEEncoder, GINELayer

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def sbf() -> SphericalBasis:
    return SphericalBasis(7, 6, cutoff=7.0, envelope_exponent=5)


def test_spherical_jn_matches_scipy():
    t = torch.logspace(-3, math.log10(40.0), 3000, dtype=torch.float64)
    for l in range(7):
        got = spherical_jn(torch.tensor(l), t, 6).numpy()
        ref = sp_jn(l, t.numpy())
        # relative error, floored at 1e-6 of the maximum near the roots
        scale = np.maximum(np.abs(ref), 1e-6 * np.abs(ref).max())
        assert np.max(np.abs(got - ref) / scale) < 1e-9, l
    # small-argument values that fp32 closed forms / recurrences lose (GEMNET.md §8)
    assert abs(spherical_jn(torch.tensor(6), torch.tensor(1.0, dtype=torch.float64), 6).item()
               / sp_jn(6, 1.0) - 1) < 1e-12


def test_bessel_roots_and_radial_table(sbf):
    roots = sbf.roots.numpy()
    assert roots.shape == (7, 6) and np.allclose(roots[0], np.pi * np.arange(1, 7))
    for l in range(7):
        assert np.abs(sp_jn(l, roots[l])).max() < 1e-13
        assert np.all(np.diff(roots[l]) > 0) and (l == 0 or np.all(roots[l] > roots[l - 1]))
    d = torch.linspace(0.3, 7.5, 500, dtype=torch.float64)
    x = d.numpy() / 7.0
    u = np.where(x < 1, 1 / x - 28 * x**5 + 48 * x**6 - 21 * x**7, 0.0)
    ref = np.stack([
        np.stack([u * math.sqrt(2) / abs(sp_jn(l + 1, z)) * sp_jn(l, z * x) for z in roots[l]], -1)
        for l in range(7)
    ], 1)  # [E, 7, 6]
    got64 = sbf.radial(d).numpy()
    assert np.abs(got64 - ref).max() < 1e-9 * np.abs(ref).max()
    got32 = sbf.radial(d.float())
    assert got32.dtype == torch.float32
    # fp32 output of the float64 table: small-x values of high orders are kept (relative accuracy)
    small = (x < 0.3)[:, None]
    rel = np.abs(got32.double().numpy() - ref)[:, 6] / np.maximum(np.abs(ref[:, 6]), 1e-30)
    assert rel[small[:, 0]].max() < 1e-5


def test_angular_part_and_flattening(sbf):
    c = torch.linspace(-1, 1, 101, dtype=torch.float64)
    ang = sbf.angular(c).numpy()
    for l in range(7):
        assert np.allclose(ang[:, l], math.sqrt((2 * l + 1) / (4 * math.pi)) * eval_legendre(l, c.numpy()),
                           atol=1e-12)
    dist = torch.tensor([2.0, 3.5], dtype=torch.float64)
    out = sbf(dist, c[:3], torch.tensor([1, 0, 1]))
    assert out.shape == (3, 42)
    rad, y = sbf.radial(dist), sbf.angular(c[:3])
    assert torch.allclose(out[2, 6 * 4 + 2], rad[1, 4, 2] * y[2, 4])  # index 6 l + (n - 1), l-major


def test_envelope_and_radial_cutoff():
    x = torch.tensor([1 - 1e-3, 1 - 2e-3, 1.0, 1.2], dtype=torch.float64)
    env = envelope(x, 5)
    assert env[2] == 0 and env[3] == 0
    assert abs(env[0].item()) < 1e-7 and abs(env[1].item() / env[0].item() - 8) < 0.1  # O(delta^3)
    model = PeriodicDimeNetPP(hidden_channels=8, out_channels=4, num_blocks=1, int_emb_size=4,
                              basis_emb_size=2, out_emb_channels=8, num_spherical=3, num_radial=6)
    d = torch.tensor([1.5, 6.99, 7.0, 8.0], requires_grad=True)
    rbf = model.rbf(d)
    ref = envelope(d.detach().double() / 7.0, 5).unsqueeze(-1) * torch.sin(
        math.pi * torch.arange(1, 7, dtype=torch.float64) * d.detach().double().unsqueeze(-1) / 7.0)
    assert torch.allclose(rbf.double(), ref, atol=1e-5)
    assert rbf[2:].abs().max() == 0
    rbf[:, 0].sum().backward()
    assert abs(d.grad[1].item()) < 1e-3 * abs(d.grad[0].item())


def test_tables_stay_float64_when_the_model_is_cast(sbf):
    model = PeriodicDimeNetPP(hidden_channels=8, out_channels=4, num_blocks=1, int_emb_size=4,
                              basis_emb_size=2, out_emb_channels=8, num_spherical=7, num_radial=6)
    roots = model.sbf.roots.clone()
    model.half().float()
    assert model.sbf.roots.dtype == torch.float64 and torch.equal(model.sbf.roots, roots)
    assert "sbf.roots" not in model.state_dict()


def test_parameter_counts_full_size():
    def count(m: torch.nn.Module) -> int:
        return sum(p.numel() for p in m.parameters())

    # GEMNET.md §8: 2,213,510 with the reference's 95-row table and lin_up bias, 2,212,230 as PyG HEAD
    assert count(PeriodicDimeNetPP(max_z=94)) == 2_213_510
    assert count(PeriodicDimeNetPP(max_z=94, output_lin_up_bias=False)) == 2_212_230
    dime = 2_213_510 + 6 * 128  # our default 101-row table (Z up to 100)
    assert count(PeriodicDimeNetPP()) == dime == 2_214_278
    lin = lambda i, o: i * o + o  # noqa: E731
    gine = 100 * 256 + lin(1, 256) + lin(256, 256) + 3 * 2 * lin(256, 256) + 2 * lin(256, 256)
    assert count(GINEEncoder()) == gine == 618_240
    expected = {
        "dime": dime,
        "dime+na": dime + 21 * 256 + lin(512, 1024) + lin(1024, 256),
        "dime+gine": dime + gine + 2 * lin(512, 512) + lin(512, 256),
        "dime+na+gine": dime + gine + 21 * 128 + 2 * lin(640, 640) + lin(640, 256),
    }
    for variant, n in expected.items():
        assert count(CrystalEncoder(variant, max_atoms=20)) == n, variant


@pytest.mark.parametrize("act", ["relu", "softplus"])
def test_gine_layer_against_pyg_gineconv(act):
    """With a ReLU message our layer is PyG's GINEConv (which runs without torch_scatter); the
    reference's softplus message differs from it."""
    from torch_geometric.nn import GINEConv

    g = torch.Generator().manual_seed(0)
    x, e = torch.randn(6, 8, generator=g), torch.randn(15, 8, generator=g)
    src, dst = torch.randint(0, 6, (15,), generator=g), torch.randint(0, 6, (15,), generator=g)
    torch.manual_seed(0)
    layer = GINELayer(8, message_act=act)
    pyg = GINEConv(layer.mlp, eps=0.0, train_eps=False)
    ours, theirs = layer(x, src, dst, e), pyg(x, torch.stack([src, dst]), e)
    if act == "relu":
        assert torch.allclose(ours, theirs, atol=1e-6)
    else:
        assert (ours - theirs).abs().max() > 1e-3
        manual = layer.mlp(x + torch.zeros_like(x).index_add_(0, dst, torch.nn.functional.softplus(x[src] + e)))
        assert torch.allclose(ours, manual, atol=1e-6)
