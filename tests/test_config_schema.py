"""The typed config schema and the registries: every key reachable through --set, one-line errors,
presets valid, base.yaml == the schema defaults, every registered entry builds (tiny, CPU)."""

from __future__ import annotations

import pytest
import torch
import yaml

from dpcdvae import config_schema
from dpcdvae.config import apply_overrides, check_config_values, list_presets, load_config, load_preset
from dpcdvae.data.datasets import DATASETS, get_dataset
from dpcdvae.registry import ENCODERS, PROCESSES, SAMPLERS, Registry

torch.set_num_threads(1)

SPECS = config_schema.fields_by_key()


def _valid_value(spec: config_schema.FieldSpec):
    """A valid value of the key's type that differs from its default where possible."""
    names = spec.choice_names()
    if names:
        return next((n for n in reversed(names) if n != spec.default), names[0])
    if spec.type is bool:
        return not spec.default if spec.default is not None else True
    if spec.type is int:
        return (spec.lo if spec.lo is not None else 0) + 3
    if spec.type is float:
        lo = spec.lo if spec.lo is not None else 0.0
        return (lo + spec.hi) / 2 if spec.hi is not None else lo + 0.5
    return "16-mixed" if spec.key == "train.precision" else "some_name"


def _get(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def _yaml_text(val) -> str:
    return "null" if val is None else yaml.safe_dump(val, default_flow_style=True).strip().removesuffix("...").strip()


@pytest.mark.parametrize("key", sorted(SPECS))
def test_every_schema_key_can_be_set(key):
    spec = SPECS[key]
    val = _valid_value(spec)
    cfg = apply_overrides(load_config("tiny"), [f"{key}={_yaml_text(val)}"])
    assert _get(cfg, key) == val and type(_get(cfg, key)) is type(val)
    config_schema.validate(cfg)  # type, range and choices of the new value
    if spec.nullable:
        assert _get(apply_overrides(cfg, [f"{key}=null"]), key) is None


def test_every_schema_key_is_in_base_yaml_with_its_default():
    assert load_preset("base") == config_schema.defaults()
    for key, spec in SPECS.items():
        assert spec.doc and len(spec.doc.splitlines()) == 1, key


# keys added to base.yaml with the schema (before: constructor defaults, not settable)
ADDED = {
    "encoder_cfg": ("images", "symmetrize", "max_z", "out_channels", "envelope_exponent", "num_before_skip",
                    "num_after_skip", "num_output_layers", "output_initializer", "output_lin_up_bias",
                    "gine_hidden", "gine_layers", "gine_message_act", "na_channels"),
    "denoiser_cfg": ("images", "symmetrize", "time_hidden", "fourier_min", "fourier_max", "num_before_skip",
                     "num_after_skip", "num_concat", "num_atom", "envelope_exponent", "energy_branch", "scale_init"),
    "diffusion": ("kind", "alphabar_quirk"),
}


@pytest.mark.parametrize("encoder", ["dime", "dime+na+gine"])
def test_the_added_keys_hold_the_former_defaults(encoder):
    """A config without the added keys (as saved before) builds the same network, weight for weight."""
    from dpcdvae.models.build import build_model

    for preset in ("tiny", "tiny_cdvae"):
        cfg = load_config(preset, encoder=encoder)
        old = load_config(preset, encoder=encoder)
        tiny = load_preset(preset)["model"]
        for section, keys in ADDED.items():
            for k in keys:
                if k not in tiny.get(section, {}):
                    del old["model"][section][k]
        torch.manual_seed(0)
        new_sd = build_model(cfg).state_dict()
        torch.manual_seed(0)
        old_sd = build_model(old).state_dict()
        assert new_sd.keys() == old_sd.keys()
        for k in new_sd:
            assert torch.equal(new_sd[k], old_sd[k]), k


@pytest.mark.parametrize("name", list_presets())
def test_every_preset_validates(name):
    cfg = load_config(name)
    check_config_values(cfg)
    config_schema.validate(cfg)


@pytest.mark.parametrize("item,needle", [
    ("train.no_such_key=1", "unknown config key 'train.no_such_key'"),
    ("model.encoder_cfg.bogus=3", "unknown config key 'model.encoder_cfg.bogus'"),
    ("sample.sampler=eq7", "unknown config key 'sample.sampler'"),   # a dead key, removed
    ("data.test_split=test", "unknown config key 'data.test_split'"),
    ("model=3", "unknown config key 'model'"),
    ("train.lr=abc", "train.lr must be a number, got 'abc'"),
    ("data.batch_size=2.5", "data.batch_size must be an integer, got 2.5"),
    ("data.num_val_batches=x", "data.num_val_batches must be an integer or null, got 'x'"),
    ("train.compile=maybe", "train.compile must be true or false, got 'maybe'"),
    ("model.denoiser_cfg.fourier=3", "model.denoiser_cfg.fourier must be true, false or null, got 3"),
    ("model.encoder_cfg.images=1", "model.encoder_cfg.images must be a string, got 1"),
    ("train.lr=.inf", "train.lr must be a finite number"),
])
def test_bad_overrides_are_one_line_naming_the_key(item, needle):
    with pytest.raises(ValueError) as info:
        apply_overrides(load_config("tiny"), [item])
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


@pytest.mark.parametrize("item,needle", [
    ("model.encoder=schnet", "model.encoder must be one of dime, dime+na, dime+gine, dime+na+gine, got 'schnet'"),
    ("data.dataset=qm9", "data.dataset must be one of perov_5, carbon_24, mp_20, got 'qm9'"),
    ("model.encoder_cfg.images=all", "model.encoder_cfg.images must be one of ref, exact, got 'all'"),
    ("model.diffusion.kind=quadratic", "model.diffusion.kind must be one of sigmoid, linear, cosine"),
    ("data.holdout_fraction=1.0", "data.holdout_fraction must be a number > 0 and < 1, got 1.0"),
    ("model.encoder_cfg.gine_layers=0", "model.encoder_cfg.gine_layers must be an integer >= 1, got 0"),
])
def test_bad_values_and_choices_are_refused_by_check_config_values(item, needle):
    cfg = load_config("tiny", [item])  # the type is right: accepted as an override
    with pytest.raises(ValueError) as info:
        check_config_values(cfg)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_a_yaml_file_is_checked_against_the_schema(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: tiny\nmodel:\n  encoder_cfg:\n    gine_hiden: 8\n")
    with pytest.raises(ValueError, match=r"bad.yaml: unknown config key 'model.encoder_cfg.gine_hiden'$"):
        load_config(str(bad))
    bad.write_text("base: tiny\ntrain:\n  lr: fast\n")
    with pytest.raises(ValueError, match=r"train.lr must be a number, got 'fast'$"):
        load_config(str(bad))
    good = tmp_path / "good.yaml"
    good.write_text("base: tiny\nmodel:\n  encoder_cfg:\n    gine_hidden: 8\n")
    assert load_config(str(good))["model"]["encoder_cfg"]["gine_hidden"] == 8


def test_saved_configs_with_legacy_or_missing_keys_still_validate():
    cfg = load_config("tiny")
    cfg["data"]["test_split"] = "test"
    cfg["sample"]["sampler"] = "eq7"
    del cfg["model"]["encoder_cfg"]["gine_hidden"], cfg["model"]["score"]
    check_config_values(cfg)
    # an override of a key the saved config lacks creates it
    out = apply_overrides(cfg, ["model.score.num_levels=7"])
    assert out["model"]["score"] == {"num_levels": 7}


def test_the_tiny_preset_is_the_one_tiny_definition():
    from dpcdvae.training.commands import tiny_property_encoder
    from dpcdvae.nn.encoder import CrystalEncoder, tiny_sizes

    tiny = load_preset("tiny")["model"]["encoder_cfg"]
    assert {k: tiny_sizes()[k] for k in ("hidden_channels", "num_blocks", "gine_hidden")} == {
        k: tiny[k] for k in ("hidden_channels", "num_blocks", "gine_hidden")}
    enc = CrystalEncoder.tiny("dime+gine")
    assert enc.gine is not None and enc.dimenet.cutoff == 7.0
    prop = tiny_property_encoder()
    assert prop["hidden_channels"] == tiny["hidden_channels"] and prop["cutoff"] == tiny["cutoff"]


# ------------------------------------------------------------------------------------- registries
def test_registry_helper():
    reg: Registry = Registry("thing", "x.thing")
    reg.register("a", "dpcdvae.errors:DPCDVAEError", flavour="lazy")

    @reg.register("b", kwargs={"base": 16}, flavour="direct")
    def parse(text, base=10):
        return int(text, base)

    assert tuple(reg) == ("a", "b") and reg.names(flavour="direct") == ("b",) and len(reg) == 2
    from dpcdvae.errors import DPCDVAEError

    assert reg["a"] is DPCDVAEError and reg.build("b", "ff") == 255 and reg.info("a") == {"flavour": "lazy"}
    with pytest.raises(ValueError, match=r"^x.thing must be one of a, b, got 'c'$"):
        reg.check("c")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", object())


def _crystals():
    from dpcdvae.geometry.lattice import lattice_from_params

    g = torch.Generator().manual_seed(0)
    na = torch.tensor([2, 3])
    batch = torch.repeat_interleave(torch.arange(2), na)
    lattice = lattice_from_params(torch.full((2, 3), 4.0), torch.full((2, 3), 90.0))
    return torch.rand(5, 3, generator=g), torch.randint(1, 101, (5,), generator=g), na, batch, lattice


@pytest.mark.parametrize("name", ENCODERS.names())
def test_every_registered_encoder_builds_and_runs(name):
    from dpcdvae.nn.encoder import tiny_sizes

    torch.manual_seed(0)
    enc = ENCODERS.build(name, out_channels=8, max_atoms=4, cutoff=4.0, max_neighbors=6, **tiny_sizes())
    frac, z, na, batch, lattice = _crystals()
    with torch.no_grad():
        out = enc(frac, z, na, batch, lattice)
    assert out.shape == (2, 8) and torch.isfinite(out).all()


@pytest.mark.parametrize("sampler", SAMPLERS.names())
def test_every_registered_process_and_sampler_builds_and_samples(sampler):
    proc_name = SAMPLERS.info(sampler)["process"]
    assert proc_name in PROCESSES
    cfg = load_config("tiny", [f"model.process={proc_name}", "model.score.num_levels=3",
                               "model.score.steps_per_level=1", "model.diffusion.num_steps=10"])
    check_config_values(cfg)
    proc = PROCESSES[proc_name].from_config(cfg["model"])
    assert proc.name == proc_name and sampler in proc.samplers
    _, _, na, batch, lattice = _crystals()
    calls = []

    def net_fn(x, t, i):
        calls.append(i)
        return torch.zeros_like(x), None

    steps = 4 if proc.takes_steps else None
    out = proc.sample(net_fn, batch, na, lattice, sampler=sampler, steps=steps,
                      generator=torch.Generator().manual_seed(0))
    assert out.shape == (5, 3) and bool(((out >= 0) & (out < 1)).all())
    assert len(calls) == proc.network_calls(steps)


def test_every_process_has_its_samplers_and_config_block():
    for name in PROCESSES:
        cls = PROCESSES[name]
        assert cls.name == name and cls.samplers == SAMPLERS.names(process=name)
        assert PROCESSES.info(name)["block"] in config_schema.defaults()["model"]


@pytest.mark.parametrize("name", list(DATASETS))
def test_every_registered_dataset_is_complete_and_selectable(name):
    info = get_dataset(name)
    assert info.name == name and set(info.splits) == {"train", "val", "test"} and info.max_atoms >= 1
    assert len(info.cov_cutoffs) == 2 and info.url("test").endswith(f"/{name}/test.csv")
    check_config_values(load_config("tiny", [f"data.dataset={name}", f"data.max_atoms={info.max_atoms}"]))


def test_cli_choices_come_from_the_registries():
    from dpcdvae.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices

    def choices(cmd, dest, parent=None):
        p = sub[cmd] if parent is None else next(
            a for a in sub[parent]._actions if a.dest == "data_command").choices[cmd]
        return tuple(next(a for a in p._actions if a.dest == dest).choices)

    assert choices("train", "encoder") == ENCODERS.names()
    assert choices("sample", "sampler") == choices("reconstruct", "sampler") == SAMPLERS.names()
    assert choices("train-property", "dataset") == tuple(DATASETS)
    assert choices("prepare", "dataset", "data") == choices("check-graph", "dataset", "data") == tuple(DATASETS)
