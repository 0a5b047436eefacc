"""``python -m tests.faults``: run the fault catalog and print its table."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.faults._report import RESULTS, table


def main() -> int:
    RESULTS.unlink(missing_ok=True)
    code = subprocess.call(
        [
            sys.executable,
            "-m",
            "pytest",
            "-m",
            "faults",
            "-q",
            "-p",
            "no:cacheprovider",
            *sys.argv[1:],
        ]
    )
    rows = (
        [json.loads(line) for line in RESULTS.read_text().splitlines()] if RESULTS.exists() else []
    )
    print()
    print(table(rows))
    return code


if __name__ == "__main__":
    sys.exit(main())
