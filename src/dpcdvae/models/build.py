"""Build DP-CDVAE from a config, and save / load / export self-contained model files.

A model file is a dict ``{"format": "dpcdvae-model-v1", "config": {...}, "state_dict": {...}}`` that
``torch.load(path, weights_only=True)`` reads: the lattice scaler and GemNet scale factors are buffers
of the state dict, so nothing else is needed to sample. ``export_model(..., max_mb=15)`` splits it into
shards (``index.json`` + ``shard_000.pt`` ...) for transports with a per-file size limit.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from dpcdvae.atomic import atomic_torch_save, atomic_write_text
from dpcdvae.data.scalers import Scalers
from dpcdvae.jsonio import dumps_strict
from dpcdvae.models.dpcdvae import DPCDVAE
from dpcdvae.safeload import load_weights_only

__all__ = ["build_model", "save_model", "load_model", "load_model_file", "export_model", "FORMAT"]

FORMAT = "dpcdvae-model-v1"


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


def save_model(path: Path | str, model: DPCDVAE, cfg: dict, state_dict: dict | None = None) -> Path:
    """Write a self-contained model file (``state_dict`` defaults to the model's own)."""
    state = model.state_dict() if state_dict is None else state_dict
    return atomic_torch_save(Path(path), {"format": FORMAT, "config": cfg, "state_dict": state})


def load_model_file(path: Path | str) -> tuple[dict, dict]:
    """(config, state_dict) from a model.pt, a shard folder, or a Lightning checkpoint."""
    path = Path(path)
    if path.is_dir():
        if not (path / "index.json").is_file():
            raise FileNotFoundError(f"{path} is a folder without index.json, not an exported model folder")
        index = json.loads((path / "index.json").read_text())
        state: dict = {}
        for shard in index["shards"]:
            state.update(load_weights_only(path / shard, "model shard"))
        return index["config"], state
    obj = load_weights_only(path, "model file")
    if not isinstance(obj, dict):
        raise ValueError(f"{path} is neither a dpcdvae model file nor a training checkpoint")
    if obj.get("format") == FORMAT:
        return obj["config"], obj["state_dict"]
    if "state_dict" in obj and "hyper_parameters" in obj:  # Lightning checkpoint of DPCDVAEModule
        state = {k[len("model."):]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
        return obj["hyper_parameters"]["config"], state
    raise ValueError(f"{path} is neither a dpcdvae model file nor a training checkpoint")


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[DPCDVAE, dict]:
    """Rebuild the model of a model file / checkpoint on ``device`` in eval mode."""
    cfg, state = load_model_file(path)
    model = build_model(cfg)
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    model.load_state_dict(state)
    return model.to(device).eval(), cfg


def export_model(ckpt: Path | str, out: Path | str, max_mb: float | None = None,
                 dtype: str = "float32") -> list[Path]:
    """Write a self-contained model file (``max_mb`` None) or a folder of shards of at most ``max_mb``
    MiB each. ``dtype='bfloat16'`` halves the size (weights are cast back to fp32 on load)."""
    cfg, state = load_model_file(ckpt)
    if dtype == "bfloat16":
        state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in state.items()}
    out = Path(out)
    if max_mb is None:
        return [atomic_torch_save(out, {"format": FORMAT, "config": cfg, "state_dict": state})]
    limit = int(max_mb * 2**20) - 65536  # headroom for the pickle container
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict] = [{}]
    sizes = [0]
    for key, val in state.items():
        nbytes = val.numel() * val.element_size()
        if nbytes > limit:
            raise ValueError(f"tensor {key} ({nbytes / 2**20:.1f} MiB) exceeds --max-mb {max_mb}")
        if sizes[-1] + nbytes > limit:
            shards.append({})
            sizes.append(0)
        shards[-1][key] = val
        sizes[-1] += nbytes
    names = []
    for i, shard in enumerate(shards):
        name = f"shard_{i:03d}.pt"
        atomic_torch_save(out / name, shard)
        names.append(name)
    atomic_write_text(out / "index.json", dumps_strict({"format": FORMAT, "config": cfg, "shards": names}, indent=1) + "\n")
    return [out / n for n in names] + [out / "index.json"]
