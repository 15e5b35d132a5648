"""Custom datasets (``data prepare --csv-dir DIR --name NAME``): both layouts, the checks, and
train -> sample -> reconstruct -> evaluate recon on them through the CLI."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dpcdvae.cli import main
from dpcdvae.data.datasets import DATASETS

from test_cli_errors import one_line_error, run

FCC = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
PAIRS = (("Na", "Cl", 5.6), ("Mg", "O", 4.2), ("Li", "F", 4.0), ("K", "Br", 6.6))


def crystals(n: int = 36, seed: int = 0) -> pd.DataFrame:
    """``n`` perturbed rock-salt (8 atoms) and CsCl-type (2 atoms) cubic cells as a CSV frame."""
    from pymatgen.core import Lattice, Structure

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        a_el, b_el, a = PAIRS[i % len(PAIRS)]
        if i % 3 == 2:  # CsCl type
            s = Structure(Lattice.cubic(a * 0.6 * rng.uniform(0.97, 1.03)), [a_el, b_el],
                          [[0, 0, 0], [0.5, 0.5, 0.5]])
        else:
            s = Structure(Lattice.cubic(a * rng.uniform(0.97, 1.03)), [a_el] * 4 + [b_el] * 4,
                          FCC + [[(x + 0.5) % 1, y, z] for x, y, z in FCC])
        s = Structure(s.lattice, s.species, s.frac_coords + rng.normal(0, 0.01, (len(s), 3)))
        rows.append({"material_id": f"x-{i}", "energy": float(rng.normal()), "cif": s.to(fmt="cif")})
    return pd.DataFrame(rows)


@pytest.fixture(autouse=True)
def forget_custom_datasets():
    """Custom datasets registered by a test are removed from the registry afterwards."""
    yield
    for name in [n for n in DATASETS if DATASETS[n].custom]:
        DATASETS.unregister(name)


@pytest.fixture(scope="module")
def frame():
    return crystals()


def test_three_csvs_and_one_csv_with_a_seed(frame, tmp_path, capsys):
    three = tmp_path / "three"
    three.mkdir()
    frame.iloc[:24].to_csv(three / "train.csv", index=False)
    frame.iloc[24:30].to_csv(three / "val.csv", index=False)
    frame.iloc[30:].to_csv(three / "test.csv.gz", index=False)
    cache = tmp_path / "cache"
    rc, out, err = run(capsys, "data", "prepare", "--csv-dir", three, "--name", "mine3", "--cache-dir", cache,
                       "--workers", "1", "--prop", "energy", "--no-progress")
    assert rc == 0, err
    assert "mine3/train: 24 of 24 rows cached" in out and "mine3/test: 6 of 6" in out
    rec = json.loads((cache / "mine3" / "dataset.json").read_text())
    assert rec["layout"] == "splits" and rec["split_files"]["test"] == str((three / "test.csv.gz").resolve())
    assert rec["cov_cutoffs"] == [0.4, 10.0] and rec["prop"] == "energy"
    data = torch.load(cache / "mine3" / "train.pt", weights_only=True)
    assert data["prop_names"] == ["energy"] and data["meta"]["dataset"] == "mine3"

    one = tmp_path / "one"
    one.mkdir()
    frame.to_csv(one / "all.csv", index=False)
    splits = []
    for c in ("c1", "c2"):
        rc, out, err = run(capsys, "data", "prepare", "--csv-dir", one, "--name", "mine1", "--cache-dir",
                           tmp_path / c, "--split-seed", "7", "--split-fractions", "0.7", "0.15", "0.15",
                           "--workers", "1", "--no-progress")
        assert rc == 0, err
        assert "split all.csv with seed 7" in out
        splits.append({s: pd.read_csv(tmp_path / c / "mine1" / "csv" / f"{s}.csv") for s in ("train", "val", "test")})
    rows = {s: splits[0][s]["source_row"].tolist() for s in splits[0]}
    assert rows == {s: splits[1][s]["source_row"].tolist() for s in splits[1]}  # deterministic
    assert sorted(sum(rows.values(), [])) == list(range(len(frame)))            # disjoint, complete
    assert [len(r) for r in rows.values()] == [26, 5, 5]
    assert splits[0]["test"]["cif"].tolist() == frame["cif"].iloc[rows["test"]].tolist()
    rc, _, err = run(capsys, "data", "prepare", "--csv-dir", one / "all.csv", "--name", "mine1", "--cache-dir",
                     tmp_path / "c3", "--split-seed", "8", "--workers", "1", "--no-progress")
    assert rc == 0, err
    other = pd.read_csv(tmp_path / "c3" / "mine1" / "csv" / "test.csv")["source_row"].tolist()
    assert other != rows["test"] and len(other) == 4  # another seed, the default fractions 0.8 0.1 0.1


def test_bad_input_is_one_line_before_any_work(frame, tmp_path, capsys):
    one = tmp_path / "one"
    one.mkdir()
    frame.to_csv(one / "all.csv", index=False)
    nocif = tmp_path / "nocif"
    nocif.mkdir()
    frame.drop(columns="cif").to_csv(nocif / "all.csv", index=False)
    cache = tmp_path / "cache"
    base = ["data", "prepare", "--cache-dir", cache, "--workers", "1", "--no-progress"]
    cases = [
        (["--csv-dir", nocif, "--name", "m", "--split-seed", "0"], "no 'cif' column"),
        (["--csv-dir", tmp_path / "absent", "--name", "m"], "does not exist"),
        (["--csv-dir", one, "--name", "mp_20", "--split-seed", "0"], "built-in dataset"),
        (["--csv-dir", one, "--name", "perovskite", "--split-seed", "0"], "built-in dataset perov_5"),
        (["--csv-dir", one, "--name", "m", "--split-seed", "0", "--split-fractions", "0.8", "0.1", "0.2"],
         "summing to 1"),
        (["--csv-dir", one, "--name", "m"], "pass --split-seed S"),
        (["--csv-dir", one], "needs --name"),
        (["--csv-dir", one, "--name", "m", "--split-seed", "0", "perov_5"], "not both"),
        (["--name", "m"], "options of a custom dataset"),
    ]
    for args, needle in cases:
        rc, _, err = run(capsys, *base, *args)
        one_line_error(rc, err, needle)
    assert not cache.exists()  # nothing was written


def test_train_sample_reconstruct_evaluate_on_a_custom_dataset(frame, tmp_path, capsys):
    mydir = tmp_path / "mydir"
    mydir.mkdir()
    frame.to_csv(mydir / "all.csv", index=False)
    cache = tmp_path / "cache"
    assert run(capsys, "data", "prepare", "--csv-dir", mydir, "--name", "mine", "--cache-dir", cache,
               "--split-seed", "0", "--workers", "1", "--no-progress")[0] == 0
    DATASETS.unregister("mine")  # a fresh process: train finds the dataset through the cache record
    runs = tmp_path / "run"
    rc, _, err = run(capsys, "train", "--config", "tiny", "--set", "data.dataset=mine", "train.max_epochs=1",
                     "data.batch_size=8", "--out", runs, "--cache-dir", cache, "--limit", "16",
                     "--accelerator", "cpu", "--no-progress")
    assert rc == 0, err
    model = runs / "model.pt"
    assert torch.load(model, weights_only=True)["config"]["data"]["dataset"] == "mine"
    rc, _, err = run(capsys, "sample", "--ckpt", model, "--out", tmp_path / "s", "-n", "3", "--steps", "3",
                     "--device", "cpu", "--no-progress")
    assert rc == 0, err
    assert torch.load(tmp_path / "s" / "samples.pt", weights_only=True)["num_atoms"].shape == (3,)
    rec = tmp_path / "r"
    rc, _, err = run(capsys, "reconstruct", "--ckpt", model, "--out", rec, "--split", "test", "--limit", "2",
                     "--steps", "3", "--cache-dir", cache, "--device", "cpu", "--no-progress")
    assert rc == 0, err
    assert torch.load(rec / "samples.pt", weights_only=True)["index"].tolist() == [0, 1]
    DATASETS.unregister("mine")
    for source in ([], ["--source", mydir]):  # ground truth: the record's split CSV (all.csv is not one)
        out = tmp_path / f"recon{len(source)}.json"
        rc, stdout, err = run(capsys, "evaluate", "recon", "--pred", rec, "--dataset", "mine", "--split", "test",
                              *source, "--cache-dir", cache, "--out", out, "--no-report", "--no-fp-check",
                              "--workers", "1", "--no-progress")
        assert rc == 0, err
        res = json.loads(out.read_text())
        assert res["dataset"] == "mine" and res["n_pred"] == 2 and res["n_gt"] == 4
        assert res["ground_truth"]["csv"] == str(cache / "mine" / "csv" / "test.csv")
    rc, _, err = run(capsys, "evaluate", "recon", "--pred", rec, "--dataset", "mine2", "--cache-dir", cache,
                     "--out", tmp_path / "x.json", "--no-report", "--no-progress")
    one_line_error(rc, err, "mine2")


def test_gen_on_a_custom_dataset_uses_the_mp_20_cov_cutoffs(frame, tmp_path, capsys):
    mydir = tmp_path / "mydir"
    mydir.mkdir()
    frame.iloc[:20].to_csv(mydir / "all.csv", index=False)
    cache = tmp_path / "cache"
    assert run(capsys, "data", "prepare", "--csv-dir", mydir, "--name", "mine", "--cache-dir", cache,
               "--split-seed", "0", "--workers", "1", "--no-progress")[0] == 0
    DATASETS.unregister("mine")
    out = tmp_path / "g.json"
    rc, _, err = run(capsys, "evaluate", "gen", "--samples", cache / "mine" / "csv" / "val.csv", "--dataset", "mine",
                     "--cache-dir", cache, "--out", out, "--no-report", "--workers", "1", "--no-progress")
    assert rc == 0, err
    assert "note: mine is a custom dataset: COV cutoffs struct 0.4 / comp 10" in err
    res = json.loads(out.read_text())
    assert (res["settings"]["struct_cutoff"], res["settings"]["comp_cutoff"]) == (0.4, 10.0)
    assert res["ground_truth"]["csv"] == str(cache / "mine" / "csv" / "test.csv")
