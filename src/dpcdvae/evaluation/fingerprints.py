"""CDVAE fingerprints: CrystalNN "ops" structure fingerprints and Magpie composition fingerprints.

- Structure: matminer ``CrystalNNFingerprint.from_preset("ops")`` computed for every site and
  averaged over sites -> [61].
- Composition: matminer ``ElementProperty.from_preset("magpie", impute_nan=False)`` -> [132] raw
  (NaN where an element lacks data, as in CDVAE's era); ``normalise_comp_fps`` applies CDVAE's fixed
  ``CompScaler`` (means/stds shipped in ``magpie_comp_scaler.json``, from cdvae/common/constants.py,
  commit f857f598, MIT) and replaces NaN by 0 after normalisation.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Sequence

import numpy as np

STRUCT_FP_DIM = 61
COMP_FP_DIM = 132


@functools.lru_cache(maxsize=1)
def _crystalnn_featurizer():
    from matminer.featurizers.site.fingerprint import CrystalNNFingerprint

    return CrystalNNFingerprint.from_preset("ops")


@functools.lru_cache(maxsize=1)
def _magpie_featurizer():
    from matminer.featurizers.composition.composite import ElementProperty

    return ElementProperty.from_preset("magpie", impute_nan=False)


def structure_fingerprint(structure) -> np.ndarray:
    """Site-averaged CrystalNN "ops" fingerprint of a pymatgen ``Structure`` -> [61] float64.

    Raises whatever matminer raises (the caller counts the crystal invalid)."""
    import warnings

    featurizer = _crystalnn_featurizer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sites = [featurizer.featurize(structure, i) for i in range(len(structure))]
    fp = np.asarray(sites, dtype=np.float64).mean(axis=0)
    if fp.shape != (STRUCT_FP_DIM,):
        raise ValueError(f"unexpected structure fingerprint shape {fp.shape}")
    return fp


def composition_fingerprint(atom_types: Sequence[int] | np.ndarray) -> np.ndarray:
    """Raw Magpie ``ElementProperty`` features of the composition of ``atom_types`` [n] (Z)
    -> [132] float64, NaN where data is missing."""
    import warnings

    from pymatgen.core import Composition
    from pymatgen.core.periodic_table import Element

    z, counts = np.unique(np.asarray(atom_types, dtype=np.int64), return_counts=True)
    comp = Composition({Element.from_Z(int(a)): int(c) for a, c in zip(z, counts)})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fp = np.asarray(_magpie_featurizer().featurize(comp), dtype=np.float64)
    if fp.shape != (COMP_FP_DIM,):
        raise ValueError(f"unexpected composition fingerprint shape {fp.shape}")
    return fp


@functools.lru_cache(maxsize=1)
def comp_scaler() -> tuple[np.ndarray, np.ndarray]:
    """CDVAE's CompScaler (means [132], stds [132]) from the packaged JSON."""
    text = resources.files("dpcdvae.evaluation").joinpath("magpie_comp_scaler.json").read_text()
    data = json.loads(text)
    means, stds = np.asarray(data["means"], np.float64), np.asarray(data["stds"], np.float64)
    if means.shape != (COMP_FP_DIM,) or stds.shape != (COMP_FP_DIM,):
        raise ValueError("magpie_comp_scaler.json: expected 132 means and 132 stds")
    return means, stds


def normalise_comp_fps(fps: np.ndarray) -> np.ndarray:
    """[M, 132] raw Magpie features -> [M, 132] (x - mean) / std with NaN replaced by 0 (CDVAE)."""
    means, stds = comp_scaler()
    out = (np.asarray(fps, dtype=np.float64) - means) / stds
    return np.where(np.isnan(out), 0.0, out)
