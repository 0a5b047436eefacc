"""One owner per table: every SQL statement of the shipped code is written in ``actors/``.

The edge (``server/``) and ``examples/`` call functions of ``actors`` that return ops or run a
query; none of their string literals is a statement. A literal counts as SQL when it begins with a
statement's verb and a word after it (``SELECT 1``, ``ALTER ROLE``, ``SHOW server_version``; the
HTTP method ``"DELETE"`` alone is no statement) or holds a query's or a write's shape (``SELECT
... FROM``, ``INSERT INTO``, ``UPDATE t SET``, ``DELETE FROM``, ``ON CONFLICT``, ``pg_notify(``).
Keywords count in upper case only, as the project writes SQL. Docstrings are prose and are not
read; an f-string is read with its placeholders filled by a word.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from actors import hand_over_statement, provisioning_statements

ROOT = Path(__file__).resolve().parent.parent

# the shipped packages that write no SQL
HELD = ("server", "examples")

_VERBS = (
    "SELECT|INSERT|UPDATE|DELETE|WITH|CREATE|ALTER|DROP|GRANT|REVOKE|TRUNCATE|DO|LISTEN|NOTIFY|"
    "UNLISTEN|SHOW|SET|RESET|COPY|BEGIN|COMMIT|ROLLBACK|VACUUM|ANALYZE|LOCK|EXPLAIN|CALL|EXECUTE"
)
SQL = re.compile(
    rf"^\s*\(?\s*(?:{_VERBS})\s+\S"
    r"|\bSELECT\b[\s\S]*\bFROM\b"
    r"|\bINSERT\s+INTO\b"
    r"|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b"
    r"|\bON\s+CONFLICT\b"
    r"|\bpg_notify\s*\("
)


def _docstrings(tree: ast.AST) -> set[int]:
    """The ids of the nodes that are docstrings (a module's, a class's, a function's)."""
    found = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and node.body
        ):
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def string_literals(path: Path) -> Iterator[tuple[int, str]]:
    """Every string literal of a module but its docstrings, as (line, text); an f-string's
    placeholders read as ``x``, and its parts are not read twice."""
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _docstrings(tree)
    inside_fstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            inside_fstrings.update(id(part) for part in node.values)
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            text = "".join(
                part.value if isinstance(part, ast.Constant) else "x" for part in node.values
            )
            yield node.lineno, str(text)
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in skip
            and id(node) not in inside_fstrings
        ):
            yield node.lineno, node.value


def sql_literals(root: Path, folders: tuple[str, ...]) -> list[str]:
    found = []
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            for line, text in string_literals(path):
                if SQL.search(text):
                    first = " ".join(text.split())[:60]
                    found.append(f"{path.relative_to(root)}:{line}: {first}")
    return found


def test_the_edge_writes_no_sql() -> None:
    assert list((ROOT / "server").rglob("*.py"))
    assert sql_literals(ROOT, HELD) == []


def test_the_actors_hold_the_statements() -> None:
    """The check reads the literals where the SQL is: it finds the statements of ``actors``."""
    found = sql_literals(ROOT, ("actors",))
    assert len(found) > 50
    for owner in ("_grants.py", "_outbox.py", "_provisioning.py", "_catalog.py"):
        assert any(f"/{owner}:" in hit for hit in found), owner


def test_the_check_catches_statements_but_not_prose(tmp_path: Path) -> None:
    module = tmp_path / "edge" / "_x.py"
    module.parent.mkdir()
    module.write_text(
        '"""SELECT * FROM a docstring is prose."""\n'
        "def f(store, role):\n"
        '    """NOTIFY in a docstring is prose too."""\n'
        '    store.fetchrow("SELECT 1")\n'
        '    store.execute(f"ALTER ROLE {role} NOSUPERUSER")\n'
        "    store.execute(\n"
        '        "UPDATE grants"\n'
        '        " SET status = $1"\n'
        "    )\n"
        "    store.fetchval('SHOW server_version')\n"
        "    store.execute(\"select pg_notify('c', 'p')\")\n"
        "    store.execute('WITH x AS (DELETE FROM t RETURNING 1) SELECT 1')\n"
        '    hint = f"as a superuser: GRANT USAGE ON SCHEMA {role} TO {role}"\n'
        '    text = "the relay\'s LISTEN connection, selected from the rows"\n'
        '    method = "DELETE"\n'
    )
    assert sql_literals(tmp_path, ("edge",)) == [
        "edge/_x.py:4: SELECT 1",
        "edge/_x.py:5: ALTER ROLE x NOSUPERUSER",
        "edge/_x.py:7: UPDATE grants SET status = $1",
        "edge/_x.py:10: SHOW server_version",
        "edge/_x.py:11: select pg_notify('c', 'p')",
        "edge/_x.py:12: WITH x AS (DELETE FROM t RETURNING 1) SELECT 1",
    ]


def test_the_bootstrap_takes_plain_names_and_password_verifiers_only() -> None:
    """The embedded cluster's bootstrap is written with its names in the text: a name that would
    need quoting, or a password that is not a SCRAM verifier, is refused before any statement."""
    verifier = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
    good = {
        "admin": "steward",
        "admin_verifier": verifier,
        "role": "steward_app",
        "role_verifier": verifier,
        "database": "steward",
        "databases": {"postgres", "template1"},
        "created": True,
    }
    plan = provisioning_statements(**good)
    assert not plan.upgrade
    assert "CREATE DATABASE steward TEMPLATE template0;" in plan.statements
    assert all(SQL.search(statement) for statement in plan.statements)
    for field, bad in [
        ("role", "app; DROP DATABASE steward"),
        ("database", 'Steward"'),
        ("admin", ""),
        ("role_verifier", "hunter2"),
        ("admin_verifier", f"{verifier}'; DROP ROLE steward; --"),
    ]:
        with pytest.raises(ValueError, match="must") as refused:
            provisioning_statements(**{**good, field: bad})
        assert "hunter2" not in str(refused.value)  # a password is never echoed
    upgraded = provisioning_statements(**{**good, "created": False})
    assert upgraded.upgrade
    assert upgraded.statements[3] == "ALTER DATABASE postgres RENAME TO steward;"
    with pytest.raises(ValueError, match="must"):
        hand_over_statement(admin="steward", role="x y")
