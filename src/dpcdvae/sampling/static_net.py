"""Fixed-shape network calls of the reverse chain, so that each step can be captured as a CUDA graph
(docs/GEMNET.md §12, the sampling counterpart of :mod:`dpcdvae.models.static`).

In sampling the atoms of a batch never change during the chain (N atoms, B crystals, their counts
and lattices are fixed at the start); only the decoder's radius graph changes as atoms move. The
optional static path (default off) pads the batch once per chain to N_pad atoms (the next multiple
of ``atom_multiple`` strictly above N) and B + 1 crystals, in the layout of
:mod:`dpcdvae.data.padding` (one sink crystal, a 10 Å cube, holding the N_pad - N sink atoms, all
hydrogen at the origin, with z = 0 and t = 0), and every network call becomes

    radius_graph_static (E_pad edges) -> DPDenoiser(graph=..., width=D, edge_mask=...) -> first N rows

with shapes fixed by Python ints, no ``nonzero``/``unique``/``.item()`` inside. With a fixed batch
size and atom bucket, every batch of a run has the same shapes, so ``torch.compile(mode=
"reduce-overhead")`` captures the call once per (N_pad, B + 1) and replays it.

Overflow (more real edges than E_pad - 1, an in-degree above D, or a crystal above ``max_atoms``):
the padded call returns a 0-d bool flag; it is read on the host **once per step** (one device sync
per step, outside the captured graph) and that step is recomputed with the eager denoiser call, so
the result is always the eager one up to summation order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import Tensor, nn

from dpcdvae.data.padding import atom_bucket, pad_index, sink_lattice
from dpcdvae.geometry.static_graph import StaticSizes, radius_graph_static, static_sizes

__all__ = ["StaticSampling", "StaticNet", "check_static_sampling", "padded_denoiser_call", "static_options"]


@dataclass
class StaticSampling:
    """Options (and run statistics) of the static-shape sampling path.

    Attributes:
        atom_multiple: N_pad = the next multiple of this strictly above N (a fixed bucket keeps every
            batch of a run at one shape; ``sample.static_atom_multiple``).
        edge_factor: E_pad = edge_factor x N_pad x K rounded up (``static_sizes``).
        max_degree: in-degree bound D (None: 2 K).
        cuda_graphs: wrap the padded call in ``torch.compile(mode="reduce-overhead")`` (CUDA graphs on
            a CUDA device; on the CPU it is only compiled).
        calls: padded calls made so far. fallbacks: of them, steps recomputed eagerly after an overflow.
    """

    atom_multiple: int = 256
    edge_factor: float = 1.1
    max_degree: int | None = None
    cuda_graphs: bool = False
    calls: int = 0
    fallbacks: int = 0
    _compiled: Any = field(default=None, repr=False, compare=False)

    def meta(self) -> dict:
        """The options as recorded in run.json / samples' meta."""
        return {"static_shapes": True, "cuda_graphs": self.cuda_graphs, "static_atom_multiple": self.atom_multiple,
                "static_edge_factor": self.edge_factor, "static_max_degree": self.max_degree}

    def call_fn(self) -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
        """:func:`padded_denoiser_call`, compiled once (reduce-overhead, static shapes) if ``cuda_graphs``."""
        if not self.cuda_graphs:
            return padded_denoiser_call
        if self._compiled is None:
            self._compiled = torch.compile(padded_denoiser_call, mode="reduce-overhead", dynamic=False)
        return self._compiled


def check_static_sampling(denoiser: nn.Module) -> None:
    """One-line ValueError when the decoder graph of ``denoiser`` has no static form."""
    if denoiser.max_neighbors is None or denoiser.images != "ref" or denoiser.symmetrize != "ref":
        raise ValueError("sample static_shapes needs model.denoiser_cfg.max_neighbors set and images / symmetrize "
                         f"= ref, got {denoiser.max_neighbors}, {denoiser.images}, {denoiser.symmetrize}")


def padded_denoiser_call(denoiser: nn.Module, sizes: StaticSizes, num_levels: int, z: Tensor, t: Tensor,
                         x: Tensor, types: Tensor, num_atoms: Tensor, batch: Tensor, atom_mask: Tensor,
                         lattice: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """One padded network call (B_pad crystals, N_pad atoms; the tensors of :class:`StaticNet`).

    Args:
        z [B_pad, D], t [B_pad] int64, x [N_pad, 3] fractional, types [N_pad] Z, num_atoms [B_pad],
        batch [N_pad], atom_mask [N_pad] bool, lattice [B_pad, 3, 3] Å.

    Returns:
        pred [N_pad, 3] fp32, type logits [N_pad, C] fp32, overflow (0-d bool).
    """
    with torch.autocast(x.device.type, enabled=False):
        sg = radius_graph_static(x, lattice.to(x.dtype), num_atoms, batch, atom_mask, denoiser.cutoff,
                                 denoiser.max_neighbors, sizes)
    pred, logits = denoiser(z, t, num_levels, x, types, num_atoms, batch, lattice, graph=sg.graph,
                            width=sizes.max_degree, edge_mask=sg.edge_mask)
    return pred.float(), logits.float(), sg.overflow


class StaticNet:
    """The denoiser call of one reverse chain on a padded batch.

    Built once per chain from the chain's fixed tensors: z [B, D], num_atoms [B], batch [N] and
    lattice [B, 3, 3] Å (no tensor value is read: N and B are shapes). ``__call__(x [N, 3], t [B],
    types [N])`` returns the denoiser's (pred [N, 3] fp32, type logits [N, C] fp32) for the real atoms.
    """

    def __init__(self, denoiser: nn.Module, options: StaticSampling, z: Tensor, num_atoms: Tensor, batch: Tensor,
                 lattice: Tensor, num_levels: int, max_atoms: int) -> None:
        check_static_sampling(denoiser)
        self.denoiser, self.options, self.num_levels = denoiser, options, int(num_levels)
        self.z, self.num_atoms, self.batch, self.lattice = z, num_atoms, batch, lattice
        dev = z.device
        n = int(batch.shape[0])
        n_pad = atom_bucket(n, options.atom_multiple)
        pad = n_pad - n
        self.n, self.n_pad = n, n_pad
        self.sizes = static_sizes(n_pad, denoiser.max_neighbors, max_atoms, options.edge_factor, options.max_degree)
        self.z_pad = torch.cat([z, z.new_zeros(1, z.shape[1])])
        self.num_atoms_pad, self.batch_pad, self.atom_mask = pad_index(num_atoms, batch, n_pad)
        self.lattice_pad = torch.cat([lattice, sink_lattice(lattice.dtype, dev)])
        self._x_sink = torch.zeros(pad, 3, device=dev)
        self._t_sink = torch.zeros(1, dtype=torch.long, device=dev)

    def eager(self, x: Tensor, t: Tensor, types: Tensor) -> tuple[Tensor, Tensor]:
        """The eager call (as ``DPCDVAE.decode`` makes it without the static path)."""
        pred, logits = self.denoiser(self.z, t, self.num_levels, x, types, self.num_atoms, self.batch, self.lattice)
        return pred.float(), logits.float()

    def __call__(self, x: Tensor, t: Tensor, types: Tensor) -> tuple[Tensor, Tensor]:
        x_pad = torch.cat([x, self._x_sink.to(x.dtype)])
        t_pad = torch.cat([t.long(), self._t_sink])
        types_pad = torch.cat([types.long(), types.new_ones(self.n_pad - self.n).long()])
        if self.options.cuda_graphs and x.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        pred, logits, overflow = self.options.call_fn()(
            self.denoiser, self.sizes, self.num_levels, self.z_pad, t_pad, x_pad, types_pad, self.num_atoms_pad,
            self.batch_pad, self.atom_mask, self.lattice_pad)
        self.options.calls += 1
        if bool(overflow):  # the one host sync of a step
            self.options.fallbacks += 1
            return self.eager(x, t, types)
        # clone: a CUDA-graph replay overwrites its output buffers
        return pred[: self.n].clone(), logits[: self.n].clone()


def static_options(cfg: dict, device: torch.device, static_shapes: bool | None = None,
                   cuda_graphs: bool | None = None) -> StaticSampling | None:
    """The static path of a sampling run: the arguments (None = the config's ``sample.static_shapes`` /
    ``sample.cuda_graphs``, absent keys = off) and ``sample.static_*`` sizes -> options, or None for the
    eager path. ``cuda_graphs`` implies ``static_shapes`` and needs a CUDA device."""
    sc = cfg.get("sample", {}) or {}
    graphs = bool(sc.get("cuda_graphs", False)) if cuda_graphs is None else bool(cuda_graphs)
    static = bool(sc.get("static_shapes", False)) if static_shapes is None else bool(static_shapes)
    if graphs and device.type != "cuda":
        raise ValueError("--cuda-graphs needs a CUDA device (use --static-shapes alone on the CPU)")
    if not (static or graphs):
        return None
    return StaticSampling(atom_multiple=int(sc.get("static_atom_multiple", 256)),
                          edge_factor=float(sc.get("static_edge_factor", 1.1)),
                          max_degree=sc.get("static_max_degree"), cuda_graphs=graphs)
