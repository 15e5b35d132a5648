import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))

REPO = Path(__file__).resolve().parents[1]


def _shared_data() -> Path | None:
    env = os.environ.get("DPCDVAE_DATA")
    for cand in ([Path(env)] if env else []) + [REPO.parent / "shared" / "data"]:
        if (cand / "perov_5").is_dir():
            return cand
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data()
    if path is None:
        pytest.skip("benchmark CSVs not found (set DPCDVAE_DATA or place ../shared/data)")
    return path


@pytest.fixture(scope="session")
def prepared_cache(shared_data, tmp_path_factory):
    """A small perov_5 cache (first 200 rows of each split) prepared with the real pipeline."""
    from dpcdvae.data.prepare import prepare_dataset

    cache = tmp_path_factory.mktemp("cache")
    prepare_dataset("perov_5", shared_data, cache, workers=1, limit=200)
    return cache


@pytest.fixture(scope="session")
def tiny_model(prepared_cache, tmp_path_factory):
    """An untrained tiny DP-CDVAE saved as a self-contained model.pt (sampling tests)."""
    from dpcdvae.config import load_config
    from dpcdvae.data.cache import load_scalers
    from dpcdvae.models.build import build_model
    from dpcdvae.models.checkpoint import save_model

    cfg = load_config("tiny")
    torch.manual_seed(0)
    model = build_model(cfg, load_scalers(prepared_cache, "perov_5"))
    return save_model(tmp_path_factory.mktemp("m") / "model.pt", model, cfg)


def load_samples(path):
    return torch.load(path / "samples.pt", weights_only=True)


def overfit_losses(model, batch, lr: float, steps: int, draws: int = 4) -> tuple[float, float]:
    """Mean loss over ``draws`` fixed noise seeds before and after ``steps`` Adam steps on one batch
    (step k uses seed k % draws): the one-batch overfitting check of the model tests."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def loss_at(seed):
        torch.manual_seed(seed)
        return model(batch, teacher_forcing=True)["loss"]

    def mean_loss():
        with torch.no_grad():
            return float(sum(loss_at(s) for s in range(draws)) / draws)

    first = mean_loss()
    for step in range(steps):
        opt.zero_grad()
        loss_at(step % draws).backward()
        opt.step()
    return first, mean_loss()
