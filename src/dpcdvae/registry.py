"""Registries: the one place that names each encoder, coordinate process and sampler.

A :class:`Registry` maps a name to an object, optionally given *lazily* as ``"module:attribute"`` so
that the names are known without importing torch (the CLI builds its ``choices`` from them at start-up,
the config schema validates against them) and the module is imported on first lookup. Each entry may
carry fixed keyword arguments (``build`` passes them on) and metadata (``info``, filtered by ``names``).

The registries of this module (their implementations live elsewhere; see docs/ARCHITECTURE.md,
"Adding an encoder / dataset / sampler"):

- :data:`ENCODERS`: ``model.encoder`` / ``--encoder`` -> crystal encoder constructor.
- :data:`PROCESSES`: ``model.process`` -> :class:`~dpcdvae.diffusion.process.CoordinateProcess` class.
- :data:`SAMPLERS`: ``--sampler`` -> reverse sampler; ``info(name)["process"]`` names its process.
- :data:`REVERSE_FRAMES`: ``model.diffusion.reverse_frame`` / ``--frame``, the DDPM chain's state frame
  (:func:`dpcdvae.diffusion.ddpm.reverse_sample`).

Datasets are registered in :data:`dpcdvae.data.datasets.DATASETS` (a Registry of plain records), the
generation metrics in :data:`dpcdvae.evaluation.gen.GEN_METRICS` (beside the code they share).
This module imports nothing heavy.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Iterator, TypeVar

__all__ = ["Registry", "ENCODERS", "PROCESSES", "SAMPLERS", "REVERSE_FRAMES"]

T = TypeVar("T")


@dataclass
class _Entry:
    target: Any                      # the object, or "module:attribute" (resolved on first lookup)
    kwargs: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)


class Registry(Mapping, Generic[T]):
    """Name -> object, in registration order; a read-only Mapping (``reg[name]``, ``in``, iteration).

    Args:
        what: what the entries are, for messages ("encoder").
        key: the config key / option the name comes from, for messages ("model.encoder").
    """

    def __init__(self, what: str, key: str | None = None) -> None:
        self.what, self.key = what, key or what
        self._entries: dict[str, _Entry] = {}

    def register(self, name: str, target: Any = None, *, kwargs: dict | None = None, replace: bool = False,
                 **info: Any):
        """Register ``target`` (an object or ``"module:attribute"``) under ``name``; without a
        target, a decorator. ``kwargs`` are passed by :meth:`build`; ``info`` is free metadata.
        ``replace``: overwrite an existing entry (e.g. a custom dataset prepared again) instead of
        raising ValueError."""
        if target is None:
            def deco(obj: T) -> T:
                self.register(name, obj, kwargs=kwargs, replace=replace, **info)
                return obj
            return deco
        if name in self._entries and not replace:
            raise ValueError(f"{self.what} {name!r} is already registered")
        self._entries[name] = _Entry(target, dict(kwargs or {}), dict(info))
        return target

    def unregister(self, name: str) -> None:
        """Remove ``name`` (no error if absent): a custom dataset forgotten again (tests)."""
        self._entries.pop(name, None)

    def names(self, **info: Any) -> tuple[str, ...]:
        """Registered names (in order), optionally only those whose metadata matches ``info``."""
        return tuple(n for n, e in self._entries.items() if all(e.info.get(k) == v for k, v in info.items()))

    def info(self, name: str) -> dict:
        """The metadata of ``name`` (a copy)."""
        return dict(self._entry(name).info)

    def check(self, name: Any) -> str:
        """``name`` if registered, else ValueError: ``<key> must be one of a, b, got 'x'``."""
        if not isinstance(name, str) or name not in self._entries:
            raise ValueError(f"{self.key} must be one of {', '.join(self._entries)}, got {name!r}")
        return name

    def _entry(self, name: str) -> _Entry:
        return self._entries[self.check(name)]

    def get(self, name: str, default: Any = None) -> Any:  # Mapping.get, resolving lazy entries
        return self[name] if name in self._entries else default

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the entry of ``name`` with its registered keyword arguments plus ``kwargs``."""
        entry = self._entry(name)
        return self[name](*args, **{**entry.kwargs, **kwargs})

    def __getitem__(self, name: str) -> T:
        entry = self._entries[name]  # KeyError for an unknown name, as a Mapping
        if isinstance(entry.target, str) and ":" in entry.target:
            module, attr = entry.target.split(":", 1)
            entry.target = getattr(importlib.import_module(module), attr)
        return entry.target

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what}: {', '.join(self._entries)})"


# ------------------------------------------------------------------------------------- encoders
# Called as build(name, out_channels=D, max_atoms=M, **model.encoder_cfg) -> nn.Module with
# forward(frac_coords, atom_types, num_atoms, batch, lattice) -> [B, D] (see nn/encoder.py).
ENCODERS: Registry = Registry("encoder", "model.encoder")
for _variant in ("dime", "dime+na", "dime+gine", "dime+na+gine"):  # paper Table I
    ENCODERS.register(_variant, "dpcdvae.nn.encoder:CrystalEncoder", kwargs={"variant": _variant},
                      cls="CrystalEncoder")

# ---------------------------------------------------------------------------- coordinate processes
# CoordinateProcess subclasses; each reads its own config block (model.diffusion, model.score).
PROCESSES: Registry = Registry("coordinate process", "model.process")
PROCESSES.register("ddpm", "dpcdvae.diffusion.process:DDPMProcess", block="diffusion")
PROCESSES.register("score", "dpcdvae.diffusion.process:ScoreProcess", block="score")

# ----------------------------------------------------------------------------------- samplers
# ddpm samplers: step(w, eps_hat, plan, i, noise) -> next state (dpcdvae.diffusion.ddpm.reverse_sample);
# the first of a process is its default. score: the annealed Langevin loop.
SAMPLERS: Registry = Registry("sampler", "--sampler")
SAMPLERS.register("eq7", "dpcdvae.diffusion.ddpm:plan_step_eq7", process="ddpm", help="paper Eq. 7")
SAMPLERS.register("eq6", "dpcdvae.diffusion.ddpm:plan_step_eq6", process="ddpm", help="plain DDPM Eq. 6")
SAMPLERS.register("ddim", "dpcdvae.diffusion.ddpm:plan_step_ddim", process="ddpm", help="DDIM (eta=1)")
SAMPLERS.register("langevin", "dpcdvae.diffusion.score:annealed_langevin", process="score",
                  help="annealed Langevin")

# State frame of the DDPM reverse chain: wrap to [0, 1) before recentring (reference) or truncate into
# (-1, 1) (fmod: idempotent on recentred states, so every step sees the training frame).
REVERSE_FRAMES: tuple[str, ...] = ("wrap", "fmod")
