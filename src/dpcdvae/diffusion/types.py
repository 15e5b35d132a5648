"""Initial atom types from the composition head (CDVAE's sampling scheme, docs/REFERENCE.md §2.1).

Per crystal b with N_b atoms and mean composition probabilities p_b [100]:
  1. counts = round(p_b * N_b) for every element;
  2. if sum(counts) < N_b, draw the shortfall with replacement from the residual probabilities
     max(p_b - counts / N_b, 0) (multinomial);
  3. shuffle the resulting multiset and keep the first N_b entries (this also truncates when the
     rounding over-counts).
Vectorised over the batch: no Python loop over crystals or atoms.
"""

from __future__ import annotations

import torch
from torch import Tensor

from dpcdvae.ops import segment_count, segment_mean


def mean_composition(composition_probs: Tensor, batch: Tensor, num_crystals: int) -> Tensor:
    """Per-crystal mean [B, K] of per-atom probabilities [N, K]."""
    return segment_mean(composition_probs, batch, num_crystals)


def sample_composition_types(
    composition_probs: Tensor,
    batch: Tensor,
    num_atoms: Tensor,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Sample atomic numbers [N] int64 (1..K) from the per-atom composition softmax.

    Args:
        composition_probs: [N, K] per-atom softmax of the composition head (K = 100 elements;
            rows need not be normalised exactly, negative values are an error).
        batch: [N] int64 crystal index of each atom, sorted ascending (0..B-1).
        num_atoms: [B] int64 atoms per crystal, N = num_atoms.sum().
        generator: torch.Generator on the tensors' device (None = global RNG).
    Returns:
        [N] int64 atomic numbers, crystal-major (atom i belongs to crystal batch[i]), exactly
        num_atoms[b] of them per crystal.
    """
    if composition_probs.dim() != 2 or composition_probs.shape[0] != batch.shape[0]:
        raise ValueError(f"composition_probs must be [N, K] with batch [N]; got "
                         f"{tuple(composition_probs.shape)} and {tuple(batch.shape)}")
    device = composition_probs.device
    num_crystals = int(num_atoms.shape[0])
    num_types = int(composition_probs.shape[1])
    probs = mean_composition(composition_probs.float(), batch, num_crystals)  # [B, K]
    if bool((probs < 0).any()):
        raise ValueError("composition probabilities must be non-negative")
    n_f = num_atoms.to(probs.dtype).unsqueeze(1)
    counts = torch.round(probs * n_f).long()  # [B, K]
    shortfall = (num_atoms - counts.sum(1)).clamp(min=0)  # [B]

    # 1) the rounded counts, expanded into a flat multiset (element, crystal)
    elem = torch.arange(1, num_types + 1, device=device).repeat(num_crystals)
    crys = torch.arange(num_crystals, device=device).repeat_interleave(num_types)
    flat_counts = counts.reshape(-1)
    items_z = [elem.repeat_interleave(flat_counts)]
    items_c = [crys.repeat_interleave(flat_counts)]

    # 2) shortfall draws from the residual probabilities (one host sync for the draw width)
    max_short = int(shortfall.max()) if num_crystals > 0 else 0
    if max_short > 0:
        resid = (probs - counts.to(probs.dtype) / n_f.clamp(min=1)).clamp(min=0)
        # crystals without shortfall may have all-zero residuals: give them a dummy (discarded) row
        resid = torch.where((shortfall > 0).unsqueeze(1), resid, torch.ones_like(resid))
        # a positive shortfall implies a positive residual mass, up to rounding: guard anyway
        resid = torch.where(resid.sum(1, keepdim=True) > 0, resid, torch.ones_like(resid))
        draws = torch.multinomial(resid, max_short, replacement=True, generator=generator) + 1
        keep = torch.arange(max_short, device=device).unsqueeze(0) < shortfall.unsqueeze(1)
        items_z.append(draws[keep])
        items_c.append(torch.arange(num_crystals, device=device).unsqueeze(1).expand_as(draws)[keep])
    z = torch.cat(items_z)
    c = torch.cat(items_c)

    # 3) shuffle within each crystal (random keys, then a stable sort by crystal), keep N_b each
    keys = torch.rand(z.shape[0], generator=generator, device=device)
    order = torch.argsort(keys)
    order = order[torch.argsort(c[order], stable=True)]
    z, c = z[order], c[order]
    size = segment_count(c, num_crystals)
    start = torch.cumsum(size, 0) - size
    rank = torch.arange(z.shape[0], device=device) - start[c]
    return z[rank < num_atoms[c]]
