"""GemNet-T (Gasteiger et al., 2021) for periodic crystals, plain PyTorch (docs/GEMNET.md)."""

from dpcdvae.nn.gemnet.bases import GaussianRBF, legendre_harmonics, polynomial_envelope
from dpcdvae.nn.gemnet.model import GemNetT
from dpcdvae.nn.gemnet.scaling import REFERENCE_SCALES, ScaleFactor, fit_scale_factors, scale_factors

__all__ = [
    "GemNetT",
    "GaussianRBF",
    "legendre_harmonics",
    "polynomial_envelope",
    "REFERENCE_SCALES",
    "ScaleFactor",
    "fit_scale_factors",
    "scale_factors",
]
