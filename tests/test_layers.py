"""The shape of the imports, checked by parsing the project's own modules.

- Layers point down: runtime knows nothing above it, only the store touches asyncpg.
- No package reaches past another package's curated ``__init__``: code in ``runtime/``, ``actors/``,
  ``server/`` and ``examples/`` imports another package only through the names its ``__init__``
  exports, never a private module (``actors._sessions``) nor a private name. Subpackages count as
  packages: ``server._node`` takes ``McpEdge`` from ``server.mcp``, not from
  ``server.mcp._edge``, and ``server.ops`` takes nothing private from ``server.http``.
  Inside a package, modules import their siblings' private modules freely, and a subpackage may
  use the private modules of the packages above it (``server.cli`` runs ``server._node``).
  ``tests/`` and ``bench/`` may import private modules, because they test and measure the parts
  below the public surface; they are still held to the no-cycle rule.
- No import cycle among the project's modules. Every import counts as an edge: at module level,
  inside a function (the usual way to dodge a cycle) and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from pathlib import Path

import attrs

ROOT = Path(__file__).resolve().parent.parent

# the shipped packages, held to the private-import rule
PACKAGES = ("runtime", "actors", "server", "examples")
# every top-level folder of the project, held to the no-cycle rule
PROJECT = (*PACKAGES, "tests", "bench")

# package -> top-level modules it must never import
FORBIDDEN = {
    "runtime": {
        "actors",
        "server",
        "examples",
        "asyncpg",
        "hypercorn",
        "httpx",
        "mcp",
        "trio_asyncio",
    },
    "actors": {"server", "examples", "hypercorn", "mcp"},
    "server": {"examples", "asyncpg"},
    "examples": {"tests", "bench", "asyncpg"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_packages_import_only_downward() -> None:
    violations = []
    checked = 0
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((ROOT / package).rglob("*.py")):
            checked += 1
            bad = imported_modules(path) & forbidden
            if bad:
                violations.append(f"{path.relative_to(ROOT)} imports {sorted(bad)}")
    assert checked > 0
    assert violations == []


def test_only_the_store_imports_asyncpg() -> None:
    offenders = [
        str(path.relative_to(ROOT))
        for path in sorted((ROOT / "actors").rglob("*.py"))
        if "asyncpg" in imported_modules(path)
        and not (path.name.startswith("_store") or path.name == "_migrations.py")
    ]
    assert offenders == []


def test_the_checker_sees_imports() -> None:
    """The check above would catch a violation: it parses both import forms."""
    sample = ROOT / "tests" / "test_layers.py"
    assert {"ast", "pathlib", "__future__"} <= imported_modules(sample)


# -- the module graph ---------------------------------------------------------------------------


@attrs.frozen
class Edge:
    """One import statement: ``importer`` (a module) names ``target`` (a module) at ``line``."""

    importer: str
    target: str
    line: int
    names: tuple[str, ...] = ()  # for ``from target import a, b``: the names taken

    def __str__(self) -> str:
        taken = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.importer}:{self.line} -> {self.target}{taken}"


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, folders: Iterable[str]) -> dict[str, Path]:
    modules: dict[str, Path] = {}
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            if ".venv" not in path.parts:
                modules[module_name(root, path)] = path
    return modules


def _owning_module(dotted: str, modules: dict[str, Path]) -> str | None:
    """The longest prefix of ``dotted`` that is one of the project's modules."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def module_edges(name: str, path: Path, modules: dict[str, Path]) -> Iterator[Edge]:
    """Every import of a project module in one file, wherever it stands (``ast.walk`` visits
    function bodies and ``if TYPE_CHECKING:`` blocks as well as the module level)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = _owning_module(alias.name, modules)
                if target is not None:
                    yield Edge(name, target, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            plain: list[str] = []
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:  # ``from actors import _store`` takes a module
                    yield Edge(name, submodule, node.lineno)
                else:
                    plain.append(alias.name)
            target = _owning_module(base, modules)
            if plain and target is not None:
                yield Edge(name, target, node.lineno, tuple(plain))


def import_graph(root: Path, folders: Iterable[str]) -> list[Edge]:
    modules = project_modules(root, folders)
    return [edge for name, path in modules.items() for edge in module_edges(name, path, modules)]


def _is_private(part: str) -> bool:
    return part.startswith("_") and not part.startswith("__")


def private_imports(edges: Iterable[Edge], packages: Iterable[str]) -> list[str]:
    """Imports that reach into another package or subpackage: a private module, or a private
    name. A module's home is the package it sits in (a package's ``__init__`` is at home in the
    package itself); siblings share a home, and the packages above a home are open to it."""
    edges = list(edges)
    held = set(packages)
    names = {edge.importer for edge in edges} | {edge.target for edge in edges}
    # a package is any name with a module below it
    folders = {".".join(n.split(".")[:end]) for n in names for end in range(1, n.count(".") + 1)}

    def home(module: str) -> str:
        return module if module in folders else module.rpartition(".")[0]

    found = []
    for edge in edges:
        if edge.importer.split(".")[0] not in held:
            continue
        here, there = home(edge.importer), home(edge.target)
        if here == there or here.startswith(f"{there}."):
            continue
        # the parts of the target below what both share
        shared = 0
        for mine, theirs in zip(here.split("."), edge.target.split("."), strict=False):
            if mine != theirs:
                break
            shared += 1
        private_parts = [p for p in edge.target.split(".")[shared:] if _is_private(p)]
        private_names = [name for name in edge.names if _is_private(name)]
        if private_parts or private_names:
            found.append(str(edge))
    return sorted(found)


def import_cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """The strongly connected components with more than one module (or a module importing
    itself), each given as the import statements that close it (Tarjan's algorithm)."""
    edges = list(edges)
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.target)
        graph.setdefault(edge.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(start: str) -> None:  # iterative, so deep graphs cannot hit the recursion limit
        work: list[tuple[str, Iterator[str]]] = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1 or node in graph[node]:
                        components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(
        sorted(str(e) for e in edges if e.importer in c and e.target in c) for c in components
    )


def test_no_package_imports_another_packages_private_modules() -> None:
    edges = import_graph(ROOT, PROJECT)
    assert any(edge.importer.startswith("server") for edge in edges)  # the graph is not empty
    assert private_imports(edges, PACKAGES) == []


def test_no_import_cycles() -> None:
    edges = import_graph(ROOT, PROJECT)
    assert len({edge.importer for edge in edges}) > 50
    assert import_cycles(edges) == []


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_the_rules_catch_dodged_cycles_and_private_imports(tmp_path: Path) -> None:
    """Both rules would fail: a cycle dodged inside a function or under TYPE_CHECKING, relative
    imports, ``from package import _module`` and a private name all show up."""
    _write(
        tmp_path,
        {
            "low/__init__.py": "from low._a import A\n",
            "low/_a.py": "A = 1\n\ndef f():\n    from low._b import B\n    return B\n",
            "low/_b.py": "from ._a import A\nB = A\n",
            "low/_c.py": "_hidden = 1\n",
            "high/__init__.py": "",
            "high/_x.py": (
                "from typing import TYPE_CHECKING\n"
                "from low import A, _c\n"
                "from low import _hidden\n"
                "import low._b\n"
                "if TYPE_CHECKING:\n    from high._y import Y\n"
            ),
            "high/_y.py": "from high._x import low\nY = 1\n",
            "tests/test_t.py": "from low._c import _hidden\n",
            # subpackages: sub's own modules and the package above are open to it, and nothing
            # below another subpackage's __init__ is open to anyone else
            "high/sub/__init__.py": "from high.sub._p import P\n",
            "high/sub/_p.py": "from high._y import Y\nP = Y\n",
            "high/sub/_q.py": "from high.sub._p import P\nfrom high.sub import P as Q\n",
            "high/other/__init__.py": "",
            "high/other/_r.py": "from high.sub._p import P\nfrom high.sub import P as Q\n",
            "high/_z.py": "from high.sub._q import Q\nfrom high.other import _r\n",
        },
    )
    edges = import_graph(tmp_path, ("low", "high", "tests"))
    assert private_imports(edges, ("low", "high")) == [
        "high._x:2 -> low._c",
        "high._x:3 -> low (_hidden)",
        "high._x:4 -> low._b",
        "high._z:1 -> high.sub._q (Q)",
        "high._z:2 -> high.other._r",
        "high.other._r:1 -> high.sub._p (P)",
    ]
    assert import_cycles(edges) == [
        ["high._x:6 -> high._y (Y)", "high._y:1 -> high._x (low)"],
        ["low._a:4 -> low._b (B)", "low._b:1 -> low._a (A)"],
    ]


# -- the edge's parts ------------------------------------------------------------------------------

_MUTATORS = frozenset(
    {"pop", "clear", "setdefault", "update", "popitem", "append", "extend", "remove", "discard"}
    | {"add", "insert"}
)


def foreign_writes(path: Path) -> list[str]:
    """Where a method writes a table that another object holds: ``self.other.table[k] = v``,
    ``del self.other.table[k]``, ``self.other.table.pop(k)`` and the like."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        written: list[ast.expr] = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            written = [t.value for t in node.targets if isinstance(t, ast.Subscript)]
        elif isinstance(node, ast.AugAssign) and isinstance(node.target, ast.Subscript):
            written = [node.target.value]
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr in _MUTATORS
        ):
            written = [node.func.value]
        for table in written:
            hops, root = 0, table
            while isinstance(root, ast.Attribute):
                hops, root = hops + 1, root.value
            if hops >= 2 and isinstance(root, ast.Name) and root.id == "self":
                found.append(f"{path.name}:{node.lineno} {ast.unparse(table)}")
    return found


def test_no_part_of_the_edge_writes_another_parts_tables() -> None:
    """Each table of the edge (streams, server requests, requests in flight, subscriptions) is
    written only by the object that holds it; the others call its methods."""
    offenders = [
        w for path in sorted((ROOT / "server").rglob("*.py")) for w in foreign_writes(path)
    ]
    assert offenders == []


def test_the_rule_sees_foreign_writes(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "class A:\n"
        "    def f(self, k):\n"
        "        self.b.table[k] = 1\n"
        "        del self.b.table[k]\n"
        "        self.b.table.pop(k, None)\n"
        "        self.own[k] = 1\n"
        "        self.own.setdefault(k, set()).add(2)\n"
    )
    assert foreign_writes(sample) == [
        "sample.py:3 self.b.table",
        "sample.py:4 self.b.table",
        "sample.py:5 self.b.table",
    ]


def test_legacy_sse_and_the_relay_import_nothing_from_the_streamable_transport() -> None:
    """The 2025 router is one transport among three: the legacy transport and the relay reach
    the shared parts (the runner, the tables, the ports), never it."""
    edges = import_graph(ROOT, PACKAGES)
    importers = {"server.mcp._legacy_sse", "server.cluster._relay"}
    assert {e.importer for e in edges} >= importers
    reaching = [
        str(e) for e in edges if e.importer in importers and e.target == "server.mcp._streamable"
    ]
    assert reaching == []


# -- private fields and callbacks ------------------------------------------------------------------


def _targets(node: ast.AST) -> list[ast.expr]:
    """The expressions a statement assigns or deletes, tuples unpacked."""
    if isinstance(node, (ast.Assign, ast.Delete)):
        targets = list(node.targets)
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    else:
        return []
    flat: list[ast.expr] = []
    while targets:
        t = targets.pop()
        if isinstance(t, (ast.Tuple, ast.List)):
            targets.extend(t.elts)
        else:
            flat.append(t)
    return flat


def _own(value: ast.expr) -> bool:
    return isinstance(value, ast.Name) and value.id in {"self", "cls"}


def foreign_field_writes(path: Path) -> list[str]:
    """Where code writes a field of an object that is not its own: a private one
    (``conn._seq = n``, ``setattr(conn, "_seq", n)``), or a callback hook (``sessions.on_x = f``),
    which the object's constructor takes instead. ``self._x`` and ``self.on_x`` are its own, and
    a module may write the fields of the classes it defines (a supervisor ends its handle)."""
    found: list[tuple[int, str]] = []
    nodes = list(ast.walk(ast.parse(path.read_text(), filename=str(path))))
    defined_here = {
        t.attr
        for node in nodes
        for t in _targets(node)
        if isinstance(t, ast.Attribute) and _own(t.value)
    }
    for node in nodes:
        fields: list[tuple[ast.expr, str]] = [
            (t.value, t.attr) for t in _targets(node) if isinstance(t, ast.Attribute)
        ]
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in {"setattr", "delattr"}
            and len(node.args) >= 2
            and isinstance(node.args[1], ast.Constant)
            and isinstance(node.args[1].value, str)
        ):
            fields.append((node.args[0], node.args[1].value))
        for owner, attr in fields:
            private = attr.startswith("_") and not attr.startswith("__")
            if (private or attr.startswith("on_")) and not (_own(owner) or attr in defined_here):
                found.append((getattr(node, "lineno", 0), f"{ast.unparse(owner)}.{attr}"))
    return [f"{path.name}:{line} {field}" for line, field in sorted(found)]


def test_no_code_writes_another_objects_private_fields_or_hooks() -> None:
    """An object's private fields are written by its own methods, and its callbacks are given to
    its constructor: a part that needs another's state calls a public method of it (the relay
    moves a stream's event ids on with ``Connection.advance_to``), and the node is wired in one
    pass (``server/_node.py``)."""
    offenders = [
        w
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
        for w in foreign_field_writes(path)
    ]
    assert offenders == []


def test_the_rule_sees_foreign_field_writes(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text(
        "class A:\n"
        "    def f(self, conn, seq):\n"
        "        conn._seq = seq\n"
        "        self.sessions.on_grants_ended = self.wake\n"
        "        setattr(conn, '_seq', seq)\n"
        "        conn._seq += 1\n"
        "        a, conn._x = 1, 2\n"
        "        self._mine = seq\n"
        "        self.on_done = None\n"
        "        cls._count = 0\n"
        "        conn.seq = seq\n"
        "        conn.__dict__ = {}\n"
        "class Handle:\n"
        "    def __init__(self):\n"
        "        self._exit = None\n"
        "def end(handle, exit):\n"
        "    handle._exit = exit\n"
    )
    assert foreign_field_writes(sample) == [
        "sample.py:3 conn._seq",
        "sample.py:4 self.sessions.on_grants_ended",
        "sample.py:5 conn._seq",
        "sample.py:6 conn._seq",
        "sample.py:7 conn._x",
    ]
