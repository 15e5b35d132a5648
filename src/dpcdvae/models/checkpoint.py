"""Model files: save / load / export DP-CDVAE, and the property predictor's file.

A model file is a dict ``{"format": "dpcdvae-model-v1", "config": {...}, "state_dict": {...}}`` that
``torch.load(path, weights_only=True)`` reads: the lattice scaler and GemNet scale factors are buffers
of the state dict, so nothing else is needed to sample. ``export_model(..., max_mb=15)`` splits it into
shards (``index.json`` + ``shard_000.pt`` ...) for transports with a per-file size limit. A Lightning
checkpoint of a training run (``last.ckpt``) is read too: its config is ``hyper_parameters['config']``
(a plain dict) and the model's weights are the ``model.`` entries of its state dict. No file stores a
class or module path, so files written before a module moved still load.

A property-predictor file (``dpcdvae train-property``) is ``{"format": "dpcdvae-property-v1",
"meta": {...}, "state_dict": {...}}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dpcdvae.atomic import atomic_torch_save, atomic_write_text
from dpcdvae.jsonio import dumps_strict
from dpcdvae.models.build import build_model
from dpcdvae.safeload import load_weights_only

if TYPE_CHECKING:
    from dpcdvae.models.dpcdvae import DPCDVAE
    from dpcdvae.models.property import PropertyPredictor  # (imported lazily: a DP-CDVAE file needs no predictor)

__all__ = ["save_model", "load_model", "load_model_file", "export_model", "lightning_model_state", "FORMAT",
           "save_property_model", "load_property_model", "PROPERTY_FORMAT"]

FORMAT = "dpcdvae-model-v1"
PROPERTY_FORMAT = "dpcdvae-property-v1"


def lightning_model_state(ckpt: dict) -> dict:
    """The weights of a Lightning checkpoint's ``model`` attribute (the ``model.`` prefix dropped)."""
    return {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}


def save_model(path: Path | str, model: "DPCDVAE", cfg: dict, state_dict: dict | None = None) -> Path:
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
        return obj["hyper_parameters"]["config"], lightning_model_state(obj)
    raise ValueError(f"{path} is neither a dpcdvae model file nor a training checkpoint")


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple["DPCDVAE", dict]:
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


def save_property_model(path: Path | str, model: "PropertyPredictor", meta: dict) -> Path:
    """Write a property-predictor file (``meta``: its constructor arguments and the training summary)."""
    return atomic_torch_save(Path(path), {"format": PROPERTY_FORMAT, "meta": meta, "state_dict": model.cpu().state_dict()})


def load_property_model(path: Path | str, device: torch.device | str = "cpu") -> tuple["PropertyPredictor", dict]:
    """Load a ``train-property`` model file -> (model in eval mode, meta)."""
    from dpcdvae.models.property import PropertyPredictor

    obj = load_weights_only(path, "property model")
    fmt = obj.get("format") if isinstance(obj, dict) else None
    if fmt != PROPERTY_FORMAT:
        raise ValueError(f"{path} is not a dpcdvae property model (format {fmt!r})")
    meta = obj["meta"]
    model = PropertyPredictor(meta["encoder_cfg"], meta["hidden_dim"], meta["fc_num_layers"], meta["max_atoms"])
    model.load_state_dict(obj["state_dict"])
    return model.to(device).eval(), meta
