"""The dependencies run one way and stay clean: src/ imports nothing from the folders that use it, src/ has no
import cycle, and no module uses another module's private (`_name`) names. `make lint` checks the same
layering with import-linter's contracts (pyproject.toml, [tool.importlinter]); these tests say in plain
Python what each rule is and name the offending line."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import grimp
import pytest

from src.paths import REPO_ROOT

LIBRARY = "src"
USERS = ("data_prep", "benchmarks", "experiments", "tests")  # the folders that use src, never used by it
SCANNED_FOR_PRIVATE_USE = ("src", "data_prep", "benchmarks", "experiments")
PROJECT_PACKAGES = (LIBRARY, *USERS)


def present(packages: tuple[str, ...], root: Path = REPO_ROOT) -> list[str]:
    """The packages of `packages` that exist in the checkout at `root`."""
    return [p for p in packages if (root / p).is_dir()]


def _modules_of(graph: grimp.ImportGraph, package: str) -> list[str]:
    return sorted(m for m in graph.modules if m == package or m.startswith(package + "."))


def imports_of_users(graph: grimp.ImportGraph, library: str, users: list[str]) -> list[str]:
    """`importer -> imported (lines)` for every import of a user package by a module of `library`."""
    found = []
    for importer in _modules_of(graph, library):
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            if imported.split(".")[0] in users:
                lines = graph.get_import_details(importer=importer, imported=imported)
                where = ", ".join(f"line {d['line_number']}" for d in lines)
                found.append(f"{importer} -> {imported} ({where})")
    return found


def import_cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """The cycles of direct imports among the modules of `package`: each strongly connected group of two or
    more modules, sorted (Tarjan's algorithm, iterative)."""
    modules = _modules_of(graph, package)
    inside = set(modules)
    edges = {m: sorted(i for i in graph.find_modules_directly_imported_by(m) if i in inside) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups = []
    for start in modules:
        if start in index:
            continue
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def private_uses(path: Path, root: Path, packages: tuple[str, ...]) -> Iterator[str]:
    """`file:line: what` for each private name of another module of `packages` that the file at `path` uses:
    `from X import _name`, `import X._name`, or `Y._name` where `Y` was imported from one of those modules
    (a module, a class or a function of it)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    here = _module_name(path, root)
    imported: dict[str, str] = {}  # local name -> where it comes from
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] not in packages or node.module == here:
                continue
            for alias in node.names:
                if _private(alias.name):
                    yield f"{path.relative_to(root)}:{node.lineno}: from {node.module} import {alias.name}"
                imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in packages:
                    private = [p for p in alias.name.split(".") if _private(p)]
                    if private:
                        yield f"{path.relative_to(root)}:{node.lineno}: import {alias.name}"
                    imported[alias.asname or alias.name.split(".")[0]] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            base = node.value
            while isinstance(base, ast.Attribute):
                base = base.value
            if isinstance(base, ast.Name) and base.id in imported:
                yield f"{path.relative_to(root)}:{node.lineno}: {ast.unparse(node)} (from {imported[base.id]})"


def private_uses_in(scanned: list[str], root: Path, packages: tuple[str, ...]) -> list[str]:
    """`private_uses` of every file of the `scanned` folders under `root`."""
    files = [file for folder in scanned for file in sorted((root / folder).rglob("*.py"))]
    return [use for file in files for use in private_uses(file, root, packages)]


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    return grimp.build_graph(*present(PROJECT_PACKAGES), cache_dir=None)


def test_src_imports_nothing_from_the_folders_that_use_it(graph: grimp.ImportGraph) -> None:
    assert imports_of_users(graph, LIBRARY, present(USERS)) == []


def test_src_has_no_import_cycle(graph: grimp.ImportGraph) -> None:
    assert import_cycles(graph, LIBRARY) == []


def test_no_module_uses_a_private_name_of_another() -> None:
    assert private_uses_in(present(SCANNED_FOR_PRIVATE_USE), REPO_ROOT, PROJECT_PACKAGES) == []


def _write_package(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checks_find_what_they_look_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each check reports a planted violation: an import of tests from src, a cycle, private names."""
    _write_package(
        tmp_path,
        {
            "fake_lib/__init__.py": "",
            "fake_lib/a.py": "from fake_lib import b\n",
            "fake_lib/b.py": "def f():\n    from fake_lib import a\n",
            "fake_lib/c.py": "import fake_users.helper\n",
            "fake_lib/d.py": "from fake_lib.a import _hidden\nfrom fake_lib.b import Open\nOpen._inner()\n",
            "fake_users/__init__.py": "",
            "fake_users/helper.py": "import fake_lib.c as c\nc._secret\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fake = grimp.build_graph("fake_lib", "fake_users", cache_dir=None)
    assert import_cycles(fake, "fake_lib") == [["fake_lib.a", "fake_lib.b"]]
    assert imports_of_users(fake, "fake_lib", ["fake_users"]) == ["fake_lib.c -> fake_users.helper (line 1)"]
    packages = ("fake_lib", "fake_users")
    assert private_uses_in(["fake_lib", "fake_users"], tmp_path, packages) == [
        "fake_lib/d.py:1: from fake_lib.a import _hidden",
        "fake_lib/d.py:3: Open._inner (from fake_lib.b.Open)",
        "fake_users/helper.py:2: c._secret (from fake_lib.c)",
    ]
