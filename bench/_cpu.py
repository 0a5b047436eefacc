"""CPU time of a server's process tree by role, from /proc (Linux).

``cpu_by_role(root, pg_marker=M)`` sums user plus system time of every process under ``root``
(including the time of children already reaped, which the kernel adds to their parent), by role:
``worker`` (Steward's serving processes) and ``supervisor`` (``steward serve --workers N``'s
parent, which serves nothing); and ``postgresql``: every process under the postmaster whose
command line holds ``M`` (its data folder: ``pg_ctl`` detaches it from Steward's tree). Take it before and after a
point; :func:`delta` gives the seconds each role spent in between.
"""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds including reaped children) of one process, None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / TICK


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def cpu_by_role(root: int, workers: int = 1, pg_marker: str | None = None) -> dict[str, float]:
    """CPU seconds so far of every process in ``root``'s tree and the postmaster's, by role."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parents[int(entry.name)], cpu[int(entry.name)] = stat
    tops = {root: "worker"}
    if pg_marker is not None:
        flag = pg_marker.encode()
        for pid in parents:  # the postmaster (its children's titles do not carry the flag)
            line = _cmdline(pid)
            if b"postgres" in line.split(b"\0")[0] and flag in line:
                tops[pid] = "postgresql"
    out: dict[str, float] = {}
    for pid, seconds in cpu.items():
        p = pid
        while p not in tops and p in parents and p > 1:
            p = parents[p]
        if p in tops:
            role = tops[p]
            if pid == root and workers > 1:
                role = "supervisor"
            out[role] = out.get(role, 0.0) + seconds
    return out


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Seconds per role between two readings (a role absent before counts from zero)."""
    return {k: round(after[k] - before.get(k, 0.0), 3) for k in sorted(after)}
