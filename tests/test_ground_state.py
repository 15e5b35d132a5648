"""``dpcdvae evaluate ground-state``: CHGNet relaxation at a pressure, Δ metrics, failures, resume, bad input."""

import json

import numpy as np
import pytest

pytest.importorskip("chgnet")
pytest.importorskip("pymatgen")

from dpcdvae.cli import main  # noqa: E402
from dpcdvae.evaluation import ground_state as gs  # noqa: E402

A_DIAMOND = 3.567  # Å, experimental conventional cell (5.67 Å^3/atom)


def _diamond(a: float = A_DIAMOND):
    from pymatgen.core import Lattice, Structure

    return Structure(Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]]), ["C", "C"],
                     [[0, 0, 0], [0.25, 0.25, 0.25]])


def _distorted(strain, sigma: float, seed: int = 0):
    s = _diamond()
    s.apply_strain(strain)
    rng = np.random.default_rng(seed)
    disp = rng.normal(size=(len(s), 3))
    disp *= sigma / np.linalg.norm(disp, axis=1, keepdims=True)
    for i, d in enumerate(disp):
        s.translate_sites([i], d, frac_coords=False)
    return s


def _write(folder, structures):
    folder.mkdir(parents=True, exist_ok=True)
    for i, s in enumerate(structures):
        s.to(filename=str(folder / f"{i:03d}.cif"))
    return folder


def _strict_json(path):
    def bad(x):
        raise AssertionError(f"non-strict JSON constant {x}")

    return json.loads(path.read_text(), parse_constant=bad)


def _run(args):
    return main(["evaluate", "ground-state", "--no-progress", *map(str, args)])


@pytest.fixture(scope="module")
def relaxed_diamond():
    """CHGNet's own diamond at 0 and 10 GPa: {p: (record, structure)}."""
    out = {}
    for p in (0.0, 10.0):
        rec, s = gs.relax_structure(_diamond(), gs.RelaxSettings(pressure_gpa=p, fmax=0.01))
        assert rec["status"] == "converged", rec
        out[p] = (rec, s)
    return out


def test_distorted_diamond_relaxes_back_at_10_gpa(relaxed_diamond, tmp_path):
    from pymatgen.analysis.structure_matcher import StructureMatcher
    from pymatgen.core import Structure

    v0 = relaxed_diamond[0.0][0]["volume_final"]
    v10 = relaxed_diamond[10.0][0]["volume_final"]
    assert v10 < v0 and v0 == pytest.approx(5.67, rel=0.05)
    samples = _write(tmp_path / "in", [_distorted([0.03, -0.02, 0.04], 0.05)])
    out = tmp_path / "out"
    assert _run(["--samples", samples, "--pressure-gpa", 10, "--out", out, "--workers", 1]) == 0
    res = _strict_json(out / "ground_state.json")
    assert res["n_converged"] == 1 and res["match_rate"] == 1.0 and res["failed"] == {}
    relaxed = Structure.from_file(out / "relaxed" / "000000.cif")
    assert StructureMatcher(stol=0.5, angle_tol=10, ltol=0.3).fit(relaxed, _diamond())
    v = relaxed.volume / len(relaxed)
    assert v == pytest.approx(v10, rel=0.02) and v < v0
    rec = json.loads((out / "results.jsonl").read_text().splitlines()[0])
    # the optimiser lowered the enthalpy; ΔV is relaxed - generated (the input was expanded)
    assert rec["enthalpy_final"] < rec["enthalpy_initial"] and rec["volume_final"] < rec["volume_initial"]
    assert res["delta_h_rms_mev_per_atom"] > 0 and res["delta_v_rms_a3_per_atom"] > 0
    assert (out / "delta_e_hist.png").stat().st_size > 1000


def test_failures_are_reported_not_fatal(tmp_path):
    from pymatgen.core import Lattice, Structure

    bad = _distorted([0.15, -0.10, 0.20], 0.3)
    unsupported = Structure(Lattice.cubic(3.0), ["Es"], [[0, 0, 0]])  # Z 99: outside CHGNet's elements
    samples = _write(tmp_path / "in", [bad, unsupported])
    out = tmp_path / "out"
    assert _run(["--samples", samples, "--pressure-gpa", 10, "--out", out, "--workers", 1, "--max-steps", 2]) == 0
    res = _strict_json(out / "ground_state.json")
    assert res["n_done"] == 2 and res["n_converged"] == 0 and res["match_rate"] is None
    assert res["failed"] == {"not_converged": 1, "calculator_error": 1}
    recs = {r["index"]: r for r in map(json.loads, (out / "results.jsonl").read_text().splitlines())}
    assert recs[0]["reason"] == "not converged in 2 steps" and recs[0]["steps"] == 2
    assert recs[1]["reason"].startswith("calculator error: ")
    assert (out / "relaxed" / "000000.cif").is_file() and (out / "delta_e_hist.png").is_file()
    # wall-clock limit
    rec, _ = gs.relax_structure(bad, gs.RelaxSettings(timeout_s=0.05))
    assert rec["status"] == "timeout" and rec["reason"].startswith("timeout after 0.05 s")


def test_relaxed_structure_against_itself_is_zero(relaxed_diamond, tmp_path):
    samples = _write(tmp_path / "in", [relaxed_diamond[10.0][1]])
    out = tmp_path / "out"
    assert _run(["--samples", samples, "--pressure-gpa", 10, "--out", out, "--workers", 1]) == 0
    res = _strict_json(out / "ground_state.json")
    assert res["n_converged"] == 1 and res["match_rate"] == 1.0
    assert res["mean_rms_dist"] == pytest.approx(0.0, abs=1e-4)
    assert res["delta_v_rms_a3_per_atom"] == pytest.approx(0.0, abs=1e-3)
    assert res["delta_e_rms_mev_per_atom"] == pytest.approx(0.0, abs=0.5)
    assert res["delta_h_rms_mev_per_atom"] == pytest.approx(0.0, abs=0.5)
    # negative pressure is physical (tension) and accepted
    res = gs.evaluate_ground_state(samples, tmp_path / "neg", pressure_gpa=-2.0, max_steps=1, progress=False)
    assert res["n_done"] == 1 and res["settings"]["pressure_gpa"] == -2.0


def test_resume_skips_done_structures(relaxed_diamond, tmp_path, monkeypatch):
    samples = _write(tmp_path / "in", [relaxed_diamond[10.0][1], _distorted([0.01, 0.0, -0.01], 0.02, seed=1)])
    out = tmp_path / "out"
    # first run through the process pool
    assert _run(["--samples", samples, "--pressure-gpa", 10, "--out", out, "--workers", 2]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["index"] for line in lines) == [0, 1]
    keep = next(line for line in lines if json.loads(line)["index"] == 0)
    (out / "results.jsonl").write_text(keep + "\n" + '{"index": 1, "stat')  # interrupted mid-line
    assert _run(["--samples", samples, "--pressure-gpa", 10, "--out", out, "--workers", 1]) == 1  # no --resume
    calls = []
    real = gs._relax_task
    monkeypatch.setattr(gs, "_relax_task", lambda task: calls.append(task[0]) or real(task))
    assert _run(["--samples", samples, "--pressure-gpa", 10, "--out", out, "--workers", 1, "--resume"]) == 0
    assert calls == [1]
    lines = (out / "results.jsonl").read_text().splitlines()
    assert lines[0] == keep and [json.loads(line)["index"] for line in lines] == [0, 1]
    assert _strict_json(out / "ground_state.json")["n_done"] == 2
    calls.clear()
    assert _run(["--samples", samples, "--pressure-gpa", 10, "--out", out, "--workers", 1, "--resume"]) == 0
    assert calls == []


@pytest.mark.parametrize("case", ["missing", "n0", "workers0", "steps0", "fmax0", "exists", "resume_other"])
def test_bad_input_is_one_line(case, tmp_path, capsys, monkeypatch):
    samples = _write(tmp_path / "in", [_diamond()])
    out = tmp_path / "out"
    args = {"--samples": samples, "--pressure-gpa": 10, "--out": out}
    extra = []
    if case == "missing":
        args["--samples"] = tmp_path / "nope"
    elif case in ("n0", "workers0", "steps0", "fmax0"):
        extra = [{"n0": "--n", "workers0": "--workers", "steps0": "--max-steps", "fmax0": "--fmax"}[case], 0]
    elif case == "exists":
        out.mkdir()
        (out / "x").write_text("x")
    else:
        out.mkdir()
        (out / gs.SETTINGS).write_text(json.dumps({"pressure_gpa": 5.0}))
        extra = ["--resume"]
    monkeypatch.setattr(gs, "_relax_task", lambda task: pytest.fail("relaxation started"))
    capsys.readouterr()
    rc = _run([x for kv in args.items() for x in kv] + extra)
    err = capsys.readouterr().err.strip()
    assert rc != 0 and len(err.splitlines()) == 1 and err.startswith("dpcdvae: error:"), err
