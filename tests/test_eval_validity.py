"""Validity rules of the evaluation suite on hand-made crystals with known answers."""

import itertools

import numpy as np
import pytest

pytest.importorskip("pymatgen")
pytest.importorskip("smact")

from dpcdvae.evaluation.io import CrystalInput, build_structure  # noqa: E402
from dpcdvae.evaluation.validity import composition_validity, structure_validity  # noqa: E402
from dpcdvae.evaluation.worker import EvalOptions, evaluate_crystal  # noqa: E402

NACL_FRAC = np.array([[0, 0, 0], [0.5, 0.5, 0.5]])


def rocksalt_primitive(a: float = 5.64) -> CrystalInput:
    """NaCl primitive cell (fcc lattice, 2 atoms)."""
    l = a / np.sqrt(2)
    return CrystalInput("nacl", atom_types=np.array([11, 17]), frac_coords=NACL_FRAC,
                        lengths=np.array([l, l, l]), angles=np.array([60.0, 60.0, 60.0]))


def _reference_validity(atom_types, oxset: str, missing: str) -> bool:
    """CDVAE's smact_validity loop, transcribed literally (itertools.product + smact.neutral_ratios +
    the CDVAE-era Pauling test whose TypeError counts as a pass)."""
    import smact
    from pymatgen.core.periodic_table import Element
    from smact.screening import pauling_test

    z, counts = np.unique(atom_types, return_counts=True)
    counts = counts // np.gcd.reduce(counts)
    syms = [Element.from_Z(int(a)).symbol for a in z]
    els = [smact.Element(s) for s in syms]
    eneg = [e.pauling_eneg for e in els]
    ox = [getattr(e, f"oxidation_states_{oxset}") or [] for e in els]
    if len(syms) == 1 or all(s in smact.metals for s in syms):
        return True
    for combo in itertools.product(*ox):
        if not smact.neutral_ratios(combo, stoichs=[(int(c),) for c in counts], threshold=int(counts.max())):
            continue
        if missing == "fail":
            ok = pauling_test(combo, eneg)
        else:
            try:
                ok = True
                for (o1, e1), (o2, e2) in itertools.combinations(list(zip(combo, eneg)), 2):
                    if ((o1 > 0) and (o2 < 0) and (e1 >= e2)) or ((o1 < 0) and (o2 > 0) and (e1 <= e2)):
                        ok = False
                        break
            except TypeError:
                ok = True
        if ok:
            return True
    return False


def test_known_compositions():
    assert composition_validity([11, 17])  # NaCl
    assert not composition_validity([11, 17, 17])  # NaCl2
    assert composition_validity([11, 11, 17, 17])  # Na2Cl2 reduces to NaCl
    assert composition_validity([6] * 7)  # single element
    assert composition_validity([26, 28, 28])  # all-metal alloy FeNi2
    assert composition_validity([8, 8, 22])  # TiO2
    assert not composition_validity([8, 11, 11, 11])  # Na3O
    assert not composition_validity([11, 2])  # Na-He: He has no oxidation states
    assert not composition_validity([])


def test_missing_electronegativity_modes():
    # Pm has no Pauling electronegativity: CDVAE counted the TypeError as a pass, smact 4 fails it.
    pm_cl3 = [61, 17, 17, 17]
    assert composition_validity(pm_cl3, pauling_missing="pass")
    assert not composition_validity(pm_cl3, pauling_missing="fail")
    with pytest.raises(ValueError):
        composition_validity(pm_cl3, oxidation_states="nope")


def test_vectorised_equals_cdvae_loop():
    rng = np.random.default_rng(1)
    pool = list(range(1, 84)) + [2, 10, 18, 61, 86]
    for _ in range(150):
        k = int(rng.integers(2, 5))
        z = rng.choice(pool, k, replace=False)
        at = np.repeat(z, rng.integers(1, 6, k))
        for oxset in ("smact14", "icsd24"):
            for missing in ("pass", "fail"):
                assert composition_validity(at, oxset, missing) == _reference_validity(at, oxset, missing), (z, oxset)


def test_structure_validity_rules():
    s, reason = build_structure(rocksalt_primitive())
    assert reason is None and structure_validity(s) == (True, None)
    # two atoms 0.3 Å apart through the periodic boundary (0.01 and 0.97 of a 5 Å cubic cell)
    close = CrystalInput("close", atom_types=np.array([11, 17]), frac_coords=np.array([[0.01, 0, 0], [0.97, 0, 0]]),
                         lengths=np.array([5.0, 5.0, 5.0]), angles=np.array([90.0, 90.0, 90.0]))
    s, reason = build_structure(close)
    assert reason is None and structure_validity(s) == (False, "atoms_too_close")
    s, reason = build_structure(CrystalInput("tiny", atom_types=np.array([6]), frac_coords=np.zeros((1, 3)),
                                             lengths=np.array([0.4, 0.4, 0.4]), angles=np.array([90.0] * 3)))
    assert reason == "small_volume"


def test_unbuildable_inputs_have_reasons():
    base = rocksalt_primitive()
    neg = CrystalInput("neg", base.atom_types, base.frac_coords, np.array([-1.0, 4.0, 4.0]), base.angles)
    assert build_structure(neg) == (None, "non_positive_lattice")
    nan = CrystalInput("nan", base.atom_types, np.array([[np.nan, 0, 0], [0.5, 0.5, 0.5]]), base.lengths, base.angles)
    assert build_structure(nan) == (None, "non_finite_values")
    assert build_structure(CrystalInput("cif", cif="not a cif"))[1] in ("cif_parse_error", "empty_structure")


def test_evaluate_crystal_records():
    opts = EvalOptions()
    rec = evaluate_crystal(rocksalt_primitive(), opts)
    assert rec["valid"] and rec["struct_fp"].shape == (61,) and rec["comp_fp"].shape == (132,)
    assert rec["density"] == pytest.approx(2.165, abs=0.01)  # NaCl, g/cm^3
    assert rec["n_elems"] == 2
    overlap = CrystalInput("overlap", atom_types=np.array([11, 17]), frac_coords=np.array([[0.1, 0.1, 0.1]] * 2),
                           lengths=np.array([5.0] * 3), angles=np.array([90.0] * 3))
    rec = evaluate_crystal(overlap, opts)
    assert not rec["valid"] and not rec["struct_valid"] and "atoms_too_close" in rec["reasons"]
    nacl2 = CrystalInput("nacl2", atom_types=np.array([11, 17, 17]),
                         frac_coords=np.array([[0, 0, 0], [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]]),
                         lengths=np.array([5.0] * 3), angles=np.array([90.0] * 3))
    rec = evaluate_crystal(nacl2, opts)
    assert rec["struct_valid"] and not rec["comp_valid"] and not rec["valid"]
    neg = CrystalInput("neg", np.array([11, 17]), NACL_FRAC, np.array([-1.0, 4.0, 4.0]), np.array([90.0] * 3))
    rec = evaluate_crystal(neg, opts)
    assert not rec["valid"] and rec["struct_fp"] is None and "non_positive_lattice" in rec["reasons"]


def test_featuriser_crash_is_counted_not_raised(monkeypatch):
    import dpcdvae.evaluation.fingerprints as fps

    def boom(structure):
        raise RuntimeError("featuriser exploded")

    monkeypatch.setattr(fps, "structure_fingerprint", boom)
    rec = evaluate_crystal(rocksalt_primitive(), EvalOptions())
    assert rec["struct_valid"] and rec["comp_valid"]
    assert not rec["valid"] and not rec["fp_ok"] and "struct_fingerprint_failed" in rec["reasons"]
