"""Build DP-CDVAE from a config (the encoder, coordinate process and denoiser the config names).

Model files (save / load / export) are :mod:`dpcdvae.models.checkpoint`.
"""

from __future__ import annotations

import torch

from dpcdvae.data.scalers import Scalers
from dpcdvae.models.dpcdvae import DPCDVAE

__all__ = ["build_model"]


def build_model(cfg: dict, scalers: Scalers | None = None) -> DPCDVAE:
    """Instantiate the model described by ``cfg['model']`` (lattice scaler from ``scalers``, else
    placeholders that ``load_state_dict`` overwrites).

    ``model.encoder`` picks the encoder from :data:`dpcdvae.registry.ENCODERS`, ``model.process``
    (default ``ddpm`` for configs that predate the key) the coordinate process from
    :data:`dpcdvae.registry.PROCESSES`; ``model.denoiser_cfg.eps_frame: null`` (or absent)
    becomes the process's default frame (ddpm: fractional, score: cartesian).
    """
    from dpcdvae.diffusion.process import build_process, check_process_config
    from dpcdvae.nn.denoiser import DPDenoiser
    from dpcdvae.registry import ENCODERS

    m = cfg["model"]
    max_atoms = int(cfg["data"]["max_atoms"])
    enc_cfg = dict(m["encoder_cfg"])
    out_channels = enc_cfg.pop("out_channels", None)
    encoder_dim = int(m["latent_dim"] if out_channels is None else out_channels)
    encoder = ENCODERS.build(ENCODERS.check(m["encoder"]), out_channels=encoder_dim, max_atoms=max_atoms, **enc_cfg)
    check_process_config(m)
    process = build_process(m)
    den_cfg = dict(m["denoiser_cfg"])
    if den_cfg.get("eps_frame") is None:
        den_cfg["eps_frame"] = process.frames[0]
    denoiser = DPDenoiser(latent_dim=int(m["latent_dim"]), num_types=int(m["num_types"]), **den_cfg)
    if scalers is not None:
        mean, std = scalers.lattice.mean, scalers.lattice.std
    else:
        mean, std = torch.zeros(6), torch.ones(6)
    loss = {k: float(v) for k, v in m["loss"].items() if k != "mul_cost_coord"}
    return DPCDVAE(
        encoder=encoder, denoiser=denoiser, schedule=None, encoder_dim=encoder_dim,
        latent_dim=int(m["latent_dim"]), hidden_dim=int(m["hidden_dim"]), fc_num_layers=int(m["fc_num_layers"]),
        max_atoms=max_atoms, num_types=int(m["num_types"]), lattice_mean=mean, lattice_std=std,
        recenter=bool(m.get("diffusion", {}).get("recenter", True)), loss_weights=loss, process=process,
    )
