"""The shipped Perov-5 model, its property predictor, its test-split table and the demo's helpers."""

import gzip
import io
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from dpcdvae.cli import main


def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_import_is_cheap():
    code = ("import sys, dpcdvae; f = dpcdvae.load_pretrained; "
            "print(f.__module__, 'torch' in sys.modules, 'numpy' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["dpcdvae.pretrained", "False", "False"]


def test_load_pretrained_offline_and_sample(monkeypatch, tmp_path, capsys):
    import dpcdvae
    from dpcdvae.pretrained import model_path

    _no_network(monkeypatch)
    model, cfg = dpcdvae.load_pretrained("perov_5")
    assert cfg["data"]["dataset"] == "perov_5" and not model.training
    assert all(p.dtype == torch.float32 for p in model.parameters())  # bf16 shards cast back
    assert (model_path("perov_5") / "index.json").is_file()
    out = tmp_path / "s"
    rc = main(["sample", "--pretrained", "perov_5", "-n", "4", "--steps", "5", "--device", "cpu", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    data = torch.load(out / "samples.pt", weights_only=True)
    assert len(data["num_atoms"]) == 4 and data["meta"]["steps"] == 5
    assert len(list((out / "cif").glob("*.cif"))) == 4
    from dpcdvae.pretrained import get_info

    label = get_info("perov_5").label
    assert "budget model" in label and f"pretrained perov_5: {label}" in capsys.readouterr().err


def test_unknown_name_is_one_line(capsys, tmp_path):
    from dpcdvae.pretrained import load_pretrained, resolve_prop_ckpt

    with pytest.raises(ValueError) as err:
        load_pretrained("perov_6")
    assert "\n" not in str(err.value) and "available: perov_5" in str(err.value)
    with pytest.raises(ValueError, match="available: perov_5"):
        resolve_prop_ckpt("pretrained:nope")
    with pytest.raises(ValueError, match="cannot score --dataset mp_20"):
        resolve_prop_ckpt("pretrained:perov_5", "mp_20")
    assert resolve_prop_ckpt("pretrained:perov_5", "perov_5").name == "property.pt"
    rc = main(["sample", "--pretrained", "perov_6", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert rc == 1 and err.count("\n") == 0 and err.startswith("dpcdvae: error: unknown pretrained model")


@pytest.mark.parametrize("command", ["sample", "reconstruct"])
def test_ckpt_and_pretrained_together_refused(command, capsys, tmp_path):
    with pytest.raises(SystemExit) as ex:
        main([command, "--ckpt", "model.pt", "--pretrained", "perov_5", "--out", str(tmp_path / "s")])
    assert ex.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([command, "--out", str(tmp_path / "s")])
    assert "one of the arguments --ckpt --pretrained is required" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# the shipped ground-truth table


def _write_csv(path, text):
    with gzip.open(path, "wt") as fh:
        fh.write(text)
    return path


@pytest.fixture(scope="module")
def test_csv_text(shared_data):
    with gzip.open(shared_data / "perov_5" / "test.csv.gz", "rt") as fh:
        return fh.read()


def test_shipped_table_matches_content_not_bytes(shared_data, test_csv_text, tmp_path):
    from dpcdvae.evaluation.shipped import check_shipped_table
    from dpcdvae.evaluation.worker import EvalOptions
    from dpcdvae.pretrained import test_table_path

    path = test_table_path("perov_5")
    found, why = check_shipped_table(path, "perov_5", "test", shared_data / "perov_5" / "test.csv.gz", EvalOptions())
    assert found is not None, why
    assert found.table["valid"].shape == (3785,) and found.info["versions"]["pymatgen"]
    assert found.gt_prop and next(iter(found.gt_prop.values())).shape == (int(found.table["constructed"].sum()),)
    plain = tmp_path / "test.csv"  # the download is an uncompressed CSV: other bytes, same content
    plain.write_text(test_csv_text)
    assert check_shipped_table(path, "perov_5", "test", plain, EvalOptions())[0] is not None


def test_shipped_table_refused_for_other_content_or_settings(shared_data, test_csv_text, tmp_path):
    import pandas as pd

    from dpcdvae.evaluation.shipped import check_shipped_table
    from dpcdvae.evaluation.worker import EvalOptions
    from dpcdvae.pretrained import test_table_path

    path = test_table_path("perov_5")
    frame = pd.read_csv(io.StringIO(test_csv_text))
    changed = frame.copy()
    changed.loc[7, "cif"] = changed.loc[7, "cif"].replace("0.5", "0.4", 1)
    assert changed.loc[7, "cif"] != frame.loc[7, "cif"]
    mod = tmp_path / "test.csv.gz"
    changed.to_csv(mod, index=False)
    found, why = check_shipped_table(path, "perov_5", "test", mod, EvalOptions())
    assert found is None and "cif column" in why
    short = tmp_path / "short.csv"
    frame.iloc[:-1].to_csv(short, index=False)
    found, why = check_shipped_table(path, "perov_5", "test", short, EvalOptions())
    assert found is None and "3784 rows" in why
    csv = shared_data / "perov_5" / "test.csv.gz"
    found, why = check_shipped_table(path, "perov_5", "test", csv, EvalOptions(oxidation_states="icsd24"))
    assert found is None and "other settings" in why
    found, why = check_shipped_table(path, "perov_5", "val", csv, EvalOptions())
    assert found is None and "not perov_5/val" in why


def test_evaluate_csv_cached_uses_or_refuses_the_shipped_table(shared_data, test_csv_text, tmp_path, monkeypatch):
    import pandas as pd

    from dpcdvae.evaluation import gen
    from dpcdvae.evaluation.worker import EvalOptions

    class Computed(Exception):
        pass

    def no_compute(*args, **kwargs):
        raise Computed

    monkeypatch.setattr(gen, "evaluate_items", no_compute)
    csv = shared_data / "perov_5" / "test.csv.gz"
    table, info = gen.evaluate_csv_cached(csv, "perov_5", "test", EvalOptions(), None, tmp_path / "cache", False)
    assert info["table_source"] == "shipped" and info["shipped_table"]["used"]
    assert table["valid"].shape == (3785,) and info["gt_prop"]
    assert set(info["table_versions"]) >= {"pymatgen", "matminer", "smact"}
    with pytest.raises(Computed):  # --no-shipped-table
        gen.evaluate_csv_cached(csv, "perov_5", "test", EvalOptions(), None, tmp_path / "cache", False, shipped=False)
    frame = pd.read_csv(io.StringIO(test_csv_text))
    frame.loc[0, "cif"] = frame.loc[0, "cif"].replace("0.5", "0.4", 1)
    mod = tmp_path / "perov_5" / "test.csv.gz"
    mod.parent.mkdir()
    frame.to_csv(mod, index=False)
    with pytest.raises(Computed):
        gen.evaluate_csv_cached(mod, "perov_5", "test", EvalOptions(), None, tmp_path / "cache", False)


def test_version_difference_is_reported(shared_data, monkeypatch):
    from dpcdvae.evaluation import gen
    from dpcdvae.evaluation.shipped import check_shipped_table
    from dpcdvae.evaluation.worker import EvalOptions
    from dpcdvae.pretrained import test_table_path

    real = gen.library_versions()
    monkeypatch.setattr(gen, "library_versions", lambda: {**real, "pymatgen": "1999.1.1"})
    found, _ = check_shipped_table(test_table_path("perov_5"), "perov_5", "test",
                                   shared_data / "perov_5" / "test.csv.gz", EvalOptions())
    assert found is not None and not found.info["versions_match"]
    assert found.info["version_differences"]["pymatgen"]["installed"] == "1999.1.1"
    assert len(found.warnings) == 1 and "--no-shipped-table" in found.warnings[0]


# ---------------------------------------------------------------------------------------------
# demo helpers


def _metrics_dict():
    """A hand-made metrics dict with evaluate_gen's nesting."""
    return {
        "task": "gen", "dataset": "perov_5", "input": {}, "ground_truth": {"split": "test"}, "settings": {},
        "validity": {"comp_valid": 0.95, "struct_valid": 1.0, "valid": 0.95, "reasons": {}},
        "wdist": {"n_samples": 240, "seed": 0, "wdist_density": 0.25, "wdist_num_elems": 0.05, "wdist_prop": 0.1},
        "diversity": {"comp_div": 10.0, "struct_div": 0.6},
        "coverage": {"cov_recall": 0.9, "cov_precision": 0.97, "amsd_recall": 0.1},
        "timing": {},
    }


def test_headline_finds_the_seven_numbers():
    from dpcdvae.demo import format_headline, headline

    h = headline(_metrics_dict())
    assert h == pytest.approx({"struct_valid": 100.0, "comp_valid": 95.0, "cov_recall": 90.0,
                               "cov_precision": 97.0, "wdist_density": 0.25, "wdist_prop": 0.1,
                               "wdist_num_elems": 0.05})
    text = format_headline(h, "ours")
    assert len(text.splitlines()) == 8 and max(map(len, text.splitlines())) < 100
    assert "98.07" in text and "98.63" in text and "55.80" in text  # paper and data ceilings beside ours
    with pytest.raises(KeyError, match="coverage.cov_recall"):
        headline({**_metrics_dict(), "coverage": {}})


def test_headline_on_real_gen_metrics():
    """The nesting gen_metrics really produces (first 64 test crystals scored against the test table)."""
    from dpcdvae.demo import headline
    from dpcdvae.evaluation.gen import gen_metrics
    from dpcdvae.evaluation.shipped import read_shipped_table
    from dpcdvae.evaluation.worker import take_rows
    from dpcdvae.pretrained import test_table_path

    table, _, _ = read_shipped_table(test_table_path("perov_5"))
    metrics, _ = gen_metrics(take_rows(table, np.arange(64)), table, 0.2, 4.0, n_wdist=64)
    metrics["wdist"].update(wdist_prop=None)
    h = headline(metrics)
    assert set(h) == {"struct_valid", "comp_valid", "cov_recall", "cov_precision", "wdist_density",
                      "wdist_prop", "wdist_num_elems"}
    assert 0 < h["cov_precision"] <= 100 and h["wdist_prop"] is None and h["wdist_density"] >= 0


def test_prepare_out_clears_own_outputs_and_refuses_foreign(tmp_path, capsys):
    from dpcdvae.demo import prepare_out

    out = tmp_path / "demo_out"
    (out / "samples" / "cif").mkdir(parents=True)
    (out / "samples" / "cif" / "000000.cif").write_text("x")
    (out / "metrics.json").write_text("{}")
    (out / "cache").mkdir()
    prepare_out(out)
    assert sorted(p.name for p in out.iterdir()) == ["cache"]
    assert "removing the previous demo's outputs" in capsys.readouterr().out
    (out / "thesis.tex").write_text("x")
    with pytest.raises(FileExistsError, match="thesis.tex"):
        prepare_out(out)
    assert (out / "thesis.tex").exists()


def test_gen_metrics_run_every_registered_metric():
    """The generation metrics are a registry: the four CDVAE groups in order, and a metric registered
    by a user appears in the output under its name."""
    from dpcdvae.evaluation.gen import GEN_METRICS, gen_metrics
    from dpcdvae.evaluation.shipped import read_shipped_table
    from dpcdvae.evaluation.worker import take_rows
    from dpcdvae.pretrained import test_table_path

    assert tuple(GEN_METRICS) == ("validity", "wdist", "diversity", "coverage")
    table, _, _ = read_shipped_table(test_table_path("perov_5"))
    gen = take_rows(table, np.arange(32))
    GEN_METRICS.register("mean_density", lambda g, t, ctx: {"gen": float(g["density"][ctx.rows].mean()),
                                                            "n": int(ctx.rows.size)})
    try:
        metrics, rows = gen_metrics(gen, table, 0.2, 4.0, n_wdist=16)
    finally:
        GEN_METRICS.unregister("mean_density")
    assert list(metrics)[:5] == ["validity", "wdist", "diversity", "coverage", "mean_density"]
    assert metrics["mean_density"]["n"] == 16 == rows.size
    assert metrics["mean_density"]["gen"] == pytest.approx(float(gen["density"][rows].mean()))
    assert "mean_density" not in GEN_METRICS
