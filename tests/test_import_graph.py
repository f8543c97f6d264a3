"""The package's import graph has no cycles, and none is hidden in a function-local import.

A cycle dodged by importing inside a function (services ⇄ http_api used to be) works until
someone moves the import; the graph below is what Python runs when the package is imported:
module-level imports, ``if TYPE_CHECKING:`` blocks left out (never executed).
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "agi_xmpp"

# Function-local imports of our own modules that are there to keep a command light, not to
# dodge a cycle: the CLI's other commands need neither slixmpp nor SQLAlchemy.
LAZY_ON_PURPOSE = {
    ("agi_xmpp.cli", "agi_xmpp.services"),
    ("agi_xmpp.cli", "agi_xmpp.storage"),
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _resolve(importer: str, node: ast.ImportFrom | ast.Import) -> list[str]:
    """Our modules an import statement loads (a package's submodule when a name is one)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name in MODULES]
    if node.level:
        base = importer.split(".") if _is_package(importer) else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    if target not in MODULES:
        return []
    submodules = [f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in MODULES]
    return submodules or [target]


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str) -> tuple[set[str], set[str]]:
    """(what module ``name`` imports at module level, what it imports inside functions)."""
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    top: set[str] = set()
    local: set[str] = set()

    def visit(nodes: list[ast.stmt], in_function: bool) -> None:
        for node in nodes:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                (local if in_function else top).update(_resolve(name, node))
            elif isinstance(node, ast.If) and _is_type_checking(node):
                visit(node.orelse, in_function)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(node.body, True)
            else:
                for field in ("body", "orelse", "finalbody", "handlers"):
                    visit(getattr(node, field, []) or [], in_function)

    visit(tree.body, False)
    return top, local


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), or a self-import."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    """The checker itself sees a cycle of three and a self-import, and none in a chain."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"a"}}) == [["a"]]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_resolver_sees_the_old_services_http_api_cycle() -> None:
    """Parsed the way the package is, `from .services import Services` in http_api is an edge."""
    node = ast.parse("from .services import Services").body[0]
    assert _resolve("agi_xmpp.http_api", node) == ["agi_xmpp.services"]
    node = ast.parse("from .scripts import registry").body[0]
    assert _resolve("agi_xmpp.services", node) == ["agi_xmpp.scripts"]
    node = ast.parse("from ..storage import ArchivedMessage").body[0]
    assert _resolve("agi_xmpp.scripts.routing", node) == ["agi_xmpp.storage"]


def test_package_import_graph_has_no_cycles() -> None:
    """No module of agi_xmpp imports, at module level, a module that leads back to it."""
    graph = {name: _imports(name)[0] for name in MODULES}
    assert _cycles(graph) == []


def test_no_function_local_import_of_our_modules() -> None:
    """Our modules import each other at the top (function-local ones only where listed, why said)."""
    local = {
        (name, target)
        for name in MODULES
        for target in _imports(name)[1]
        if target.partition(".")[0] == "agi_xmpp"
    }
    assert local - LAZY_ON_PURPOSE == set()


@pytest.mark.parametrize("name", ["http_api", "services", "services_bundle", "storage"])
def test_module_imports_first_in_a_fresh_interpreter(name: str) -> None:
    """Each of these imports on its own, first, in a fresh interpreter (no order dependence)."""
    result = subprocess.run(
        [sys.executable, "-c", f"import agi_xmpp.{name}"], capture_output=True, text=True,
        timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr


def test_storage_modules_are_imported_only_through_the_package() -> None:
    """Outside agi_xmpp/storage/, code imports `agi_xmpp.storage` itself, never a module inside it."""
    inside = re.compile(r"^\s*(?:from|import)\s+(?:agi_xmpp|\.+)\.?storage\.\w+", re.MULTILINE)
    offenders = []
    for folder in ("agi_xmpp", "bench", "tools", "tests"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.is_relative_to(PACKAGE / "storage"):
                continue
            if inside.search(path.read_text(encoding="utf-8")):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
