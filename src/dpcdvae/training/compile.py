"""Optional ``torch.compile`` of the network bodies (graph and triplet construction stay eager,
docs/GEMNET.md §12): GemNet-T's ``run_blocks`` and DimeNet++'s interaction / output blocks, with dynamic
shapes so that batches of different sizes do not recompile."""

from __future__ import annotations

import torch

from dpcdvae.models.dpcdvae import DPCDVAE


def compile_model(model: DPCDVAE) -> DPCDVAE:
    """Compile in place; parameter names (and so checkpoints) are unchanged."""
    gemnet = model.denoiser.gemnet
    gemnet.run_blocks = torch.compile(gemnet.run_blocks, dynamic=True)
    dimenet = getattr(model.encoder, "dimenet", None)
    if dimenet is not None:
        for block in list(dimenet.interaction_blocks) + list(dimenet.output_blocks):
            block.compile(dynamic=True)
    return model
