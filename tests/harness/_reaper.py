"""``python -m tests.harness._reaper PID FOLDER``: once process PID has ended, stop the PostgreSQL
cluster in FOLDER and remove the folder.

The session's cluster is stopped by the fixture's teardown; a test run killed before its teardown
(a CI timeout, ``kill -9``) would leave it running. This sidecar outlives that run, notices, and
cleans up. Until then it only reads /proc, with the standard library.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

POLL = 0.5  # seconds between looks at the watched process


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def main(pid: int, folder: Path) -> None:
    while _alive(pid):
        time.sleep(POLL)
    import trio

    from server.postgres._embedded import EmbeddedPostgres

    cluster = EmbeddedPostgres(folder, durable=False)
    try:
        trio.run(cluster.stop, "immediate")
    finally:
        if cluster.running:
            cluster.kill()
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
