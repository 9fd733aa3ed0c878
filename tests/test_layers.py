"""The package's layering, read from the source: no import circles, no module
importing from a layer above its own, no client module importing the server
(nor the server the client), and no oversized rooms.

Imports are read with ``ast`` (nothing is imported), including imports inside
functions; those under ``if TYPE_CHECKING:`` are only for annotations and do
not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "crc"

#: Lowest first. A module may import from its own layer or any lower one.
LAYERS = [
    {"crc.protocol"},
    {"crc.routing", "crc.delivery", "crc.visible", "crc.options"},
    {"crc.net", "crc.credentials"},
    {"crc.jobs"},
    {"crc.server", "crc.client"},
    {"crc.cc"},
    {"crc.scenarios"},
    {"crc.compat", "crc.entry", "crc"},
]
#: Modules over this many lines must say in their docstring why they are one piece.
MAX_LINES = 620


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _type_checking_only(tree: ast.AST) -> set[int]:
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for stmt in node.body:
                skip.update(id(n) for n in ast.walk(stmt))
    return skip


def imports(name: str) -> set[str]:
    """The ``crc`` modules ``name`` imports at run time."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_only(tree)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                hit = sub if sub in MODULES else target
                if hit in MODULES and hit != name:
                    found.add(hit)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in MODULES and a.name != name)
    return found


GRAPH = {name: imports(name) for name in MODULES}


def layer(name: str) -> int:
    if name.endswith(".__main__"):
        return len(LAYERS) - 1            # ``python -m``: a program's entry, like ``entry``
    for rank in range(len(LAYERS)):
        for top in LAYERS[rank]:
            if name == top or (top != "crc" and name.startswith(top + ".")):
                return rank
    raise AssertionError(f"{name} is in no layer; add it to LAYERS")


def test_the_reader_finds_imports_it_must() -> None:
    """The checks below mean something only if the reader sees imports."""
    assert "crc.server.server" in GRAPH["crc.server.jobs.service"]
    assert "crc.net.connection" in GRAPH["crc.net.tls"]
    assert "crc.protocol" in GRAPH["crc.client.core"]


def test_no_import_circles() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                circles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert circles == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_layers(name: str) -> None:
    mine = layer(name)
    upward = sorted(t for t in GRAPH[name] if layer(t) > mine)
    assert upward == [], f"{name} imports from a higher layer"


@pytest.mark.parametrize("side,other", [("crc.client", "crc.server"),
                                        ("crc.server", "crc.client")])
def test_client_and_server_do_not_import_each_other(side: str, other: str) -> None:
    crossing = sorted((name, target) for name, targets in GRAPH.items()
                      if name == side or name.startswith(side + ".")
                      for target in targets if target == other or target.startswith(other + "."))
    assert crossing == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_every_module_says_what_it_is_for(name: str) -> None:
    path = MODULES[name]
    source = path.read_text(encoding="utf-8")
    doc = ast.get_docstring(ast.parse(source))
    assert doc and len(doc.split()) >= 5, f"{name} has no docstring saying what it is for"
    lines = source.count("\n")
    assert lines <= MAX_LINES or "one piece" in doc, \
        f"{name} has {lines} lines; split it or say in its docstring why it is one piece"
