"""Download CDVAE's benchmark CSVs over HTTPS and verify them (row count + checksum).

Only the standard library is used (urllib, hashlib, csv). A file is written to a temporary name in
the destination folder and moved into place only after it passed the checks.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import urllib.error
import urllib.request
from pathlib import Path

from dpcdvae.errors import DPCDVAEError
from dpcdvae.atomic import atomic_write_bytes
from dpcdvae.data.datasets import CDVAE_BASE_URL, SPLITS, SplitInfo, get_dataset


class DownloadError(DPCDVAEError):
    """A download that failed or did not verify (one-line message for the user)."""


_OFFLINE_HINT = (
    "pass --source DIR (a folder with <dataset>/<split>.csv[.gz]) or set DPCDVAE_DATA to such a folder"
)


def git_blob_sha1(content: bytes) -> str:
    """Git's object id of a file: sha1(b"blob <len>\\0" + content), hex."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def count_csv_rows(content: bytes) -> int:
    """Number of CSV records after the header (quoted CIF cells span many lines)."""
    reader = csv.reader(io.StringIO(content.decode("utf-8"), newline=""))
    n = sum(1 for _ in reader)
    return max(n - 1, 0)


def read_csv_bytes(path: Path) -> bytes:
    """Raw bytes of a .csv or .csv.gz file (uncompressed)."""
    path = Path(path)
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            return fh.read()
    return path.read_bytes()


def verify_content(content: bytes, info: SplitInfo, what: str) -> None:
    """Check rows and checksums of one split's CSV content; DownloadError if anything differs.

    The git blob id prefix is always checked; the full sha256 too where the registry knows it.
    """
    blob = git_blob_sha1(content)
    if not blob.startswith(info.git_blob_prefix):
        raise DownloadError(
            f"{what}: checksum mismatch (git blob {blob[:8]}, expected {info.git_blob_prefix}); "
            "the file differs from CDVAE's"
        )
    if info.sha256 is not None:
        digest = hashlib.sha256(content).hexdigest()
        if digest != info.sha256:
            raise DownloadError(
                f"{what}: sha256 mismatch ({digest[:12]}..., expected {info.sha256[:12]}...)"
            )
    rows = count_csv_rows(content)
    if rows != info.rows:
        raise DownloadError(f"{what}: {rows} rows, expected {info.rows}")


def verify_file(path: Path, dataset: str, split: str) -> None:
    """Verify a local copy (.csv or .csv.gz) of one of CDVAE's split files."""
    info = get_dataset(dataset).splits[split]
    verify_content(read_csv_bytes(Path(path)), info, f"{dataset}/{split} ({path})")


def _fetch(url: str, timeout: float) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.read()
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"cannot download {url} ({reason}); {_OFFLINE_HINT}") from None


def download_dataset(
    name: str,
    dest_dir: Path,
    splits: tuple[str, ...] = SPLITS,
    base_url: str = CDVAE_BASE_URL,
    timeout: float = 60.0,
) -> Path:
    """Download ``<base_url>/<name>/<split>.csv`` for each split into ``dest_dir/<name>/``.

    Every file is checked (row count, git blob id prefix, sha256 where known) before it is moved
    into place; an already present file that verifies is not downloaded again.

    Returns:
        ``dest_dir`` (the data source root: ``prepare_dataset(name, source=dest_dir, ...)``).

    Raises:
        DownloadError: no connection (the message says to pass --source or set DPCDVAE_DATA) or a
            file that fails verification.
    """
    info = get_dataset(name)
    out = Path(dest_dir) / name
    out.mkdir(parents=True, exist_ok=True)
    for split in splits:
        if split not in info.splits:
            raise ValueError(f"{name} has no split {split!r}; known: {', '.join(info.splits)}")
        target = out / f"{split}.csv"
        if target.exists():
            try:
                verify_content(target.read_bytes(), info.splits[split], f"{name}/{split}")
                continue
            except DownloadError:
                pass  # stale or partial copy: fetch again
        url = info.url(split, base_url)
        content = _fetch(url, timeout)
        verify_content(content, info.splits[split], f"{name}/{split} from {url}")
        atomic_write_bytes(target, content)
    return Path(dest_dir)
