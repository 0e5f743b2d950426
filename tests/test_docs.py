"""The documentation stands on its own and stays findable: no reference to a specification or a folder outside
the repository; every relative link of README.md, BENCHMARKS.md and docs/**/*.md resolves, anchors included;
every docs page is reachable from the README; the README stays short with a contents table; every path and
`python -m` module the docs name exists; every make target has a `make help` line; the tests docs/method.md
cites exist."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCANNED = [
    "src",
    "data_prep",
    "benchmarks",
    "experiments",
    "configs",
    "docs",
    "README.md",
    "BENCHMARKS.md",
    "Makefile",
]
SUFFIXES = {".py", ".md", ".yaml", ".yml", ".txt", ".sbatch", ".toml", ".cfg", ".sh", ""}
FORBIDDEN = ("SPEC §", "SPEC section", "../shared", "work/shared")
# [text](target) and ![alt](target); the target ends at whitespace or ")" (an optional "title" is ignored)
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CITED_TEST = re.compile(r"`(tests/[\w/]+\.py)::(test_\w+)`")
README_MAX_LINES = 250
# a repository path the docs name in backticks: top folder / ... / file with a known suffix, no wildcard
NAMED_PATH = re.compile(
    r"`((?:src|data_prep|benchmarks|experiments|tests|configs|docs)/[\w./-]+\.(?:py|yaml|md|sbatch|txt|png))(?:::\w+)?`"
)
NAMED_MODULE = re.compile(r"python -m ((?:src|data_prep|benchmarks|experiments)(?:\.\w+)+)")


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
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _without_code_blocks(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link targets and inline markup dropped, lower case, punctuation
    removed, spaces to hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip())
    text = re.sub(r"[`*]", "", text).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file: one per heading, duplicates numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    anchors = set()
    for heading in re.findall(
        r"^#{1,6}\s+(.+?)\s*#*\s*$", _without_code_blocks(path.read_text(encoding="utf-8")), re.M
    ):
        slug = github_slug(heading)
        count = seen.get(slug, 0)
        anchors.add(slug if count == 0 else f"{slug}-{count}")
        seen[slug] = count + 1
    return anchors


def _broken_links(doc: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for target in LINK.findall(_without_code_blocks(doc.read_text(encoding="utf-8"))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):
            continue  # http(s):, mailto: ...
        file_part, _, anchor = target.partition("#")
        file_part = unquote(file_part.split("?", 1)[0])
        resolved = (doc.parent / file_part).resolve() if file_part else doc
        if not resolved.exists():
            broken.append(f"{target} -> {resolved}")
        elif not resolved.is_relative_to(root):
            broken.append(f"{target} leaves the repository ({resolved})")
        elif anchor and (resolved.suffix != ".md" or unquote(anchor) not in _anchors(resolved)):
            broken.append(f"{target}: no heading with the anchor #{anchor} in {resolved.relative_to(root)}")
    return broken


def _linked_pages(doc: Path) -> set[Path]:
    pages = set()
    for target in LINK.findall(_without_code_blocks(doc.read_text(encoding="utf-8"))):
        file_part = unquote(target.split("#", 1)[0].split("?", 1)[0])
        if file_part and not re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):
            resolved = (doc.parent / file_part).resolve()
            if resolved.suffix == ".md" and resolved.is_file():
                pages.add(resolved)
    return pages


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
    assert {
        "README.md",
        "BENCHMARKS.md",
        "Makefile",
        "docs/method.md",
        "docs/design.md",
        "src/models/structsa.py",
    } <= names
    assert ROOT / "docs" / "datasets" / "k400.md" in _markdown_files()  # pages in sub-folders too


@pytest.mark.parametrize("doc", _markdown_files(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_relative_markdown_link_resolves(doc: Path):
    broken = _broken_links(doc)
    assert not broken, f"{doc.relative_to(ROOT)}: broken relative links:\n" + "\n".join(broken)


def test_the_link_check_catches_a_missing_file_and_a_missing_anchor(tmp_path: Path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Key/value stride\n", encoding="utf-8")
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Title\n[ok](other.md) [ok](other.md#keyvalue-stride) [ok](#title) [ok](https://x.org/a#b)\n"
        "[gone](missing.md) [no anchor](other.md#nowhere) [no anchor here](#nowhere)\n"
        "```\n[in code](ignored.md)\n```\n",
        encoding="utf-8",
    )
    broken = _broken_links(doc, root=tmp_path)
    assert (
        len(broken) == 3 and "missing.md" in broken[0] and "#nowhere" in broken[1] and "#nowhere" in broken[2]
    )


@pytest.mark.parametrize(
    "heading, slug",
    [
        ("Key/value stride", "keyvalue-stride"),
        ("The GPU check: `make gpu-check`", "the-gpu-check-make-gpu-check"),
        ("Train on your own videos", "train-on-your-own-videos"),
        ("Multi-GPU and multi-node", "multi-gpu-and-multi-node"),
    ],
)
def test_github_slugs(heading: str, slug: str):
    assert github_slug(heading) == slug


def test_every_docs_page_is_reachable_from_the_readme():
    reached, todo = set(), [ROOT / "README.md"]
    while todo:
        page = todo.pop()
        for linked in _linked_pages(page) - reached:
            reached.add(linked)
            todo.append(linked)
    orphans = sorted(
        p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").rglob("*.md") if p not in reached
    )
    assert not orphans, f"docs pages no link from README.md leads to: {orphans}"


def test_the_readme_is_short_and_has_a_contents_table():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    section = re.search(r"^## Contents\n(.*?)(?=^## )", text, flags=re.S | re.M)
    assert section, "README.md has no '## Contents' section"
    rows = [line for line in section.group(1).splitlines() if line.startswith("|")]
    linked = {unquote(t.split("#", 1)[0]) for row in rows for t in LINK.findall(row)}
    top_pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    missing = sorted(top_pages - linked)
    assert len(rows) > 2 and not missing, f"README.md's contents table does not link: {missing}"


def test_every_path_and_module_the_docs_name_exists():
    missing = []
    for doc in _markdown_files():
        text = doc.read_text(encoding="utf-8")
        for path in NAMED_PATH.findall(text):
            if not (ROOT / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: `{path}`")
        for module in NAMED_MODULE.findall(text):
            base = ROOT / module.replace(".", "/")
            if not (base.with_suffix(".py").is_file() or (base / "__main__.py").is_file()):
                missing.append(f"{doc.relative_to(ROOT)}: python -m {module}")
    assert not missing, "the docs name files or modules that do not exist:\n" + "\n".join(
        sorted(set(missing))
    )


def test_every_make_target_has_a_help_line():
    declared = set(re.findall(r"^([a-zA-Z0-9_-]+):", (ROOT / "Makefile").read_text(), flags=re.M))
    result = subprocess.run(
        ["make", "--no-print-directory", "-s", "help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    assert declared <= listed, f"make targets without a '## ' help line: {sorted(declared - listed)}"


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
