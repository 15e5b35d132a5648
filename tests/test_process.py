"""Coordinate processes (ddpm | score) and the CDVAE baselines (tiny configs, CPU).

The Langevin test is network-free: the exact score of a periodic Gaussian mixture in an orthorhombic
box, so the sampler alone must recover the mixture's weights, modes and widths.
"""

import json
import math

import pytest
import torch

from dpcdvae.config import check_config_values, load_config
from dpcdvae.diffusion.process import PROCESSES, DDPMProcess, ScoreProcess, build_process
from dpcdvae.diffusion.score import annealed_langevin, geometric_sigmas, min_image_displacement
from dpcdvae.models.build import build_model
from dpcdvae.models.checkpoint import load_model, save_model

from conftest import overfit_losses

# the two CDVAE baselines at the tiny sizes (carbon_24_cdvae / carbon_24_cdvae_fourier at full size)
BASELINES = {"cdvae": [], "cdvae_fourier": ["model.denoiser_cfg.fourier=true"]}


# ------------------------------------------------------------------------------ Langevin, exact score
BOX = torch.tensor([8.0, 10.0, 12.0])  # Å, orthorhombic cell
MODES = torch.tensor([[0.2, 0.25, 0.3], [0.7, 0.6, 0.75], [0.25, 0.8, 0.7]])  # frac
WEIGHTS = torch.tensor([0.6, 0.3, 0.1])
S0 = 0.4  # Å, std of each component


def _wrapped_gauss_dlog(u: torch.Tensor, var: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(log g + const, d/du log g) of 1-D wrapped Gaussians of variance ``var`` (Å^2), periods BOX,
    at u [..., 3] Å. The additive constant depends only on (var, period): it cancels between components."""
    period = BOX
    if math.sqrt(var) < float(period.min()) / 4:  # images -1..1 around the reduced difference
        u = u - period * torch.round(u / period)
        d = u.unsqueeze(-1) - period.unsqueeze(-1) * torch.arange(-1.0, 2.0)
        logg = -0.5 * d**2 / var
        return torch.logsumexp(logg, -1), (torch.softmax(logg, -1) * (-d / var)).sum(-1)
    j = torch.arange(1.0, 7.0)  # Fourier series, 6 terms
    k = 2 * math.pi * j / period.unsqueeze(-1)  # [3, J]
    q = torch.exp(-0.5 * k**2 * var)
    arg = k * u.unsqueeze(-1)
    g = 1 + 2 * (q * torch.cos(arg)).sum(-1)
    return torch.log(g), -2 * (q * k * torch.sin(arg)).sum(-1) / g


def mixture_oracle(sigmas: list[float]):
    """net_fn returning sigma * grad log p_sigma(x) (Å) of the periodic mixture convolved with N(0, sigma^2)."""

    def net_fn(x: torch.Tensor, t: torch.Tensor, i: int):
        sigma = sigmas[int(t[0])]
        var = S0**2 + sigma**2
        logg, dlog = _wrapped_gauss_dlog((x.unsqueeze(1) - MODES) * BOX, var)  # [N, K, 3]
        resp = torch.softmax(torch.log(WEIGHTS) + logg.sum(-1), dim=1)  # [N, K]
        return sigma * (resp.unsqueeze(-1) * dlog).sum(1), None

    return net_fn


def _run_mixture(n: int, step_lr: float, seed: int = 0):
    """Annealed Langevin on the mixture with CDVAE's 50 levels 10 -> 0.01 Å, 100 steps each ->
    (weights [3], min-image offsets [N, K, 3] Å, nearest mode [N], levels visited)."""
    g = torch.Generator().manual_seed(seed)
    batch = torch.arange(n // 4).repeat_interleave(4)
    lattice = torch.diag(BOX.float()).expand(n // 4, 3, 3).contiguous()
    sigmas = geometric_sigmas(10.0, 0.01, 50)
    levels = []
    x = annealed_langevin(mixture_oracle([float(s) for s in sigmas]), torch.rand(n, 3, generator=g), batch,
                          lattice, sigmas, steps_per_level=100, step_lr=step_lr, generator=g,
                          callback=lambda i, t, x, extra: levels.append(t) if i % 100 == 0 else None)
    assert x.shape == (n, 3) and bool((x >= 0).all() and (x < 1).all())
    d = x.unsqueeze(1) - MODES
    d = (d - torch.round(d)) * BOX
    k = d.norm(dim=-1).argmin(1)
    return torch.bincount(k, minlength=3).float() / n, d, k, levels


def _check_modes(d: torch.Tensor, k: torch.Tensor) -> None:
    """Every mode sits where it should (mean offset < 0.15 Å) with the right width (+-20 %)."""
    near = d.norm(dim=-1).gather(1, k.unsqueeze(1)).squeeze(1)
    assert float((near > 4 * S0).float().mean()) < 0.02  # nothing left between the modes
    for j in range(3):
        dj = d[k == j, j]
        assert float(dj.mean(0).abs().max()) < 0.15, (j, dj.mean(0))
        assert 0.8 * S0 < float(dj.std(0).mean()) < 1.2 * S0, (j, dj.std(0))


def test_annealed_langevin_recovers_a_periodic_gaussian_mixture():
    """Exact score, CDVAE's levels and 100 steps per level, step_lr 1e-5: the weights 0.6 / 0.3 / 0.1
    (not the modes' basin volumes, so only a working annealing finds them), the modes and their
    widths. 400 points: standard error of a weight <= 0.025."""
    frac, d, k, levels = _run_mixture(400, step_lr=1e-5)
    assert levels == list(range(49, -1, -1))  # from the largest sigma down, 100 calls per level
    assert torch.allclose(frac, WEIGHTS, atol=0.06), frac
    _check_modes(d, k)


def test_cdvae_step_lr_finds_the_modes_with_flattened_weights():
    """CDVAE's step_lr 1e-4 makes the step sigma^2 (h / var ~ 1 while sigma >> the mode width), so each
    level is sampled about twice too wide: the modes and widths come out right, the weights are pulled
    towards equal (2,000 points: 0.52 / 0.35 / 0.13 for 0.6 / 0.3 / 0.1; 0.58 / 0.32 / 0.10 at 3e-5)."""
    frac, d, k, _ = _run_mixture(400, step_lr=1e-4)
    assert bool((frac[:-1] > frac[1:]).all()) and torch.allclose(frac, WEIGHTS, atol=0.13), frac
    _check_modes(d, k)


# ----------------------------------------------------------------------------- score noise and target
def test_score_target_is_the_min_image_displacement_over_sigma_squared():
    torch.manual_seed(0)
    proc = ScoreProcess(num_levels=2, sigma_max=0.05, sigma_min=0.02)  # small noise: no image is crossed
    na = torch.tensor([3, 5])
    batch = torch.arange(2).repeat_interleave(na)
    frac0 = torch.rand(8, 3) * 0.5 + 0.25
    lattice = torch.tensor([[[4.0, 0, 0], [1.0, 5.0, 0], [0.5, 0.3, 6.0]], [[7.0, 0, 0], [0, 7.0, 0], [0, 0, 7.0]]])
    types = torch.full((8,), 6)
    probs = torch.full((8, 100), 0.01)
    noisy = proc.noise(frac0, types, batch, na, lattice, lattice, probs, generator=torch.Generator().manual_seed(1))
    sig = noisy.sigma[batch].unsqueeze(1)
    assert bool((noisy.x >= 0).all() and (noisy.x < 1).all())
    # x = x0 + sigma xi (Cartesian), so target * sigma^2 = -(Cartesian noise)
    cart_noise = ((noisy.x - frac0).unsqueeze(-1) * lattice[batch]).sum(-2)
    torch.testing.assert_close(noisy.target * sig**2, -cart_noise, atol=1e-5, rtol=0)
    torch.testing.assert_close(noisy.weights, 0.5 * noisy.sigma**2)
    # the loss is 0 for the exact prediction pred = sigma * target, 0.5 sigma^2 |target|^2 for pred = 0
    assert float(proc.loss(sig * noisy.target, noisy, batch, 2)) < 1e-10
    per_atom = 0.5 * (noisy.target**2).sum(-1) * noisy.sigma[batch] ** 2
    want = torch.stack([per_atom[batch == b].mean() for b in range(2)]).mean()
    torch.testing.assert_close(proc.loss(torch.zeros(8, 3), noisy, batch, 2), want)
    # large displacements take the shortest image, also in the oblique cell
    diff = torch.tensor([[0.9, 0.1, -0.6], [0.45, 0.45, 0.45]])
    got = min_image_displacement(diff, lattice[:1].expand(2, 3, 3), torch.tensor([0, 1]))
    shifts = torch.tensor([[i, j, k] for i in range(-2, 3) for j in range(-2, 3) for k in range(-2, 3)],
                          dtype=torch.float32)
    for r in range(2):
        cands = ((diff[r] + shifts) @ lattice[0]).norm(dim=-1)
        assert float(got[r].norm()) == pytest.approx(float(cands.min()), abs=1e-5)


# ------------------------------------------------------------------------------------ tiny baselines
@pytest.fixture(scope="module")
def perov_batch(prepared_cache):
    from dpcdvae.data.cache import load_scalers, load_split

    ds = load_split(prepared_cache, "perov_5", "train")
    return ds.batch(torch.arange(8)), load_scalers(prepared_cache, "perov_5")


def _baseline(name, scalers):
    cfg = load_config("tiny_cdvae", BASELINES[name])
    check_config_values(cfg)
    torch.manual_seed(0)
    return build_model(cfg, scalers), cfg


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_overfits_one_batch(perov_batch, name):
    """Loss on one fixed batch (4 fixed noise draws) falls >= 8x within 100 Adam steps."""
    batch, scalers = perov_batch
    model, _ = _baseline(name, scalers)
    assert isinstance(model.process, ScoreProcess) and model.denoiser.conditioning == "cdvae"
    assert model.denoiser.fourier == (name == "cdvae_fourier") and model.denoiser.eps_frame == "cartesian"
    first, last = overfit_losses(model, batch, lr=1e-2, steps=100)
    assert last < first / 8, (first, last)


@pytest.mark.parametrize("name", list(BASELINES))
def test_baseline_checkpoint_roundtrip(perov_batch, tmp_path, name):
    batch, scalers = perov_batch
    model, cfg = _baseline(name, scalers)
    model.eval()
    path = save_model(tmp_path / "model.pt", model, cfg)
    obj = torch.load(path, weights_only=True)
    assert obj["config"]["model"]["process"] == "score"
    loaded, _ = load_model(path)
    assert isinstance(loaded.process, ScoreProcess) and loaded.denoiser.fourier == model.denoiser.fourier
    with torch.no_grad():
        torch.manual_seed(3)
        a = model(batch, teacher_forcing=False)
        torch.manual_seed(3)
        b = loaded(batch, teacher_forcing=False)
        for k in a:
            torch.testing.assert_close(a[k], b[k])
        z = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(1))
        da = model.decode(z, generator=torch.Generator().manual_seed(2))
        db = loaded.decode(z, generator=torch.Generator().manual_seed(2))
    for k in da:
        torch.testing.assert_close(da[k], db[k])
    assert bool((da["frac_coords"] >= 0).all() and (da["frac_coords"] < 1).all())


def test_fourier_switch_breaks_translation_invariance():
    """cdvae conditioning sees only relative geometry; with ``fourier`` the absolute position enters."""
    from dpcdvae.nn.denoiser import DPDenoiser

    small = dict(latent_dim=4, atom_emb_dim=8, emb_size_edge=8, num_blocks=1, num_radial=8, num_spherical=3,
                 emb_size_rbf=4, emb_size_cbf=4, emb_size_trip=4, emb_size_bil_trip=4, num_atom=1, num_after_skip=1,
                 cutoff=5.0, max_neighbors=None, conditioning="cdvae", eps_frame="cartesian")
    torch.manual_seed(0)
    plain, fourier = DPDenoiser(**small), DPDenoiser(**small, fourier=True)
    assert plain.cond.in_features == 12 and fourier.cond.in_features == 12 + 36
    g = torch.Generator().manual_seed(0)
    frac = torch.rand(6, 3, generator=g)
    args = dict(z=torch.randn(1, 4, generator=g), t=torch.zeros(1, dtype=torch.long), T=50,
                atom_types=torch.tensor([6] * 6), num_atoms=torch.tensor([6]), batch=torch.zeros(6, dtype=torch.long),
                lattice=torch.eye(3).unsqueeze(0) * 4.0)
    shifted = (frac + torch.tensor([0.137, 0.05, 0.31])) % 1.0
    with torch.no_grad():
        p0, p1 = plain(frac_coords=frac, **args)[0], plain(frac_coords=shifted, **args)[0]
        f0, f1 = fourier(frac_coords=frac, **args)[0], fourier(frac_coords=shifted, **args)[0]
    torch.testing.assert_close(p0, p1, atol=1e-5, rtol=1e-4)
    assert float((f0 - f1).abs().max()) > 1e-3


# ------------------------------------------------------------------------------------------ registry
@pytest.mark.parametrize("name", list(PROCESSES))
def test_every_registered_process_builds(name):
    cfg = load_config("tiny", [f"model.process={name}"])
    check_config_values(cfg)
    proc = build_process(cfg["model"])
    assert isinstance(proc, PROCESSES[name]) and proc.name == name
    assert proc.network_calls() >= 1 and proc.check_sampling(None, None) == proc.samplers[0]
    model = build_model(cfg)
    assert model.process.name == name and model.denoiser.eps_frame == proc.frames[0]
    assert (model.schedule is not None) == isinstance(proc, DDPMProcess)


def test_unknown_process_and_bad_switches_are_refused_in_one_line(capsys, tmp_path):
    from dpcdvae.cli import main

    cfg = load_config("tiny", ["model.process=vesde"])
    for fn in (check_config_values, build_model):
        with pytest.raises(ValueError, match=r"^model.process must be one of ddpm, score, got 'vesde'$"):
            fn(cfg)
    for over, needle in [("model.denoiser_cfg.conditioning=gemnet", "conditioning must be dpcdvae or cdvae"),
                         ("model.denoiser_cfg.fourier=3", "fourier must be true, false or null"),
                         ("model.score.steps_per_level=0", "model.score.steps_per_level must be an integer >= 1")]:
        with pytest.raises(ValueError, match=needle):
            check_config_values(load_config("tiny", ["model.process=score", over]))
    with pytest.raises(ValueError, match="eps_frame must be cartesian"):
        check_config_values(load_config("tiny", ["model.process=score", "model.denoiser_cfg.eps_frame=fractional"]))
    rc = main(["train", "--config", "tiny", "--out", str(tmp_path / "run"), "--set", "model.process=vesde"])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and "\n" not in err and "model.process must be one of ddpm, score" in err
    assert not (tmp_path / "run").exists()


def test_presets_of_the_three_models():
    dime = load_config("carbon_24")
    assert dime["model"]["process"] == "ddpm" and dime["model"]["denoiser_cfg"]["conditioning"] == "dpcdvae"
    for name, fourier in (("carbon_24_cdvae", None), ("carbon_24_cdvae_fourier", True)):
        cfg = load_config(name)
        check_config_values(cfg)
        m = cfg["model"]
        assert m["process"] == "score" and m["denoiser_cfg"]["conditioning"] == "cdvae"
        assert m["denoiser_cfg"]["fourier"] is fourier and cfg["data"] == dime["data"]
        assert (m["loss"]["cost_coord"], m["loss"]["cost_type"], m["loss"]["cost_lattice"]) == (10.0, 1.0, 10.0)
        proc = build_process(m)
        assert proc.network_calls() == 5000 and proc.step_lr == 1e-4
        torch.testing.assert_close(proc.sigmas[[0, -1]], torch.tensor([0.01, 10.0]))


# ---------------------------------------------------------------------------------------- end to end
def test_train_sample_reconstruct_with_the_score_process(prepared_cache, tmp_path, capsys):
    from dpcdvae.cli import main

    run = tmp_path / "run"
    rc = main(["train", "--config", "tiny", "--set", "model.process=score",
               "--set", "model.denoiser_cfg.conditioning=cdvae", "--set", "model.denoiser_cfg.fourier=true", "--set", "model.score.steps_per_level=1",
               "--set", "train.max_epochs=1", "--out", str(run), "--cache-dir", str(prepared_cache), "--limit", "32",
               "--accelerator", "cpu", "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    capsys.readouterr()
    model = run / "model.pt"
    assert torch.load(model, weights_only=True)["config"]["model"]["process"] == "score"
    out = tmp_path / "s"
    assert main(["sample", "--ckpt", str(model), "--out", str(out), "-n", "4", "--device", "cpu", "--no-progress"]) == 0
    capsys.readouterr()
    s = torch.load(out / "samples.pt", weights_only=True)
    assert s["num_atoms"].shape == (4,) and s["frac_coords"].shape == (int(s["num_atoms"].sum()), 3)
    assert s["meta"]["sampler"] == "langevin" and len(list((out / "cif").glob("*.cif"))) == 4
    assert json.loads((out / "run.json").read_text())["steps"] is None
    rec = tmp_path / "r"
    assert main(["reconstruct", "--ckpt", str(model), "--out", str(rec), "--limit", "2", "--device", "cpu",
                 "--cache-dir", str(prepared_cache), "--no-progress"]) == 0
    assert torch.load(rec / "samples.pt", weights_only=True)["index"].tolist() == [0, 1]
    capsys.readouterr()
    for extra, needle in ((["--steps", "10"], "--steps does not apply to the score process"),
                          (["--sampler", "eq6"], "--sampler eq6 does not apply to the score process"),
                          (["--frame", "fmod"], "--frame does not apply to the score process")):
        rc = main(["sample", "--ckpt", str(model), "--out", str(tmp_path / "bad"), "-n", "2", "--device", "cpu",
                   "--no-progress", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 1 and "\n" not in err and needle in err, err
        assert not (tmp_path / "bad" / "run.json").exists()
