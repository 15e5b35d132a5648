"""Configs: YAML presets shipped in ``dpcdvae/configs`` plus dotted overrides.

A config is a plain nested dict (JSON-compatible, so it is saved inside checkpoints and loads with
``torch.load(weights_only=True)``). A preset may name ``base: <preset>`` to inherit from another.
Keys, types, defaults, ranges and choices are those of the typed schema
(:mod:`dpcdvae.config_schema`): every preset and every ``--set`` override is checked against it
(unknown key, wrong type: one line naming the key), :func:`check_config_values` checks a whole config.
"""

from __future__ import annotations

import copy
import functools
import re
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from dpcdvae import config_schema

__all__ = ["load_config", "apply_overrides", "list_presets", "deep_merge", "check_config_values", "load_preset",
           "NUMERIC_KEYS"]


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
    if not isinstance(cfg, dict):
        raise ValueError(f"config {name_or_path!r} must be a mapping of keys, got {cfg!r}")
    base = cfg.pop("base", None)
    try:
        config_schema.validate(cfg, values=False, choices=False)  # unknown keys, wrong types
    except ValueError as err:
        raise ValueError(f"config {name_or_path}: {err}") from None
    return deep_merge(_read(base), cfg) if base else cfg


@functools.lru_cache(maxsize=None)
def _preset(name: str) -> dict:
    return _read(name)


def load_preset(name: str) -> dict:
    """A shipped preset as a dict (a fresh copy; no overrides, no ``name`` key), e.g. ``tiny``."""
    return copy.deepcopy(_preset(name))


def apply_overrides(cfg: dict, overrides: list[str] | None) -> dict:
    """Apply ``key.sub=value`` overrides; values are parsed as YAML (numbers, null, lists...).

    A key outside the schema or a value of the wrong type is an error naming the key (a typo must
    not silently train another model); ranges and choices are checked by :func:`check_config_values`.
    """
    out = copy.deepcopy(cfg)
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        config_schema.check_key(key)
        val = parse_value(raw)
        config_schema.check_type(key, val)
        parts = key.split(".")
        node: Any = out
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):  # absent in a config saved before the key existed
                node[part] = {}
            node = node[part]
        node[parts[-1]] = val
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


def _numeric_keys() -> dict[str, tuple]:
    out = {}
    for key, spec in config_schema.fields_by_key().items():
        if spec.type in (int, float):
            out[key] = ("int" if spec.type is int else "num", spec.lo, spec.hi, spec.lo_open, spec.hi_open,
                        spec.nullable)
    return out


# dotted key -> (kind, min, max, min open?, max open?, null allowed?), read from the schema (kept for
# callers of the former table). The schedule keys of ``train`` (fractions, minutes, EMA, lr <= min_lr)
# are cross-checked by dpcdvae.training.train.check_train_config.
NUMERIC_KEYS: dict[str, tuple] = _numeric_keys()


def check_config_values(cfg: dict) -> None:
    """Check a whole config against the schema (:func:`dpcdvae.config_schema.validate`), one line
    naming the key: unknown keys, types and numeric ranges first; then ``model.process`` and the
    denoiser switches (:func:`dpcdvae.diffusion.process.check_process_config`); then the choices of
    the other named options (encoder, dataset, splits, ... from their registries)."""
    config_schema.validate(cfg, choices=False)
    if isinstance(cfg.get("model"), dict):
        from dpcdvae.diffusion.process import check_process_config  # torch: imported only when checking

        check_process_config(cfg["model"])
    config_schema.validate(cfg)
