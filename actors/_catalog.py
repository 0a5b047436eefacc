"""Reads of PostgreSQL's own catalog about the role Steward connects as: its privileges in its
schema, its role-wide powers and the server's version. ``steward doctor`` reports on them; they
touch no Steward table, so they live here rather than beside one.
"""

from __future__ import annotations

import attrs

from actors._store import Store

__all__ = [
    "ROLE_POWERS",
    "RolePowers",
    "RolePrivileges",
    "role_powers",
    "role_privileges",
    "server_version",
]

_PRIVILEGES_SQL = """
SELECT quote_ident(current_user) AS role, current_schema() AS schema,
       coalesce(has_schema_privilege(current_schema(), 'USAGE'), false) AS usage,
       coalesce(has_schema_privilege(current_schema(), 'CREATE'), false) AS can_create,
       (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser,
       (SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}') FROM pg_class c
          WHERE c.relnamespace = to_regnamespace(current_schema()) AND c.relkind IN ('r', 'p')
            AND NOT (has_table_privilege(c.oid, 'SELECT') AND has_table_privilege(c.oid, 'INSERT')
                     AND has_table_privilege(c.oid, 'UPDATE') AND has_table_privilege(c.oid, 'DELETE'))
       ) AS no_access,
       (SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}') FROM pg_class c
          WHERE c.relnamespace = to_regnamespace(current_schema())
            AND CASE WHEN c.relkind = 'S' THEN NOT has_sequence_privilege(c.oid, 'USAGE') END
       ) AS no_sequence,
       (SELECT coalesce(array_agg(c.relname::text ORDER BY c.relname), '{}') FROM pg_class c
          WHERE c.relnamespace = to_regnamespace(current_schema()) AND c.relkind IN ('r', 'p')
            AND NOT pg_has_role(c.relowner, 'USAGE')) AS not_owned
"""

# pg_roles' column -> the attribute's name in ALTER ROLE
ROLE_POWERS = {
    "rolsuper": "SUPERUSER",
    "rolcreaterole": "CREATEROLE",
    "rolcreatedb": "CREATEDB",
    "rolreplication": "REPLICATION",
    "rolbypassrls": "BYPASSRLS",
}


@attrs.frozen(kw_only=True)
class RolePrivileges:
    """What the connected role may do in the first schema of its search path."""

    role: str  # quoted as an identifier
    schema: str | None  # None: no schema of the search path exists
    usage: bool
    can_create: bool
    superuser: bool
    no_access: tuple[str, ...]  # tables it may not read and write
    no_sequence: tuple[str, ...]  # sequences it may not use
    not_owned: tuple[str, ...]  # tables another role owns


@attrs.frozen(kw_only=True)
class RolePowers:
    """The connected role's name and its role-wide powers (``ALTER ROLE`` attribute names)."""

    name: str
    powers: tuple[str, ...]


async def role_privileges(store: Store) -> RolePrivileges:
    row = await store.fetchrow(_PRIVILEGES_SQL)
    if row is None:  # a SELECT without FROM always returns its one row
        msg = "the privileges query returned no row (it must return exactly one)"
        raise RuntimeError(msg)
    return RolePrivileges(
        role=row["role"],
        schema=row["schema"],
        usage=bool(row["usage"]),
        can_create=bool(row["can_create"]),
        superuser=bool(row["superuser"]),
        no_access=tuple(row["no_access"]),
        no_sequence=tuple(row["no_sequence"]),
        not_owned=tuple(row["not_owned"]),
    )


async def role_powers(store: Store) -> RolePowers:
    columns = ", ".join(ROLE_POWERS)
    row = await store.fetchrow(
        f"SELECT current_user AS name, {columns} FROM pg_roles WHERE rolname = current_user"
    )
    if row is None:
        return RolePowers(name="?", powers=())
    return RolePowers(
        name=row["name"],
        powers=tuple(power for column, power in ROLE_POWERS.items() if row[column]),
    )


async def server_version(store: Store) -> str:
    return str(await store.fetchval("SHOW server_version"))
