"""reset_parameters() of the network blocks re-draws exactly what the constructor draws."""

import pytest
import torch

from dpcdvae.nn.denoiser import DPDenoiser
from dpcdvae.nn.dimenet import PeriodicDimeNetPP
from dpcdvae.nn.embeddings import TimeEmbedding
from dpcdvae.nn.encoder import VARIANTS, CrystalEncoder
from dpcdvae.nn.gemnet import GemNetT
from dpcdvae.nn.gine import GINEEncoder

_GEMNET = dict(emb_size_atom=16, emb_size_edge=16, num_blocks=2, num_radial=8, num_spherical=3,
               emb_size_rbf=4, emb_size_cbf=4, emb_size_trip=8, emb_size_bil_trip=8)

BLOCKS = {
    "GemNetT": lambda: GemNetT(**_GEMNET),
    "GemNetT+energy": lambda: GemNetT(**_GEMNET, energy_branch=True),
    "DPDenoiser": lambda: DPDenoiser(latent_dim=8, atom_emb_dim=8, time_dim=8, emb_size_edge=16, num_blocks=1,
                                     num_radial=8, num_spherical=3),
    "DPDenoiser-cdvae": lambda: DPDenoiser(latent_dim=8, atom_emb_dim=8, conditioning="cdvae", emb_size_edge=16,
                                           num_blocks=1, num_radial=8, num_spherical=3),
    "TimeEmbedding": lambda: TimeEmbedding(8, 32),
    "PeriodicDimeNetPP": lambda: PeriodicDimeNetPP(hidden_channels=8, out_channels=8, num_blocks=1,
                                                   int_emb_size=4, basis_emb_size=2, out_emb_channels=8,
                                                   num_spherical=3, num_radial=3,
                                                   output_initializer="glorot_orthogonal"),
    "GINEEncoder": lambda: GINEEncoder(8, 8, 2),
    **{f"CrystalEncoder[{v}]": (lambda v=v: CrystalEncoder.tiny(v)) for v in VARIANTS},
}


def _params(model):
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("name", sorted(BLOCKS))
def test_reset_after_perturbation_restores_the_seeded_model(name):
    build = BLOCKS[name]
    torch.manual_seed(123)
    fresh = _params(build())
    assert all(bool(torch.isfinite(p).all()) for p in fresh.values())  # nested blocks initialised too
    torch.manual_seed(7)
    model = build()  # another seed: other weights
    buffers = {k: v.clone() for k, v in model.state_dict().items() if k not in fresh}
    assert any(not torch.equal(fresh[k], p) for k, p in model.named_parameters())
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p)).mul_(3.0)
    torch.manual_seed(123)
    model.reset_parameters()
    for k, p in model.named_parameters():
        assert torch.equal(p, fresh[k]), k  # same seed -> identical
    for k, v in model.state_dict().items():
        if k in buffers:
            assert torch.equal(v, buffers[k]), k  # buffers (tables, scale factors) untouched


def test_reset_draws_new_weights_under_another_seed_and_keeps_the_rng_stream():
    torch.manual_seed(0)
    a = _params(GemNetT(**_GEMNET))
    after_build = torch.rand(3)
    model = GemNetT(**_GEMNET)
    torch.manual_seed(0)
    model.reset_parameters()
    assert torch.equal(torch.rand(3), after_build)  # building draws no more than reset_parameters
    torch.manual_seed(1)
    model.reset_parameters()
    assert not torch.equal(model.mlp_cbf3.detach(), a["mlp_cbf3"])
