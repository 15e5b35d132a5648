"""The documents the code cites live in the repository, and the sections it cites exist.

Text only (no imports of the package): every file under src/ is read as text.
"""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
DOCS = REPO / "docs"

# The presets are checked by their own test below (they were owned by another change when this was written).
OWNED_ELSEWHERE = ("src/dpcdvae/configs/",)

OUTSIDE = re.compile(r"\.\./shared|/work/shared|(?<![\w/])shared/(?:GEMNET|REFERENCE)")
BARE = re.compile(r"(?<![\w/.])(GEMNET|REFERENCE)\.md")
DOC_NAME = re.compile(r"(?<![\w/.-])((?:docs/)?[A-Z][A-Z0-9_]*\.md)")
CITED = re.compile(r"(?<![\w/])(docs/)?([A-Z][A-Z0-9_]*\.md)")
SECTIONS = re.compile(r"`?\s*§\d+(?:\.\d+)*(?:\s*(?:[-–,]|and)\s*§?\d+(?:\.\d+)*)*")
HEADING = re.compile(r"^#{2,4}\s+(\d+(?:\.\d+)*)\.?\s", re.M)


def _text_files(root: Path):
    for path in sorted(root.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix in {".py", ".yaml", ".yml", ".md", ".txt"}:
            yield path


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _sections(doc: Path) -> set[str]:
    return set(HEADING.findall(doc.read_text()))


def _cited_sections(text: str, default_doc: str | None = None) -> list[tuple[str, str]]:
    """(doc file name, section number) for every `X.md §n` (and, with ``default_doc``, bare `§n`)."""
    out, spans = [], []
    for m in CITED.finditer(text):
        tail = SECTIONS.match(text, m.end())
        if tail:
            spans.append((m.start(), tail.end()))
            out += [(m.group(2), num) for num in re.findall(r"\d+(?:\.\d+)*", tail.group(0))]
    if default_doc is not None:
        for m in re.finditer(r"§(\d+(?:\.\d+)*)", text):
            if not any(a <= m.start() < b for a, b in spans):
                out.append((default_doc, m.group(1)))
    return out


def _src_files():
    return [p for p in _text_files(SRC) if not _rel(p).startswith(OWNED_ELSEWHERE)]


def test_src_cites_no_file_outside_the_repository():
    bad = []
    for path in _src_files():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if OUTSIDE.search(line) or BARE.search(line):
                bad.append(f"{_rel(path)}:{n}: {line.strip()}")
    for path in sorted(DOCS.glob("*.md")):  # the docs may name the data folder, not documents there
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"shared/[\w/.-]*\.md", line):
                bad.append(f"{_rel(path)}:{n}: {line.strip()}")
    assert not bad, "references outside the repository (use docs/GEMNET.md / docs/REFERENCE.md):\n" + "\n".join(bad)


def test_every_cited_document_exists():
    missing = []
    for path in _src_files():
        for name in DOC_NAME.findall(path.read_text()):
            if not (REPO / name).is_file():
                missing.append(f"{_rel(path)}: {name}")
    assert not missing, "\n".join(missing)


def test_every_cited_section_exists():
    missing = []
    for path in _src_files():
        for doc, num in _cited_sections(path.read_text()):
            if (DOCS / doc).is_file() and num not in _sections(DOCS / doc):
                missing.append(f"{_rel(path)}: docs/{doc} §{num}")
    for path in sorted(DOCS.glob("*.md")):
        for doc, num in _cited_sections(path.read_text(), default_doc=path.name):
            if not (DOCS / doc).is_file():
                missing.append(f"{_rel(path)}: {doc} (no such file in docs/)")
            elif num not in _sections(DOCS / doc):
                missing.append(f"{_rel(path)}: {doc} §{num}")
    assert not missing, "\n".join(missing)


def test_architecture_names_every_module():
    arch = (DOCS / "ARCHITECTURE.md").read_text()
    pkg = SRC / "dpcdvae"
    missing = [p.relative_to(pkg).as_posix() for p in sorted(pkg.rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py") and p.relative_to(pkg).as_posix() not in arch]
    missing += [p.relative_to(pkg).as_posix() + "/" for p in sorted(pkg.iterdir())
                if p.is_dir() and p.name != "__pycache__" and p.relative_to(pkg).as_posix() + "/" not in arch]
    assert not missing, "docs/ARCHITECTURE.md does not mention: " + ", ".join(missing)


def test_files_owned_elsewhere_cite_no_file_outside_the_repository():
    bad = [f"{_rel(path)}:{n}" for path in _text_files(SRC) if _rel(path).startswith(OWNED_ELSEWHERE)
           for n, line in enumerate(path.read_text().splitlines(), 1)
           if OUTSIDE.search(line) or BARE.search(line)]
    assert not bad, bad
