"""Configs: YAML presets shipped in ``dpcdvae/configs`` plus dotted overrides.

A config is a plain nested dict (JSON-compatible, so it is saved inside checkpoints and loads with
``torch.load(weights_only=True)``). A preset may name ``base: <preset>`` to inherit from another.
"""

from __future__ import annotations

import copy
import math
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_config", "apply_overrides", "list_presets", "deep_merge", "check_config_values"]


def list_presets() -> list[str]:
    """Names of the presets shipped with the package."""
    root = resources.files("dpcdvae.configs")
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml") and p.name != "base.yaml")


def deep_merge(base: dict, over: dict) -> dict:
    """Recursively merge ``over`` into a copy of ``base``."""
    out = copy.deepcopy(base)
    for key, val in over.items():
        if isinstance(val, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], val)
        else:
            out[key] = copy.deepcopy(val)
    return out


def _read(name_or_path: str) -> dict:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        text = path.read_text()
    else:
        res = resources.files("dpcdvae.configs") / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ValueError(
                f"unknown config {name_or_path!r}: use a preset ({', '.join(list_presets())}) or a .yaml path"
            )
        text = res.read_text()
    cfg = yaml.safe_load(text) or {}
    base = cfg.pop("base", None)
    return deep_merge(_read(base), cfg) if base else cfg


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (numbers, null, lists...).

    Unknown keys are an error (a typo must not silently train another model).
    """
    out = copy.deepcopy(cfg)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node: Any = out
        for part in parts[:-1]:
            if not isinstance(node, dict) or part not in node:
                raise ValueError(f"unknown config key {key!r}")
            node = node[part]
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ValueError(f"unknown config key {key!r}")
        node[parts[-1]] = parse_value(raw)
    return out


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(raw: str) -> Any:
    """An override value parsed as YAML, plus the numbers YAML 1.1 leaves as strings (``1e-4``)."""
    val = yaml.safe_load(raw)
    if isinstance(val, str) and _NUMBER.fullmatch(val.strip()):
        return float(val)
    return val


def load_config(name_or_path: str, overrides: list[str] | None = None, encoder: str | None = None) -> dict:
    """Load a preset or YAML file, then apply ``--encoder`` and ``--set`` overrides."""
    cfg = _read(name_or_path)
    if encoder is not None:
        cfg = apply_overrides(cfg, [f"model.encoder={encoder}"])
    cfg = apply_overrides(cfg, overrides)
    cfg["name"] = name_or_path
    return cfg


def _rule(kind: str, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
          hi_open: bool = False, null: bool = False) -> tuple:
    return kind, lo, hi, lo_open, hi_open, null


_INT1, _INT0, _POS, _NONNEG = _rule("int", 1), _rule("int", 0), _rule("num", 0, lo_open=True), _rule("num", 0)
# dotted key -> (kind, min, max, min open?, max open?, null allowed?). The schedule keys of ``train``
# (fractions, minutes, EMA, lr <= min_lr) are checked by dpcdvae.models.train.check_train_config.
NUMERIC_KEYS: dict[str, tuple] = {
    "data.batch_size": _INT1, "data.eval_batch_size": _INT1, "data.max_atoms": _INT1,
    "data.num_val_batches": _rule("int", 1, null=True), "data.holdout_fraction": _rule("num", 0, 1, True, True),
    "model.latent_dim": _INT1, "model.hidden_dim": _INT1, "model.fc_num_layers": _INT1, "model.num_types": _INT1,
    "model.encoder_cfg.cutoff": _POS, "model.encoder_cfg.max_neighbors": _rule("int", 1, null=True),
    "model.encoder_cfg.hidden_channels": _INT1, "model.encoder_cfg.num_blocks": _INT1,
    "model.encoder_cfg.out_channels": _INT1,
    "model.denoiser_cfg.cutoff": _POS, "model.denoiser_cfg.max_neighbors": _rule("int", 1, null=True),
    "model.denoiser_cfg.emb_size_edge": _INT1, "model.denoiser_cfg.num_blocks": _INT1,
    "model.denoiser_cfg.atom_emb_dim": _INT1, "model.denoiser_cfg.time_dim": _INT1,
    "model.diffusion.num_steps": _rule("int", 2), "model.diffusion.beta_start": _rule("num", 0, 1, True, True),
    "model.diffusion.beta_end": _rule("num", 0, 1, True, True), "model.diffusion.type_sigma_begin": _POS,
    "model.diffusion.type_sigma_end": _POS,
    "model.score.num_levels": _rule("int", 2), "model.score.sigma_max": _POS, "model.score.sigma_min": _POS,
    "model.score.type_sigma_max": _POS, "model.score.type_sigma_min": _POS,
    "model.score.steps_per_level": _INT1, "model.score.step_lr": _POS,
    "train.seed": _rule("int"), "train.max_epochs": _INT1, "train.lr": _POS, "train.min_lr": _NONNEG,
    "train.warmup_steps": _INT0, "train.lr_factor": _rule("num", 0, 1, True, True), "train.lr_patience": _INT0,
    "train.grad_clip_value": _rule("num", 0, null=True), "train.check_val_every_n_epoch": _INT1,
    "train.log_every_n_steps": _INT1, "train.teacher_forcing_max_epoch": _INT0, "train.mul_cost_coord_epoch": _INT0,
    "sample.batch_size": _INT1,
}


def _lookup(cfg: dict, key: str) -> tuple[bool, Any]:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def check_config_values(cfg: dict) -> None:
    """Reject a numeric config value of the wrong type or range (``NUMERIC_KEYS``; every
    ``model.loss`` weight must be a number >= 0) with a one-line ValueError naming the key; then the
    choices of ``model.process`` and the denoiser switches
    (:func:`dpcdvae.diffusion.process.check_process_config`)."""
    rules = dict(NUMERIC_KEYS)
    for name in (cfg.get("model", {}).get("loss") or {}):
        rules[f"model.loss.{name}"] = _NONNEG
    for key, (kind, lo, hi, lo_open, hi_open, null) in rules.items():
        present, val = _lookup(cfg, key)
        if not present or (val is None and null):
            continue
        what = "an integer" if kind == "int" else "a number"
        bounds = [f"{'>' if lo_open else '>='} {lo:g}" if lo is not None else "",
                  f"{'<' if hi_open else '<='} {hi:g}" if hi is not None else ""]
        need = " ".join([what, " and ".join(b for b in bounds if b)]).strip() + (" or null" if null else "")
        ok_type = isinstance(val, int) if kind == "int" else isinstance(val, (int, float))
        if isinstance(val, bool) or not ok_type:
            raise ValueError(f"{key} must be {what}{' or null' if null else ''}, got {val!r}")
        if not math.isfinite(val):
            raise ValueError(f"{key} must be a finite number, got {val!r}")
        if (lo is not None and (val <= lo if lo_open else val < lo)) or (
                hi is not None and (val >= hi if hi_open else val > hi)):
            raise ValueError(f"{key} must be {need}, got {val!r}")
    if isinstance(cfg.get("model"), dict):
        from dpcdvae.diffusion.process import check_process_config  # torch: imported only when checking

        check_process_config(cfg["model"])
