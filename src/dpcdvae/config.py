"""Configs: YAML presets shipped in ``dpcdvae/configs`` plus dotted overrides.

A config is a plain nested dict (JSON-compatible, so it is saved inside checkpoints and loads with
``torch.load(weights_only=True)``). A preset may name ``base: <preset>`` to inherit from another.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

__all__ = ["load_config", "apply_overrides", "list_presets", "deep_merge"]


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
        node[parts[-1]] = yaml.safe_load(raw)
    return out


def load_config(name_or_path: str, overrides: list[str] | None = None, encoder: str | None = None) -> dict:
    """Load a preset or YAML file, then apply ``--encoder`` and ``--set`` overrides."""
    cfg = _read(name_or_path)
    if encoder is not None:
        cfg = apply_overrides(cfg, [f"model.encoder={encoder}"])
    cfg = apply_overrides(cfg, overrides)
    cfg["name"] = name_or_path
    return cfg
