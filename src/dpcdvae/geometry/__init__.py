"""Lattices, periodic radius graphs and triplets in plain torch."""

from dpcdvae.geometry.graph import PeriodicGraph, radius_graph_pbc
from dpcdvae.geometry.lattice import (
    cart_to_frac,
    frac_to_cart,
    lattice_from_params,
    lattice_volume,
    min_image_frac,
    params_from_lattice,
    wrap,
)
from dpcdvae.geometry.triplets import GemNetTriplets, dimenet_triplets, gemnet_triplets

__all__ = [
    "PeriodicGraph",
    "radius_graph_pbc",
    "GemNetTriplets",
    "gemnet_triplets",
    "dimenet_triplets",
    "lattice_from_params",
    "params_from_lattice",
    "lattice_volume",
    "frac_to_cart",
    "cart_to_frac",
    "wrap",
    "min_image_frac",
]
