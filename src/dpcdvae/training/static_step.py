"""The optional static-shape training step (``train.static_shapes``, ``train.cuda_graphs``).

Each batch from the device-resident loader is padded to an atom bucket
(:func:`~dpcdvae.data.padding.atom_bucket`: N_pad = the next multiple of ``train.static_atom_multiple``
above N, one sink crystal; or, with ``train.static_atom_sigmas``, one size for nearly every batch), its
random draws are made in those shapes, and the losses come from
:func:`~dpcdvae.models.static.static_forward` (fixed sizes, no host sync). With a fixed batch size
only the atom bucket varies, so a compiled step sees a handful of shapes; with ``cuda_graphs`` the
forward (and, through AOTAutograd, the backward) is compiled with ``torch.compile(mode=
"reduce-overhead")``, which replays one CUDA graph per bucket instead of launching ~3,000 kernels
(teacher forcing is a device flag, so it needs no graph of its own).

A batch whose graphs do not fit the fixed sizes (``overflow``; see
:mod:`dpcdvae.geometry.static_graph`) is recomputed by the eager forward, so the losses are always
those of the eager step; :attr:`StaticStep.fallbacks` counts these batches.

A compile that fails (on the H200 with torch 2.11, Triton rejected one fused log-softmax / NLL
persistent-reduction kernel of the perov_5 step: ``PassManager::run failed``) does not end the run:
the step is compiled again without persistent reductions, and if that fails too, training goes on
with the plain eager step (the padded step without CUDA graphs is slower than the eager one), with one
warning each; :attr:`StaticStep.compile_failures` keeps the first and last line of every error.
"""

from __future__ import annotations

import warnings
from collections import Counter

import torch
from torch import Tensor

from dpcdvae.data.batch import CrystalBatch
from dpcdvae.data.padding import PaddedBatch, atom_bucket, pad_batch
from dpcdvae.models.dpcdvae import DPCDVAE
from dpcdvae.models.static import StepNoise, check_static_support, draw_step_noise, static_forward

__all__ = ["StaticStep", "COMPILE_RETRIES"]

# inductor options of the compile retried after a failed one (``triton.cudagraphs`` is what
# mode="reduce-overhead" sets; mode and options cannot be given together)
COMPILE_RETRIES: tuple[dict, ...] = ({"triton.cudagraphs": True, "triton.persistent_reductions": False},)


def _compile_errors() -> tuple[type[BaseException], ...]:
    """The exception types of a failed torch.compile (those this torch version has)."""
    found = []
    for mod, name in (("torch._dynamo.exc", "BackendCompilerFailed"), ("torch._inductor.exc", "InductorError")):
        try:
            found.append(getattr(__import__(mod, fromlist=[name]), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)

_FIELDS = ("frac_coords", "atom_types", "num_atoms", "lengths", "angles", "batch", "atom_mask", "crystal_mask")
_NOISE = ("eps_z", "t", "s", "eps", "type_exp")


class StaticStep:
    """Padded, host-sync-free training losses of a model, optionally captured as CUDA graphs.

    Args:
        model: the DP-CDVAE model (see :func:`~dpcdvae.models.static.check_static_support`).
        atom_multiple: atom buckets are multiples of this (``train.static_atom_multiple``).
        edge_factor: slack of the edge and triplet buffers (``train.static_edge_factor``).
        max_degree: in-degree bound D (``train.static_max_degree``; None: 2 x max_neighbors).
        max_atoms: bound on the atoms of one crystal (None: ``model.max_atoms``; ``dpcdvae train`` passes
            the training split's largest cell). A larger crystal makes its batch fall back to eager.
        cuda_graphs: compile the padded forward with ``mode="reduce-overhead"`` (CUDA graphs; on a CPU
            model it is a plain ``torch.compile``).
        fixed_atoms: one N_pad for every batch of fewer atoms (``train.static_atom_sigmas``, from
            :func:`~dpcdvae.data.padding.one_bucket_atoms`); larger batches take the multiples' bucket.
    """

    def __init__(self, model: DPCDVAE, atom_multiple: int = 256, edge_factor: float = 1.1,
                 max_degree: int | None = None, cuda_graphs: bool = False, max_atoms: int | None = None,
                 fixed_atoms: int | None = None) -> None:
        check_static_support(model)
        if not 1.0 <= float(edge_factor) <= 2.0:
            raise ValueError(f"train.static_edge_factor must be in [1, 2], got {edge_factor}")
        self.model = model
        self.atom_multiple = int(atom_multiple)
        self.edge_factor = float(edge_factor)
        self.max_degree = None if max_degree is None else int(max_degree)
        self.cuda_graphs = bool(cuda_graphs)
        self.max_atoms = None if max_atoms is None else int(max_atoms)
        if fixed_atoms is not None and int(fixed_atoms) < 2:
            raise ValueError(f"the fixed atom bucket must be >= 2 atoms, got {fixed_atoms}")
        self.fixed_atoms = None if fixed_atoms is None else int(fixed_atoms)
        self.buckets: Counter[int] = Counter()  # N_pad -> steps
        self.fallbacks = 0
        self.compile_failures: list[str] = []
        self._retries = list(COMPILE_RETRIES)
        # per-step scalars on the device (filled by a kernel, never copied from the host)
        self._mult: Tensor | None = None
        self._teacher: Tensor | None = None
        self._fn = self._flat
        if self.cuda_graphs:
            # one graph per shape (N_pad, B_pad): allow more than dynamo's default of 8 recompiles
            cfg = torch._dynamo.config
            for name in ("recompile_limit", "cache_size_limit"):
                if hasattr(cfg, name):
                    setattr(cfg, name, max(int(getattr(cfg, name)), 64))
            self._fn = self._compile(None)

    def _compile(self, options: dict | None):
        """``torch.compile`` of :meth:`_flat`: reduce-overhead mode, or these inductor ``options``."""
        if options is None:
            return torch.compile(self._flat, mode="reduce-overhead", dynamic=False)
        return torch.compile(self._flat, dynamic=False, options=dict(options))

    def _compile_failed(self, exc: BaseException) -> None:
        """Record a failed compile and switch to the next retry, or to the plain eager step."""
        lines = [x.strip() for x in str(exc).splitlines() if x.strip()] or [type(exc).__name__]
        line = (lines[0] if len(lines) == 1 else f"{lines[0]} ... {lines[-1]}")[:400]  # the cause is often last
        self.compile_failures.append(f"{type(exc).__name__}: {line}")
        if self._retries:
            opts = self._retries.pop(0)
            warnings.warn(f"train.cuda_graphs: the step's compile failed ({line}); compiling again with {opts}",
                          RuntimeWarning, stacklevel=3)
            self._fn = self._compile(opts)
        else:
            warnings.warn(f"train.cuda_graphs: the step's compile failed again ({line}); training goes on with "
                          "the eager step", RuntimeWarning, stacklevel=3)
            self._fn = None

    @classmethod
    def from_config(cls, model: DPCDVAE, tcfg: dict, max_atoms: int | None = None,
                    fixed_atoms: int | None = None) -> "StaticStep":
        """From the ``train`` section (``cuda_graphs`` only takes effect on CUDA)."""
        return cls(model, int(tcfg.get("static_atom_multiple") or 256), float(tcfg.get("static_edge_factor") or 1.1),
                   tcfg.get("static_max_degree"), bool(tcfg.get("cuda_graphs")) and torch.cuda.is_available(),
                   max_atoms, fixed_atoms)

    def summary(self) -> dict:
        """What the step did (for ``train_summary.json``): steps per atom bucket, eager fallbacks after an
        overflow, compile failures, and whether it ended on the plain eager step (every compile failed)."""
        return {"cuda_graphs": self.cuda_graphs, "fixed_atoms": self.fixed_atoms,
                "buckets": {str(k): v for k, v in sorted(self.buckets.items())}, "fallbacks": self.fallbacks, "compile_failures": list(self.compile_failures),
                "eager_after_compile_failures": self.cuda_graphs and self._fn is None}

    def pad(self, batch: CrystalBatch) -> PaddedBatch:
        """``batch`` padded to its atom bucket (host-side shapes only): ``fixed_atoms`` if it has fewer
        atoms, else the next multiple of ``atom_multiple``."""
        n = batch.num_nodes
        if self.fixed_atoms is not None and n < self.fixed_atoms:
            return pad_batch(batch, self.fixed_atoms)
        return pad_batch(batch, atom_bucket(n, self.atom_multiple))

    def _flat(self, *tensors: Tensor) -> dict[str, Tensor]:
        """:func:`static_forward` on flat tensors (what ``torch.compile`` sees): the padded batch, the
        noise, then the 0-d teacher-forcing flag (bool) and coordinate-loss factor."""
        pb = PaddedBatch(*tensors[: len(_FIELDS)], num_real_atoms=-1, num_real_crystals=-1)
        noise = StepNoise(*tensors[len(_FIELDS): len(_FIELDS) + len(_NOISE)])
        teacher_forcing, mult = tensors[-2:]
        out = static_forward(self.model, pb, noise, teacher_forcing, mult, edge_factor=self.edge_factor,
                             max_degree=self.max_degree, max_atoms=self.max_atoms)
        if self.cuda_graphs:  # outputs outlive the next replay (logging): give them their own memory
            out = {k: v.clone() for k, v in out.items()}
        return out

    def losses(self, batch: CrystalBatch, teacher_forcing: bool, coord_multiplier: float,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The padded losses of ``batch`` (keys of ``DPCDVAE.forward`` plus ``overflow``), no fallback."""
        pb = self.pad(batch)
        dev = pb.frac_coords.device
        noise = draw_step_noise(self.model, pb.num_graphs, pb.num_nodes, dev, generator)
        if self._mult is None or self._mult.device != dev:
            self._mult = torch.zeros((), device=dev)
            self._teacher = torch.zeros((), dtype=torch.bool, device=dev)
        mult = self._mult.fill_(float(coord_multiplier))
        teacher = self._teacher.fill_(bool(teacher_forcing))
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        out = self._fn(*[getattr(pb, f) for f in _FIELDS], *[getattr(noise, f) for f in _NOISE], teacher, mult)
        self.buckets[pb.num_nodes] += 1  # steps that ran padded (not those whose compile failed)
        return out

    def __call__(self, batch: CrystalBatch, teacher_forcing: bool,
                 coord_multiplier: float) -> tuple[dict[str, Tensor], bool]:
        """The step's losses and whether the loss is non-finite (one host sync for both checks): the
        padded losses, or the eager forward's when the padded graphs overflow (or when every compile
        of the step failed)."""
        out = None
        while self._fn is not None and out is None:
            try:
                out = self.losses(batch, teacher_forcing, coord_multiplier)
            except _compile_errors() as exc:
                if not self.cuda_graphs:
                    raise
                self._compile_failed(exc)
        if out is None:
            out = self.model(batch, teacher_forcing=teacher_forcing, coord_multiplier=coord_multiplier)
            return out, not bool(torch.isfinite(out["loss"]))
        overflow = out.pop("overflow")
        nonfinite, over = torch.stack([~torch.isfinite(out["loss"]), overflow]).tolist()
        if over:
            self.fallbacks += 1
            out = self.model(batch, teacher_forcing=teacher_forcing, coord_multiplier=coord_multiplier)
            nonfinite = not bool(torch.isfinite(out["loss"]))
        return out, bool(nonfinite)
