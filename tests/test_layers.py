"""The layers only point down: runtime knows nothing above it, only the store touches asyncpg."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

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
