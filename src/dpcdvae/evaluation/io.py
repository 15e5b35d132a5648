"""Reading crystals to evaluate (sample folders, CIF folders, extxyz, CSV splits) and conversions.

Every crystal becomes a picklable ``CrystalInput`` (plain numpy arrays or a CIF string), so the
pymatgen work happens inside worker processes. ``build_structure`` turns one into a pymatgen
``Structure`` following CDVAE's ``Crystal.get_structure`` rules.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from dpcdvae.data.datasets import SPLITS  # noqa: F401
# the dataset files of the evaluation commands follow the one source rule of dpcdvae.data.source
from dpcdvae.data.source import dataset_split_csv, resolve_source, split_csv_path  # noqa: F401


@dataclass
class CrystalInput:
    """One crystal to evaluate. Exactly one of (``cif``), (``lengths``+``angles``), (``lattice``)
    describes the cell.

    Attributes:
        label: name for reports (file name, CSV row, sample number).
        atom_types: [n] int64 Z, or None when given by ``cif``.
        frac_coords: [n, 3] fractional, or None when given by ``cif``.
        lengths: [3] Å and angles: [3] degrees (pymatgen ``Lattice.from_parameters``), or None.
        lattice: [3, 3] Å, rows are lattice vectors, or None.
        cif: CIF text, or None.
        preprocess: apply CDVAE's preprocessing (Niggli reduction, canonical lattice from parameters)
            after parsing; used for dataset CSV rows (ground truth), never for model outputs.
    """

    label: str
    atom_types: np.ndarray | None = None
    frac_coords: np.ndarray | None = None
    lengths: np.ndarray | None = None
    angles: np.ndarray | None = None
    lattice: np.ndarray | None = None
    cif: str | None = None
    preprocess: bool = False


@dataclass
class LoadedCrystals:
    """Crystals read from one input path.

    Attributes:
        items: the crystals, in input order.
        kind: "samples.pt", "cif-folder", "extxyz" or "csv".
        index: [B] int64 0-based CSV row of the ground truth (samples.pt reconstructions), or None.
        meta: the ``meta`` dict of a samples.pt (else empty).
        note: how the input was read, for the report.
    """

    items: list[CrystalInput]
    kind: str
    index: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def preprocess_structure(structure):
    """CDVAE preprocessing of a dataset structure: Niggli reduction (``get_reduced_structure``,
    no primitive reduction), then a canonical ``Structure`` rebuilt from the lattice parameters
    (pymatgen's parameter -> matrix convention) and the fractional coordinates."""
    from pymatgen.core import Lattice, Structure

    reduced = structure.get_reduced_structure()
    return Structure(
        lattice=Lattice.from_parameters(*reduced.lattice.parameters),
        species=reduced.species,
        coords=reduced.frac_coords,
        coords_are_cartesian=False,
    )


def build_structure(item: CrystalInput) -> tuple[Any, str | None]:
    """Build the pymatgen ``Structure`` of one input (CDVAE ``Crystal.get_structure``).

    Returns:
        (structure or None, reason): reason None means constructed. Reasons: "non_positive_lattice"
        (a negative lattice length), "non_finite_values", "cif_parse_error", "disordered_sites",
        "empty_structure", "construction_error", "small_volume" (volume < 0.1 Å^3; the structure
        is returned but counts as not constructed, as in CDVAE).
    """
    import warnings

    from pymatgen.core import Lattice, Structure

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if item.cif is not None:
            try:
                structure = Structure.from_str(item.cif, fmt="cif")
            except Exception:
                return None, "cif_parse_error"
            if not structure.is_ordered:
                return None, "disordered_sites"
        else:
            arrays = [a for a in (item.lengths, item.angles, item.lattice, item.frac_coords) if a is not None]
            if item.atom_types is None or item.frac_coords is None or not arrays:
                return None, "construction_error"
            if item.lengths is not None and np.min(item.lengths) < 0:
                return None, "non_positive_lattice"
            if not all(np.all(np.isfinite(a)) for a in arrays):
                return None, "non_finite_values"
            if len(item.atom_types) == 0:
                return None, "empty_structure"
            try:
                if item.lattice is not None:
                    lattice = Lattice(np.asarray(item.lattice, dtype=np.float64))
                else:
                    lattice = Lattice.from_parameters(*np.asarray(item.lengths, np.float64).tolist(),
                                                      *np.asarray(item.angles, np.float64).tolist())
                structure = Structure(lattice=lattice, species=[int(z) for z in item.atom_types],
                                      coords=np.asarray(item.frac_coords, np.float64),
                                      coords_are_cartesian=False)
            except Exception:
                return None, "construction_error"
        if len(structure) == 0:
            return None, "empty_structure"
        if item.preprocess:
            try:
                structure = preprocess_structure(structure)
            except Exception:
                return None, "construction_error"
    if not structure.volume >= 0.1:
        return structure, "small_volume"
    return structure, None


# ---------------------------------------------------------------------------------------------
# Readers


def read_samples_pt(path: Path) -> LoadedCrystals:
    """Read a ``samples.pt`` (docs/ARCHITECTURE.md "Sample folder") with ``weights_only=True``."""
    from dpcdvae.safeload import load_weights_only

    data = load_weights_only(path, "samples file")
    need = ("frac_coords", "atom_types", "num_atoms", "lengths", "angles")
    if not isinstance(data, dict) or any(k not in data for k in need):
        raise ValueError(f"{path}: expected a dict with keys {need}")
    frac = data["frac_coords"].detach().double().numpy()
    types = data["atom_types"].detach().long().numpy()
    num = data["num_atoms"].detach().long().numpy()
    lengths = data["lengths"].detach().double().numpy()
    angles = data["angles"].detach().double().numpy()
    b = num.shape[0]
    if frac.shape != (int(num.sum()), 3) or types.shape != (frac.shape[0],) or lengths.shape != (b, 3) \
            or angles.shape != (b, 3):
        raise ValueError(f"{path}: inconsistent shapes (num_atoms sums to {int(num.sum())}, "
                         f"frac_coords {tuple(frac.shape)}, lengths {tuple(lengths.shape)})")
    bounds = np.concatenate([[0], np.cumsum(num)])
    items = [
        CrystalInput(label=f"{i:06d}", atom_types=types[bounds[i]:bounds[i + 1]],
                     frac_coords=frac[bounds[i]:bounds[i + 1]], lengths=lengths[i], angles=angles[i])
        for i in range(b)
    ]
    index = data["index"].detach().long().numpy() if "index" in data else None
    if index is not None and index.shape != (b,):
        raise ValueError(f"{path}: index has shape {tuple(index.shape)}, expected ({b},)")
    meta = dict(data.get("meta", {}) or {})
    return LoadedCrystals(items, "samples.pt", index, meta, f"samples.pt ({b} crystals)")


def read_cif_folder(folder: Path) -> LoadedCrystals:
    """Read every ``*.cif`` of a folder, sorted by file name."""
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".cif")
    if not files:
        raise ValueError(f"{folder}: no *.cif files")
    items = [CrystalInput(label=p.name, cif=p.read_text(errors="replace")) for p in files]
    return LoadedCrystals(items, "cif-folder", None, {}, f"{len(files)} CIF files sorted by name")


def read_extxyz(path: Path) -> LoadedCrystals:
    """Read all frames of an extended-XYZ file (ase); each frame needs a 3D cell."""
    from ase.io import read

    try:
        frames = read(str(path), index=":", format="extxyz")
    except Exception as err:
        raise ValueError(f"{path}: cannot read as extxyz ({type(err).__name__}: {err})") from None
    items = []
    for i, atoms in enumerate(frames):
        cell = np.asarray(atoms.cell.array, dtype=np.float64)
        if len(atoms) and abs(np.linalg.det(cell)) > 0:
            frac = np.linalg.solve(cell.T, np.asarray(atoms.positions, np.float64).T).T
        else:
            frac = np.full((len(atoms), 3), np.nan)
        items.append(CrystalInput(label=f"frame{i:06d}", atom_types=np.asarray(atoms.numbers, np.int64),
                                  frac_coords=frac, lattice=cell))
    if not items:
        raise ValueError(f"{path}: no frames")
    return LoadedCrystals(items, "extxyz", None, {}, f"{len(items)} extxyz frames")


def read_csv_structures(path: Path, preprocess: bool = True, rows: np.ndarray | None = None) -> LoadedCrystals:
    """Read a dataset CSV(.gz) with a ``cif`` column; ``rows`` selects 0-based rows (default all)."""
    import pandas as pd

    frame = pd.read_csv(path)
    if "cif" not in frame.columns:
        raise ValueError(f"{path}: no 'cif' column")
    cifs = frame["cif"].tolist()
    ids = frame["material_id"].astype(str).tolist() if "material_id" in frame.columns else None
    sel = np.arange(len(cifs)) if rows is None else np.asarray(rows, dtype=np.int64)
    items = [CrystalInput(label=f"row{r}" + (f" {ids[r]}" if ids else ""), cif=str(cifs[r]), preprocess=preprocess)
             for r in sel]
    note = f"{path.name}: {len(items)} of {len(cifs)} rows" + (" (Niggli + canonical lattice)" if preprocess else "")
    return LoadedCrystals(items, "csv", sel, {}, note)


def load_crystals(path: Path) -> LoadedCrystals:
    """Read crystals from a sample folder (samples.pt), a folder of CIFs (or DIR/cif/), one
    ``*.extxyz`` / ``*.xyz`` file, a ``samples.pt`` file, or a dataset CSV(.gz) (preprocessed as
    ground truth)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist")
    if path.is_dir():
        if (path / "samples.pt").is_file():
            return read_samples_pt(path / "samples.pt")
        if any(p.suffix.lower() == ".cif" for p in path.iterdir()):
            return read_cif_folder(path)
        if (path / "cif").is_dir():
            return read_cif_folder(path / "cif")
        xyz = sorted(path.glob("*.extxyz"))
        if len(xyz) == 1:
            return read_extxyz(xyz[0])
        raise ValueError(f"{path}: no samples.pt, *.cif or single *.extxyz found")
    name = path.name.lower()
    if name.endswith(".pt"):
        return read_samples_pt(path)
    if name.endswith((".extxyz", ".xyz")):
        return read_extxyz(path)
    if name.endswith((".csv", ".csv.gz")):
        return read_csv_structures(path)
    if name.endswith(".cif"):
        return LoadedCrystals([CrystalInput(label=path.name, cif=path.read_text(errors="replace"))],
                              "cif-folder", None, {}, "1 CIF file")
    raise ValueError(f"{path}: unsupported input (expected a folder, .pt, .extxyz, .cif or .csv[.gz])")


def load_paired_crystals(paths: list[Path]) -> LoadedCrystals:
    """:func:`load_crystals` of one path, or the union of several reconstruction runs (each a samples.pt
    with ``index``, e.g. the parts of a cut-short run and a ``reconstruct --start`` run of the rest);
    a ground-truth row predicted twice, a run without ``index`` or runs of different splits are refused."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1:
        return load_crystals(paths[0])
    runs = [load_crystals(p) for p in paths]
    seen: dict[int, Path] = {}
    for path, run in zip(paths, runs):
        if run.kind != "samples.pt" or run.index is None:
            raise ValueError(f"{path}: several --pred must each be a samples.pt with an index (reconstruct's output)")
        for row in run.index.tolist():
            if row in seen:
                raise ValueError(f"ground-truth row {row} is predicted by both {seen[row]} and {path}")
            seen[row] = path
    splits = {str(r.meta["split"]) for r in runs if r.meta.get("split") is not None}
    if len(splits) > 1:
        raise ValueError(f"--pred runs of different splits: {sorted(splits)}")
    meta = dict(runs[0].meta)
    if splits:
        meta["split"] = splits.pop()
    items = [it for r in runs for it in r.items]
    index = np.concatenate([r.index for r in runs])
    return LoadedCrystals(items, "samples.pt", index, meta,
                          f"{len(paths)} samples.pt runs ({', '.join(str(len(r.items)) for r in runs)} crystals)")


# ---------------------------------------------------------------------------------------------
# Output checks


def check_output_file(path: Path | str | None, flag: str = "--out") -> None:
    """Refuse (one line) an output file that could not be written: a folder, a path under a file,
    or a folder without write permission. Nothing is created."""
    if path is None:
        return
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{flag} {path} is a folder; give a file name such as {path / 'metrics.json'}")
    _check_writable_folder(path.parent, flag, path)
    if path.exists() and not os.access(path, os.W_OK):
        raise PermissionError(f"{flag} {path} is not writable")


def check_output_dir(path: Path | str | None, flag: str = "--report") -> None:
    """Like :func:`check_output_file` for an output folder (absent or an existing folder)."""
    if path is None:
        return
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{flag} {path} is a file, not a folder")
    _check_writable_folder(path, flag, path)


def _check_writable_folder(folder: Path, flag: str, target: Path) -> None:
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:  # the first existing ancestor gets the new folders
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{flag} {target}: {folder} is a file, not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"{flag} {target}: cannot write in {folder} (permission denied)")


def unparsable_cif_warnings(items: Sequence[CrystalInput], table: dict[str, np.ndarray], limit: int = 10) -> list[str]:
    """One warning per input CIF that could not be read (file name and the parser's reason), at most
    ``limit`` lines plus a summary line naming the count of the others."""
    bad = [i for i, r in enumerate(table["reasons"])
           if items[i].cif is not None and {"cif_parse_error", "disordered_sites"} & set(str(r).split("|"))]
    lines = [f"{items[i].label}: cannot read this CIF ({_cif_error(items[i].cif)}); counted as invalid"
             for i in bad[:limit]]
    if len(bad) > limit:
        lines.append(f"{len(bad) - limit} more unreadable CIF files, e.g. {items[bad[limit]].label}; "
                     "counted as invalid")
    return lines


def _cif_error(cif: str) -> str:
    """Why pymatgen cannot read ``cif`` (one short line)."""
    import warnings

    from pymatgen.core import Structure

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(cif, fmt="cif")
    except Exception as err:  # noqa: BLE001 - any parser error is the reason
        msg = " ".join(str(err).split()) or type(err).__name__
        return msg if len(msg) <= 160 else msg[:157] + "..."
    return "partially occupied (disordered) sites" if not structure.is_ordered else "unknown reason"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# Conversions between pymatgen structures and the samples.pt tensor dict


def structures_to_tensor_dict(structures: Sequence[Any]) -> dict[str, Any]:
    """pymatgen structures -> samples.pt-style dict of CPU tensors.

    Returns: frac_coords [N,3] float32, atom_types [N] int64 (Z), num_atoms [B] int64,
    lengths [B,3] float32 Å, angles [B,3] float32 degrees (frame-independent: rebuilding the lattice
    from the parameters only rotates the crystal).
    """
    import torch

    if not structures:
        raise ValueError("no structures to convert")
    frac = np.concatenate([np.asarray(s.frac_coords, np.float64) for s in structures]).reshape(-1, 3)
    types = np.concatenate([[site.specie.Z for site in s] for s in structures]).astype(np.int64)
    return {
        "frac_coords": torch.from_numpy(frac).float(),
        "atom_types": torch.from_numpy(types),
        "num_atoms": torch.tensor([len(s) for s in structures], dtype=torch.int64),
        "lengths": torch.tensor([list(s.lattice.abc) for s in structures], dtype=torch.float32),
        "angles": torch.tensor([list(s.lattice.angles) for s in structures], dtype=torch.float32),
    }


def tensor_dict_to_structures(data: dict[str, Any]) -> list[Any]:
    """samples.pt-style dict -> list of pymatgen ``Structure`` (None where not constructed)."""
    import torch

    def arr(key: str, dtype) -> np.ndarray:
        val = data[key]
        return val.detach().cpu().numpy().astype(dtype) if isinstance(val, torch.Tensor) else np.asarray(val, dtype)

    frac, types, num = arr("frac_coords", np.float64), arr("atom_types", np.int64), arr("num_atoms", np.int64)
    lengths, angles = arr("lengths", np.float64), arr("angles", np.float64)
    bounds = np.concatenate([[0], np.cumsum(num)])
    out = []
    for i in range(num.shape[0]):
        item = CrystalInput(label=str(i), atom_types=types[bounds[i]:bounds[i + 1]],
                            frac_coords=frac[bounds[i]:bounds[i + 1]], lengths=lengths[i], angles=angles[i])
        structure, reason = build_structure(item)
        out.append(structure if reason is None else None)
    return out


def table_to_tensor_dict(table: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, Any]:
    """Selected rows of a record table (see ``worker.records_to_table``) -> samples.pt-style dict."""
    import torch

    rows = np.asarray(rows, dtype=np.int64)
    ptr = table["atom_ptr"]
    atom_idx = np.concatenate([np.arange(ptr[r], ptr[r + 1]) for r in rows]) if rows.size else np.zeros(0, np.int64)
    return {
        "frac_coords": torch.from_numpy(table["frac_coords"][atom_idx].astype(np.float32)),
        "atom_types": torch.from_numpy(table["atom_types"][atom_idx].astype(np.int64)),
        "num_atoms": torch.from_numpy(np.diff(ptr)[rows].astype(np.int64)),
        "lengths": torch.from_numpy(table["lengths"][rows].astype(np.float32)),
        "angles": torch.from_numpy(table["angles"][rows].astype(np.float32)),
    }
