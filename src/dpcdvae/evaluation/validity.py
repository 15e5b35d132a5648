"""CDVAE validity rules: structure validity (distances, volume) and SMACT composition validity.

Structure validity (CDVAE ``structure_validity``): volume >= 0.1 Å^3 and every interatomic distance
(pymatgen's periodic minimum-image ``distance_matrix`` between distinct sites) >= 0.5 Å.

Composition validity (CDVAE ``smact_validity``): counts reduced by their gcd; a single element or an
all-metal composition (``smact.metals``) is valid; otherwise the composition is valid when at least
one combination of SMACT oxidation states (one state per element) is charge neutral with the reduced
counts (what ``smact.neutral_ratios(ox, stoichs=[(c,) for c in counts])`` tests) AND passes the
Pauling electronegativity test (cations less electronegative than anions, repeats allowed).

The enumeration is vectorised with numpy but gives exactly the same answer as CDVAE's loop over
``itertools.product`` (the tests compare both on random compositions).

Version choices (docs/REFERENCE.md §4):
- ``oxidation_states="smact14"`` (default): ``Element.oxidation_states_smact14``, the SMACT set of
  CDVAE's era; ``"icsd24"``: ``Element.oxidation_states_icsd24`` (smact 4 default).
- ``pauling_missing="pass"`` (default, CDVAE): a missing electronegativity raised a TypeError in the
  first offending comparison and CDVAE counted it as a pass; ``"fail"``: smact 4 behaviour (any pair
  with a missing electronegativity fails).
"""

from __future__ import annotations

import functools
import itertools
from typing import Sequence

import numpy as np

OXIDATION_SETS = ("smact14", "icsd24")
PAULING_MISSING = ("pass", "fail")

# Enumerate at most this many oxidation-state combinations per numpy block.
_BLOCK = 1 << 16


@functools.lru_cache(maxsize=256)
def _element_data(symbol: str, oxidation_states: str) -> tuple[tuple[int, ...], float | None, bool]:
    """(oxidation states, Pauling electronegativity or None, is metal) of one element from smact."""
    import smact

    el = smact.Element(symbol)
    ox = getattr(el, f"oxidation_states_{oxidation_states}")
    return tuple(int(o) for o in (ox or ())), el.pauling_eneg, symbol in set(smact.metals)


def _pauling_pass(ox: np.ndarray, eneg: Sequence[float | None], missing: str) -> np.ndarray:
    """Pauling test of every row of ``ox`` [K, k] (oxidation state per element); returns [K] bool.

    Replicates the pairwise loop of ``smact.screening.eneg_states_test`` in
    ``itertools.combinations`` order: the first pair that is a violation decides False; in
    ``missing="pass"`` mode a pair of opposite signs with a missing electronegativity that comes
    first decides True (CDVAE's ``except TypeError``).
    """
    k = ox.shape[1]
    has = np.array([e is not None for e in eneg])
    en = np.array([e if e is not None else np.nan for e in eneg], dtype=np.float64)
    if missing == "fail" and not has.all():
        return np.zeros(ox.shape[0], dtype=bool)
    decided = np.zeros(ox.shape[0], dtype=bool)
    result = np.ones(ox.shape[0], dtype=bool)
    for i, j in itertools.combinations(range(k), 2):
        cat_an = (ox[:, i] > 0) & (ox[:, j] < 0)
        an_cat = (ox[:, i] < 0) & (ox[:, j] > 0)
        if has[i] and has[j]:
            bad = (cat_an & (en[i] >= en[j])) | (an_cat & (en[i] <= en[j]))
            hit = bad & ~decided
            result[hit] = False
        else:  # missing electronegativity: opposite signs raise TypeError -> pass
            hit = (cat_an | an_cat) & ~decided
            result[hit] = True
        decided |= hit
    return result


def composition_validity(
    atom_types: Sequence[int] | np.ndarray,
    oxidation_states: str = "smact14",
    pauling_missing: str = "pass",
) -> bool:
    """SMACT composition validity of one crystal.

    Args:
        atom_types: [n] atomic numbers Z (any order, repeats = atom counts).
        oxidation_states: "smact14" (CDVAE era, default) or "icsd24".
        pauling_missing: "pass" (CDVAE) or "fail" (smact 4).
    Returns:
        True if the composition is valid. Unknown elements (Z outside 1..103) give False.
    """
    if oxidation_states not in OXIDATION_SETS:
        raise ValueError(f"oxidation_states must be one of {OXIDATION_SETS}, got {oxidation_states!r}")
    if pauling_missing not in PAULING_MISSING:
        raise ValueError(f"pauling_missing must be one of {PAULING_MISSING}, got {pauling_missing!r}")
    from pymatgen.core.periodic_table import Element

    z = np.asarray(atom_types, dtype=np.int64).reshape(-1)
    if z.size == 0:
        return False
    elems, counts = np.unique(z, return_counts=True)  # sorted by Z, as CDVAE
    if elems.min() < 1 or elems.max() > 103:
        return False
    counts = counts // np.gcd.reduce(counts)
    if len(elems) == 1:
        return True
    try:
        data = [_element_data(Element.from_Z(int(e)).symbol, oxidation_states) for e in elems]
    except Exception:  # element unknown to smact
        return False
    if all(d[2] for d in data):
        return True
    ox_lists = [np.array(d[0], dtype=np.int64) for d in data]
    if any(o.size == 0 for o in ox_lists):
        return False
    eneg = [d[1] for d in data]
    # Split elements into a leading part enumerated in Python and a trailing numpy block.
    sizes = [o.size for o in ox_lists]
    split = len(sizes)
    while split > 0 and int(np.prod(sizes[split - 1 :])) <= _BLOCK:
        split -= 1
    lead, tail = ox_lists[:split], ox_lists[split:]
    tail_grid = np.stack(np.meshgrid(*tail, indexing="ij"), axis=-1).reshape(-1, len(tail))
    tail_charge = tail_grid @ counts[split:]
    for lead_ox in itertools.product(*[o.tolist() for o in lead]):
        lead_charge = int(np.dot(lead_ox, counts[:split])) if lead_ox else 0
        neutral = tail_charge + lead_charge == 0
        if not neutral.any():
            continue
        rows = tail_grid[neutral]
        combos = np.concatenate([np.broadcast_to(np.array(lead_ox, dtype=np.int64), (rows.shape[0], split)), rows], 1)
        if _pauling_pass(combos, eneg, pauling_missing).any():
            return True
    return False


def structure_validity(structure, cutoff: float = 0.5, min_volume: float = 0.1) -> tuple[bool, str | None]:
    """CDVAE structure validity of a pymatgen ``Structure``.

    Returns:
        (valid, reason): reason is None, "small_volume" (volume < ``min_volume`` Å^3) or
        "atoms_too_close" (some periodic interatomic distance < ``cutoff`` Å).
    """
    if not structure.volume >= min_volume:
        return False, "small_volume"
    if len(structure) > 1:
        dist = np.array(structure.distance_matrix, dtype=np.float64)
        np.fill_diagonal(dist, np.inf)
        if not dist.min() >= cutoff:
            return False, "atoms_too_close"
    return True, None
