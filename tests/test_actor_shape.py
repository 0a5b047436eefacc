"""The session and authorization packages stay split by role.

``actors/sessions/`` and ``actors/auth/`` hold one role per module (docs/sessions.md, "Where the
code is"): a module or a class that grows past the bounds here is taking on a second role. The
bounds sit above today's largest part and well below the single modules they replaced
(``_sessions.py``, 1,624 lines; ``_auth.py``, 1,085).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPLIT = ("actors/sessions", "actors/auth")
MODULE_LINES = 550
CLASS_LINES = 450


def oversized(root: Path, folders: tuple[str, ...]) -> list[str]:
    found = []
    for folder in folders:
        for path in sorted((root / folder).glob("*.py")):
            text = path.read_text()
            name = path.relative_to(root)
            lines = len(text.splitlines())
            if lines > MODULE_LINES:
                found.append(f"{name}: {lines} lines (at most {MODULE_LINES})")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.ClassDef):
                    size = (node.end_lineno or node.lineno) - node.lineno + 1
                    if size > CLASS_LINES:
                        found.append(
                            f"{name}: class {node.name} {size} lines (at most {CLASS_LINES})"
                        )
    return found


def test_the_session_and_auth_parts_stay_small() -> None:
    assert len(list((ROOT / "actors" / "sessions").glob("_*.py"))) >= 5
    assert len(list((ROOT / "actors" / "auth").glob("_*.py"))) >= 5
    assert oversized(ROOT, SPLIT) == []


def test_the_bound_catches_a_module_that_grew_back(tmp_path: Path) -> None:
    grown = tmp_path / "pkg" / "_big.py"
    grown.parent.mkdir()
    body = "\n".join(f"    def m{i}(self) -> int:\n        return {i}\n" for i in range(200))
    grown.write_text(f"class Big:\n{body}\n")
    assert oversized(tmp_path, ("pkg",)) == [
        "pkg/_big.py: 601 lines (at most 550)",
        "pkg/_big.py: class Big 600 lines (at most 450)",
    ]
