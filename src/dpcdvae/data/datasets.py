"""Registry of the three CDVAE benchmarks: sizes, property columns, splits and download checks.

The public CSVs live in github txie-93/cdvae under ``data/<name>/<split>.csv``. For every split we
record the row count of CDVAE's file and the first 8 hex digits of its git blob id
(``sha1(b"blob <len>\\0" + content)``), which is what the repository's tree lists. Where a local
copy was checked to be byte-identical to CDVAE's file (after gunzip) we also record its full
sha256, computed from that copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpcdvae.registry import Registry

CDVAE_BASE_URL = "https://raw.githubusercontent.com/txie-93/cdvae/main/data"

SPLITS = ("train", "val", "test")
# other names of the benchmarks accepted by ``evaluate --dataset`` (not usable as custom names)
DATASET_ALIASES = {"perovskite": "perov_5", "perov": "perov_5", "carbon": "carbon_24", "mp20": "mp_20"}


@dataclass(frozen=True)
class SplitInfo:
    """One CSV split of CDVAE's repository.

    Attributes:
        name: "train", "val" or "test".
        rows: number of data rows (header excluded; CIF cells span several lines).
        git_blob_prefix: first 8 hex digits of the file's git blob sha1.
        sha256: full sha256 of the uncompressed CSV, where known; None otherwise.
    """

    name: str
    rows: int
    git_blob_prefix: str
    sha256: str | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """A benchmark: its maximal cell size, property columns and splits.

    Attributes:
        name: registry key, e.g. "mp_20" (also the folder name in the data source).
        max_atoms: largest number of atoms per cell; bigger cells are skipped in preprocessing.
        prop: the property column the models use (CDVAE's ``prop`` in the data config).
        extra_props: further numeric columns kept in the cache after ``prop``.
        splits: split name -> SplitInfo.
        cov_cutoffs: (structure, composition) fingerprint-distance cutoffs of the COV metrics
            (CDVAE ``COV_Cutoffs``).
        split_files: custom datasets only (``dpcdvae data prepare --csv-dir``): split -> path of the
            CSV the cache was built from (the ground truth of ``evaluate``); empty for the benchmarks,
            whose CSVs follow the source rule ``<source>/<name>/<split>.csv[.gz]``.
        custom: True for a dataset registered from a cache record (``dpcdvae.data.custom``).
    """

    name: str
    max_atoms: int
    prop: str
    extra_props: tuple[str, ...] = ()
    splits: dict[str, SplitInfo] = field(default_factory=dict)
    cov_cutoffs: tuple[float, float] = (0.2, 4.0)
    split_files: dict[str, str] = field(default_factory=dict)
    custom: bool = False

    @property
    def prop_names(self) -> list[str]:
        """All property columns stored in the cache, the model's property first (a custom dataset
        without ``--prop`` has none)."""
        return [p for p in (self.prop, *self.extra_props) if p]

    def url(self, split: str, base_url: str = CDVAE_BASE_URL) -> str:
        """Download address of one split's CSV."""
        return f"{base_url.rstrip('/')}/{self.name}/{split}.csv"


def _splits(*infos: SplitInfo) -> dict[str, SplitInfo]:
    return {info.name: info for info in infos}


# The dataset registry (``data.dataset``, ``--dataset``): name -> DatasetInfo. Register a new
# benchmark with ``DATASETS.register(name, DatasetInfo(...))`` (docs/ARCHITECTURE.md). Custom
# datasets (``dpcdvae data prepare --csv-dir DIR --name NAME``) are registered from their cache
# record ``<cache_dir>/NAME/dataset.json`` with ``custom=True`` (dpcdvae.data.custom).
DATASETS: Registry = Registry("dataset", "data.dataset")
for _info in (
    DatasetInfo(
        name="perov_5",
        max_atoms=20,
        prop="heat_ref",
        extra_props=("heat_all", "dir_gap", "ind_gap"),
        splits=_splits(
            SplitInfo("train", 11356, "0769074b"),
            SplitInfo(
                "val", 3787, "4a2c8dde",
                "326f401219901270374b71e2faff63df3a29a99fd26f469993b9f476b693daf2",
            ),
            SplitInfo(
                "test", 3785, "d3c5d5af",
                "a85878c685037f0a578257f6d4fcdde00e968dbab73c5f1e90ecef65218513f6",
            ),
        ),
    ),
    DatasetInfo(
        name="carbon_24",
        max_atoms=24,
        prop="energy_per_atom",
        splits=_splits(
            SplitInfo("train", 6091, "5e7ae970"),
            SplitInfo(
                "val", 2032, "b3e29b92",
                "36c00689cd63073c954a58bc6ed6e2adb7aeed5a630c994970959a1babffd50e",
            ),
            SplitInfo(
                "test", 2030, "9beca843",
                "386b17c08816f434818d51e46687bf72ff3f92348f3ba24823e4758f1fe8a969",
            ),
        ),
    ),
    DatasetInfo(
        name="mp_20",
        max_atoms=20,
        prop="formation_energy_per_atom",
        extra_props=("band_gap", "e_above_hull"),
        splits=_splits(
            SplitInfo("train", 27136, "b1c9d498"),
            SplitInfo("val", 9047, "7efe4d7e"),
            SplitInfo("test", 9046, "5dc64304"),
        ),
        cov_cutoffs=(0.4, 10.0),
    ),
):
    DATASETS.register(_info.name, _info)


def get_dataset(name: str, cache_dir=None) -> DatasetInfo:
    """Registry lookup; a name not registered yet is looked up as a custom dataset in the cache
    (``cache_dir``, None: $DPCDVAE_CACHE or ~/.cache/dpcdvae). ValueError with the known names for an
    unknown one."""
    if name in DATASETS:
        return DATASETS[name]
    from dpcdvae.data.custom import register_custom

    info = register_custom(name, cache_dir)
    if info is None:
        raise ValueError(
            f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))} (a custom dataset: "
            f"`dpcdvae data prepare --csv-dir DIR --name {name}` first, with the same cache dir)"
        )
    return info


def builtin_datasets() -> tuple[str, ...]:
    """The names of the registered benchmarks (not the custom datasets)."""
    return tuple(n for n in DATASETS if not DATASETS[n].custom)


def train_label(dataset: str, train_split: str) -> str:
    """Human label of a preparation: "mp_20", or "carbon_24 (val-trained)" when not on train."""
    return dataset if train_split == "train" else f"{dataset} ({train_split}-trained)"
