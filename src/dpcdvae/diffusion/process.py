"""Coordinate processes: the strategy that noises coordinates for training, scores the network's
prediction and runs the reverse sampler. ``model.process`` picks one from :data:`PROCESSES`.

- ``"ddpm"`` (:class:`DDPMProcess`, DP-CDVAE): DDPM on fractional coordinates (Eqs. 2, 3, 6, 7 and
  DDIM; :mod:`dpcdvae.diffusion.ddpm`), atom-type noise on the same T levels (Eq. 9).
- ``"score"`` (:class:`ScoreProcess`, CDVAE): Cartesian denoising score matching over 50 geometric
  sigmas with annealed Langevin sampling (:mod:`dpcdvae.diffusion.score`), type noise on 50 levels.

A process is an ``nn.Module`` whose tables are non-persistent buffers (rebuilt from the config, so
they add no state-dict keys and move with ``.to(device)``). It never calls the network itself:
:meth:`CoordinateProcess.sample` takes a ``net_fn`` callback, so every process is tested network-free.

Adding a process: subclass :class:`CoordinateProcess`, implement ``from_config`` / ``noise`` /
``loss`` / ``sample`` / ``network_calls``, set the class attributes, register it in
:data:`dpcdvae.registry.PROCESSES` (its samplers in ``dpcdvae.registry.SAMPLERS``) and add its config
block to ``config_schema.py`` and ``configs/base.yaml`` (see docs/ARCHITECTURE.md).

Shapes: B crystals, N atoms, ``batch`` [N] the crystal index of each atom (atoms of a crystal
contiguous), lattices [B, 3, 3] with rows = lattice vectors (Å).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from dpcdvae.diffusion import ddpm, score
from dpcdvae.diffusion.ddpm import crystal_mean
from dpcdvae.diffusion.schedule import DiffusionSchedule
from dpcdvae.config_schema import fields_by_key
from dpcdvae.registry import PROCESSES, SAMPLERS

__all__ = ["NoisyBatch", "CoordinateProcess", "DDPMProcess", "ScoreProcess", "PROCESSES", "build_process",
           "check_process_config", "process_name"]

NetFn = Callable[[Tensor, Tensor, int], "tuple[Tensor, Any]"]
Callback = Callable[[int, int, Tensor, Any], None]


@dataclass
class NoisyBatch:
    """One noised training batch (made by :meth:`CoordinateProcess.noise`).

    Attributes:
        x: [N, 3] fractional coordinates the network sees.
        t: [B] int64 level index the network sees (as t / ``num_levels``); grows with the noise.
        target: [N, 3] regression target of the network output (frame and units per process).
        weights: [B] per-crystal weight of the coordinate loss.
        types: [N] int64 noisy atomic numbers Z (1..100) the network sees.
        type_sigma: [N] type-noise level of each atom's crystal (the type loss divides by it).
        sigma: [B] coordinate noise scale where the loss needs it (score: Å), else None.
    """

    x: Tensor
    t: Tensor
    target: Tensor
    weights: Tensor
    types: Tensor
    type_sigma: Tensor
    sigma: Tensor | None = None


class CoordinateProcess(nn.Module, ABC):
    """Interface of a coordinate process (see the module docstring).

    Class attributes:
        name: the registry key (``model.process``).
        frames: network output frames the process accepts (``DPDenoiser.eps_frame``); the first is
            the default the model builder uses when ``model.denoiser_cfg.eps_frame`` is null.
        samplers: sampler names :meth:`sample` accepts; the first is the default.
        takes_steps: whether :meth:`sample` accepts a number of reverse steps (``--steps``).
        reverse_frames: state frames of the reverse chain :meth:`set_reverse_frame` accepts (``--frame``);
            empty when the process has no choice.
    """

    name: ClassVar[str]
    frames: ClassVar[tuple[str, ...]]
    samplers: ClassVar[tuple[str, ...]]
    takes_steps: ClassVar[bool] = False
    reverse_frames: ClassVar[tuple[str, ...]] = ()

    @property
    @abstractmethod
    def num_levels(self) -> int:
        """T of the network's time input t / T."""

    @classmethod
    @abstractmethod
    def from_config(cls, model_cfg: dict) -> "CoordinateProcess":
        """Build from the ``model`` section of a config."""

    @abstractmethod
    def noise(self, frac0: Tensor, atom_types: Tensor, batch: Tensor, num_atoms: Tensor, lattice: Tensor,
              true_lattice: Tensor, composition_probs: Tensor,
              generator: torch.Generator | None = None) -> NoisyBatch:
        """Noise a training batch.

        Args:
            frac0: [N, 3] clean fractional coordinates; atom_types: [N] int64 Z.
            batch: [N] int64; num_atoms: [B] int64.
            lattice: [B, 3, 3] the lattice the network sees (predicted or teacher-forced, Å).
            true_lattice: [B, 3, 3] the ground-truth lattice (Å).
            composition_probs: [N, 100] detached per-atom composition softmax (type noise, Eq. 9).
        """

    @abstractmethod
    def loss(self, pred: Tensor, noisy: NoisyBatch, batch: Tensor, num_crystals: int) -> Tensor:
        """Coordinate loss (scalar, fp32) of the network output ``pred`` [N, 3] on ``noisy``."""

    @abstractmethod
    def sample(self, net_fn: NetFn, batch: Tensor, num_atoms: Tensor, lattice: Tensor, sampler: str | None = None,
               steps: int | None = None, generator: torch.Generator | None = None,
               callback: Callback | None = None) -> Tensor:
        """Draw the start state and run the reverse sampler; returns fractional coordinates [N, 3] in [0, 1).

        ``net_fn(x [N, 3], t [B] int64, call_index) -> (pred [N, 3], extra)`` is the network on the
        current state; ``callback(call_index, t, x, extra)`` runs after every network call.
        """

    @abstractmethod
    def network_calls(self, steps: int | None = None) -> int:
        """Number of network calls of one :meth:`sample` with ``steps``."""

    def set_reverse_frame(self, frame: str | None) -> None:
        """Use ``frame`` for the reverse chain (``None``: keep the configured one); ValueError, one line,
        where it does not apply."""
        if frame is None:
            return
        if frame not in self.reverse_frames:
            if not self.reverse_frames:
                raise ValueError(f"--frame does not apply to the {self.name} process; leave it out")
            raise ValueError(f"--frame {frame} is not one of {', '.join(self.reverse_frames)}")
        self.reverse_frame = frame

    def check_sampling(self, sampler: str | None, steps: int | None) -> str:
        """The sampler name to use (``None``: the default); ValueError, one line, for options that do
        not apply to this process."""
        if steps is not None and not self.takes_steps:
            raise ValueError(f"--steps does not apply to the {self.name} process (it has a fixed schedule of "
                             f"{self.network_calls()} network calls); leave it out")
        if sampler is None:
            return self.samplers[0]
        if sampler not in self.samplers:
            raise ValueError(f"--sampler {sampler} does not apply to the {self.name} process (use "
                             f"{' or '.join(self.samplers)}, or leave it out)")
        return sampler


# ------------------------------------------------------------------------------------------ DDPM
class DDPMProcess(CoordinateProcess):
    """DP-CDVAE's DDPM on fractional coordinates (thin wrapper over :mod:`dpcdvae.diffusion.ddpm`).

    Training: t, s ~ U{1..T-1} per crystal (coordinates, types), ``x_t`` from Eq. 2 (not wrapped: the
    network wraps), target eps (per-crystal mean-free if ``recenter``), weights 1; loss = mean over
    crystals of the per-crystal mean of ||eps_hat - eps||^2 (fractional units). Sampling: prior
    N(0, I) (mean-removed if ``recenter``), then :func:`~dpcdvae.diffusion.ddpm.reverse_sample`
    with sampler eq7 (default) / eq6 / ddim and ``steps`` K (None = T - 1).

    Args:
        schedule: betas / alpha-bars / type sigmas on T levels.
        recenter: remove per-crystal means of x0, the noise and the reverse state (reference default).
        reverse_frame: ``wrap`` (reference) or ``fmod``, see :func:`~dpcdvae.diffusion.ddpm.reverse_sample`.
    """

    name = "ddpm"
    frames = ("fractional", "cartesian")
    samplers = ddpm.SAMPLERS
    takes_steps = True
    reverse_frames = ddpm.REVERSE_FRAMES

    def __init__(self, schedule: DiffusionSchedule, recenter: bool = True, reverse_frame: str = "wrap") -> None:
        super().__init__()
        self.schedule = schedule
        self.recenter = bool(recenter)
        self.reverse_frame = "wrap"
        self.set_reverse_frame(reverse_frame)

    @property
    def num_levels(self) -> int:
        return int(self.schedule.num_steps)

    @classmethod
    def from_config(cls, model_cfg: dict) -> "DDPMProcess":
        d = model_cfg["diffusion"]
        schedule = DiffusionSchedule(
            num_steps=int(d["num_steps"]), beta_start=float(d["beta_start"]), beta_end=float(d["beta_end"]),
            type_sigma_begin=float(d["type_sigma_begin"]), type_sigma_end=float(d["type_sigma_end"]),
            kind=str(d.get("kind", "sigmoid")), alphabar_quirk=bool(d.get("alphabar_quirk", True)),
        )
        return cls(schedule, recenter=bool(d["recenter"]), reverse_frame=str(d.get("reverse_frame", "wrap")))

    def noise(self, frac0, atom_types, batch, num_atoms, lattice, true_lattice, composition_probs,
              generator=None) -> NoisyBatch:
        bsz = int(num_atoms.shape[0])
        steps = self.schedule.num_steps
        # coordinates (Eq. 2) and types (Eq. 9) are noised at independent steps
        t = ddpm.sample_timesteps(bsz, steps, device=frac0.device, generator=generator)
        s = ddpm.sample_timesteps(bsz, steps, device=frac0.device, generator=generator)
        x_t, eps = ddpm.q_sample(self.schedule, frac0, t, batch, recenter=self.recenter, generator=generator)
        type_sigma = self.schedule.type_sigmas[s][batch]
        types = ddpm.noise_atom_types(atom_types, composition_probs, type_sigma, generator=generator)
        return NoisyBatch(x=x_t, t=t, target=eps, weights=torch.ones(bsz, device=frac0.device), types=types,
                          type_sigma=type_sigma)

    def loss(self, pred, noisy, batch, num_crystals) -> Tensor:
        err = ((pred.float() - noisy.target) ** 2).sum(-1)
        return crystal_mean(err.unsqueeze(1), batch, num_crystals).squeeze(1).mean()

    def sample(self, net_fn, batch, num_atoms, lattice, sampler=None, steps=None, generator=None,
               callback=None) -> Tensor:
        sampler = self.check_sampling(sampler, steps)
        num_crystals = int(num_atoms.shape[0])
        x_T = ddpm.prior_sample(batch, num_crystals, generator=generator)
        if not self.recenter:
            x_T = torch.randn(x_T.shape, device=batch.device, generator=generator)
        return ddpm.reverse_sample(net_fn, x_T, batch, num_atoms, self.schedule, sampler=sampler, steps=steps,
                                   generator=generator, callback=callback, recenter=self.recenter,
                                   frame=self.reverse_frame)

    def network_calls(self, steps=None) -> int:
        full = self.num_levels - 1
        return full if steps is None else min(int(steps), full)


# ----------------------------------------------------------------------------------------- score
class ScoreProcess(CoordinateProcess):
    """CDVAE's process: Cartesian noise, score target, annealed Langevin (:mod:`dpcdvae.diffusion.score`).

    Training: level t ~ U{0..L-1} (coordinates) and an independent type level per crystal; noisy
    coordinates wrapped into the cell; ``target = d / sigma^2`` (1/Å) with d the min-image Cartesian
    displacement noisy -> true in the ground-truth lattice; ``weights = 0.5 sigma^2``; loss = mean over
    crystals of ``w_b`` times the per-crystal mean of ||pred / sigma - target||^2 (pred = the network's
    Cartesian vector, Å). Sampling: x ~ U[0, 1)^3, annealed Langevin over all levels,
    ``steps_per_level`` steps each (5,000 network calls for 50 x 100).

    Args:
        num_levels: L (50). sigma_max, sigma_min: coordinate sigmas in Å (10, 0.01).
        type_sigma_max, type_sigma_min: type-noise sigmas (5, 0.01), also L geometric levels.
        steps_per_level: Langevin steps per level (100). step_lr: 1e-4 (step = step_lr (sigma/sigma_min)^2, Å^2).
    """

    name = "score"
    frames = ("cartesian",)
    samplers = SAMPLERS.names(process="score")  # ("langevin",)
    takes_steps = False

    sigmas: Tensor
    type_sigmas: Tensor

    def __init__(self, num_levels: int = 50, sigma_max: float = 10.0, sigma_min: float = 0.01,
                 type_sigma_max: float = 5.0, type_sigma_min: float = 0.01, steps_per_level: int = 100,
                 step_lr: float = 1e-4) -> None:
        super().__init__()
        if steps_per_level < 1:
            raise ValueError(f"model.score.steps_per_level must be >= 1, got {steps_per_level}")
        if not step_lr > 0:
            raise ValueError(f"model.score.step_lr must be > 0, got {step_lr}")
        self._num_levels = int(num_levels)
        self.steps_per_level = int(steps_per_level)
        self.step_lr = float(step_lr)
        sig = score.geometric_sigmas(float(sigma_max), float(sigma_min), self._num_levels)
        tsig = score.geometric_sigmas(float(type_sigma_max), float(type_sigma_min), self._num_levels)
        self.register_buffer("sigmas", sig.float(), persistent=False)
        self.register_buffer("type_sigmas", tsig.float(), persistent=False)
        self._sigmas64 = sig  # host copy: the sampler reads step sizes without device syncs

    @property
    def num_levels(self) -> int:
        return self._num_levels

    @classmethod
    def from_config(cls, model_cfg: dict) -> "ScoreProcess":
        s = model_cfg["score"]
        return cls(num_levels=int(s["num_levels"]), sigma_max=float(s["sigma_max"]), sigma_min=float(s["sigma_min"]),
                   type_sigma_max=float(s["type_sigma_max"]), type_sigma_min=float(s["type_sigma_min"]),
                   steps_per_level=int(s["steps_per_level"]), step_lr=float(s["step_lr"]))

    def noise(self, frac0, atom_types, batch, num_atoms, lattice, true_lattice, composition_probs,
              generator=None) -> NoisyBatch:
        bsz = int(num_atoms.shape[0])
        dev = frac0.device
        t = score.sample_levels(bsz, self._num_levels, device=dev, generator=generator)
        s = score.sample_levels(bsz, self._num_levels, device=dev, generator=generator)
        type_sigma = self.type_sigmas[s][batch]
        types = ddpm.noise_atom_types(atom_types, composition_probs, type_sigma, generator=generator)
        sigma = self.sigmas[t]  # [B] Å
        sig_atom = sigma[batch].unsqueeze(1)
        xi = torch.randn(tuple(frac0.shape), device=dev, dtype=torch.float32, generator=generator)
        x = score.cart_noise_frac(frac0.float(), xi * sig_atom, lattice.float(), batch)
        d = score.min_image_displacement(frac0.float() - x, true_lattice.float(), batch)  # noisy -> true, Å
        return NoisyBatch(x=x, t=t, target=d / sig_atom**2, weights=0.5 * sigma**2, types=types,
                          type_sigma=type_sigma, sigma=sigma)

    def loss(self, pred, noisy, batch, num_crystals) -> Tensor:
        assert noisy.sigma is not None
        err = ((pred.float() / noisy.sigma[batch].unsqueeze(1) - noisy.target) ** 2).sum(-1)
        per_crystal = crystal_mean(err.unsqueeze(1), batch, num_crystals).squeeze(1)
        return (noisy.weights * per_crystal).mean()

    def sample(self, net_fn, batch, num_atoms, lattice, sampler=None, steps=None, generator=None,
               callback=None) -> Tensor:
        self.check_sampling(sampler, steps)
        x0 = torch.rand((batch.shape[0], 3), device=batch.device, generator=generator)
        return score.annealed_langevin(net_fn, x0, batch, lattice, self._sigmas64, self.steps_per_level,
                                       self.step_lr, generator=generator, callback=callback)

    def network_calls(self, steps=None) -> int:
        return self._num_levels * self.steps_per_level

    def extra_repr(self) -> str:
        s = self._sigmas64
        return (f"num_levels={self._num_levels}, sigmas=({float(s[-1]):g} -> {float(s[0]):g}) Å, "
                f"steps_per_level={self.steps_per_level}, step_lr={self.step_lr:g}")


# -------------------------------------------------------------------------------------- registry
# PROCESSES (name -> class) is dpcdvae.registry.PROCESSES, re-exported here.


def process_name(model_cfg: dict) -> str:
    """``model.process`` (``"ddpm"`` for configs written before the key existed); ValueError (one line)
    for an unregistered name."""
    return PROCESSES.check(model_cfg.get("process", "ddpm"))


def build_process(model_cfg: dict) -> CoordinateProcess:
    """The process named by ``model_cfg['process']``, built from its config block."""
    return PROCESSES[process_name(model_cfg)].from_config(model_cfg)


def check_process_config(model_cfg: dict) -> None:
    """One-line ValueErrors for ``model.process``, the denoiser's conditioning / frame / Fourier switch
    and the score block (numbers are range-checked by :func:`dpcdvae.config.check_config_values`)."""
    cls = PROCESSES[process_name(model_cfg)]
    den = model_cfg.get("denoiser_cfg") or {}
    cond = den.get("conditioning", "dpcdvae")
    conditionings = fields_by_key()["model.denoiser_cfg.conditioning"].choices  # dpcdvae | cdvae
    if cond not in conditionings:
        raise ValueError(f"model.denoiser_cfg.conditioning must be {' or '.join(conditionings)}, got {cond!r}")
    fourier = den.get("fourier")
    if fourier is not None and not isinstance(fourier, bool):
        raise ValueError(f"model.denoiser_cfg.fourier must be true, false or null, got {fourier!r}")
    frame = den.get("eps_frame")
    if frame is not None and frame not in cls.frames:
        raise ValueError(f"model.denoiser_cfg.eps_frame must be {' or '.join(cls.frames)} (or null) for "
                         f"model.process={cls.name}, got {frame!r}")
    if cls is ScoreProcess:
        s = model_cfg.get("score") or {}
        if float(s.get("sigma_min", 0.01)) >= float(s.get("sigma_max", 10.0)):
            raise ValueError(f"model.score.sigma_min must be < model.score.sigma_max, got "
                             f"{s.get('sigma_min')!r} >= {s.get('sigma_max')!r}")
        if float(s.get("type_sigma_min", 0.01)) >= float(s.get("type_sigma_max", 5.0)):
            raise ValueError(f"model.score.type_sigma_min must be < model.score.type_sigma_max, got "
                             f"{s.get('type_sigma_min')!r} >= {s.get('type_sigma_max')!r}")
