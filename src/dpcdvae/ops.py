"""Tensor helpers shared by every layer (bottom layer: plain torch, imports nothing from dpcdvae).

Segment reductions: ``index`` [N] (int64, values in 0..num_segments-1) assigns each row of
``values`` [N, ...] to a segment (atoms to crystals, edges to their target atoms, triplets to
edges); results are [num_segments, ...], 0 for an empty segment. No tensor value is read on the
host (no ``bincount``, whose CUDA kernel syncs to size its output), so they are safe inside
sampling loops and compiled regions.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["acc_dtype", "geometry_dtype", "exclusive_cumsum", "segment_sum", "segment_count", "segment_mean"]


def acc_dtype(t: Tensor) -> torch.dtype:
    """Accumulation dtype for sums of ``t``: fp32 for half types (fp16, bf16), else ``t.dtype``."""
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


def geometry_dtype(t: Tensor) -> torch.dtype:
    """dtype for geometry and bases: float64 if ``t`` is float64, else float32 (never half)."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def exclusive_cumsum(x: Tensor) -> Tensor:
    """[K] -> [K]: the sum of the entries before each one (segment start offsets from segment sizes)."""
    return torch.cumsum(x, 0) - x


def segment_sum(values: Tensor, index: Tensor, num_segments: int, *, fp32: bool = False) -> Tensor:
    """Sum the rows of ``values`` [N, ...] per segment ``index`` [N] -> [num_segments, ...].

    Args:
        fp32: accumulate half-precision values in fp32 and return fp32 (fp32 / fp64 values keep
            their dtype); without it the sum is in ``values.dtype``.
    """
    dtype = acc_dtype(values) if fp32 else values.dtype
    out = torch.zeros((num_segments, *values.shape[1:]), dtype=dtype, device=values.device)
    return out.index_add_(0, index, values.to(dtype))


def segment_count(index: Tensor, num_segments: int) -> Tensor:
    """Number of rows per segment: ``index`` [N] -> [num_segments] int64 (no host sync)."""
    ones = torch.ones_like(index, dtype=torch.long)
    return torch.zeros(num_segments, dtype=torch.long, device=index.device).index_add_(0, index, ones)


def segment_mean(values: Tensor, index: Tensor, num_segments: int, *, fp32: bool = False,
                 counts: Tensor | None = None) -> Tensor:
    """Mean of the rows of ``values`` [N, ...] per segment -> [num_segments, ...] (0 if empty).

    Args:
        fp32: as in :func:`segment_sum`.
        counts: [num_segments] rows per segment when the caller has them (e.g. ``num_atoms``);
            default :func:`segment_count` of ``index``.
    """
    sums = segment_sum(values, index, num_segments, fp32=fp32)
    if counts is None:
        counts = segment_count(index, num_segments)
    return sums / counts.clamp(min=1).to(sums.dtype).view(-1, *([1] * (sums.dim() - 1)))
