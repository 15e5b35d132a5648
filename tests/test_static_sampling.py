"""The static-shape sampling path (dpcdvae.sampling.static_net) equals the eager reverse chain."""

from __future__ import annotations

import pytest
import torch

from dpcdvae.config import load_config
from dpcdvae.models.build import build_model
from dpcdvae.sampling import static_net as sn
from dpcdvae.sampling.static_net import StaticSampling


@pytest.fixture(scope="module")
def models():
    out = {}
    for name, overrides in (("tiny", []), ("tiny_cdvae", ["model.score.steps_per_level=1"])):
        torch.manual_seed(0)
        model = build_model(load_config(name, overrides)).eval()
        # perovskite-like cells (lengths / N^(1/3) ~ 2.3 Å, angles ~ 90 deg) instead of the placeholder
        # scaler, whose 1 Å / 30 deg cells make the capped graph a matter of distance ties
        model.lattice_mean.copy_(torch.tensor([2.3, 2.3, 2.3, 90.0, 90.0, 90.0]))
        model.lattice_std.copy_(torch.tensor([0.2, 0.2, 0.2, 4.0, 4.0, 4.0]))
        out[name] = model
    return out


def _decode(model, static, steps, seed=3, batch=2):
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(batch, model.latent_dim, generator=gen)
    return model.decode(z, steps=steps, generator=gen, static=static)


def _assert_same(static, eager):
    assert torch.equal(static["num_atoms"], eager["num_atoms"])
    assert torch.equal(static["atom_types"], eager["atom_types"])
    diff = (static["frac_coords"] - eager["frac_coords"]).abs()
    diff = torch.minimum(diff, 1 - diff)  # a coordinate at the wrap boundary
    assert diff.max().item() < 1e-5


CASES = [("tiny", 10), ("tiny_cdvae", None)]


@pytest.mark.parametrize("name,steps", CASES)
def test_static_calls_match_eager_along_chain(models, name, steps, monkeypatch):
    """Every padded call of a chain (ddpm and Langevin) equals the eager call on the same state: pred
    within 1e-5 and the same type argmax. (End to end, fp32 summation-order differences of ~1e-7 can
    flip a wrap or a capped neighbour late in a long untrained chain, so the whole-chain comparison of
    the score process is made per call.)"""
    diffs = []
    call = sn.StaticNet.__call__

    def shadow(self, x, t, types):
        ps, ls = call(self, x, t, types)
        pe, le = self.eager(x, t, types)
        diffs.append(((ps - pe).abs().max().item(), torch.equal(ls.argmax(-1), le.argmax(-1))))
        return ps, ls

    monkeypatch.setattr(sn.StaticNet, "__call__", shadow)
    model = models[name]
    _decode(model, StaticSampling(atom_multiple=8), steps, batch=4)
    assert len(diffs) == model.process.network_calls(steps)
    assert max(d for d, _ in diffs) < 1e-5
    assert all(same for _, same in diffs)


@pytest.mark.parametrize("name,steps", CASES)
def test_overflow_falls_back_to_eager(models, name, steps):
    """max_degree=1 makes every padded call overflow: each step is recomputed eagerly, and the chain
    equals the eager chain."""
    model = models[name]
    opts = StaticSampling(atom_multiple=8, max_degree=1)
    _assert_same(_decode(model, opts, steps, batch=4), _decode(model, None, steps, batch=4))
    calls = model.process.network_calls(steps)
    assert (opts.calls, opts.fallbacks) == (calls, calls)


def test_static_net_matches_denoiser(models):
    """One padded call equals the eager denoiser output row for row (no wrap ambiguity here)."""
    from dpcdvae.sampling.static_net import StaticNet
    from dpcdvae.geometry.lattice import lattice_from_params

    model = models["tiny"]
    gen = torch.Generator().manual_seed(1)
    num_atoms = torch.tensor([5, 3, 7])
    batch = torch.repeat_interleave(torch.arange(3), num_atoms)
    z = torch.randn(3, model.latent_dim, generator=gen)
    lattice = lattice_from_params(torch.tensor([[4.0, 4.5, 5.0]] * 3), torch.tensor([[90.0, 95.0, 100.0]] * 3))
    net = StaticNet(model.denoiser, StaticSampling(atom_multiple=4), z, num_atoms, batch, lattice,
                    model.process.num_levels, model.max_atoms)
    x = torch.rand(15, 3, generator=gen)
    t = torch.tensor([10, 500, 999])
    types = torch.randint(1, 10, (15,), generator=gen)
    with torch.no_grad():
        p_s, l_s = net(x, t, types)
        p_e, l_e = net.eager(x, t, types)
    assert net.n_pad == 16
    torch.testing.assert_close(p_s, p_e, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(l_s, l_e, atol=1e-5, rtol=1e-5)


def test_static_needs_capped_ref_graph(models):
    from dpcdvae.sampling.static_net import check_static_sampling

    den = models["tiny"].denoiser
    old = den.max_neighbors
    den.max_neighbors = None
    try:
        with pytest.raises(ValueError, match="max_neighbors"):
            check_static_sampling(den)
    finally:
        den.max_neighbors = old


def test_sample_static_shapes_recorded(tiny_model, tmp_path):
    """``sample(static_shapes=True)`` runs the static path and records the option in run.json and samples'
    meta; --cuda-graphs without a CUDA device is refused. (Same seed: same atom counts and lattices,
    drawn before the chain; the chain itself is compared per call above: an eq7 chain wraps and
    recentres every step, so a 1e-7 difference at a cell boundary can move a whole crystal.)"""
    import json

    from dpcdvae.sampling.run import sample

    kw = dict(n=3, batch_size=2, steps=5, seed=1, device="cpu", write_cifs=False, progress=False)
    sample(tiny_model, out=tmp_path / "eager", **kw)
    sample(tiny_model, out=tmp_path / "static", static_shapes=True, **kw)
    eager = torch.load(tmp_path / "eager" / "samples.pt", weights_only=True)
    static = torch.load(tmp_path / "static" / "samples.pt", weights_only=True)
    assert eager["meta"]["static_shapes"] is False and static["meta"]["static_shapes"] is True
    assert json.loads((tmp_path / "static" / "run.json").read_text())["static_atom_multiple"] == 256
    for key in ("num_atoms", "lengths", "angles"):
        assert torch.equal(static[key], eager[key])
    assert static["frac_coords"].shape == eager["frac_coords"].shape
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            sample(tiny_model, out=tmp_path / "graphs", cuda_graphs=True, **kw)


def test_cli_static_shapes(tiny_model, prepared_cache, tmp_path, capsys):
    """``dpcdvae reconstruct --static-shapes`` reaches the static path (run.json records it)."""
    import json

    from dpcdvae.cli import main

    out = tmp_path / "r"
    assert main(["reconstruct", "--ckpt", str(tiny_model), "--out", str(out), "--cache-dir",
                 str(prepared_cache), "--limit", "2", "--steps", "3", "--device", "cpu", "--no-cif",
                 "--no-progress", "--static-shapes"]) == 0
    meta = json.loads((out / "run.json").read_text())
    assert meta["static_shapes"] is True and meta["cuda_graphs"] is False
