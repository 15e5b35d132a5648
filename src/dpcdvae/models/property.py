"""Property predictor for the W(E) metric: periodic DimeNet++ + MLP head on one standardised target
(the paper uses CDVAE's separately pre-trained DimeNet++ "prop_models", whose weights are not
published; we train our own with ``dpcdvae train-property``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from dpcdvae.geometry.lattice import lattice_from_params
from dpcdvae.nn.mlp import build_mlp

__all__ = ["PropertyPredictor", "predict_property"]


class PropertyPredictor(nn.Module):
    """Crystal -> scalar property (in the property's own units).

    Args:
        encoder_cfg: keyword arguments of :class:`~dpcdvae.nn.encoder.CrystalEncoder` (variant "dime").
        hidden_dim: width of the MLP head; fc_num_layers: its hidden layers.
        max_atoms: largest atom count of the dataset.
        prop_mean, prop_std: standardisation of the target (fitted on the training split; buffers).
    """

    def __init__(self, encoder_cfg: dict, hidden_dim: int = 256, fc_num_layers: int = 1, max_atoms: int = 20,
                 prop_mean: float = 0.0, prop_std: float = 1.0) -> None:
        super().__init__()
        from dpcdvae.nn.encoder import CrystalEncoder

        cfg = dict(encoder_cfg)
        out_channels = int(cfg.pop("out_channels", 256))
        self.encoder = CrystalEncoder(variant="dime", out_channels=out_channels, max_atoms=max_atoms, **cfg)
        self.head = build_mlp(out_channels, hidden_dim, fc_num_layers, 1)
        self.register_buffer("prop_mean", torch.tensor(float(prop_mean)))
        self.register_buffer("prop_std", torch.tensor(float(prop_std)))

    def forward_scaled(self, frac_coords: Tensor, atom_types: Tensor, num_atoms: Tensor, batch: Tensor,
                       lengths: Tensor, angles: Tensor) -> Tensor:
        """Standardised prediction [B]."""
        lattice = lattice_from_params(lengths, angles)
        h = self.encoder(frac_coords, atom_types, num_atoms, batch, lattice)
        return self.head(h).float().squeeze(-1)

    def forward(self, frac_coords: Tensor, atom_types: Tensor, num_atoms: Tensor, batch: Tensor,
                lengths: Tensor, angles: Tensor) -> Tensor:
        """Prediction [B] in the property's units (e.g. eV/atom)."""
        return self.forward_scaled(frac_coords, atom_types, num_atoms, batch, lengths, angles) * self.prop_std + self.prop_mean


@torch.no_grad()
def predict_property(ckpt_path: Path | str, structures: dict[str, Tensor], batch_size: int = 256,
                     device: str = "cpu") -> np.ndarray:
    """Predict the property of crystals given as a samples.pt-style dict.

    Args:
        ckpt_path: model file written by ``dpcdvae train-property``.
        structures: frac_coords [N,3], atom_types [N] (Z), num_atoms [B], lengths [B,3] Å, angles [B,3] deg.
        batch_size: crystals per forward pass.
        device: "cpu", "cuda", ...

    Returns:
        [B] float64 predictions in the property's units.
    """
    from dpcdvae.models.checkpoint import load_property_model

    model, _ = load_property_model(ckpt_path, device)
    num_atoms = structures["num_atoms"].long()
    ptr = torch.cat([num_atoms.new_zeros(1), num_atoms.cumsum(0)])
    out = []
    for start in range(0, num_atoms.shape[0], batch_size):
        stop = min(start + batch_size, num_atoms.shape[0])
        a0, a1 = int(ptr[start]), int(ptr[stop])
        na = num_atoms[start:stop].to(device)
        batch = torch.repeat_interleave(torch.arange(stop - start, device=device), na)
        pred = model(structures["frac_coords"][a0:a1].float().to(device), structures["atom_types"][a0:a1].long().to(device),
                     na, batch, structures["lengths"][start:stop].float().to(device),
                     structures["angles"][start:stop].float().to(device))
        out.append(pred.double().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)
