"""Every user mistake is answered with one line ``dpcdvae: error: ...`` and exit status != 0."""

import json
import os

import pytest
import torch

from dpcdvae.cli import main
from dpcdvae.errors import DPCDVAEError

from conftest import REPO

README = REPO / "README.md"


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line_error(rc, err, *needles):
    """Assert exit != 0 and exactly one stderr line, the error, containing every needle."""
    assert rc != 0
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("dpcdvae: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------- the CLI itself

def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(DPCDVAEError, match="not a model file"):
        main(["--debug", "sample", "--ckpt", str(README), "--out", str(tmp_path / "s"), "--device", "cpu"])


def test_cli_error_is_the_library_error():
    from dpcdvae.cli import CLIError
    from dpcdvae.data.download import DownloadError

    assert CLIError is DPCDVAEError and issubclass(DownloadError, DPCDVAEError)


@pytest.fixture
def fake_commands(tmp_path, monkeypatch):
    """Command modules: one that cannot be imported, one whose handler lacks a package."""
    (tmp_path / "broken_cmds.py").write_text("import not_a_real_package_xyz\n")
    (tmp_path / "lazy_cmds.py").write_text(
        "def register(sub):\n"
        "    p = sub.add_parser('lazy')\n"
        "    p.set_defaults(func=lambda args: __import__('matminer_missing_xyz'))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import dpcdvae.cli as cli

    monkeypatch.setattr(cli, "_COMMAND_MODULES", {"broken_cmds": ("broken", "broken2"), "lazy_cmds": ("lazy",)})


def test_a_command_whose_module_cannot_be_imported_says_what_to_install(fake_commands, capsys):
    rc, _, err = run(capsys, "broken", "--any", "args")
    one_line_error(rc, err, "dpcdvae broken needs", "not_a_real_package_xyz", "pip install")
    rc, _, err = run(capsys, "broken2")
    one_line_error(rc, err, "dpcdvae broken2")
    rc, _, err = run(capsys, "lazy")
    one_line_error(rc, err, "dpcdvae lazy needs", "matminer_missing_xyz", "pip install")


def test_missing_chem_package_names_the_extra():
    from dpcdvae.errors import missing_dependency_message

    msg = missing_dependency_message(ModuleNotFoundError("x", name="pymatgen.core"), "dpcdvae evaluate")
    assert "pip install pymatgen" in msg and "dpcdvae[chem]" in msg
    msg = missing_dependency_message(ModuleNotFoundError("x", name="yaml"), "dpcdvae train")
    assert "pip install pyyaml" in msg


# ------------------------------------------------------------------------------------- checkpoints

def _real_torch_file(path):
    torch.save({"state_dict": {"w": torch.zeros(4096)}, "hyper_parameters": {"config": {}}}, path)
    return path.read_bytes()


@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_resume_from_an_unreadable_checkpoint(tmp_path, capsys, kind):
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    if kind == "empty":
        ckpt.write_bytes(b"")
    else:
        data = _real_torch_file(ckpt)
        ckpt.write_bytes(data[: len(data) // 2])
    rc, _, err = run(capsys, "train", "--out", tmp_path / "run", "--resume", "--no-progress")
    line = one_line_error(rc, err, "last.ckpt is unreadable", "restore")
    assert ("empty" in line) if kind == "empty" else ("truncated" in line)


def test_sample_from_a_file_that_is_not_a_model(tmp_path, capsys):
    rc, _, err = run(capsys, "sample", "--ckpt", README, "--out", tmp_path / "s", "--device", "cpu", "--no-progress")
    one_line_error(rc, err, "README.md is not a model file")
    assert not (tmp_path / "s" / "run.json").exists()


class _Malicious:
    marker = ""

    def __reduce__(self):
        return (os.mkdir, (self.marker,))  # what a full unpickler would run


@pytest.mark.parametrize("command", ["sample", "train"])
def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys, command):
    bad = _Malicious()
    bad.marker = str(tmp_path / "pwned")
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": {"config": bad}}, ckpt)
    if command == "sample":
        rc, _, err = run(capsys, "sample", "--ckpt", ckpt, "--out", tmp_path / "s", "--device", "cpu")
    else:
        rc, _, err = run(capsys, "train", "--out", tmp_path / "run", "--resume")
    one_line_error(rc, err, "refusing to load", "(not a weights-only checkpoint)", "mkdir")
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------------------------- train

@pytest.mark.parametrize("args,needle", [
    (["--set", "data.batch_size=0"], "data.batch_size must be an integer >= 1, got 0"),
    (["--set", "model.latent_dim=-4"], "model.latent_dim must be an integer >= 1, got -4"),
    (["--set", "train.lr=abc"], "train.lr must be a number, got 'abc'"),
    (["--set", "train.lr=-1.0e-3"], "train.lr must be a number > 0"),
    (["--set", "model.loss.beta=x"], "model.loss.beta must be a number"),
    (["--set", "train.no_such_key=1"], "unknown config key 'train.no_such_key'"),
    (["--limit", "-1"], "--limit must be an integer >= 1, got -1"),
])
def test_bad_train_values_are_refused_before_any_work(tmp_path, capsys, args, needle):
    rc, _, err = run(capsys, "train", "--config", "tiny", "--out", tmp_path / "run", *args)
    one_line_error(rc, err, needle)
    assert not (tmp_path / "run").exists()


def test_numbers_in_e_notation_are_numbers():
    from dpcdvae.config import check_config_values, load_config

    cfg = load_config("tiny", ["train.lr=1e-4", "train.min_lr=1e-5"])
    assert cfg["train"]["lr"] == 1e-4 and cfg["train"]["min_lr"] == 1e-5
    check_config_values(cfg)


@pytest.mark.parametrize("args,needle", [
    (["--config", "perov_5"], "trained with --config tiny, not perov_5"),
    (["--encoder", "dime+gine"], "uses --encoder dime, not dime+gine"),
])
def test_resume_refuses_another_config_or_encoder(tmp_path, capsys, args, needle):
    from dpcdvae.config import load_config

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({"hyper_parameters": {"config": load_config("tiny")}}, ckpt)
    rc, _, err = run(capsys, "train", "--out", tmp_path / "run", "--resume", *args)
    one_line_error(rc, err, needle)


def test_a_real_run_resumes_with_its_own_config_and_writes_strict_json(prepared_cache, tmp_path, capsys):
    base = ["train", "--out", tmp_path / "run", "--cache-dir", prepared_cache, "--limit", "32", "--accelerator", "cpu",
            "--no-progress"]
    assert run(capsys, *base, "--config", "tiny", "--set", "train.max_epochs=1")[0] == 0
    rc, out, err = run(capsys, *base, "--resume", "--config", "tiny", "--set", "train.max_epochs=2")
    assert rc == 0, err
    res = json.loads(out[out.index("{"):], parse_constant=_refuse)
    assert res["epochs"] == 2
    json.loads((tmp_path / "run" / "train_summary.json").read_text(), parse_constant=_refuse)
    rc, _, err = run(capsys, *base, "--resume", "--config", "perov_5")
    one_line_error(rc, err, "trained with --config tiny")


def _refuse(name):
    raise AssertionError(f"non-strict JSON constant {name}")


def test_a_nan_loss_stops_training_with_one_line(prepared_cache, tmp_path, capsys, monkeypatch):
    from dpcdvae.models.dpcdvae import DPCDVAE

    forward = DPCDVAE.forward

    def nan_forward(self, *a, **k):
        out = forward(self, *a, **k)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(DPCDVAE, "forward", nan_forward)
    rc, _, err = run(capsys, "train", "--config", "tiny", "--out", tmp_path / "run", "--cache-dir", prepared_cache,
                     "--limit", "32", "--accelerator", "cpu", "--no-progress", "--set", "train.max_epochs=1")
    errors = [ln for ln in err.splitlines() if ln.startswith("dpcdvae: error:")]
    assert rc == 1 and "Traceback" not in err and len(errors) == 1, err
    assert "non-finite training loss" in errors[0] and "Lower train.lr" in errors[0]


# ------------------------------------------------------------------------------------- sample

@pytest.mark.parametrize("args,needle", [
    (["--world-size", "0"], "--world-size must be an integer >= 1, got 0"),
    (["--rank", "5", "--world-size", "2"], "--rank must be < --world-size"),
    (["--rank", "-1"], "--rank must be an integer >= 0"),
    (["--device", "tpu9"], "--device 'tpu9' is not a device"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    (["--batch-size", "-1"], "--batch-size must be an integer >= 1, got -1"),
    (["-n", "0"], "-n must be an integer >= 1, got 0"),
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
])
def test_bad_sample_arguments_are_refused_before_anything_is_written(tmp_path, capsys, args, needle):
    # README.md as --ckpt: the arguments must be refused before the model is even read
    rc, _, err = run(capsys, "sample", "--ckpt", README, "--out", tmp_path / "s", "--no-progress", *args)
    one_line_error(rc, err, needle)
    assert not (tmp_path / "s").exists()


def test_sample_out_is_an_existing_file(tmp_path, capsys):
    out = tmp_path / "taken.txt"
    out.write_text("x")
    rc, _, err = run(capsys, "sample", "--ckpt", README, "--out", out, "--device", "cpu")
    one_line_error(rc, err, "is a file, not a folder")
    assert out.read_text() == "x"


def test_reconstruct_bad_limit(tmp_path, capsys):
    rc, _, err = run(capsys, "reconstruct", "--ckpt", README, "--out", tmp_path / "r", "--limit", "0")
    one_line_error(rc, err, "--limit must be an integer >= 1")


def test_resume_with_nothing_left_prints_strict_json(tiny_model, tmp_path, capsys):
    args = ["sample", "--ckpt", tiny_model, "--out", tmp_path / "s", "-n", "2", "--batch-size", "2", "--steps", "2",
            "--device", "cpu", "--no-progress", "--no-cif"]
    assert run(capsys, *args)[0] == 0
    rc, out, _ = run(capsys, *args, "--resume")
    assert rc == 0

    def refuse(name):
        raise AssertionError(f"non-strict JSON constant {name}")

    res = json.loads(out, parse_constant=refuse)
    assert res["batches_run"] == 0 and res["crystals_per_s"] is None
    json.loads((tmp_path / "s" / "run.json").read_text(), parse_constant=refuse)
