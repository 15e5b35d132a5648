"""CIF -> canonical crystal arrays (CDVAE's ``build_crystal`` with niggli=True, primitive=False).

pymatgen is imported inside the functions: this module is imported by preprocessing workers only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

MAX_Z = 100


class BadRow(Exception):
    """A CSV row that cannot be used: ``category`` (short key for counting) and a one-line message."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category
        self.message = message


@dataclass
class CrystalArrays:
    """One preprocessed crystal.

    Attributes:
        atom_types: [n] int64, Z.
        frac_coords: [n, 3] float64, fractional, wrapped to [0, 1).
        lengths: [3] float64, Å.  angles: [3] float64, degrees.
    """

    atom_types: np.ndarray
    frac_coords: np.ndarray
    lengths: np.ndarray
    angles: np.ndarray


def wrap_frac(frac: np.ndarray, dtype: np.dtype = np.float64) -> np.ndarray:
    """frac - floor(frac), cast to ``dtype``; values that round up to 1.0 in ``dtype`` become 0.0."""
    out = (frac - np.floor(frac)).astype(dtype)
    out[out >= 1.0] = 0.0
    return out


def preprocess_cif(cif: str, max_atoms: int | None = None):
    """Parse a CIF and return CDVAE's canonical structure (pymatgen ``Structure``).

    Steps: ``Structure.from_str(cif, fmt="cif")``; checks (ordered sites, known elements with
    1 <= Z <= 100, 1..max_atoms atoms, positive finite volume); Niggli reduction
    (``get_reduced_structure()``); rebuild from ``Lattice.from_parameters(a, b, c, α, β, γ)`` with the
    reduced fractional coordinates, wrapped to [0, 1).

    Raises:
        BadRow: the row must be skipped; ``category`` says why.
    """
    from pymatgen.core import DummySpecies, Lattice, Structure

    if not isinstance(cif, str) or not cif.strip():
        raise BadRow("cif_parse", "empty CIF cell")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            struct = Structure.from_str(cif, fmt="cif")
        except Exception as err:  # noqa: BLE001 - pymatgen raises many types for bad CIFs
            raise BadRow("cif_parse", f"unparseable CIF ({type(err).__name__}: {_short(err)})") from None
        if not struct.is_ordered:
            raise BadRow("disordered", "partial occupancies (disordered sites)")
        for sp in struct.species:
            if isinstance(sp, DummySpecies):
                raise BadRow("element", f"unknown element {sp.symbol!r}")
            if not 1 <= sp.Z <= MAX_Z:
                raise BadRow("element", f"element {sp.symbol} has Z={sp.Z} > {MAX_Z}")
        n = len(struct)
        if n == 0:
            raise BadRow("empty", "no atoms")
        if max_atoms is not None and n > max_atoms:
            raise BadRow("too_many_atoms", f"{n} atoms > max_atoms {max_atoms}")
        volume = struct.lattice.volume
        if not math.isfinite(volume) or volume <= 1e-8:
            raise BadRow("volume", f"non-positive cell volume {volume:.3g}")
        if not np.isfinite(struct.frac_coords).all():
            raise BadRow("nan_coords", "non-finite coordinates")
        try:
            reduced = struct.get_reduced_structure()
        except Exception as err:  # noqa: BLE001
            raise BadRow("niggli", f"Niggli reduction failed ({type(err).__name__}: {_short(err)})") from None
        canonical = Structure(
            Lattice.from_parameters(*reduced.lattice.abc, *reduced.lattice.angles),
            reduced.species,
            wrap_frac(reduced.frac_coords),
            coords_are_cartesian=False,
        )
    if not (np.isfinite(canonical.frac_coords).all() and np.isfinite(canonical.lattice.parameters).all()):
        raise BadRow("nan_coords", "non-finite coordinates after Niggli reduction")
    return canonical


def structure_arrays(structure) -> CrystalArrays:
    """Arrays of a (canonical) pymatgen Structure."""
    return CrystalArrays(
        atom_types=np.asarray(structure.atomic_numbers, dtype=np.int64),
        frac_coords=wrap_frac(np.asarray(structure.frac_coords, dtype=np.float64)),
        lengths=np.asarray(structure.lattice.abc, dtype=np.float64),
        angles=np.asarray(structure.lattice.angles, dtype=np.float64),
    )


def _short(err: BaseException, n: int = 120) -> str:
    msg = " ".join(str(err).split())
    return msg if len(msg) <= n else msg[: n - 3] + "..."


@dataclass
class ChunkResult:
    """Output of ``process_chunk`` for rows ``start .. start + len(cifs) - 1``.

    ok_rows [k] int64 (0-based CSV rows), num_atoms [k] int64, atom_types [n] int64,
    frac_coords [n,3] float64, lengths [k,3] float64, angles [k,3] float64,
    skipped: list of (row, category, message).
    """

    ok_rows: np.ndarray
    num_atoms: np.ndarray
    atom_types: np.ndarray
    frac_coords: np.ndarray
    lengths: np.ndarray
    angles: np.ndarray
    skipped: list[tuple[int, str, str]]


def process_chunk(task: tuple[int, list[str], int | None]) -> ChunkResult:
    """Preprocess CIFs ``task = (first_row, cifs, max_atoms)``; bad rows are returned, not raised."""
    start, cifs, max_atoms = task
    ok_rows: list[int] = []
    arrays: list[CrystalArrays] = []
    skipped: list[tuple[int, str, str]] = []
    for i, cif in enumerate(cifs):
        try:
            arrays.append(structure_arrays(preprocess_cif(cif, max_atoms)))
            ok_rows.append(start + i)
        except BadRow as bad:
            skipped.append((start + i, bad.category, bad.message))
    if arrays:
        return ChunkResult(
            ok_rows=np.asarray(ok_rows, dtype=np.int64),
            num_atoms=np.asarray([len(a.atom_types) for a in arrays], dtype=np.int64),
            atom_types=np.concatenate([a.atom_types for a in arrays]),
            frac_coords=np.concatenate([a.frac_coords for a in arrays]),
            lengths=np.stack([a.lengths for a in arrays]),
            angles=np.stack([a.angles for a in arrays]),
            skipped=skipped,
        )
    return ChunkResult(
        ok_rows=np.zeros(0, np.int64), num_atoms=np.zeros(0, np.int64), atom_types=np.zeros(0, np.int64),
        frac_coords=np.zeros((0, 3)), lengths=np.zeros((0, 3)), angles=np.zeros((0, 3)), skipped=skipped,
    )
