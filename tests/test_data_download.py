"""Dataset registry, checksums and the download path (no network: file:// URLs and a fake offline)."""

import gzip
import hashlib
import urllib.error
from pathlib import Path

import pytest

from dpcdvae.data import download as dl
from dpcdvae.data.datasets import DATASETS, SplitInfo, get_dataset, train_label


def test_registry_values():
    assert {k: (v.max_atoms, v.prop) for k, v in DATASETS.items()} == {
        "perov_5": (20, "heat_ref"),
        "carbon_24": (24, "energy_per_atom"),
        "mp_20": (20, "formation_energy_per_atom"),
    }
    rows = {k: tuple(v.splits[s].rows for s in ("train", "val", "test")) for k, v in DATASETS.items()}
    assert rows == {"perov_5": (11356, 3787, 3785), "carbon_24": (6091, 2032, 2030), "mp_20": (27136, 9047, 9046)}
    assert get_dataset("mp_20").url("val") == "https://raw.githubusercontent.com/txie-93/cdvae/main/data/mp_20/val.csv"
    assert train_label("carbon_24", "val") == "carbon_24 (val-trained)"
    assert train_label("mp_20", "train") == "mp_20"
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        get_dataset("nope")


def test_git_blob_sha1_matches_git():
    # `git hash-object` of an empty file and of "hello\n"
    assert dl.git_blob_sha1(b"") == "e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"
    assert dl.git_blob_sha1(b"hello\n") == "ce013625030ba8dba906f756967f9e9ca394464a"


def test_count_rows_with_multiline_cells():
    content = b'a,cif\n1,"x\ny\nz"\n2,"q"\n'
    assert dl.count_csv_rows(content) == 2


def test_local_copies_verify_against_cdvae(shared_data):
    # identical to CDVAE's files (PROVENANCE.md): blob prefix, full sha256 and rows agree
    dl.verify_file(shared_data / "perov_5" / "val.csv.gz", "perov_5", "val")
    dl.verify_file(shared_data / "carbon_24" / "test.csv.gz", "carbon_24", "test")
    # our mp_20 val lacks CDVAE's leading index column: must not verify
    with pytest.raises(dl.DownloadError, match="checksum mismatch"):
        dl.verify_file(shared_data / "mp_20" / "val.csv.gz", "mp_20", "val")


def test_verify_rejects_wrong_rows_and_sha256():
    content = b'material_id,cif\n1,"a\nb"\n'
    blob = dl.git_blob_sha1(content)[:8]
    dl.verify_content(content, SplitInfo("val", 1, blob, hashlib.sha256(content).hexdigest()), "x")
    with pytest.raises(dl.DownloadError, match="1 rows, expected 2"):
        dl.verify_content(content, SplitInfo("val", 2, blob), "x")
    with pytest.raises(dl.DownloadError, match="sha256 mismatch"):
        dl.verify_content(content, SplitInfo("val", 1, blob, "0" * 64), "x")


def test_download_from_file_url(shared_data, tmp_path):
    mirror = tmp_path / "mirror" / "perov_5"
    mirror.mkdir(parents=True)
    content = gzip.open(shared_data / "perov_5" / "val.csv.gz", "rb").read()
    (mirror / "val.csv").write_bytes(content)
    dest = tmp_path / "dest"
    root = dl.download_dataset("perov_5", dest, splits=("val",), base_url=(tmp_path / "mirror").as_uri())
    assert root == dest
    assert (dest / "perov_5" / "val.csv").read_bytes() == content
    assert [p.name for p in (dest / "perov_5").iterdir()] == ["val.csv"]  # no temp files left

    # a corrupted mirror is rejected and nothing is written
    (mirror / "test.csv").write_bytes(content)
    with pytest.raises(dl.DownloadError, match="perov_5/test"):
        dl.download_dataset("perov_5", dest, splits=("test",), base_url=(tmp_path / "mirror").as_uri())
    assert not (dest / "perov_5" / "test.csv").exists()


def test_offline_gives_one_line_hint(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(dl.urllib.request, "urlopen", offline)
    with pytest.raises(dl.DownloadError) as err:
        dl.download_dataset("carbon_24", tmp_path, splits=("val",))
    msg = str(err.value)
    assert "\n" not in msg and "--source DIR" in msg and "DPCDVAE_DATA" in msg
    assert not any(Path(tmp_path, "carbon_24").iterdir())
