"""DP-CDVAE model (tiny config, CPU): losses, overfitting one batch, checkpoints, decoding."""

import math

import pytest
import torch

from dpcdvae.config import load_config
from dpcdvae.models.build import build_model
from dpcdvae.models.checkpoint import load_model, save_model
from dpcdvae.models.dpcdvae import LOSS_KEYS

from conftest import overfit_losses


@pytest.fixture(scope="module")
def perov_batch(prepared_cache):
    from dpcdvae.data.cache import load_scalers, load_split

    ds = load_split(prepared_cache, "perov_5", "train")
    return ds.batch(torch.arange(16)), load_scalers(prepared_cache, "perov_5")


def _tiny(scalers, **over):
    cfg = load_config("tiny", [f"{k}={v}" for k, v in over.items()])
    torch.manual_seed(0)
    return build_model(cfg, scalers), cfg


def test_forward_losses_finite(perov_batch):
    batch, scalers = perov_batch
    model, _ = _tiny(scalers)
    out = model(batch, teacher_forcing=False)
    for k in LOSS_KEYS:
        assert math.isfinite(float(out[k])), k
    out["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert sum(g is not None and bool(torch.isfinite(g).all()) for g in grads) > 0.9 * len(grads)


def test_tiny_model_overfits_one_batch(perov_batch):
    """Loss on one fixed batch (fixed noise) falls >= 10x within a 120 Adam steps."""
    batch, scalers = perov_batch
    model, _ = _tiny(scalers)
    first, last = overfit_losses(model, batch, lr=3e-3, steps=120)
    assert last < first / 10, (first, last)


def test_checkpoint_roundtrip_identical_outputs(perov_batch, tmp_path):
    batch, scalers = perov_batch
    model, cfg = _tiny(scalers)
    model.eval()
    path = save_model(tmp_path / "model.pt", model, cfg)
    obj = torch.load(path, weights_only=True)  # self-contained, safe to load
    assert obj["config"]["model"]["latent_dim"] == cfg["model"]["latent_dim"]
    loaded, _ = load_model(path)
    torch.testing.assert_close(loaded.lattice_mean, scalers.lattice.mean.float())
    with torch.no_grad():
        mu1, _ = model.encode_stats(batch)
        mu2, _ = loaded.encode_stats(batch)
        torch.testing.assert_close(mu1, mu2)
        z = torch.randn(3, model.latent_dim, generator=torch.Generator().manual_seed(1))
        a = model.decode(z, steps=5, generator=torch.Generator().manual_seed(2))
        b = loaded.decode(z, steps=5, generator=torch.Generator().manual_seed(2))
    for k in a:
        torch.testing.assert_close(a[k], b[k])


def test_decode_shapes_and_ranges(perov_batch):
    _, scalers = perov_batch
    model, _ = _tiny(scalers)
    model.eval()
    z = torch.randn(4, model.latent_dim)
    with torch.no_grad():
        out = model.decode(z, steps=10, sampler="eq6", generator=torch.Generator().manual_seed(0))
    n = int(out["num_atoms"].sum())
    assert out["frac_coords"].shape == (n, 3) and out["atom_types"].shape == (n,)
    assert bool((out["frac_coords"] >= 0).all() and (out["frac_coords"] < 1).all())
    assert bool((out["atom_types"] >= 1).all() and (out["atom_types"] <= 100).all())
    assert bool((out["num_atoms"] >= 1).all())


def test_initial_atoms_is_what_decode_starts_from(perov_batch):
    """``initial_atoms`` (used by benchmarks/posterior_composition.py) draws exactly the counts and types
    that ``decode`` starts its chain from, with the same generator; forced counts are kept."""
    _, scalers = perov_batch
    model, _ = _tiny(scalers)
    model.eval()
    z = torch.randn(5, model.latent_dim, generator=torch.Generator().manual_seed(3))
    na, batch, types = model.initial_atoms(z, generator=torch.Generator().manual_seed(4))
    out = model.decode(z, steps=2, generator=torch.Generator().manual_seed(4), return_initial_types=True)
    torch.testing.assert_close(out["num_atoms"], na)
    torch.testing.assert_close(out["initial_types"], types)
    assert batch.tolist() == torch.repeat_interleave(torch.arange(5), na).tolist()
    forced = torch.tensor([1, 2, 3, 4, 5])
    na2, _, t2 = model.initial_atoms(z, forced, draw_types=False)
    assert na2.tolist() == forced.tolist() and t2 is None


@pytest.mark.parametrize("encoder", ["dime+na", "dime+gine", "dime+na+gine"])
def test_every_encoder_variant_trains(perov_batch, encoder):
    """Each Table I variant is one config choice over the shared parts: build, loss, gradients."""
    batch, scalers = perov_batch
    cfg = load_config("tiny", encoder=encoder)
    torch.manual_seed(0)
    model = build_model(cfg, scalers)
    out = model(batch, teacher_forcing=True)
    out["loss"].backward()
    assert math.isfinite(float(out["loss"].detach()))
    enc_grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert enc_grads and any(float(g.abs().sum()) > 0 for g in enc_grads)
