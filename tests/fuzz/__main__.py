"""``python -m tests.fuzz [--long | --examples N] [pytest args]``: run the fuzz tests.

The default is the CI size (``SHORT_EXAMPLES`` per test); ``--long`` is the release run
(``LONG_EXAMPLES`` per test, hundreds of thousands in all); ``--examples N`` sets it exactly.
The size reaches the tests as ``STEWARD_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from tests.fuzz._property import SHORT_EXAMPLES

LONG_EXAMPLES = 150_000  # per test: two tests, 300,000 requests


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz")
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--long", action="store_true", help=f"{LONG_EXAMPLES} examples per test")
    size.add_argument("--examples", type=int, help=f"examples per test (CI: {SHORT_EXAMPLES})")
    args, rest = parser.parse_known_args(argv)
    examples = LONG_EXAMPLES if args.long else (args.examples or SHORT_EXAMPLES)
    env = {**os.environ, "STEWARD_FUZZ_EXAMPLES": str(examples)}
    root = Path(__file__).resolve().parents[2]
    cmd = [sys.executable, "-m", "pytest", "-q", "-s", "tests/fuzz", *rest]
    return subprocess.call(cmd, cwd=root, env=env)


if __name__ == "__main__":
    sys.exit(main())
