"""Cross-check our periodic radius graph against pymatgen's ``Structure.get_neighbor_list``.

For each preprocessed crystal (same arrays as the cache: float32 fractional coordinates, lattice
from float32 lengths/angles) both neighbour lists must hold the same (center, neighbour, image)
triples, with distances within ``tol`` Å. Our edge ``src -> dst`` with source image ``offsets``
corresponds to pymatgen's (center = dst, neighbour = src, image = offsets). Pairs whose distance lies
within ``tol`` of the cutoff may legitimately be on either side of it and are not counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dpcdvae.data.datasets import get_dataset
from dpcdvae.data.prepare import read_split_csv
from dpcdvae.data.source import find_split_file
from dpcdvae.data.structures import BadRow, preprocess_cif, structure_arrays, wrap_frac


@dataclass
class StructureMismatch:
    """One crystal whose neighbour lists differ: CSV row, material id and what differs."""

    row: int
    material_id: str
    only_ours: int
    only_pymatgen: int
    max_dist_diff: float


@dataclass
class CheckGraphResult:
    """Outcome of ``check_graph``: N structures compared, K of them mismatching."""

    dataset: str
    split: str
    cutoff: float
    n_structures: int
    n_edges: int
    n_skipped_rows: int
    max_dist_diff: float
    mismatches: list[StructureMismatch] = field(default_factory=list)

    @property
    def n_mismatches(self) -> int:
        return len(self.mismatches)

    def lines(self) -> list[str]:
        out = [
            f"{self.dataset}/{self.split}: {self.n_structures} structures, {self.n_edges} directed edges "
            f"within {self.cutoff} Å; max |distance difference| {self.max_dist_diff:.2e} Å"
            + (f"; {self.n_skipped_rows} unusable rows skipped" if self.n_skipped_rows else "")
        ]
        for m in self.mismatches[:20]:
            out.append(
                f"  row {m.row} ({m.material_id}): {m.only_ours} edges only ours, "
                f"{m.only_pymatgen} only pymatgen, max distance difference {m.max_dist_diff:.2e} Å"
            )
        out.append(f"mismatches: {self.n_mismatches} of {self.n_structures} structures")
        return out


def _edge_dict(center: np.ndarray, neighbor: np.ndarray, image: np.ndarray, dist: np.ndarray) -> dict:
    keys = zip(center.tolist(), neighbor.tolist(), map(tuple, image.astype(np.int64).tolist()))
    return dict(zip(keys, dist.tolist()))


def compare_edges(ours: dict, theirs: dict, cutoff: float, tol: float) -> tuple[int, int, float]:
    """Two {(center, neighbour, image): distance} dicts -> (only ours, only theirs, max |Δd|).

    Edges missing on one side whose distance is within ``tol`` of ``cutoff`` are not counted.
    """
    only_ours = sum(1 for k, d in ours.items() if k not in theirs and d < cutoff - tol)
    only_theirs = sum(1 for k, d in theirs.items() if k not in ours and d < cutoff - tol)
    common = [abs(d - theirs[k]) for k, d in ours.items() if k in theirs]
    return only_ours, only_theirs, max(common, default=0.0)


def check_graph(
    source: Path | str,
    dataset: str,
    split: str,
    limit: int | None = None,
    cutoff: float = 7.0,
    tol: float = 1e-4,
    batch_size: int = 32,
    device: str = "cpu",
) -> CheckGraphResult:
    """Compare ``radius_graph_pbc(..., max_neighbors=None, images="exact")`` with pymatgen.

    Args:
        source: data folder with ``<dataset>/<split>.csv[.gz]``.
        dataset, split: which CSV.
        limit: first ``limit`` rows (None: all).
        cutoff: radius in Å.
        tol: allowed |distance difference| in Å (and the band around the cutoff that is ignored).
        batch_size: crystals per radius-graph call (bounds memory of the exact image search).
        device: torch device of our graph construction.
    """
    from pymatgen.core import Lattice, Structure

    from dpcdvae.geometry.graph import radius_graph_pbc
    from dpcdvae.geometry.lattice import lattice_from_params

    info = get_dataset(dataset)
    path = find_split_file(Path(source), dataset, split)
    if path is None:
        raise FileNotFoundError(f"no {dataset}/{split}.csv[.gz] in {source}")
    if cutoff <= 0:
        raise ValueError(f"cutoff must be positive, got {cutoff}")
    cifs, ids, _, _ = read_split_csv(path, [], limit)
    rows, arrays, n_bad = [], [], 0
    for row, cif in enumerate(cifs):
        try:
            arrays.append(structure_arrays(preprocess_cif(cif, info.max_atoms)))
            rows.append(row)
        except BadRow:
            n_bad += 1

    result = CheckGraphResult(dataset, split, cutoff, len(arrays), 0, n_bad, 0.0)
    for start in range(0, len(arrays), batch_size):
        chunk = arrays[start : start + batch_size]
        frac = torch.from_numpy(wrap_frac(np.concatenate([a.frac_coords for a in chunk]), np.float32))
        lengths = torch.from_numpy(np.stack([a.lengths for a in chunk]).astype(np.float32))
        angles = torch.from_numpy(np.stack([a.angles for a in chunk]).astype(np.float32))
        num_atoms = torch.tensor([len(a.atom_types) for a in chunk], dtype=torch.long)
        lattice = lattice_from_params(lengths.double(), angles.double()).float()
        graph = radius_graph_pbc(frac.to(device), lattice.to(device), num_atoms.to(device), cutoff,
                                 max_neighbors=None, images="exact")
        ptr = np.concatenate([[0], np.cumsum(num_atoms.numpy())])
        dst = graph.dst.cpu().numpy()
        src = graph.src.cpu().numpy()
        off = graph.offsets.cpu().numpy()
        dist = graph.dist.detach().cpu().numpy().astype(np.float64)
        bounds = np.searchsorted(dst, ptr)  # edges are sorted by target
        result.n_edges += int(dst.shape[0])
        for i, arr in enumerate(chunk):
            lo, hi = bounds[i], bounds[i + 1]
            ours = _edge_dict(dst[lo:hi] - ptr[i], src[lo:hi] - ptr[i], off[lo:hi], dist[lo:hi])
            # pymatgen on the very same float32 values (as float64)
            struct = Structure(
                Lattice(lattice[i].double().numpy()),
                arr.atom_types.tolist(),
                frac[ptr[i] : ptr[i + 1]].double().numpy(),
                coords_are_cartesian=False,
            )
            c, n, img, d = struct.get_neighbor_list(r=cutoff)
            theirs = _edge_dict(c, n, img, d)
            only_ours, only_theirs, max_diff = compare_edges(ours, theirs, cutoff, tol)
            result.max_dist_diff = max(result.max_dist_diff, max_diff)
            if only_ours or only_theirs or max_diff > tol:
                result.mismatches.append(
                    StructureMismatch(rows[start + i], ids[rows[start + i]], only_ours, only_theirs, max_diff)
                )
    return result
