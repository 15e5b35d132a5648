"""CSV -> cache preprocessing on small real subsets, bad rows, missing splits, atomic writes."""

import json
import time

import numpy as np
import pandas as pd
import pytest
import torch

from dpcdvae.cli import main
from dpcdvae.data import cache as cache_mod
from dpcdvae.data.cache import load_scalers, load_split, resolve_cache_dir, split_path
from dpcdvae.data.prepare import prepare_dataset
from dpcdvae.data.scalers import lattice_features

LIMIT = 24


@pytest.fixture(scope="module")
def prepared(shared_data, tmp_path_factory):
    """perov_5 and mp_20 (train/val/test) and carbon_24 (val-trained), first LIMIT rows, serial."""
    root = tmp_path_factory.mktemp("cache")
    reports = {
        "perov_5": prepare_dataset("perov_5", shared_data, root, workers=1, limit=LIMIT, progress=False),
        "mp_20": prepare_dataset("mp_20", shared_data, root, workers=1, limit=LIMIT, progress=False),
        "carbon_24": prepare_dataset("carbon_24", shared_data, root, workers=1, limit=LIMIT,
                                     train_split="val", progress=False),
    }
    return root, reports


def test_cache_contents_match_pymatgen_preprocessing(prepared, shared_data):
    from pymatgen.core import Lattice, Structure

    root, _ = prepared
    data = torch.load(split_path(root, "perov_5", "val"), weights_only=True)
    assert data["frac_coords"].dtype == torch.float32 and data["atom_types"].dtype == torch.int64
    assert data["props"].shape == (LIMIT, 4) and data["prop_names"][0] == "heat_ref"
    assert data["index"].tolist() == list(range(LIMIT))
    assert data["meta"]["dataset"] == "perov_5" and data["meta"]["n_rows"] == LIMIT
    assert ((data["frac_coords"] >= 0) & (data["frac_coords"] < 1)).all()

    df = pd.read_csv(shared_data / "perov_5" / "val.csv.gz", nrows=LIMIT, dtype={"material_id": str})
    ds = load_split(root, "perov_5", "val")
    for i in (0, 7, LIMIT - 1):
        s = Structure.from_str(df.cif[i], fmt="cif").get_reduced_structure()
        c = Structure(Lattice.from_parameters(*s.lattice.abc, *s.lattice.angles), s.species, s.frac_coords)
        lo, hi = ds.ptr[i], ds.ptr[i + 1]
        assert ds.atom_types[lo:hi].tolist() == list(c.atomic_numbers)
        diff = ds.frac_coords[lo:hi].double().numpy() - c.frac_coords
        assert np.abs(diff - np.round(diff)).max() < 1e-6
        assert np.allclose(ds.lengths[i].numpy(), c.lattice.abc, atol=1e-4)
        assert np.allclose(ds.angles[i].numpy(), c.lattice.angles, atol=1e-4)
        assert ds.props[i, 0].item() == pytest.approx(df.heat_ref[i], rel=1e-6)
        assert ds.material_ids[i] == df.material_id[i]


def test_every_split_loads_fast_with_weights_only(prepared):
    root, reports = prepared
    for dataset, rep in reports.items():
        for split in rep.splits:
            t = time.perf_counter()
            data = torch.load(split_path(root, dataset, split), weights_only=True)
            assert time.perf_counter() - t < 2.0
            assert int(data["num_atoms"].sum()) == data["frac_coords"].shape[0]
            assert data["meta"]["label"] == rep.label
        assert json.loads((root / dataset / "report.json").read_text())["dataset"] == dataset


def test_scalers_fitted_on_train_only(prepared):
    root, _ = prepared
    train = load_split(root, "perov_5", "train")
    val = load_split(root, "perov_5", "val")
    sc = load_scalers(root, "perov_5")
    feats = lattice_features(train.lengths.double(), train.angles.double(), train.num_atoms)
    assert torch.allclose(sc.lattice.mean.double(), feats.mean(0), atol=1e-5)
    assert torch.allclose(sc.lattice.std.double(), feats.std(0, unbiased=False) + 1e-5, atol=1e-5)
    heat = train.props[:, 0].double()
    assert sc.prop("heat_ref").mean.item() == pytest.approx(heat.mean().item(), rel=1e-5)
    assert sc.prop("heat_ref").std.item() == pytest.approx(heat.std(unbiased=False).item() + 1e-5, rel=1e-5)
    vfeats = lattice_features(val.lengths.double(), val.angles.double(), val.num_atoms)
    assert not torch.allclose(sc.lattice.mean.double(), vfeats.mean(0), atol=1e-3)
    assert sc.train_split == "train" and sc.n_train == LIMIT


def test_val_trained_label_and_missing_train_message(prepared, shared_data):
    root, reports = prepared
    rep = reports["carbon_24"]
    assert rep.label == "carbon_24 (val-trained)" and set(rep.splits) == {"val", "test"}
    assert any("split 'train' not found" in m for m in rep.messages)
    sc = load_scalers(root, "carbon_24")
    assert sc.train_split == "val" and sc.label == "carbon_24 (val-trained)"
    val = load_split(root, "carbon_24", "val")
    assert val.meta["label"] == "carbon_24 (val-trained)"
    e = val.props[:, 0].double()
    assert sc.prop("energy_per_atom").mean.item() == pytest.approx(e.mean().item(), rel=1e-5)

    # default train split on carbon_24: one message with the fix, no crash, no scalers
    rep2 = prepare_dataset("carbon_24", shared_data, root / "c2", splits=("train",), workers=1, limit=4,
                           progress=False)
    assert rep2.splits == {} and not rep2.scalers_written
    line = next(m for m in rep2.messages if "not found" in m)
    assert line == (f"carbon_24: split 'train' not found in {shared_data / 'carbon_24'}; "
                    "use --train-split val to train on val")


def test_mp20_train_without_properties(prepared):
    root, reports = prepared
    sc = load_scalers(root, "mp_20")
    assert sc.prop_counts[0] == 0 and torch.isnan(sc.props.mean[0])
    with pytest.raises(ValueError, match="no values"):
        sc.prop("formation_energy_per_atom")
    assert torch.isnan(load_split(root, "mp_20", "train").props).all()
    assert torch.isfinite(load_split(root, "mp_20", "val").props[:, 0]).all()


def _bad_csv(shared_data, tmp_path):
    df = pd.read_csv(shared_data / "perov_5" / "test.csv.gz", nrows=6)
    good = df.cif[0]
    lines = good.splitlines()
    k = next(i for i, line in enumerate(lines) if len(line.split()) == 7 and line.split()[-1] == "1")
    lines[k] = "  " + "  ".join(["Xx", "Xx0", *lines[k].split()[2:]])
    df.loc[1, "cif"] = good[: len(good) // 3]  # truncated CIF
    df.loc[2, "cif"] = "\n".join(lines) + "\n"  # unknown element
    # 3 x 3 x 3 supercell: 5 * 27 = 135 atoms > max_atoms 20
    from pymatgen.core import Structure

    big = Structure.from_str(good, fmt="cif")
    big.make_supercell([3, 3, 3])
    df.loc[4, "cif"] = big.to(fmt="cif")
    df.loc[5, "cif"] = "not a cif at all"
    src = tmp_path / "src"
    (src / "perov_5").mkdir(parents=True)
    df.to_csv(src / "perov_5" / "train.csv", index=False)
    return src


def test_bad_rows_are_counted_with_reasons(shared_data, tmp_path):
    src = _bad_csv(shared_data, tmp_path)
    rep = prepare_dataset("perov_5", src, tmp_path / "cache", splits=("train", "val"), workers=1, progress=False)
    tr = rep.splits["train"]
    assert (tr.n_rows, tr.n_ok, tr.n_skipped) == (6, 2, 4)
    assert tr.skip_counts == {"cif_parse": 2, "element": 1, "too_many_atoms": 1}
    reasons = {s["row"]: s["reason"] for s in tr.skipped}
    assert set(reasons) == {1, 2, 4, 5}
    assert "Xx" in reasons[2] and "135 atoms > max_atoms 20" in reasons[4]
    assert any("split 'val' not found" in m for m in rep.messages)
    ds = load_split(tmp_path / "cache", "perov_5", "train")
    assert ds.index.tolist() == [0, 3] and ds.meta["n_skipped"] == 4
    saved = json.loads((tmp_path / "cache" / "perov_5" / "report.json").read_text())
    assert saved["splits"]["train"]["skip_counts"] == tr.skip_counts


def test_atomic_write_leaves_no_partial_file(prepared, tmp_path, monkeypatch):
    root, _ = prepared
    path = split_path(root, "perov_5", "test")
    before = path.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(cache_mod.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        cache_mod.save_split_dict(path, {"x": 1})
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir() if p.name.startswith(".")) == []
    with pytest.raises(OSError):
        cache_mod.save_split_dict(tmp_path / "new" / "val.pt", {"x": 1})
    assert list((tmp_path / "new").iterdir()) == []


def test_process_pool_and_cli(shared_data, tmp_path, capsys):
    rc = main(["data", "prepare", "perov_5", "--source", str(shared_data), "--cache-dir", str(tmp_path),
               "--workers", "2", "--splits", "val", "--limit", "40", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0 and "perov_5/val: 40 of 40 rows cached, 0 skipped" in out
    serial = prepare_dataset("perov_5", shared_data, tmp_path / "serial", splits=("val",), workers=1,
                             limit=40, progress=False)
    a = torch.load(split_path(tmp_path, "perov_5", "val"), weights_only=True)
    b = torch.load(split_path(tmp_path / "serial", "perov_5", "val"), weights_only=True)
    assert serial.splits["val"].n_ok == 40
    for k in cache_mod.TENSOR_KEYS:
        assert torch.equal(a[k], b[k]) or torch.allclose(a[k], b[k], equal_nan=True), k


def test_errors_are_one_line(shared_data, tmp_path, capsys):
    assert main(["data", "prepare", "perov_5", "--source", str(tmp_path), "--cache-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dpcdvae: error: no folder") and "\n" not in err
    with pytest.raises(ValueError, match="unknown dataset"):
        prepare_dataset("qm9", shared_data, tmp_path)


def test_resolve_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("DPCDVAE_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_cache_dir(None) == tmp_path / "env"
    monkeypatch.delenv("DPCDVAE_CACHE")
    assert resolve_cache_dir(None).parts[-2:] == (".cache", "dpcdvae")
