"""Readers (samples.pt, CIF folder, extxyz, CSV) and tensor <-> structure conversions."""

import numpy as np
import pytest
import torch

pytest.importorskip("pymatgen")
pytest.importorskip("ase")

from dpcdvae.evaluation.io import (build_structure, load_crystals, read_csv_structures,  # noqa: E402
                                   structures_to_tensor_dict, table_to_tensor_dict, tensor_dict_to_structures)
from dpcdvae.evaluation.worker import EvalOptions, evaluate_crystal, records_to_table, take_rows  # noqa: E402


@pytest.fixture(scope="module")
def perov(shared_data):
    items = read_csv_structures(shared_data / "perov_5" / "test.csv.gz", rows=np.arange(4)).items
    return [build_structure(it)[0] for it in items]


def test_csv_rows_are_preprocessed(shared_data, perov):
    from pymatgen.core import Structure

    loaded = read_csv_structures(shared_data / "perov_5" / "test.csv.gz", rows=np.array([2]))
    assert loaded.kind == "csv" and loaded.index.tolist() == [2] and loaded.items[0].label.startswith("row2")
    raw = Structure.from_str(loaded.items[0].cif, fmt="cif")
    s = perov[2]
    assert np.allclose(s.lattice.parameters, raw.get_reduced_structure().lattice.parameters)
    assert s.lattice.matrix[0, 1] == pytest.approx(0.0, abs=1e-12)  # canonical: a = (a sinβ, 0, a cosβ)


def test_tensor_dict_roundtrip(perov):
    d = structures_to_tensor_dict(perov)
    assert d["num_atoms"].tolist() == [len(s) for s in perov] and d["frac_coords"].dtype == torch.float32
    back = tensor_dict_to_structures(d)
    for a, b in zip(perov, back):
        assert a.matches(b) and a.composition == b.composition


def test_samples_pt_cif_folder_extxyz(tmp_path, perov):
    from ase.io import write
    from pymatgen.io.ase import AseAtomsAdaptor

    d = structures_to_tensor_dict(perov)
    d["index"] = torch.tensor([3, 2, 1, 0])
    d["meta"] = {"dataset": "perov_5", "split": "test", "steps": 10}
    (tmp_path / "run").mkdir()
    torch.save(d, tmp_path / "run" / "samples.pt")
    loaded = load_crystals(tmp_path / "run")
    assert loaded.kind == "samples.pt" and loaded.index.tolist() == [3, 2, 1, 0] and loaded.meta["steps"] == 10
    assert len(loaded.items) == 4 and loaded.items[1].atom_types.tolist() == d["atom_types"][5:10].tolist()

    (tmp_path / "cifs").mkdir()
    for i, s in enumerate(perov):
        s.to(filename=str(tmp_path / "cifs" / f"{3 - i:02d}.cif"))  # names in reverse order
    loaded = load_crystals(tmp_path / "cifs")
    assert loaded.kind == "cif-folder" and [it.label for it in loaded.items] == ["00.cif", "01.cif", "02.cif", "03.cif"]
    assert build_structure(loaded.items[0])[0].matches(perov[3])

    write(str(tmp_path / "s.extxyz"), [AseAtomsAdaptor.get_atoms(s) for s in perov], format="extxyz")
    loaded = load_crystals(tmp_path / "s.extxyz")
    assert loaded.kind == "extxyz" and len(loaded.items) == 4
    for it, s in zip(loaded.items, perov):
        built, reason = build_structure(it)
        assert reason is None and built.matches(s)


def test_bad_inputs_raise_one_line_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_crystals(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        load_crystals(tmp_path / "empty")
    torch.save({"frac_coords": torch.zeros(3, 3)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError):
        load_crystals(tmp_path / "bad.pt")


def test_table_rows_and_tensor_dict(perov):
    from dpcdvae.evaluation.io import CrystalInput

    items = [CrystalInput(str(i), atom_types=np.array([site.specie.Z for site in s]), frac_coords=s.frac_coords,
                          lengths=np.array(s.lattice.abc), angles=np.array(s.lattice.angles)) for i, s in enumerate(perov)]
    table = records_to_table([evaluate_crystal(it, EvalOptions(fingerprints=False)) for it in items])
    sub = take_rows(table, np.array([2, 0]))
    assert sub["label"].tolist() == ["2", "0"] and sub["atom_ptr"][-1] == sub["atom_types"].shape[0]
    d = table_to_tensor_dict(table, np.array([2, 0]))
    assert d["atom_types"].tolist() == table["atom_types"][table["atom_ptr"][2]:table["atom_ptr"][3]].tolist() + \
        table["atom_types"][:table["atom_ptr"][1]].tolist()
    assert tensor_dict_to_structures(d)[0].matches(perov[2])
