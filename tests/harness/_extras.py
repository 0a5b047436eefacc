"""What the tests of an optional part need: its extra (pyproject.toml), and Debian's chromium for
the browser tests. Missing, the test is skipped; in CI (.ci/run installs everything) it fails."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import NoReturn

import pytest

CHROMIUM = Path("/usr/bin/chromium")


def _missing(reasons: list[str]) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{'; '.join(reasons)}: .ci/run installs it")
    pytest.skip("; ".join(reasons))


def require_extra(module: str, extra: str) -> None:
    """``module``, which the ``extra`` extra installs."""
    if importlib.util.find_spec(module) is None:
        _missing([f"{module} is not installed (./steward install {extra})"])


def require_browser() -> Path:
    """Debian's chromium, with Playwright (the browser extra) to drive it."""
    missing = []
    if not CHROMIUM.exists():
        missing.append(f"{CHROMIUM} is not installed (apt-get install chromium)")
    if importlib.util.find_spec("playwright") is None:
        missing.append("Playwright is not installed (./steward install browser)")
    if missing:
        _missing(missing)
    return CHROMIUM
