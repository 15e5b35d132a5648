"""GemNet-T core: bases, init, padded triplet bilinear, symmetries, periodicity, precision, scale factors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dpcdvae.geometry.graph import radius_graph_pbc
from dpcdvae.geometry.triplets import gemnet_triplets
from dpcdvae.nn.gemnet import GemNetT, fit_scale_factors, legendre_harmonics, polynomial_envelope
from dpcdvae.nn.gemnet.bases import GaussianRBF
from dpcdvae.nn.gemnet.blocks import triplet_bilinear
from dpcdvae.nn.gemnet.init import he_orthogonal_

CUTOFF = 4.0
TINY = dict(emb_size_atom=8, emb_size_edge=16, num_blocks=2, num_radial=16, num_spherical=4, emb_size_rbf=4,
            emb_size_cbf=4, emb_size_trip=8, emb_size_bil_trip=6, num_atom=1, cutoff=CUTOFF)


def _model(seed: int = 0, dtype: torch.dtype = torch.float64, **kw) -> GemNetT:
    torch.manual_seed(seed)
    return GemNetT(**{**TINY, **kw}).to(dtype)


def _random_orthogonal(seed: int, proper: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    if (torch.det(q) > 0) != proper:
        q = q * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)
    return q


def _crystals(dtype: torch.dtype = torch.float64):
    """Two small oblique cells (3 and 2 atoms) as (frac [N, 3], lattice [B, 3, 3], num_atoms [B])."""
    g = torch.Generator().manual_seed(1)
    lat = torch.tensor([[[3.1, 0.0, 0.2], [0.4, 3.3, 0.0], [0.1, 0.5, 3.6]],
                        [[2.9, 0.1, 0.0], [0.0, 3.2, 0.3], [0.6, 0.0, 3.0]]], dtype=dtype)
    frac = torch.rand(5, 3, generator=g, dtype=dtype)
    return frac, lat, torch.tensor([3, 2])


def _graph(frac, lat, num_atoms, cutoff=CUTOFF):
    return radius_graph_pbc(frac, lat, num_atoms, cutoff, max_neighbors=None, images="exact")


# ---------------------------------------------------------------------------------------------- bases
def test_envelope_is_c2_at_cutoff_and_zero_beyond():
    x = torch.tensor([1.0 - 1e-4, 1.0, 1.0 + 1e-4, 1.5, 3.0], dtype=torch.float64)
    env = polynomial_envelope(x, 5)
    assert env[1:].abs().max() == 0.0
    assert abs(float(env[0])) < 1e-9  # O(delta^3)
    # env'(1 - d) = O(d^2) and env''(1 - d) = O(d) (autograd, fp64)
    for d in (1e-3, 1e-4):
        xd = torch.tensor(1.0 - d, dtype=torch.float64, requires_grad=True)
        (g1,) = torch.autograd.grad(polynomial_envelope(xd, 5), xd, create_graph=True)
        (g2,) = torch.autograd.grad(g1, xd)
        assert abs(float(g1.detach())) < 200 * d**2 and abs(float(g2)) < 400 * d
    vals = polynomial_envelope(torch.tensor([1 - 1e-2, 1 - 2e-2], dtype=torch.float64), 5)
    assert 6.0 < float(vals[1] / vals[0]) < 10.0  # cubic decay: ratio ~ 8
    # general-p formula at p = 5 is 1 - 21 x^5 + 35 x^6 - 15 x^7
    xx = torch.linspace(0, 0.999, 50, dtype=torch.float64)
    assert torch.allclose(polynomial_envelope(xx, 5), 1 - 21 * xx**5 + 35 * xx**6 - 15 * xx**7)
    assert float(polynomial_envelope(torch.zeros(1), 5)) == 1.0


def test_rbf_zero_beyond_cutoff_and_gradient_vanishes():
    rbf = GaussianRBF(128, 7.0, 5)
    d = torch.tensor([7.0, 7.5, 12.0])
    assert rbf(d).abs().max() == 0.0
    assert rbf(torch.tensor([0.5, 3.0, 6.9])).dtype == torch.float32
    grads = []
    for delta in (1e-2, 1e-3):
        dd = torch.tensor([7.0 - delta], dtype=torch.float64, requires_grad=True)
        rbf(dd).sum().backward()
        grads.append(float(dd.grad.abs()))
    assert grads[1] < grads[0] * 0.05  # d/dd -> 0 quadratically as d -> c


def test_legendre_matches_scipy():
    from scipy.special import eval_legendre

    z = torch.linspace(-1, 1, 41, dtype=torch.float64)
    y = legendre_harmonics(z, 7)
    assert y.shape == (41, 7)
    for l in range(7):
        ref = math.sqrt((2 * l + 1) / (4 * math.pi)) * eval_legendre(l, z.numpy())
        np.testing.assert_allclose(y[:, l].numpy(), ref, atol=1e-12)
    assert legendre_harmonics(z.float(), 7).dtype == torch.float32


def test_he_orthogonal_statistics():
    w = he_orthogonal_(torch.empty(64, 256))
    np.testing.assert_allclose(w.mean(1).numpy(), 0.0, atol=1e-6)
    np.testing.assert_allclose((w.var(1) * 256).numpy(), 1.0, rtol=2e-3)
    w3 = he_orthogonal_(torch.empty(7, 16, 5))
    np.testing.assert_allclose((w3.var(dim=(0, 1)) * 7 * 16).numpy(), 1.0, rtol=2e-3)
    np.testing.assert_allclose(w3.mean(dim=(0, 1)).numpy(), 0.0, atol=1e-6)


# ------------------------------------------------------------------------------------- triplet bilinear
def test_padded_bilinear_matches_explicit_triplets():
    """The atom-padded bmm evaluation equals the per-triplet definition (GEMNET.md §4.5 e), incl. a
    1-atom cell whose triplets are all between images of the same atom."""
    frac, lat, _ = _crystals()
    one = torch.tensor([[0.3, 0.2, 0.1]], dtype=torch.float64)
    cubic = torch.eye(3, dtype=torch.float64).unsqueeze(0) * 2.5
    frac = torch.cat([one, frac[:3]])
    lat = torch.cat([cubic, lat[:1]])
    graph = _graph(frac, lat, torch.tensor([1, 3]))
    trip = gemnet_triplets(graph)
    model = _model()
    e = graph.src.shape[0]
    y = torch.randn(e, 8, dtype=torch.float64)
    w = model.int_blocks[0].trip_interaction.bilinear_weight
    outs = []
    for width in (trip.kmax + 1, trip.kmax + 4):
        bases, u = model.edge_bases(graph, width)
        outs.append(triplet_bilinear(y, w, bases))
    torch.testing.assert_close(outs[0], outs[1])
    # explicit per-triplet evaluation
    cos = (u[trip.id_ca] * u[trip.id_ba]).sum(-1).clamp(-1, 1)
    ylm = legendre_harmonics(cos, 4)  # [T, S]
    p = bases.cbf_t.transpose(1, 2)  # [E, S, Dc]
    c = torch.einsum("tl,tlj->tj", ylm, p[trip.id_ca])
    per_trip = torch.einsum("ti,tj,ijo->to", y[trip.id_ba], c, w)
    ref = torch.zeros(e, w.shape[2], dtype=torch.float64).index_add(0, trip.id_ca, per_trip)
    torch.testing.assert_close(outs[0], ref)
    # the 1-atom cell has triplets
    assert bool((graph.dst[trip.id_ca] == 0).any())
    # weights used for the scale statistics count the triplets of each input edge
    counts = torch.bincount(trip.id_ba, minlength=e).double()
    torch.testing.assert_close(bases.trip_weight, counts)


def test_width_from_triplets_equals_computed():
    frac, lat, na = _crystals()
    graph = _graph(frac, lat, na)
    model = _model()
    h = torch.randn(5, 8, dtype=torch.float64)
    a = model(h, graph, gemnet_triplets(graph))
    b = model(h, graph)
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="h must be"):
        model(torch.randn(5, 7, dtype=torch.float64), graph)


# ------------------------------------------------------------------------------------------ symmetries
@pytest.mark.parametrize("proper", [True, False])
def test_rotation_reflection_equivariance(proper):
    frac, lat, na = _crystals()
    model = _model()
    h = torch.randn(5, 8, dtype=torch.float64)
    vec, hf = model(h, _graph(frac, lat, na))
    q = _random_orthogonal(3, proper)
    vec2, hf2 = model(h, _graph(frac, lat @ q.T, na))
    torch.testing.assert_close(hf2, hf, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(vec2, vec @ q.T, atol=1e-9, rtol=1e-9)
    assert vec.abs().max() > 1e-3  # non-trivial output


def test_permutation_equivariance_without_cap():
    frac, lat, na = _crystals()
    model = _model()
    h = torch.randn(5, 8, dtype=torch.float64)
    vec, hf = model(h, _graph(frac, lat, na))
    perm = torch.tensor([2, 0, 1, 4, 3])
    vec2, hf2 = model(h[perm], _graph(frac[perm], lat, na))
    torch.testing.assert_close(vec2, vec[perm], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(hf2, hf[perm], atol=1e-9, rtol=1e-9)


def test_batch_independence():
    frac, lat, na = _crystals()
    model = _model()
    h = torch.randn(5, 8, dtype=torch.float64)
    vec, hf = model(h, _graph(frac, lat, na))
    v0, h0 = model(h[:3], _graph(frac[:3], lat[:1], na[:1]))
    v1, h1 = model(h[3:], _graph(frac[3:], lat[1:], na[1:]))
    torch.testing.assert_close(vec, torch.cat([v0, v1]), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(hf, torch.cat([h0, h1]), atol=1e-10, rtol=1e-10)
    # swapped crystal order
    vs, hs = model(torch.cat([h[3:], h[:3]]), _graph(torch.cat([frac[3:], frac[:3]]), lat.flip(0), na.flip(0)))
    torch.testing.assert_close(vs, torch.cat([v1, v0]), atol=1e-10, rtol=1e-10)


def test_supercell_and_unimodular_basis():
    frac, lat, na = _crystals()
    frac, lat, na = frac[:3], lat[:1], na[:1]
    model = _model()
    h = torch.randn(3, 8, dtype=torch.float64)
    vec, hf = model(h, _graph(frac, lat, na))
    # 2x1x1 supercell
    sc_lat = lat.clone()
    sc_lat[0, 0] *= 2
    sc_frac = torch.cat([frac * torch.tensor([0.5, 1, 1], dtype=torch.float64),
                         (frac + torch.tensor([1.0, 0, 0], dtype=torch.float64)) * torch.tensor([0.5, 1, 1],
                                                                                             dtype=torch.float64)])
    v2, h2 = model(torch.cat([h, h]), _graph(sc_frac, sc_lat, torch.tensor([6])))
    torch.testing.assert_close(v2, torch.cat([vec, vec]), atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(h2, torch.cat([hf, hf]), atol=1e-9, rtol=1e-9)
    # equivalent basis a' = a + b (f' = f M^-1 for L' = M L)
    m = torch.tensor([[1.0, 1, 0], [0, 1, 0], [0, 0, 1]], dtype=torch.float64)
    v3, h3 = model(h, _graph(frac @ torch.linalg.inv(m), m @ lat[0:1], na))
    torch.testing.assert_close(v3, vec, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(h3, hf, atol=1e-9, rtol=1e-9)


def test_integer_shift_invariance():
    frac, lat, na = _crystals()
    model = _model()
    h = torch.randn(5, 8, dtype=torch.float64)
    vec, hf = model(h, _graph(frac, lat, na))
    shifted = frac.clone()
    shifted[1] += torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64)
    vec2, hf2 = model(h, _graph(shifted, lat, na))
    torch.testing.assert_close(vec2, vec, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(hf2, hf, atol=1e-9, rtol=1e-9)


def test_smooth_when_a_neighbour_crosses_the_cutoff():
    """Three atoms in a large box; atom B leaves A's cutoff sphere. Outputs of A and C approach their
    no-edge values as O(delta^3)."""
    model = _model()
    lat = torch.eye(3, dtype=torch.float64).unsqueeze(0) * 20.0
    h = torch.randn(3, 8, dtype=torch.float64)

    def run(d: float):
        cart = torch.tensor([[5.0, 5.0, 5.0], [5.0 + d, 5.0, 5.0], [5.0, 7.5, 5.0]], dtype=torch.float64)
        vec, hf = model(h, _graph(cart / 20.0, lat, torch.tensor([3])))
        return torch.cat([vec[[0, 2]].flatten(), hf[[0, 2]].flatten()])

    base = run(CUTOFF + 0.05)
    diffs = [float((run(CUTOFF * (1 - dl)) - base).detach().abs().max()) for dl in (2e-2, 1e-2)]
    assert diffs[0] > 0
    assert 5.0 < diffs[0] / diffs[1] < 11.0


def test_isolated_atoms_and_empty_graph():
    model = _model()
    lat = torch.eye(3, dtype=torch.float64).unsqueeze(0) * 20.0
    frac = torch.tensor([[0.1, 0.1, 0.1], [0.6, 0.6, 0.6]], dtype=torch.float64)
    graph = _graph(frac, lat, torch.tensor([2]))
    assert graph.src.numel() == 0
    vec, hf = model(torch.randn(2, 8, dtype=torch.float64), graph)
    assert vec.shape == (2, 3) and bool((vec == 0).all()) and bool(torch.isfinite(hf).all())


# --------------------------------------------------------------------------------- gradients, precision
def test_gradcheck_fp64():
    model = _model(num_blocks=1)
    lat = torch.tensor([[[2.6, 0.1, 0.0], [0.2, 2.8, 0.1], [0.0, 0.3, 2.7]]], dtype=torch.float64)
    frac0 = torch.tensor([[0.1, 0.2, 0.3], [0.55, 0.45, 0.7]], dtype=torch.float64)
    na = torch.tensor([2])
    h = torch.randn(2, 8, dtype=torch.float64, requires_grad=True)
    frac = frac0.clone().requires_grad_(True)

    def fn(f, hh):
        vec, hf = model(hh, radius_graph_pbc(f, lat, na, 3.0, None, "exact"))
        return vec, hf

    model.cutoff = 3.0
    model.radial_basis.cutoff = 3.0
    assert torch.autograd.gradcheck(fn, (frac, h), eps=1e-6, atol=1e-5, rtol=2e-3)


def test_bf16_autocast_close_to_fp32():
    frac, lat, na = _crystals(torch.float32)
    model = _model(dtype=torch.float32)
    h = torch.randn(5, 8)
    graph = _graph(frac, lat, na)
    vec, hf = model(h, graph)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bases, u = model.edge_bases(graph)
        assert bases.rbf.dtype == torch.float32 and u.dtype == torch.float32
        assert bases.trip_y.dtype == torch.bfloat16 and bases.rbf3.dtype == torch.bfloat16
        vec_b, hf_b = model(h, graph)
    assert vec_b.dtype == torch.float32
    with torch.no_grad():
        rel = float((vec_b - vec).norm() / vec.norm())
        rel_h = float((hf_b.float() - hf).norm() / hf.norm())
    assert rel < 5e-2 and rel_h < 5e-2, (rel, rel_h)


# ---------------------------------------------------------------------------------------- scale factors
def _variance_ratios(model, run):
    """Var(s y) / Var(ref) of every factor, observed on one forward (uses the factor's statistics)."""
    ratios = {}
    for name, f in model.scale_factors().items():
        f.mode = "observe"
    run(0)
    for name, f in model.scale_factors().items():
        s_ref, n_ref, s_out, n_out = f._stats
        f._stats = [0.0, 0.0, 0.0, 0.0]
        f.mode = "apply"
        if n_out > 0:
            ratios[name] = (s_out / n_out) / (s_ref / n_ref)
    return ratios


def test_scale_factor_fitting_and_persistence():
    _, lat, _ = _crystals(torch.float32)
    lat, na = lat.repeat(4, 1, 1), torch.tensor([3, 4] * 4)
    batches = []
    for i in range(4):
        g = torch.Generator().manual_seed(10 + i)
        f = torch.rand(28, 3, generator=g)
        batches.append((torch.randn(28, 8, generator=g), _graph(f, lat, na)))
    torch.manual_seed(0)
    model = GemNetT(**{**TINY, "scale_init": "ones"})
    assert not any(bool(f.fitted) for f in model.scale_factors().values())

    def run(i):
        model(*batches[i % len(batches)])

    # reference constants are loaded as fitted and are never refitted without refit=True
    ref_model = GemNetT(**TINY)
    before = {k: float(v.scale) for k, v in ref_model.scale_factors().items()}
    assert before["TripInteraction_1_had_rbf"] == pytest.approx(18.873615)
    assert fit_scale_factors(ref_model, lambda i: ref_model(*batches[i]), num_batches=2) == before

    # one pass: exact on the fitted batch
    fitted = fit_scale_factors(model, run, method="one_pass")
    assert len(fitted) == 9 and all(bool(f.fitted) for f in model.scale_factors().values())
    assert max(abs(math.log(v)) for v in fitted.values()) > 0.5  # fitting changed the factors
    with torch.no_grad():
        ratios = _variance_ratios(model, run)
    for name, r in ratios.items():
        assert r == pytest.approx(1.0, rel=1e-4), name

    # sequential on batches 0..2, checked on the fresh batch 3
    torch.manual_seed(0)
    seq = GemNetT(**{**TINY, "scale_init": "ones"})
    fit_scale_factors(seq, lambda i: seq(*batches[i]), num_batches=3)
    with torch.no_grad():
        ratios = _variance_ratios(seq, lambda i: seq(*batches[3]))
    for name, r in ratios.items():
        assert 0.6 < r < 1.6, (name, r)

    # persistence: state dict round trip, unchanged by a training step
    sd = seq.state_dict()
    assert "int_blocks.0.trip_interaction.scale_rbf.scale" in sd
    assert "int_blocks.0.trip_interaction.scale_rbf.fitted" in sd
    fresh = GemNetT(**{**TINY, "scale_init": "ones"})
    fresh.load_state_dict(sd)
    saved = {k: float(v.scale) for k, v in fresh.scale_factors().items()}
    assert saved == {k: float(v.scale) for k, v in seq.scale_factors().items()}
    opt = torch.optim.SGD(fresh.parameters(), lr=0.1)
    vec, hf = fresh(*batches[0])
    (vec.square().sum() + hf.square().sum()).backward()
    opt.step()
    assert saved == {k: float(v.scale) for k, v in fresh.scale_factors().items()}
    assert all(not p.requires_grad for p in fresh.buffers())


def test_energy_branch_factors_and_parameters():
    plain = GemNetT(**TINY)
    full = GemNetT(**{**TINY, "energy_branch": True})
    assert len(plain.scale_factors()) == 3 * 2 + 3
    assert len(full.scale_factors()) == 3 * 2 + 2 * 3
    a, e, r, n_atom = 8, 16, 4, 1
    per_block = r * e + e * a + n_atom * 2 * a * a + a  # dense_rbf, Dense(H->A), Res(A), out_energy
    n_plain = sum(p.numel() for p in plain.parameters())
    n_full = sum(p.numel() for p in full.parameters())
    assert n_full - n_plain == 3 * per_block
