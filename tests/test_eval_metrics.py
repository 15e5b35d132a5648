"""Metric formulas (COV, W distances, recon matching) on hand-made inputs with known answers."""

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("matminer")

from dpcdvae.evaluation.fingerprints import comp_scaler, normalise_comp_fps  # noqa: E402
from dpcdvae.evaluation.io import CrystalInput  # noqa: E402
from dpcdvae.evaluation.metrics import (choose_subset, coverage, lattice_rms, mean_pdist, min_distances,  # noqa: E402
                                        recon_summary, wasserstein)
from dpcdvae.evaluation.worker import EvalOptions, match_pair  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LENGTHS = np.array([4.0, 5.0, 6.0])
FRAC = np.array([[0.1, 0.2, 0.3], [0.6, 0.45, 0.8], [0.35, 0.85, 0.55]])
TYPES = np.array([3, 8, 11])  # Li O Na: three distinct species, generic positions (primitive, no symmetry)


def _crystal(frac: np.ndarray, label: str = "x") -> CrystalInput:
    return CrystalInput(label, atom_types=TYPES, frac_coords=frac, lengths=LENGTHS, angles=np.array([90.0] * 3))


def test_identical_structures_match_with_zero_rms():
    rec = match_pair((_crystal(FRAC), _crystal(FRAC)), EvalOptions(fingerprints=False))
    assert rec["matched"] and rec["rms"] == pytest.approx(0.0, abs=1e-10)
    assert np.allclose(rec["d_lengths"], 0) and np.allclose(rec["d_angles"], 0)


def test_perturbed_copy_has_hand_computed_rms():
    disp = np.array([[0.05, 0.0, 0.0], [0.0, -0.04, 0.03], [0.02, 0.02, -0.06]])  # Cartesian, Å
    pred = _crystal(FRAC + disp / LENGTHS)
    # RMS of the displacements after removing their mean (the best translation), normalised by
    # (V / N)^(1/3)
    resid = disp - disp.mean(axis=0)
    expected = np.sqrt((resid ** 2).sum(axis=1).mean()) / (LENGTHS.prod() / 3) ** (1 / 3)
    rec = match_pair((pred, _crystal(FRAC)), EvalOptions(fingerprints=False))
    assert rec["matched"] and rec["rms"] == pytest.approx(expected, rel=1e-6)


def test_invalid_prediction_is_not_matched():
    overlap = FRAC.copy()
    overlap[1] = overlap[0] + 0.01
    rec = match_pair((_crystal(overlap), _crystal(FRAC)), EvalOptions(fingerprints=False))
    assert not rec["valid"] and not rec["matched"] and np.isnan(rec["rms"])
    assert np.isnan(rec["d_lengths"]).all()


def test_recon_summary_counts_all_ground_truth():
    # 4 predictions for ground-truth rows 0, 1, 1, 3 of a split with 5 crystals
    out = recon_summary(np.array([0, 1, 1, 3]), np.array([True, False, True, False]),
                        np.array([0.1, np.nan, 0.3, np.nan]), n_gt=5)
    assert out["match_rate"] == pytest.approx(2 / 5)
    assert out["rms_dist"] == pytest.approx(0.2)
    assert out["match_rate_over_predicted"] == pytest.approx(2 / 3)
    assert lattice_rms(np.array([[3.0, 4.0, np.nan]])) == pytest.approx(np.sqrt(12.5))


def test_coverage_of_a_set_against_itself_is_complete():
    rng = np.random.default_rng(0)
    s, c = rng.random((50, 61)), rng.normal(size=(50, 132)) * 5
    cov = coverage(s, c, s, c, struct_cutoff=0.2, comp_cutoff=4.0)
    assert cov["cov_recall"] == 1.0 and cov["cov_precision"] == 1.0
    assert cov["amsd_recall"] == 0.0 and cov["amcd_precision"] == 0.0


def test_coverage_semantics():
    # generated: g0 near gt0 in structure only, g1 near gt0 in composition only, g2 far away.
    gt_s, gt_c = np.array([[0.0, 0.0], [10.0, 10.0]]), np.array([[0.0], [50.0]])
    gen_s = np.array([[0.1, 0.0], [5.0, 5.0], [20.0, 20.0]])
    gen_c = np.array([[30.0], [1.0], [100.0]])
    cov = coverage(gen_s, gen_c, gt_s, gt_c, struct_cutoff=0.2, comp_cutoff=4.0, num_gen=6)
    # recall: gt0's nearest structure (g0) and nearest composition (g1) are checked separately
    assert cov["cov_recall"] == pytest.approx(0.5)
    # precision: no generated crystal is within both cutoffs; denominator is num_gen (6)
    assert cov["cov_precision"] == 0.0
    cov = coverage(gen_s[:1], np.array([[2.0]]), gt_s, gt_c, 0.2, 4.0, num_gen=4)
    assert cov["cov_precision"] == pytest.approx(1 / 4)
    assert cov["amsd_precision"] == pytest.approx(0.1)


def test_min_distances_chunked_equals_full():
    from scipy.spatial.distance import cdist

    rng = np.random.default_rng(2)
    a, b = rng.random((37, 5)), rng.random((11, 5))
    r, c = min_distances(a, b, chunk=8)
    d = cdist(a, b)
    assert np.allclose(r, d.min(1)) and np.allclose(c, d.min(0))


def test_wasserstein_and_diversity():
    x = np.array([1.0, 2.0, 2.5, 7.0])
    assert wasserstein(x, x) == 0.0
    assert wasserstein(x, x + 1.5) == pytest.approx(1.5)
    assert mean_pdist(np.array([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)
    rows = choose_subset(np.arange(100), 10, seed=3)
    assert rows.size == 10 and np.array_equal(rows, choose_subset(np.arange(100), 10, seed=3))
    assert np.array_equal(choose_subset(np.arange(5), 10, seed=0), np.arange(5))


def test_comp_scaler_shipped_and_nan_to_zero():
    means, stds = comp_scaler()
    assert means.shape == (132,) and stds.shape == (132,) and (stds > 0).all()
    shared = REPO.parent / "shared" / "data" / "magpie_comp_scaler.json"
    if shared.is_file():
        ref = json.loads(shared.read_text())
        assert np.array_equal(means, ref["means"]) and np.array_equal(stds, ref["stds"])
    fp = means.copy()[None]
    fp[0, 3] = np.nan
    out = normalise_comp_fps(fp)
    assert np.allclose(out, 0.0)


def test_property_wdist_calls_the_predictor_contract(tmp_path, monkeypatch):
    import sys
    import types

    import torch

    from dpcdvae.evaluation.gen import property_wdist
    from dpcdvae.evaluation.worker import evaluate_crystal, records_to_table

    calls = []

    def fake_predict(ckpt_path, structures, batch_size=256, device="cpu"):
        calls.append(structures)
        assert set(structures) == {"frac_coords", "atom_types", "num_atoms", "lengths", "angles"}
        assert structures["frac_coords"].dtype == torch.float32 and structures["atom_types"].dtype == torch.int64
        assert int(structures["num_atoms"].sum()) == structures["frac_coords"].shape[0]
        return structures["lengths"][:, 0].numpy()  # a stand-in "property": the a lattice length

    monkeypatch.setitem(sys.modules, "dpcdvae.models.property", types.SimpleNamespace(predict_property=fake_predict))
    opts = EvalOptions(fingerprints=False)
    gen = records_to_table([evaluate_crystal(CrystalInput(str(a), TYPES, FRAC, np.array([a, 5.0, 6.0]),
                                                          np.array([90.0] * 3)), opts) for a in (4.0, 4.5, 5.0)])
    gt = records_to_table([evaluate_crystal(CrystalInput(str(a), TYPES, FRAC, np.array([a, 5.0, 6.0]),
                                                         np.array([90.0] * 3)), opts) for a in (4.0, 6.0)])
    ckpt = tmp_path / "prop.ckpt"
    ckpt.write_bytes(b"x")
    res, gen_p, gt_p = property_wdist(ckpt, gen, np.array([0, 2]), gt)
    assert len(calls) == 2 and np.allclose(gen_p, [4.0, 5.0]) and np.allclose(gt_p, [4.0, 6.0])
    assert res["wdist_prop"] == pytest.approx(wasserstein(np.array([4.0, 5.0]), np.array([4.0, 6.0])))
    # ground-truth predictions cached on disk: the second call predicts the generated crystals only
    res1, _, _ = property_wdist(ckpt, gen, np.array([0, 2]), gt, gt_cache=tmp_path / "c")
    res2, _, gt_p2 = property_wdist(ckpt, gen, np.array([0, 2]), gt, gt_cache=tmp_path / "c")
    assert len(calls) == 5 and not res1["gt_predictions_cached"] and res2["gt_predictions_cached"]
    assert np.allclose(gt_p2, [4.0, 6.0]) and res2["wdist_prop"] == res["wdist_prop"]
    res, _, _ = property_wdist(None, gen, np.array([0]), gt)
    assert res["wdist_prop"] is None and "prop-ckpt" in res["reason"]
    with pytest.raises(FileNotFoundError):
        property_wdist(tmp_path / "missing.ckpt", gen, np.array([0]), gt)
