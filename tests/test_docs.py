"""The documentation stands on its own: no reference to a specification or a folder outside the repository,
every relative link of README.md and docs/*.md resolves, and the tests docs/method.md cites exist."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ["src", "data_prep", "benchmarks", "configs", "docs", "README.md", "Makefile"]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".sbatch", ".toml", ".cfg", ".sh", ""}
FORBIDDEN = ("SPEC §", "SPEC section", "../shared")
# [text](target) and ![alt](target); the target ends at whitespace or ")" (an optional "title" is ignored)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CITED_TEST = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")


def _scanned_files() -> list[Path]:
    files: list[Path] = []
    for name in SCANNED:
        path = ROOT / name
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix in SUFFIXES and "__pycache__" not in p.parts
            ]
    return sorted(files)


def _markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_no_file_points_outside_the_repository_for_its_specification():
    found = []
    for path in _scanned_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        for number, line in enumerate(text.splitlines(), start=1):
            found += [
                f"{path.relative_to(ROOT)}:{number}: {word!r} in {line.strip()[:100]}"
                for word in FORBIDDEN
                if word in line
            ]
    assert not found, (
        "references outside the repository (point them at docs/method.md or docs/design.md):\n"
        + "\n".join(found)
    )


def test_the_scan_covers_the_code_and_the_docs():
    names = {p.relative_to(ROOT).as_posix() for p in _scanned_files()}
    assert {"README.md", "Makefile", "docs/method.md", "docs/design.md", "src/models/structsa.py"} <= names


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_markdown_link_points_to_an_existing_file(doc: Path):
    text = re.sub(r"```.*?```", "", doc.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I) or target.startswith("#"):
            continue  # http(s):, mailto: ... and anchors within the page
        file_part = unquote(target.split("#", 1)[0].split("?", 1)[0])
        resolved = (doc.parent / file_part).resolve()
        if not resolved.exists():
            broken.append(f"{target} -> {resolved}")
        elif not resolved.is_relative_to(ROOT):
            broken.append(f"{target} leaves the repository ({resolved})")
    assert not broken, f"{doc.relative_to(ROOT)}: broken relative links:\n" + "\n".join(broken)


def test_the_tests_cited_by_the_method_page_exist():
    text = (ROOT / "docs" / "method.md").read_text(encoding="utf-8")
    cited = CITED_TEST.findall(text)
    # "`::name`" continues the file of the previous full citation in the same table cell
    for cell in re.findall(r"\|([^|\n]*tests/[^|\n]*)\|?", text):
        current = None
        for path, name in re.findall(r"`(?:(tests/[\w/]+\.py))?::(test_\w+)`", cell):
            current = path or current
            if current:
                cited.append((current, name))
    assert len(cited) > 20
    missing = []
    for path, name in sorted(set(cited)):
        source = ROOT / path
        if not source.is_file() or not re.search(
            rf"^def {name}\(", source.read_text(encoding="utf-8"), flags=re.M
        ):
            missing.append(f"{path}::{name}")
    assert not missing, "docs/method.md cites tests that do not exist: " + ", ".join(missing)
