"""Sampling driver: files, CIF round trip, interrupt/resume, sharding (tiny untrained model, CPU)."""

import json

import numpy as np
import pytest
import torch

from dpcdvae.sampling.run import reconstruct, sample


from conftest import load_samples as _load  # noqa: E402


def test_sample_files_and_cif_roundtrip(tiny_model, tmp_path):
    from pymatgen.core import Lattice, Structure
    from pymatgen.io.ase import AseAtomsAdaptor

    res = sample(tiny_model, 7, tmp_path / "s", batch_size=3, steps=5, seed=1, device="cpu", progress=False)
    assert res.num_crystals == 7 and res.batches_run == 3
    s = _load(tmp_path / "s")
    assert s["num_atoms"].shape == (7,) and s["frac_coords"].shape[0] == int(s["num_atoms"].sum())
    cifs = sorted((tmp_path / "s" / "cif").glob("*.cif"))
    assert [c.stem for c in cifs] == [f"{i:06d}" for i in range(7)]
    counts = s["num_atoms"].tolist()
    fr, ty = s["frac_coords"].split(counts), s["atom_types"].split(counts)
    for i, path in enumerate(cifs):
        got = Structure.from_file(path)
        ref = Structure(Lattice.from_parameters(*s["lengths"][i].tolist(), *s["angles"][i].tolist()),
                        [int(z) for z in ty[i]], fr[i].numpy())
        assert len(got) == len(ref)
        np.testing.assert_allclose(got.lattice.matrix, ref.lattice.matrix, atol=1e-5)
        # pymatgen groups sites by species when reading a CIF: compare as sorted site lists
        def sites(st):
            return sorted((sp.Z, *np.round(f % 1.0, 5)) for sp, f in zip(st.species, st.frac_coords))
        assert sites(got) == sites(ref)
    # the extxyz holds the same crystals
    from ase.io import read

    frames = read(tmp_path / "s" / "samples.extxyz", index=":")
    assert len(frames) == 7
    back = AseAtomsAdaptor.get_structure(frames[2])
    ref2 = Structure.from_file(cifs[2])
    np.testing.assert_allclose(back.lattice.matrix, ref2.lattice.matrix, atol=1e-5)
    key = lambda st: sorted((sp.Z, *np.round(c, 4)) for sp, c in zip(st.species, st.cart_coords))  # noqa: E731
    assert key(back) == key(ref2)


def test_interrupt_resume_gives_the_uninterrupted_set(tiny_model, tmp_path):
    full = tmp_path / "full"
    sample(tiny_model, 10, full, batch_size=3, steps=4, seed=7, device="cpu", progress=False)
    part = tmp_path / "part"
    sample(tiny_model, 10, part, batch_size=3, steps=4, seed=7, device="cpu", progress=False)
    # simulate a run killed after 2 of 4 batches: later parts, merged files and CIFs are missing
    for b in (2, 3):
        (part / "parts" / f"part_{b:06d}.pt").unlink()
    (part / "samples.pt").unlink()
    with pytest.raises(ValueError, match="--resume"):
        sample(tiny_model, 10, part, batch_size=3, steps=4, seed=7, device="cpu", progress=False)
    with pytest.raises(ValueError, match="seed differs"):
        sample(tiny_model, 10, part, batch_size=3, steps=4, seed=8, device="cpu", resume=True, progress=False)
    res = sample(tiny_model, 10, part, batch_size=3, steps=4, seed=7, device="cpu", resume=True, progress=False)
    assert res.batches_run == 2 and res.batches_skipped == 2 and res.num_crystals == 10
    a, b = _load(full), _load(part)
    for k in ("frac_coords", "atom_types", "num_atoms", "lengths", "angles"):
        torch.testing.assert_close(a[k], b[k])
    assert len(list((part / "cif").glob("*.cif"))) == 10


def test_sharded_sampling_equals_single_run(tiny_model, tmp_path):
    single = tmp_path / "single"
    sample(tiny_model, 8, single, batch_size=3, steps=3, seed=3, device="cpu", progress=False)
    shard = tmp_path / "shard"
    r1 = sample(tiny_model, 8, shard, batch_size=3, steps=3, seed=3, device="cpu", rank=1, world_size=2,
                progress=False)
    assert not (shard / "samples.pt").exists()  # rank 0 has not finished yet
    r0 = sample(tiny_model, 8, shard, batch_size=3, steps=3, seed=3, device="cpu", rank=0, world_size=2,
                resume=True, progress=False)
    assert r0.num_crystals + r1.num_crystals == 8
    a, b = _load(single), _load(shard)
    for k in ("frac_coords", "atom_types", "num_atoms"):
        torch.testing.assert_close(a[k], b[k])


def test_reconstruct_keeps_pairing(tiny_model, prepared_cache, tmp_path):
    from dpcdvae.data.cache import load_split

    res = reconstruct(tiny_model, tmp_path / "r", split="test", cache_dir=prepared_cache, batch_size=4, steps=3,
                      device="cpu", limit=6, progress=False)
    assert res.num_crystals == 6
    s = _load(tmp_path / "r")
    test = load_split(prepared_cache, "perov_5", "test")
    assert s["index"].tolist() == test.index[:6].tolist()
    meta = json.loads((tmp_path / "r" / "run.json").read_text())
    assert meta["task"] == "reconstruct" and meta["split"] == "test"


def test_reconstruct_start_takes_the_rows_a_cut_run_did_not_reach(tiny_model, prepared_cache, tmp_path):
    """--start 4 --limit 3: rows 4..6 (CIF names too); resuming it with another --start is refused; a start
    past the split's end is refused before any work."""
    from dpcdvae.data.cache import load_split

    res = reconstruct(tiny_model, tmp_path / "r", split="test", cache_dir=prepared_cache, batch_size=2, steps=2,
                      device="cpu", limit=3, start=4, progress=False)
    assert res.num_crystals == 3
    s = _load(tmp_path / "r")
    test = load_split(prepared_cache, "perov_5", "test")
    assert s["index"].tolist() == test.index[4:7].tolist()
    assert sorted(p.name for p in (tmp_path / "r" / "cif").iterdir()) == ["000004.cif", "000005.cif", "000006.cif"]
    assert json.loads((tmp_path / "r" / "run.json").read_text())["start"] == 4
    with pytest.raises(ValueError, match="start differs"):
        reconstruct(tiny_model, tmp_path / "r", split="test", cache_dir=prepared_cache, batch_size=2, steps=2,
                    device="cpu", limit=3, start=3, resume=True, progress=False)
    for bad, msg in ((len(test), "past the test split's last row"), (-1, "--start must be an integer >= 0")):
        with pytest.raises(ValueError, match=msg):
            reconstruct(tiny_model, tmp_path / f"bad{bad}", split="test", cache_dir=prepared_cache, steps=2,
                        device="cpu", start=bad, progress=False)
        assert not (tmp_path / f"bad{bad}" / "run.json").exists()


def test_progress_bar_counts_reverse_steps(tiny_model, tmp_path, capsys):
    sample(tiny_model, 2, tmp_path / "quiet", batch_size=2, steps=3, device="cpu", progress=False)
    assert "reverse steps" not in capsys.readouterr().err
    sample(tiny_model, 4, tmp_path / "s", batch_size=2, steps=3, device="cpu", progress=True)
    err = capsys.readouterr().err
    assert "batches" in err and "reverse steps" in err and "/3" in err
