"""dpcdvae.evaluation: the CDVAE metric suite for any folder of crystals.

Public API (import the submodules; nothing heavy is imported here):
- ``gen.evaluate_gen(samples, dataset, ...) -> dict``: validity, COV-R/P, AMSD/AMCD, diversity,
  Wasserstein distances (density, #elements, property) against a dataset split.
- ``recon.evaluate_recon(pred, dataset, ...) -> dict``: match rate, mean normalised RMS, lattice errors.
- ``validity.composition_validity`` / ``validity.structure_validity``: CDVAE's validity rules.
- ``fingerprints``: CrystalNN "ops" and Magpie fingerprints, CDVAE's composition scaler.
- ``io``: readers (samples.pt, CIF folder, extxyz, CSV), ``preprocess_structure``,
  ``structures_to_tensor_dict`` / ``tensor_dict_to_structures``.
- ``metrics``: coverage, diversity, Wasserstein, summaries on numpy arrays.
CLI: ``dpcdvae evaluate recon|gen`` (``commands.py``).
"""
