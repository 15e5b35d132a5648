"""DP-CDVAE denoiser: parameter counts, embeddings, frames, symmetries, conditioning, precision."""

from __future__ import annotations

import math

import pytest
import torch

from dpcdvae.nn.denoiser import DPDenoiser
from dpcdvae.nn.embeddings import TimeEmbedding, fourier_features, sinusoidal_embedding

TINY = dict(latent_dim=6, atom_emb_dim=5, time_dim=8, time_hidden=12, fourier_min=3, fourier_max=4,
            cutoff=4.0, max_neighbors=None, emb_size_edge=12, num_blocks=1, num_radial=12, num_spherical=3,
            emb_size_rbf=4, emb_size_cbf=4, emb_size_trip=6, emb_size_bil_trip=6, num_atom=1)


def _tiny(seed: int = 0, **kw) -> DPDenoiser:
    torch.manual_seed(seed)
    return DPDenoiser(**{**TINY, **kw})


def _inputs(seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    num_atoms = torch.tensor([3, 2])
    batch = torch.repeat_interleave(torch.arange(2), num_atoms)
    lattice = torch.tensor([[[3.1, 0.0, 0.2], [0.4, 3.3, 0.0], [0.1, 0.5, 3.6]],
                            [[2.9, 0.1, 0.0], [0.0, 3.2, 0.3], [0.6, 0.0, 3.0]]], dtype=dtype)
    frac = torch.randn(5, 3, generator=g, dtype=dtype)  # unwrapped noisy coordinates
    return dict(z=torch.randn(2, 6, generator=g, dtype=dtype), t=torch.tensor([17, 640]), T=1000,
                frac_coords=frac, atom_types=torch.tensor([6, 8, 1, 26, 14]), num_atoms=num_atoms,
                batch=batch, lattice=lattice)


def _rotation(seed: int, proper: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=torch.float64))
    if (torch.det(q) > 0) != proper:
        q = -q
    return q.float()


def test_parameter_counts_match_reference():
    """GEMNET.md §7: the reference decoder has 15,804,061 parameters, 17 of them the scale factors
    (stored as non-trainable Parameters there, as buffers here). Without the dead energy branch
    (4 x 1,874,564) and its 4 factors: 8,305,788 parameters and 13 scale buffers."""

    def count(m):
        n_scale = sum(1 for name, _ in m.named_buffers() if name.endswith(".scale"))
        return sum(p.numel() for p in m.parameters()), n_scale

    full = DPDenoiser(energy_branch=True)  # ~2 s on one core (He-orthogonal QRs); built once
    assert full.emb_size_atom == 548
    assert count(full) == (15_804_061 - 17, 17)
    energy = [p for blk in full.gemnet.out_blocks for mod in (blk.energy, blk.out_energy) for p in mod.parameters()]
    assert sum(p.numel() for p in energy) == 4 * 1_874_564
    # without the branch (its size difference is checked on a small config in test_gemnet.py)
    assert count(full)[0] - 4 * 1_874_564 == 8_305_805 - 17
    assert count(DPDenoiser(conditioning="cdvae", energy_branch=True)) == (2_345_205 - 17, 17)


def test_embeddings():
    s = torch.tensor([0.0, 0.25, 0.999])
    e = sinusoidal_embedding(s, 128)
    k = torch.arange(64, dtype=torch.float32)
    w = torch.exp(-k * math.log(1e4) / 63)
    torch.testing.assert_close(e[:, :64], torch.sin(s[:, None] * w))
    torch.testing.assert_close(e[:, 64:], torch.cos(s[:, None] * w))
    te = TimeEmbedding(128, 512)
    assert te(s).shape == (3, 128)
    assert te.lin1.bias.abs().max() == 0 and te.lin2.bias.abs().max() == 0
    assert te.lin1.weight.abs().max() <= math.sqrt(3 / 320) + 1e-7

    f = torch.tensor([[0.1, 0.27, 0.9], [-1.3, 2.05, 0.5]], dtype=torch.float64)
    phi = fourier_features(f, 3, 8)
    assert phi.shape == (2, 36)
    for q in range(3, 9):
        for c in range(3):
            col = 3 * (q - 3) + c
            arg = 2 * math.pi * 2**q * f[:, c]
            torch.testing.assert_close(phi[:, col], torch.sin(arg))
            torch.testing.assert_close(phi[:, 18 + col], torch.cos(arg))
    torch.testing.assert_close(fourier_features(f + torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64)), phi)


def test_forward_shapes_and_reference_graph_options():
    inp = _inputs()
    model = _tiny(max_neighbors=20, images="ref", symmetrize="ref")
    eps, logits = model(**inp)
    assert eps.shape == (5, 3) and logits.shape == (5, 100)
    assert eps.dtype == torch.float32 and bool(torch.isfinite(eps).all())
    eps.square().sum().backward()
    assert model.gemnet.out_blocks[1].out_forces.weight.grad is not None
    assert model.time_emb.lin1.weight.grad is not None


@pytest.mark.parametrize("proper", [True, False])
def test_frames_under_rotation(proper):
    """L' = L Q^T with unchanged fractional coordinates: logits invariant; the fractional-frame eps
    is invariant and the Cartesian-frame eps rotates (eps' = eps Q^T)."""
    inp = _inputs()
    q = _rotation(5, proper)
    rot = {**inp, "lattice": inp["lattice"] @ q.T}
    for frame in ("fractional", "cartesian"):
        model = _tiny(eps_frame=frame)
        eps, logits = model(**inp)
        eps2, logits2 = model(**rot)
        torch.testing.assert_close(logits2, logits, atol=1e-4, rtol=1e-4)
        expected = eps if frame == "fractional" else eps @ q.T
        torch.testing.assert_close(eps2, expected, atol=1e-4, rtol=1e-4)
        assert eps.abs().max() > 1e-3


def test_fractional_frame_is_cartesian_times_inverse_lattice():
    inp = _inputs()
    frac_model, cart_model = _tiny(eps_frame="fractional"), _tiny(eps_frame="cartesian")
    cart_model.load_state_dict(frac_model.state_dict())
    eps_f, _ = frac_model(**inp)
    eps_c, _ = cart_model(**inp)
    lat = inp["lattice"][inp["batch"]]
    torch.testing.assert_close((eps_f.unsqueeze(-1) * lat).sum(-2), eps_c, atol=1e-5, rtol=1e-5)


def test_integer_shifts_and_permutation():
    inp = _inputs()
    model = _tiny()
    eps, logits = model(**inp)
    shifted = inp["frac_coords"].clone()
    shifted[1] += torch.tensor([1.0, -2.0, 1.0])
    eps2, logits2 = model(**{**inp, "frac_coords": shifted})
    torch.testing.assert_close(eps2, eps, atol=2e-4, rtol=2e-4)
    torch.testing.assert_close(logits2, logits, atol=2e-4, rtol=2e-4)
    perm = torch.tensor([1, 2, 0, 4, 3])
    eps3, logits3 = model(**{**inp, "frac_coords": inp["frac_coords"][perm],
                             "atom_types": inp["atom_types"][perm]})
    torch.testing.assert_close(eps3, eps[perm], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits3, logits[perm], atol=1e-5, rtol=1e-5)


def test_batch_independence_and_conditioning():
    inp = _inputs()
    model = _tiny()
    eps, logits = model(**inp)
    first = dict(z=inp["z"][:1], t=inp["t"][:1], T=1000, frac_coords=inp["frac_coords"][:3],
                 atom_types=inp["atom_types"][:3], num_atoms=inp["num_atoms"][:1], batch=inp["batch"][:3],
                 lattice=inp["lattice"][:1])
    eps1, logits1 = model(**first)
    torch.testing.assert_close(eps1, eps[:3], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits1, logits[:3], atol=1e-5, rtol=1e-5)
    # dpcdvae conditioning depends on t and z; cdvae conditioning ignores t
    eps_t, _ = model(**{**inp, "t": torch.tensor([500, 3])})
    assert (eps_t - eps).abs().max() > 1e-4
    cd = _tiny(conditioning="cdvae")
    assert cd.emb_size_atom == 5 and cd.time_emb is None
    a, la = cd(**inp)
    b, lb = cd(**{**inp, "t": torch.tensor([500, 3])})
    torch.testing.assert_close(a, b)
    c, _ = cd(**{**inp, "z": inp["z"] + 1.0})
    assert (c - a).abs().max() > 1e-4


def test_bf16_autocast_close_to_fp32():
    inp = _inputs()
    model = _tiny()
    eps, logits = model(**inp)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eps_b, logits_b = model(**inp)
    assert eps_b.dtype == torch.float32
    with torch.no_grad():
        assert float((eps_b - eps).norm() / eps.norm()) < 5e-2
        assert float((logits_b.float() - logits).norm() / logits.norm()) < 5e-2


def test_bad_inputs_raise_value_error():
    inp = _inputs()
    model = _tiny()
    with pytest.raises(ValueError, match="frac_coords"):
        model(**{**inp, "frac_coords": inp["frac_coords"][:, :2]})
    with pytest.raises(ValueError, match="z must be"):
        model(**{**inp, "z": inp["z"][:, :3]})
    with pytest.raises(ValueError, match="lattice"):
        model(**{**inp, "lattice": inp["lattice"][:1]})
    with pytest.raises(ValueError, match="eps_frame"):
        DPDenoiser(**{**TINY, "eps_frame": "polar"})
    with pytest.raises(ValueError, match="conditioning"):
        DPDenoiser(**{**TINY, "conditioning": "other"})
