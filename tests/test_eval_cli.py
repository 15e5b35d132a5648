"""End-to-end ``dpcdvae evaluate gen|recon`` on a tiny copy of the perov_5 test split."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("pymatgen")
pytest.importorskip("matminer")
pytest.importorskip("matplotlib")

from dpcdvae.cli import main  # noqa: E402


@pytest.fixture(scope="module")
def tiny_source(shared_data, tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    (root / "perov_5").mkdir()
    frame = pd.read_csv(shared_data / "perov_5" / "test.csv.gz").iloc[:6]
    frame.to_csv(root / "perov_5" / "test.csv.gz", index=False)
    return root


@pytest.fixture(scope="module")
def gt_samples(tiny_source, tmp_path_factory):
    """samples.pt holding the preprocessed ground truth itself (reversed order, with index)."""
    from dpcdvae.evaluation.io import build_structure, read_csv_structures, structures_to_tensor_dict

    items = read_csv_structures(tiny_source / "perov_5" / "test.csv.gz").items
    structures = [build_structure(it)[0] for it in items][::-1]
    d = structures_to_tensor_dict(structures)
    d["index"] = torch.arange(len(items) - 1, -1, -1)
    d["meta"] = {"dataset": "perov_5", "split": "test"}
    folder = tmp_path_factory.mktemp("samples")
    torch.save(d, folder / "samples.pt")
    return folder


def test_gen_of_the_ground_truth_against_itself(tiny_source, gt_samples, tmp_path):
    out = tmp_path / "gen.json"
    args = ["evaluate", "gen", "--samples", str(gt_samples), "--dataset", "perov_5", "--source", str(tiny_source),
            "--out", str(out), "--workers", "1", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert main(args) == 0
    res = json.loads(out.read_text())
    n_valid = res["validity"]["n_valid"]
    assert res["validity"]["n_total"] == 6 and n_valid >= 4
    assert res["coverage"]["cov_recall"] == 1.0 and res["coverage"]["cov_precision"] == 1.0
    assert res["coverage"]["amsd_recall"] == pytest.approx(0.0, abs=1e-5)
    # W distances compare the valid samples with ALL ground truth; with everything valid they vanish
    if n_valid == 6:
        assert res["wdist"]["wdist_density"] == pytest.approx(0.0, abs=1e-5)
    assert res["wdist"]["wdist_prop"] is None and "prop-ckpt" in res["wdist"]["reason"]
    assert res["settings"]["oxidation_states"] == "smact14" and res["wdist"]["seed"] == 0
    assert not res["ground_truth"]["cache_hit"]
    report = tmp_path / "gen_report"
    assert (report / "report.md").is_file() and (report / "distributions.png").is_file()
    assert (report / "validity.png").is_file() and (report / "lattice.png").is_file()
    # second run: ground-truth fingerprints come from the cache, same numbers
    assert main(args + ["--no-report"]) == 0
    res2 = json.loads(out.read_text())
    assert res2["ground_truth"]["cache_hit"] and res2["coverage"] == res["coverage"]
    # ... and so do the samples' (keyed by their content: a changed crystal is scored again)
    assert not res["input"]["cache_hit"] and res2["input"]["cache_hit"]
    assert res2["validity"] == res["validity"]
    d = torch.load(gt_samples / "samples.pt", weights_only=True)
    d["frac_coords"][0] += 0.01
    changed = tmp_path / "changed"
    changed.mkdir()
    torch.save(d, changed / "samples.pt")
    assert main([str(changed) if a == str(gt_samples) else a for a in args] + ["--no-report"]) == 0
    assert not json.loads(out.read_text())["input"]["cache_hit"]


def test_recon_of_the_ground_truth(tiny_source, gt_samples, tmp_path):
    out = tmp_path / "recon.json"
    assert main(["evaluate", "recon", "--pred", str(gt_samples), "--dataset", "perov_5", "--source", str(tiny_source),
                 "--out", str(out), "--workers", "1", "--no-progress", "--no-report"]) == 0
    res = json.loads(out.read_text())
    valid = res["validity"]["n_valid"]
    assert res["match_rate"] == pytest.approx(valid / 6)
    assert res["rms_dist"] == pytest.approx(0.0, abs=1e-4)
    assert res["rms_lengths"] == pytest.approx(0.0, abs=1e-4)
    assert "index" in res["input"]["pairing"]


def test_recon_rows_below_scores_the_same_first_rows(tiny_source, gt_samples, tmp_path, capsys):
    """--rows-below 3: only the predictions of rows 0..2, against those 3 rows (match rate of a subset)."""
    out = tmp_path / "recon3.json"
    base = ["evaluate", "recon", "--pred", str(gt_samples), "--dataset", "perov_5", "--source", str(tiny_source),
            "--workers", "1", "--no-progress", "--no-report"]
    assert main(base + ["--out", str(out), "--rows-below", "3"]) == 0
    res = json.loads(out.read_text())
    assert res["n_gt"] == 3 and res["n_pred"] == 3 and res["ground_truth"]["rows_below"] == 3
    assert res["match_rate"] == pytest.approx(res["validity"]["n_valid"] / 3)
    assert "rows < 3" in res["input"]["pairing"] and "warnings" not in res
    for bad in ("0", "7"):
        rc = main(base + ["--out", str(tmp_path / f"bad{bad}.json"), "--rows-below", bad])
        _one_line_error(rc, capsys.readouterr().err, "--rows-below must be in 1..6")


def test_recon_of_two_runs_scores_as_one(tiny_source, gt_samples, tmp_path, capsys):
    """Two runs (rows 0..3 and 4..5, as a cut-short run plus a `reconstruct --start 4` run) score exactly
    like one run of all six; a row in both, or a run without index, is refused in one line."""
    d = torch.load(gt_samples / "samples.pt", weights_only=True)
    counts = d["num_atoms"].tolist()
    starts = np.concatenate([[0], np.cumsum(counts)])

    def subset(rows, name):
        pos = [int(np.where(d["index"].numpy() == r)[0][0]) for r in rows]
        atoms = torch.cat([torch.arange(starts[p], starts[p + 1]) for p in pos])
        part = {"frac_coords": d["frac_coords"][atoms], "atom_types": d["atom_types"][atoms],
                "num_atoms": d["num_atoms"][pos], "lengths": d["lengths"][pos], "angles": d["angles"][pos],
                "index": torch.tensor(rows), "meta": {"split": "test"}}
        torch.save(part, tmp_path / name)
        return str(tmp_path / name)

    a, b = subset([0, 1, 2, 3], "a.pt"), subset([5, 4], "b.pt")
    base = ["evaluate", "recon", "--dataset", "perov_5", "--source", str(tiny_source), "--workers", "1",
            "--no-progress", "--no-report"]
    assert main(base + ["--pred", str(gt_samples), "--out", str(tmp_path / "one.json")]) == 0
    two_args = base[:-1] + ["--pred", a, "--pred", b, "--out", str(tmp_path / "two.json")]  # with the report
    assert main(two_args) == 0
    assert f"- input: `{a}`, `{b}` (samples.pt)" in (tmp_path / "two_report" / "report.md").read_text()
    one, two = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "two.json"))
    assert two["n_pred"] == 6 and two["n_gt"] == 6 and "warnings" not in two
    for key in ("match_rate", "rms_dist", "rms_lengths", "validity"):
        assert two[key] == one[key], key
    assert two["input"]["path"] == [a, b] and "2 samples.pt runs (4, 2 crystals)" in two["input"]["note"]
    c = subset([3, 4], "c.pt")
    rc = main(base + ["--pred", a, "--pred", c, "--out", str(tmp_path / "dup.json")])
    _one_line_error(rc, capsys.readouterr().err, "ground-truth row 3 is predicted by both")
    d_noidx = {k: v for k, v in torch.load(b, weights_only=True).items() if k != "index"}
    torch.save(d_noidx, tmp_path / "noidx.pt")
    rc = main(base + ["--pred", a, "--pred", str(tmp_path / "noidx.pt"), "--out", str(tmp_path / "noidx.json")])
    _one_line_error(rc, capsys.readouterr().err, "must each be a samples.pt with an index")
    assert not (tmp_path / "dup.json").exists() and not (tmp_path / "noidx.json").exists()


def test_cli_errors_are_one_line(tiny_source, tmp_path, capsys):
    rc = main(["evaluate", "gen", "--samples", str(tmp_path / "nope"), "--dataset", "perov_5",
               "--source", str(tiny_source), "--out", str(tmp_path / "x.json"), "--workers", "1"])
    assert rc == 1 and "does not exist" in capsys.readouterr().err
    rc = main(["evaluate", "gen", "--samples", str(tmp_path), "--dataset", "unknown_set",
               "--source", str(tiny_source), "--out", str(tmp_path / "x.json"), "--workers", "1"])
    assert rc == 1 and "cutoff" in capsys.readouterr().err


def test_process_pool_gives_the_same_records(tiny_source):
    from dpcdvae.evaluation.gen import evaluate_items
    from dpcdvae.evaluation.io import read_csv_structures
    from dpcdvae.evaluation.worker import EvalOptions, LazyPool

    items = read_csv_structures(tiny_source / "perov_5" / "test.csv.gz", rows=np.arange(4)).items
    with LazyPool(1) as pool:
        serial = evaluate_items(items, EvalOptions(), pool, False, "")
    with LazyPool(2, start_method="fork") as pool:  # fork: reuses this process's imports (fast test)
        pooled = evaluate_items(items, EvalOptions(), pool, False, "")
        assert pool._executor is not None
    for key in ("valid", "struct_fp", "comp_fp", "density", "label"):
        assert np.array_equal(serial[key], pooled[key], equal_nan=key != "label")


def _one_line_error(rc, err, *needles):
    lines = err.strip().splitlines()
    assert rc == 1 and "Traceback" not in err and len(lines) == 1 and lines[0].startswith("dpcdvae: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture
def no_fingerprints(monkeypatch):
    """Fail the test if the (slow) evaluation starts."""
    import dpcdvae.evaluation.gen as gen

    def boom(*a, **k):
        raise AssertionError("fingerprinting started before the arguments were checked")

    monkeypatch.setattr(gen, "evaluate_csv_cached", boom)
    monkeypatch.setattr(gen, "evaluate_items", boom)


def test_gen_checks_prop_ckpt_and_out_before_fingerprinting(tiny_source, gt_samples, tmp_path, capsys,
                                                             no_fingerprints):
    base = ["evaluate", "gen", "--samples", str(gt_samples), "--dataset", "perov_5", "--source", str(tiny_source),
            "--workers", "1", "--no-cache", "--no-progress"]
    rc = main(base + ["--out", str(tmp_path / "m.json"), "--prop-ckpt", str(tmp_path / "nope.pt")])
    _one_line_error(rc, capsys.readouterr().err, "--prop-ckpt", "nope.pt not found")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    rc = main(base + ["--out", str(a_file / "m.json")])
    _one_line_error(rc, capsys.readouterr().err, "is a file, not a folder")
    rc = main(base + ["--out", str(tmp_path)])
    _one_line_error(rc, capsys.readouterr().err, "is a folder")
    rc = main(base + ["--out", str(tmp_path / "m.json"), "--report", str(a_file)])
    _one_line_error(rc, capsys.readouterr().err, "--report", "is a file")
    if os.geteuid() != 0:  # root ignores permissions
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        rc = main(base + ["--out", str(ro / "sub" / "m.json")])
        ro.chmod(0o700)
        _one_line_error(rc, capsys.readouterr().err, "permission denied")
    assert not (tmp_path / "m.json").exists()


def test_unknown_dataset_is_said_first(tiny_source, tmp_path, capsys, no_fingerprints):
    rc = main(["evaluate", "gen", "--samples", str(tmp_path / "nope"), "--dataset", "perov5x",
               "--source", str(tiny_source), "--out", str(tmp_path / "x.json")])
    _one_line_error(rc, capsys.readouterr().err, "unknown dataset 'perov5x'", "perov_5")
    rc = main(["evaluate", "recon", "--pred", str(tmp_path / "nope"), "--dataset", "perov5x",
               "--source", str(tiny_source), "--out", str(tmp_path / "x.json")])
    _one_line_error(rc, capsys.readouterr().err, "unknown dataset 'perov5x'", "perov_5")


def test_a_garbage_cif_is_named_with_its_reason(tiny_source, tmp_path, capsys):
    from pymatgen.io.cif import CifWriter

    from dpcdvae.evaluation.io import build_structure, read_csv_structures

    folder = tmp_path / "cifs"
    folder.mkdir()
    for i, item in enumerate(read_csv_structures(tiny_source / "perov_5" / "test.csv.gz").items[:2]):
        CifWriter(build_structure(item)[0]).write_file(folder / f"good_{i}.cif")
    (folder / "garbage.cif").write_text("this is not a CIF\n")
    out = tmp_path / "gen.json"
    rc = main(["evaluate", "gen", "--samples", str(folder), "--dataset", "perov_5", "--source", str(tiny_source),
               "--out", str(out), "--workers", "1", "--no-cache", "--no-progress", "--no-report", "--n-wdist", "2"])
    err = capsys.readouterr().err
    assert rc == 0 and "Traceback" not in err
    bad = [ln for ln in err.splitlines() if "garbage.cif" in ln]
    assert len(bad) == 1 and bad[0].startswith("warning: garbage.cif: cannot read this CIF (") and "invalid" in bad[0]
    assert not any("good_" in ln for ln in err.splitlines())
    res = json.loads(out.read_text())
    assert res["validity"]["n_total"] == 3 and any("garbage.cif" in w for w in res["warnings"])


def test_many_unreadable_cifs_end_with_a_summary_line():
    from dpcdvae.evaluation.io import CrystalInput, unparsable_cif_warnings

    items = [CrystalInput(label=f"{i}.cif", cif="junk") for i in range(5)] + [CrystalInput(label="ok.pt")]
    table = {"reasons": np.array(["cif_parse_error|composition_invalid"] * 5 + ["cif_parse_error"])}
    lines = unparsable_cif_warnings(items, table, limit=3)
    assert len(lines) == 4 and lines[0].startswith("0.cif: cannot read this CIF (")
    assert lines[-1].startswith("2 more unreadable CIF files, e.g. 3.cif")
