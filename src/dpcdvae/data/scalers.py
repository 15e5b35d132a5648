"""Standardisation of the lattice target and the property columns (CDVAE's StandardScaler).

Lattice target ("scale_length"): the 6-vector [a/N^(1/3), b/N^(1/3), c/N^(1/3), α, β, γ] (Å, degrees,
N = atoms in the cell). Mean and population standard deviation (+1e-5) over the training split;
properties the same way per column, ignoring NaN cells.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dpcdvae.atomic import atomic_write_text
from dpcdvae.jsonio import dumps_strict

EPS = 1e-5
SCALERS_VERSION = 1
LATTICE_FEATURES = ("a/N^(1/3)", "b/N^(1/3)", "c/N^(1/3)", "alpha", "beta", "gamma")


def lattice_features(lengths: Tensor, angles: Tensor, num_atoms: Tensor) -> Tensor:
    """[B,3] Å, [B,3] deg, [B] -> [B,6] = [lengths / N^(1/3), angles] in the dtype of ``lengths``."""
    scale = num_atoms.to(lengths.dtype).pow(1.0 / 3.0).unsqueeze(-1)
    return torch.cat([lengths / scale, angles.to(lengths.dtype)], dim=-1)


def lattice_from_features(features: Tensor, num_atoms: Tensor) -> tuple[Tensor, Tensor]:
    """Inverse of ``lattice_features``: [B,6], [B] -> (lengths [B,3] Å, angles [B,3] deg)."""
    scale = num_atoms.to(features.dtype).pow(1.0 / 3.0).unsqueeze(-1)
    return features[:, :3] * scale, features[:, 3:]


class Standardizer:
    """x -> (x - mean) / std per column; mean/std are [D] tensors (models register them as buffers).

    A column without any finite training value has mean = std = NaN (its outputs are NaN).
    """

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        mean = torch.as_tensor(mean, dtype=torch.float32)
        std = torch.as_tensor(std, dtype=torch.float32)
        if mean.shape != std.shape or mean.dim() != 1:
            raise ValueError(f"mean and std must be equal 1-D shapes, got {tuple(mean.shape)} and {tuple(std.shape)}")
        self.mean = mean
        self.std = std

    @classmethod
    def fit(cls, x: Tensor, eps: float = EPS) -> "Standardizer":
        """Fit on [B, D] rows (NaN cells ignored): mean, population std + eps, in float64."""
        x = x.detach().to(torch.float64)
        if x.dim() != 2:
            raise ValueError(f"expected [B, D] values, got shape {tuple(x.shape)}")
        finite = torch.isfinite(x)
        count = finite.sum(0)
        safe = torch.where(finite, x, torch.zeros((), dtype=x.dtype))
        mean = safe.sum(0) / count.clamp(min=1)
        var = (torch.where(finite, x - mean, torch.zeros((), dtype=x.dtype)) ** 2).sum(0) / count.clamp(min=1)
        std = var.sqrt() + eps
        nan = torch.full_like(mean, float("nan"))
        mean = torch.where(count > 0, mean, nan)
        std = torch.where(count > 0, std, nan)
        return cls(mean.float(), std.float())

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def transform(self, x: Tensor) -> Tensor:
        """[..., D] raw -> [..., D] standardised."""
        return (x - self.mean.to(x.device, x.dtype)) / self.std.to(x.device, x.dtype)

    def inverse(self, x: Tensor) -> Tensor:
        """[..., D] standardised -> [..., D] raw."""
        return x * self.std.to(x.device, x.dtype) + self.mean.to(x.device, x.dtype)

    def to(self, device: torch.device | str) -> "Standardizer":
        return Standardizer(self.mean.to(device), self.std.to(device))

    def select(self, columns: list[int]) -> "Standardizer":
        """The standardiser of a subset of columns."""
        return Standardizer(self.mean[columns], self.std[columns])

    def to_dict(self) -> dict[str, list[float | None]]:
        return {"mean": _to_json_list(self.mean), "std": _to_json_list(self.std)}

    @classmethod
    def from_dict(cls, d: dict) -> "Standardizer":
        return cls(torch.tensor(_from_json_list(d["mean"])), torch.tensor(_from_json_list(d["std"])))

    def __repr__(self) -> str:
        return f"Standardizer(mean={self.mean.tolist()}, std={self.std.tolist()})"


def _to_json_list(t: Tensor) -> list[float | None]:
    return [None if not math.isfinite(v) else float(v) for v in t.double().tolist()]


def _from_json_list(values: list[float | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


@dataclass
class Scalers:
    """The scalers of one prepared dataset (fitted on its training split).

    Attributes:
        dataset: registry name.
        train_split: split the scalers were fitted on ("train", or e.g. "val").
        label: "mp_20" or "carbon_24 (val-trained)".
        n_train: number of crystals in the training split.
        lattice: Standardizer of the [B,6] lattice features.
        props: Standardizer over all property columns (order of ``prop_names``).
        prop_names: property column names.
        prop_counts: number of finite training values per property column.
    """

    dataset: str
    train_split: str
    label: str
    n_train: int
    lattice: Standardizer
    props: Standardizer
    prop_names: list[str]
    prop_counts: list[int]

    def prop(self, name: str) -> Standardizer:
        """[1]-column Standardizer of one property; ValueError if unknown or without training values."""
        if name not in self.prop_names:
            raise ValueError(f"{self.dataset} has no property {name!r}; known: {', '.join(self.prop_names)}")
        i = self.prop_names.index(name)
        if self.prop_counts[i] == 0:
            raise ValueError(
                f"property {name!r} has no values in the {self.dataset} {self.train_split} split; "
                "train on a split that has them (--train-split val)"
            )
        return self.props.select([i])

    def to_json(self) -> dict:
        return {
            "version": SCALERS_VERSION,
            "dataset": self.dataset,
            "train_split": self.train_split,
            "label": self.label,
            "n_train": self.n_train,
            "lattice": {"features": list(LATTICE_FEATURES), **self.lattice.to_dict()},
            "props": {
                name: {"mean": m, "std": s, "count": c}
                for name, m, s, c in zip(
                    self.prop_names, _to_json_list(self.props.mean), _to_json_list(self.props.std), self.prop_counts
                )
            },
        }

    @classmethod
    def from_json(cls, d: dict) -> "Scalers":
        names = list(d["props"])
        props = Standardizer(
            torch.tensor(_from_json_list([d["props"][n]["mean"] for n in names]), dtype=torch.float32).reshape(-1),
            torch.tensor(_from_json_list([d["props"][n]["std"] for n in names]), dtype=torch.float32).reshape(-1),
        )
        return cls(
            dataset=d["dataset"],
            train_split=d["train_split"],
            label=d["label"],
            n_train=int(d["n_train"]),
            lattice=Standardizer.from_dict(d["lattice"]),
            props=props,
            prop_names=names,
            prop_counts=[int(d["props"][n]["count"]) for n in names],
        )


def fit_scalers(
    lengths: Tensor,
    angles: Tensor,
    num_atoms: Tensor,
    props: Tensor,
    prop_names: list[str],
    dataset: str,
    train_split: str,
    label: str,
) -> Scalers:
    """Fit the lattice and property scalers on one (training) split: [B,3], [B,3], [B], [B,P]."""
    lattice = Standardizer.fit(lattice_features(lengths.double(), angles.double(), num_atoms))
    prop_scaler = Standardizer.fit(props.reshape(props.shape[0], len(prop_names)))
    counts = torch.isfinite(props).sum(0).tolist() if props.numel() else [0] * len(prop_names)
    return Scalers(dataset, train_split, label, int(num_atoms.shape[0]), lattice, prop_scaler, list(prop_names),
                   [int(c) for c in counts])


def save_scalers(path: Path, scalers: Scalers) -> Path:
    """Atomically write ``scalers.json`` (NaN written as null)."""
    return atomic_write_text(Path(path), dumps_strict(scalers.to_json()) + "\n")


def load_scalers_file(path: Path) -> Scalers:
    """Read a ``scalers.json``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no scalers at {path}; run `dpcdvae data prepare` first")
    return Scalers.from_json(json.loads(path.read_text()))
