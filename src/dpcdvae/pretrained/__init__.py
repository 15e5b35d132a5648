"""Models shipped inside the package: ``load_pretrained("perov_5")`` works offline, right after install.

Each entry of :data:`PRETRAINED` is a folder ``pretrained/<name>/`` holding

- ``model/``: the generator as a bf16 sharded model file (``index.json`` + ``shard_*.pt``, written by
  ``dpcdvae export --max-mb 15 --dtype bfloat16``; weights are cast back to fp32 on load),
- ``property/property.pt`` (+ ``summary.json``): the property predictor used for W(E),
- ``test_table.npz``: the ground-truth table ``dpcdvae evaluate gen`` computes for the test split
  (validity, fingerprints, descriptors), reused when the test CSV's content matches
  (:mod:`dpcdvae.evaluation.shipped`).

Everything is read with ``torch.load(..., weights_only=True)`` / ``np.load(allow_pickle=False)``.
Importing this module imports neither torch nor numpy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PretrainedInfo", "PRETRAINED", "PROP_PREFIX", "available", "get_info", "pretrained_dir",
           "model_path", "property_path", "test_table_path", "load_pretrained", "resolve_prop_ckpt"]

PROP_PREFIX = "pretrained:"  # ``--prop-ckpt pretrained:perov_5`` = the shipped property predictor


@dataclass(frozen=True)
class PretrainedInfo:
    """What a shipped model is and how good it measured.

    Attributes:
        name: registry key (folder name under ``pretrained/``).
        dataset: the dataset it was trained on (and whose test split ``test_table.npz`` holds).
        label: one honest line for printouts and reports.
        training: how it was trained (hardware, budget, epochs, recipe).
        measured: its measured numbers (reconstruction of the whole test split, ...).
        paper: the paper's numbers for the same protocol.
        property_model: what the property predictor is and how good it measured.
    """

    name: str
    dataset: str
    label: str
    training: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    paper: dict[str, Any] = field(default_factory=dict)
    property_model: dict[str, Any] = field(default_factory=dict)


PRETRAINED: dict[str, PretrainedInfo] = {
    "perov_5": PretrainedInfo(
        name="perov_5",
        dataset="perov_5",
        label=("20-minute budget model, past the paper's reconstruction "
               "(94.43 % match / RMS 0.0169 vs the paper's 90.04 % / 0.0212)"),
        training={
            "config": "perov_5 preset (the paper's model, encoder dime, 10.9 M parameters), budget recipe at batch 2048",
            "hardware": "one NVIDIA H200, alone on the card",
            "minutes": 20.0, "epochs": 1392, "optimizer_steps": 6960, "batch_size": 2048,
            "weights": "raw (model_raw.pt of the run), stored in bfloat16",
            "source": "RESULTS.md 'Perov-5 in 20 minutes: the preset'; results/perov_5/dime/train_summary.json",
        },
        measured={
            "reconstruction": {"split": "test", "n": 3785, "sampler": "full Eq. 7 chain (999 steps)",
                               "match_rate_pct": 94.43, "rms_dist": 0.0169},
        },
        paper={"reconstruction": {"match_rate_pct": 90.04, "rms_dist": 0.0212},
               "generation_table_ii": {"struct_valid_pct": 100.0, "comp_valid_pct": 98.07, "cov_recall_pct": 99.52,
                                       "cov_precision_pct": 98.39, "wdist_density": 0.1807, "wdist_prop": 0.0713,
                                       "wdist_num_elems": 0.0767, "n_generated": 10240}},
        property_model={"property": "heat_ref (formation energy, eV/atom)", "epochs": 19,
                        "val_mae": 0.0544, "test_mae": 0.0555, "target_std": 0.680},
    ),
}


def available() -> list[str]:
    return sorted(PRETRAINED)


def get_info(name: str) -> PretrainedInfo:
    """The registry entry of ``name``; ValueError (one line) naming the available ones otherwise."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown pretrained model {name!r}; available: {', '.join(available())}")
    return PRETRAINED[name]


def pretrained_dir(name: str) -> Path:
    """Folder of the shipped files of ``name`` (inside the installed package)."""
    get_info(name)
    path = Path(__file__).resolve().parent / name
    if not path.is_dir():
        raise FileNotFoundError(f"pretrained model {name!r}: folder {path} is missing from this install "
                                "(reinstall dpcdvae)")
    return path


def _file(name: str, rel: str, what: str) -> Path:
    path = pretrained_dir(name) / rel
    if not path.exists():
        raise FileNotFoundError(f"pretrained {name!r}: {what} {path} is missing from this install (reinstall dpcdvae)")
    return path


def model_path(name: str) -> Path:
    """The shipped generator (a sharded model folder that ``load_model`` and ``--ckpt`` read)."""
    return _file(name, "model", "model folder")


def property_path(name: str) -> Path:
    """The shipped property predictor (``--prop-ckpt``)."""
    return _file(name, "property/property.pt", "property predictor")


def test_table_path(name: str) -> Path | None:
    """The shipped ground-truth table of the test split, or None when none is shipped."""
    path = pretrained_dir(name) / "test_table.npz"
    return path if path.is_file() else None


def load_pretrained(name: str, device: str = "cpu") -> tuple[Any, dict]:
    """(model in eval mode on ``device``, config) of the shipped model ``name``; offline, weights-only."""
    from dpcdvae.models.checkpoint import load_model

    return load_model(model_path(name), device)


def resolve_prop_ckpt(spec: str | Path | None, dataset: str | None = None) -> Path | None:
    """``pretrained:NAME`` -> the shipped property predictor of NAME (refused when ``dataset`` is given
    and differs from NAME's dataset); anything else -> ``Path(spec)``; None -> None."""
    if spec is None:
        return None
    text = str(spec)
    if not text.startswith(PROP_PREFIX):
        return Path(spec)
    name = text[len(PROP_PREFIX):]
    info = get_info(name)
    if dataset is not None and dataset != info.dataset:
        raise ValueError(f"--prop-ckpt {text} predicts {info.dataset} crystals; it cannot score --dataset {dataset}")
    return property_path(name)
