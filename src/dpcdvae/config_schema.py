"""The typed config schema: one dataclass per config section, each field with its type, default,
range / choices and a one-line doc.

At runtime a config stays a plain nested dict (it is saved inside checkpoints that load with
``torch.load(weights_only=True)``); this schema only *describes* it: :func:`defaults` is the dict
of every default (``configs/base.yaml`` holds the same values, a test checks it), :func:`check_key`
/ :func:`check_type` validate one ``--set`` override, and :func:`validate` a whole config with a
one-line ValueError naming the key. Choices of registered things (encoders, processes, datasets) are
read from their registries (:mod:`dpcdvae.registry`, :data:`dpcdvae.data.datasets.DATASETS`).

Adding a config key: a field here (type, default, doc), the same default in ``configs/base.yaml``
and the code that reads it. Every constructor option of the encoder, denoiser and processes has a
field, so every one is reachable with ``--set``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from dpcdvae.data.datasets import DATASETS, SPLITS
from dpcdvae.registry import ENCODERS, PROCESSES, REVERSE_FRAMES

__all__ = ["Config", "DataConfig", "ModelConfig", "EncoderConfig", "DenoiserConfig", "DiffusionConfig",
           "ScoreConfig", "LossConfig", "TrainConfig", "SampleConfig", "FieldSpec", "defaults", "fields_by_key",
           "check_key", "check_type", "validate", "LEGACY_KEYS"]

# keys of older configs that no code reads any more; accepted (and ignored) in saved configs
LEGACY_KEYS = frozenset({"data.test_split", "sample.sampler"})


def opt(default: Any, doc: str, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
        hi_open: bool = False, choices: tuple | Callable[[], tuple] | None = None) -> Any:
    """A schema field: default, one-line doc, optional numeric range and choices."""
    return field(default=default, metadata=dict(doc=doc, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open,
                                                choices=choices))


def sub(cls: type, doc: str) -> Any:
    """A nested section."""
    return field(default_factory=cls, metadata=dict(doc=doc))


_POS = dict(lo=0, lo_open=True)      # > 0
_FRAC = dict(lo=0, hi=1)             # in [0, 1]
_OPEN01 = dict(lo=0, hi=1, lo_open=True, hi_open=True)
_GRAPH = ("ref", "exact"), ("ref", "union")


@dataclass
class DataConfig:
    """``data``: which dataset, splits and batches."""
    dataset: str = opt("perov_5", "registered dataset (data/datasets.py), or a custom one (data prepare --csv-dir)",
                       choices=lambda: tuple(DATASETS))
    train_split: str = opt("train", "split trained on (carbon_24 here has no train split: val)", choices=SPLITS)
    val_split: str = opt("val", "validation split, or holdout: a fixed fraction of the training split",
                         choices=SPLITS + ("holdout",))
    holdout_fraction: float = opt(0.1, "fraction of the training split held out for val_split: holdout",
                                  **_OPEN01)
    batch_size: int = opt(512, "training crystals per batch (per device)", lo=1)
    eval_batch_size: int = opt(512, "validation crystals per batch", lo=1)
    max_atoms: int = opt(20, "largest atom count (size of the atom-count tables)", lo=1)
    num_val_batches: Optional[int] = opt(None, "validation batches per validation (null = whole split)", lo=1)


@dataclass
class EncoderConfig:
    """``model.encoder_cfg``: keyword arguments of the encoder (nn/encoder.py ``CrystalEncoder``)."""
    cutoff: float = opt(7.0, "graph radius, Å", **_POS)
    max_neighbors: Optional[int] = opt(20, "neighbour cap per atom (null = none)", lo=1)
    images: str = opt("ref", "periodic images searched: ref (reference window) | exact", choices=_GRAPH[0])
    symmetrize: str = opt("ref", "edge symmetrisation: ref (reference) | union", choices=_GRAPH[1])
    triplet_exclusion: str = opt("edge", "DimeNet++ triplet rule: edge (geometric) | atom (reference quirk)",
                                 choices=("edge", "atom"))
    max_z: int = opt(100, "largest atomic number accepted", lo=1)
    out_channels: Optional[int] = opt(None, "encoder output width (null = model.latent_dim)", lo=1)
    hidden_channels: int = opt(128, "DimeNet++ hidden width", lo=1)
    num_blocks: int = opt(4, "DimeNet++ interaction blocks", lo=1)
    int_emb_size: int = opt(64, "DimeNet++ interaction embedding width", lo=1)
    basis_emb_size: int = opt(8, "DimeNet++ basis embedding width", lo=1)
    out_emb_channels: int = opt(256, "DimeNet++ output-block width", lo=1)
    num_spherical: int = opt(7, "DimeNet++ spherical basis size", lo=1)
    num_radial: int = opt(6, "DimeNet++ radial basis size", lo=1)
    envelope_exponent: int = opt(5, "DimeNet++ envelope exponent", lo=1)
    num_before_skip: int = opt(1, "DimeNet++ residual layers before the skip", lo=0)
    num_after_skip: int = opt(2, "DimeNet++ residual layers after the skip", lo=0)
    num_output_layers: int = opt(3, "DimeNet++ layers per output block", lo=1)
    output_initializer: str = opt("zeros", "DimeNet++ output-layer init: zeros (reference) | glorot_orthogonal",
                                  choices=("zeros", "glorot_orthogonal"))
    output_lin_up_bias: bool = opt(True, "bias of the output blocks' up-projection (reference: true)")
    gine_hidden: int = opt(256, "GINE node / edge width (+gine variants)", lo=1)
    gine_layers: int = opt(3, "GINE layers (+gine variants)", lo=1)
    gine_message_act: str = opt("softplus", "GINE message activation: softplus (DP-CDVAE) | relu (PyG)",
                                choices=("softplus", "relu"))
    na_channels: Optional[int] = opt(None, "atom-count embedding width (null = D, or D/2 with gine)", lo=1)


@dataclass
class DenoiserConfig:
    """``model.denoiser_cfg``: keyword arguments of ``DPDenoiser`` (nn/denoiser.py) and its GemNet-T."""
    conditioning: str = opt("dpcdvae", "dpcdvae: [emb|z|time|Fourier] -> MLP -> GemNet-T; cdvae: Linear([emb|z])",
                            choices=("dpcdvae", "cdvae"))
    fourier: Optional[bool] = opt(None, "Fourier features of the noisy coords (null = per conditioning)")
    eps_frame: Optional[str] = opt(None, "coordinate output frame: fractional | cartesian (null = the process's)",
                                   choices=("fractional", "cartesian"))
    cutoff: float = opt(7.0, "graph radius, Å", **_POS)
    max_neighbors: Optional[int] = opt(20, "neighbour cap per atom (null = none)", lo=1)
    images: str = opt("ref", "periodic images searched: ref | exact", choices=_GRAPH[0])
    symmetrize: str = opt("ref", "edge symmetrisation: ref | union", choices=_GRAPH[1])
    atom_emb_dim: int = opt(128, "atom-type embedding width", lo=1)
    time_dim: int = opt(128, "time-embedding width", lo=1)
    time_hidden: Optional[int] = opt(None, "time-embedding MLP width (null = 4 time_dim)", lo=1)
    fourier_min: int = opt(3, "lowest Fourier frequency exponent q (2 pi 2^q)", lo=0)
    fourier_max: int = opt(8, "highest Fourier frequency exponent q", lo=0)
    emb_size_edge: int = opt(128, "GemNet-T edge embedding width", lo=1)
    num_blocks: int = opt(3, "GemNet-T interaction blocks", lo=1)
    num_radial: int = opt(128, "GemNet-T radial basis size", lo=1)
    num_spherical: int = opt(7, "GemNet-T spherical basis size", lo=1)
    emb_size_rbf: int = opt(16, "GemNet-T radial basis embedding", lo=1)
    emb_size_cbf: int = opt(16, "GemNet-T circular basis embedding", lo=1)
    emb_size_trip: int = opt(64, "GemNet-T triplet embedding", lo=1)
    emb_size_bil_trip: int = opt(64, "GemNet-T bilinear triplet embedding", lo=1)
    num_before_skip: int = opt(1, "GemNet-T residual layers before the skip", lo=0)
    num_after_skip: int = opt(2, "GemNet-T residual layers after the skip", lo=0)
    num_concat: int = opt(1, "GemNet-T concat layers", lo=1)
    num_atom: int = opt(3, "GemNet-T atom-update residual layers", lo=0)
    envelope_exponent: int = opt(5, "GemNet-T envelope exponent", lo=1)
    energy_branch: bool = opt(False, "GemNet-T energy output branch (unused by the model)")
    scale_init: str = opt("reference", "GemNet-T scale factors: reference (fitted values) | ones",
                          choices=("reference", "ones"))


@dataclass
class DiffusionConfig:
    """``model.diffusion``: the ddpm process (DP-CDVAE; diffusion/schedule.py)."""
    num_steps: int = opt(1000, "diffusion steps T", lo=2)
    beta_start: float = opt(1.0e-10, "first beta", **_OPEN01)
    beta_end: float = opt(0.01, "last beta", **_OPEN01)
    kind: str = opt("sigmoid", "beta schedule: sigmoid (reference) | linear | cosine",
                    choices=("sigmoid", "linear", "cosine"))
    alphabar_quirk: bool = opt(True, "reference's alpha-bar (beta_0 left out of the product)")
    recenter: bool = opt(True, "remove per-crystal coordinate means (x0, noise, reverse state)")
    reverse_frame: str = opt("wrap", "state frame of the reverse chain: wrap to [0, 1) (reference) | fmod "
                             "into (-1, 1), idempotent after recentring (diffusion/ddpm.py)",
                             choices=REVERSE_FRAMES)
    type_sigma_begin: float = opt(0.01, "atom-type noise at t = 1", **_POS)
    type_sigma_end: float = opt(5.0, "atom-type noise at t = T", **_POS)


@dataclass
class ScoreConfig:
    """``model.score``: the score process (CDVAE; diffusion/score.py); unused by ddpm."""
    num_levels: int = opt(50, "geometric noise levels, for coordinates and types", lo=2)
    sigma_max: float = opt(10.0, "largest coordinate sigma, Å (CDVAE sigma_begin)", **_POS)
    sigma_min: float = opt(0.01, "smallest coordinate sigma, Å (CDVAE sigma_end)", **_POS)
    type_sigma_max: float = opt(5.0, "largest type sigma", **_POS)
    type_sigma_min: float = opt(0.01, "smallest type sigma", **_POS)
    steps_per_level: int = opt(100, "annealed Langevin steps per level", lo=1)
    step_lr: float = opt(1.0e-4, "Langevin step = step_lr (sigma / sigma_min)^2, Å^2", **_POS)


@dataclass
class LossConfig:
    """``model.loss``: loss weights (models/dpcdvae.py)."""
    cost_natom: float = opt(1.0, "atom-count loss weight", lo=0)
    cost_lattice: float = opt(100.0, "lattice loss weight", lo=0)
    cost_composition: float = opt(1.0, "composition loss weight", lo=0)
    cost_coord: float = opt(1.0, "coordinate loss weight", lo=0)
    cost_type: float = opt(0.1, "atom-type loss weight", lo=0)
    beta: float = opt(0.01, "KL weight", lo=0)
    mul_cost_coord: float = opt(10.0, "cost_coord multiplier once train.mul_cost_coord_* is reached", lo=0)


@dataclass
class ModelConfig:
    """``model``: the network and its coordinate process (models/build.py)."""
    encoder: str = opt("dime", "registered encoder (dpcdvae.registry.ENCODERS)", choices=lambda: ENCODERS.names())
    process: str = opt("ddpm", "coordinate process: ddpm (block diffusion) | score (block score)",
                       choices=lambda: PROCESSES.names())
    latent_dim: int = opt(256, "latent width", lo=1)
    hidden_dim: int = opt(256, "MLP heads width", lo=1)
    fc_num_layers: int = opt(1, "MLP heads hidden layers", lo=1)
    num_types: int = opt(100, "atom classes (class = Z - 1)", lo=1)
    encoder_cfg: EncoderConfig = sub(EncoderConfig, "encoder options")
    denoiser_cfg: DenoiserConfig = sub(DenoiserConfig, "denoiser options")
    diffusion: DiffusionConfig = sub(DiffusionConfig, "ddpm process")
    score: ScoreConfig = sub(ScoreConfig, "score process")
    loss: LossConfig = sub(LossConfig, "loss weights")


@dataclass
class TrainConfig:
    """``train``: optimisation and schedule (training/train.py, training/lightning.py, training/schedule.py)."""
    seed: int = opt(42, "global seed")
    max_epochs: int = opt(3000, "epoch limit", lo=1)
    max_minutes: Optional[float] = opt(None, "wall-clock budget of the run over --resume invocations, min", **_POS)
    segment_minutes: Optional[float] = opt(None, "stop this invocation after M minutes (--resume continues)", **_POS)
    lr_schedule: str = opt("plateau", "plateau (ReduceLROnPlateau) | cosine (over the budget)",
                           choices=("plateau", "cosine"))
    teacher_forcing_max_epoch: int = opt(400, "lattice teacher forcing up to this epoch", lo=0)
    teacher_forcing_fraction: Optional[float] = opt(None, "teacher forcing while progress < f (overrides epoch)",
                                                   **_FRAC)
    mul_cost_coord_epoch: int = opt(1000, "x mul_cost_coord once epoch > this", lo=0)
    mul_cost_coord_fraction: Optional[float] = opt(None, "x mul_cost_coord once progress >= f (overrides epoch)",
                                                  **_FRAC)
    mul_cost_coord_ramp: float = opt(0.0, "... reached linearly over this fraction of the budget (0 = switch)", **_FRAC)
    checkpoint_minutes: Optional[float] = opt(None, "save checkpoints every M minutes (null = each validation)",
                                              **_POS)
    divergence_factor: Optional[float] = opt(None, "roll back to the best state when val_loss > f x best (null = off)",
                                             lo=1, lo_open=True)
    divergence_lr_scale: float = opt(0.7, "... and multiply the peak LR by this", lo=0, hi=1, lo_open=True)
    lr: float = opt(1.0e-3, "learning rate", **_POS)
    warmup_steps: int = opt(200, "linear LR warm-up steps (0 = none)", lo=0)
    lr_factor: float = opt(0.6, "plateau: LR factor", **_OPEN01)
    lr_patience: int = opt(30, "plateau: patience, epochs", lo=0)
    min_lr: float = opt(1.0e-4, "smallest LR", lo=0)
    ema_decay: Optional[float] = opt(0.0, "weight-average decay (0 / null = none)", lo=0, hi=1, hi_open=True)
    ema_start: Optional[float] = opt(0.5, "progress at which the weight average starts (null = 0)", **_FRAC)
    model_weights: Optional[str] = opt("raw", "what model.pt holds: raw | ema | ema_denoiser (null = raw)",
                             choices=("raw", "ema", "ema_denoiser"))
    fused_adam: bool = opt(False, "torch's fused Adam on CUDA")
    grad_clip_value: Optional[float] = opt(0.5, "gradient clipping by value (null / 0 = none)", lo=0)
    precision: str = opt("bf16-mixed", "Lightning precision on CUDA (CPU: 32-true)")
    check_val_every_n_epoch: int = opt(1, "validation every N epochs", lo=1)
    log_every_n_steps: int = opt(20, "logging interval, steps", lo=1)
    compile: bool = opt(False, "torch.compile the network on CUDA")
    static_shapes: bool = opt(False, "padded, host-sync-free training step: atom buckets, sink atoms / edges")
    cuda_graphs: bool = opt(False, "capture the static-shape step as CUDA graphs (reduce-overhead; CUDA only)")
    static_atom_multiple: int = opt(256, "static_shapes: atoms per batch padded to the next multiple of this",
                                    lo=1)
    static_atom_sigmas: Optional[float] = opt(None, "static_shapes: one atom bucket for nearly every batch: a "
                                                    "batch's mean atoms + this many sd (training split), "
                                                    "rounded up to 64; larger batches use the multiples "
                                                    "(null = buckets by multiples only)", lo=0)
    static_edge_factor: float = opt(1.1, "static_shapes: edge / triplet buffers = factor x N_pad K (x (K-1))",
                                    lo=1, hi=2)
    static_max_degree: Optional[int] = opt(None, "static_shapes: in-degree bound per atom (null = 2 max_neighbors)",
                                           lo=2)


@dataclass
class SampleConfig:
    """``sample``: sampling defaults (sampling/run.py)."""
    batch_size: int = opt(1024, "crystals per sampling batch (--batch-size overrides)", lo=1)
    static_shapes: bool = opt(False, "padded fixed-shape network call per reverse step (--static-shapes)")
    cuda_graphs: bool = opt(False, "capture that call as CUDA graphs (reduce-overhead; implies static_shapes; "
                                   "CUDA only; --cuda-graphs)")
    static_atom_multiple: int = opt(256, "static_shapes: atoms per batch padded to the next multiple of this",
                                    lo=1)
    static_edge_factor: float = opt(1.1, "static_shapes: edge buffer = factor x N_pad K", lo=1, hi=2)
    static_max_degree: Optional[int] = opt(None, "static_shapes: in-degree bound per atom (null = 2 max_neighbors)",
                                           lo=2)


@dataclass
class Config:
    """A whole config; ``name`` is set by ``load_config`` (the preset or YAML path)."""
    data: DataConfig = sub(DataConfig, "dataset and batches")
    model: ModelConfig = sub(ModelConfig, "network and process")
    train: TrainConfig = sub(TrainConfig, "optimisation")
    sample: SampleConfig = sub(SampleConfig, "sampling")
    name: Optional[str] = opt(None, "preset name or YAML path the config came from")


# ------------------------------------------------------------------------------------ flattening
@dataclass(frozen=True)
class FieldSpec:
    """One leaf key: its base type (int, float, bool, str), null allowed?, default, doc, range, choices."""
    key: str
    type: type
    nullable: bool
    default: Any
    doc: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    choices: Any = None

    def choice_names(self) -> tuple | None:
        return self.choices() if callable(self.choices) else self.choices


def _walk(cls: type, prefix: str, leaves: dict[str, FieldSpec], sections: set[str]) -> None:
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            sections.add(key)
            _walk(tp, key + ".", leaves, sections)
            continue
        args = typing.get_args(tp)
        nullable = type(None) in args
        base = next(a for a in args if a is not type(None)) if nullable else tp
        m = f.metadata
        leaves[key] = FieldSpec(key, base, nullable, f.default, m["doc"], m["lo"], m["hi"], m["lo_open"],
                                m["hi_open"], m["choices"])


_LEAVES: dict[str, FieldSpec] = {}
_SECTIONS: set[str] = set()
_walk(Config, "", _LEAVES, _SECTIONS)


def fields_by_key() -> dict[str, FieldSpec]:
    """Every leaf key (dotted) -> its :class:`FieldSpec`."""
    return dict(_LEAVES)


def defaults() -> dict:
    """The default config as a plain nested dict (without ``name``)."""
    out = dataclasses.asdict(Config())
    out.pop("name")
    return out


def check_key(key: str, section_ok: bool = False) -> FieldSpec | None:
    """ValueError ``unknown config key 'k'`` unless ``key`` is a schema leaf (or, with ``section_ok``,
    a section); returns the leaf's spec (None for a section)."""
    if key in _LEAVES:
        return _LEAVES[key]
    if section_ok and key in _SECTIONS:
        return None
    raise ValueError(f"unknown config key {key!r}")


def _type_ok(spec: FieldSpec, val: Any) -> bool:
    if val is None:
        return spec.nullable
    if spec.type is bool:
        return isinstance(val, bool)
    if isinstance(val, bool):
        return False
    if spec.type is int:
        return isinstance(val, int)
    if spec.type is float:
        return isinstance(val, (int, float))
    return isinstance(val, spec.type)


def _what(spec: FieldSpec) -> str:
    if spec.type is bool:
        return "true, false or null" if spec.nullable else "true or false"
    what = {int: "an integer", float: "a number", str: "a string"}[spec.type]
    return what + (" or null" if spec.nullable else "")


def check_type(key: str, val: Any) -> None:
    """One-line ValueError when ``val`` is not of the schema type of ``key`` (or not finite)."""
    spec = check_key(key)
    assert spec is not None
    if not _type_ok(spec, val):
        raise ValueError(f"{key} must be {_what(spec)}, got {val!r}")
    if isinstance(val, float) and not math.isfinite(val):
        raise ValueError(f"{key} must be a finite number, got {val!r}")


def _check_range(spec: FieldSpec, val: Any) -> None:
    if val is None or spec.type not in (int, float):
        return
    lo, hi = spec.lo, spec.hi
    if (lo is not None and (val <= lo if spec.lo_open else val < lo)) or (
            hi is not None and (val >= hi if spec.hi_open else val > hi)):
        bounds = [f"{'>' if spec.lo_open else '>='} {lo:g}" if lo is not None else "",
                  f"{'<' if spec.hi_open else '<='} {hi:g}" if hi is not None else ""]
        what = "an integer" if spec.type is int else "a number"
        need = " ".join([what, " and ".join(b for b in bounds if b)]) + (" or null" if spec.nullable else "")
        raise ValueError(f"{spec.key} must be {need}, got {val!r}")


def _check_choice(spec: FieldSpec, val: Any) -> None:
    names = spec.choice_names()
    if names is not None and val is not None and val not in names:
        raise ValueError(f"{spec.key} must be one of {', '.join(names)}, got {val!r}")


def iter_leaves(cfg: dict, prefix: str = "") -> typing.Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested dict; a dict under a leaf key is a leaf value."""
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and key not in _LEAVES:
            yield from iter_leaves(v, key + ".")
        else:
            yield key, v


def validate(cfg: dict, *, values: bool = True, choices: bool = True) -> None:
    """Reject unknown keys and values of the wrong type in ``cfg`` (one line naming the key); with
    ``values`` also out-of-range numbers, with ``choices`` names outside their choices / registry.
    Keys may be missing (older saved configs: the code uses its defaults); :data:`LEGACY_KEYS` are
    ignored."""
    for key, val in iter_leaves(cfg):
        if key in LEGACY_KEYS:
            continue
        if key in _SECTIONS:
            raise ValueError(f"{key} must be a mapping of keys, got {val!r}")
        check_type(key, val)
        if values:
            _check_range(_LEAVES[key], val)
        if choices:
            _check_choice(_LEAVES[key], val)
