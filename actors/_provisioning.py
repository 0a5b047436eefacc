"""The embedded cluster's bootstrap, as SQL statements: its passwords, its runtime role, its
database and the hand-over of an older layout's objects. ``server``'s embedded PostgreSQL runs them
in single-user mode before any Steward table exists; they are written here, with every other SQL
statement of the project, and take their names and password verifiers as arguments.
"""

from __future__ import annotations

import re

import attrs

__all__ = [
    "Provisioning",
    "database_listing",
    "databases_in",
    "hand_over_statement",
    "provisioning_statements",
]

_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")
_VERIFIER = re.compile(r"SCRAM-SHA-256\$[0-9]+:[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+:[A-Za-z0-9+/=]+")
_NAMES = re.compile(r'names = "([^"]*)"')


def _identifier(name: str) -> str:
    """``name`` as written in a statement: only a plain lower-case identifier is accepted, so that
    nothing needs quoting and nothing can be injected."""
    if not _IDENTIFIER.fullmatch(name):
        msg = f"a role or database name must match {_IDENTIFIER.pattern}, not {name!r}"
        raise ValueError(msg)
    return name


def _verifier(verifier: str) -> str:
    if not _VERIFIER.fullmatch(verifier):
        msg = "a password must be given as a SCRAM-SHA-256 verifier (RFC 5803 form)"
        raise ValueError(msg)
    return verifier


def database_listing() -> str:
    """The statement whose single-user output ``databases_in`` reads."""
    return "SELECT string_agg(datname, ',') AS names FROM pg_database;"


def databases_in(output: str) -> set[str] | None:
    """The database names in single-user mode's output of ``database_listing()``; None if the
    output holds no such line."""
    found = _NAMES.search(output)
    return None if found is None else set(found.group(1).split(","))


@attrs.frozen(kw_only=True)
class Provisioning:
    statements: tuple[str, ...]  # run in ``template1``, one by one
    upgrade: bool  # an older layout's ``postgres`` database becomes ``database``


def provisioning_statements(
    *,
    admin: str,
    admin_verifier: str,
    role: str,
    role_verifier: str,
    database: str,
    databases: set[str],
    created: bool,
) -> Provisioning:
    """Idempotent: the superuser ``admin`` gets its password, the runtime ``role`` exists without
    role-wide powers and with its password, and owns ``database``, which only it may reach. A
    cluster made by an older Steward (its data in ``postgres``, owned by the superuser) keeps its
    data: ``postgres`` is renamed ``database`` (run ``hand_over_statement`` in it next)."""
    admin, role, database = _identifier(admin), _identifier(role), _identifier(database)
    upgrade = not created and database not in databases and "postgres" in databases
    statements = [
        f"ALTER ROLE {admin} WITH PASSWORD '{_verifier(admin_verifier)}';",
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN "
        f"CREATE ROLE {role}; END IF; END $$;",
        f"ALTER ROLE {role} WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION "
        f"NOBYPASSRLS PASSWORD '{_verifier(role_verifier)}';",
    ]
    if upgrade:
        statements += [
            f"ALTER DATABASE postgres RENAME TO {database};",
            "CREATE DATABASE postgres TEMPLATE template0;",
        ]
    elif database not in databases:
        statements.append(f"CREATE DATABASE {database} TEMPLATE template0;")
    statements += [
        f"ALTER DATABASE {database} OWNER TO {role};",
        f"REVOKE ALL ON DATABASE {database} FROM PUBLIC;",
        "REVOKE CONNECT, TEMPORARY ON DATABASE postgres FROM PUBLIC;",
        "REVOKE CONNECT ON DATABASE template1 FROM PUBLIC;",
    ]
    return Provisioning(statements=tuple(statements), upgrade=upgrade)


# Run in the cluster's database as the superuser: what the superuser owns there (an older
# Steward's tables, sequences, views, functions, types and schemas) passes to the runtime role.
# Sequences owned by a table follow it. No blank line inside: single-user mode ends a statement
# at a semicolon followed by an empty line.
_HAND_OVER = """DO $$
DECLARE
  item record;
BEGIN
  FOR item IN SELECT n.nspname FROM pg_namespace n
      WHERE n.nspowner = '{admin}'::regrole AND n.nspname NOT LIKE 'pg\\_%'
        AND n.nspname <> 'information_schema' LOOP
    EXECUTE format('ALTER SCHEMA %I OWNER TO {role}', item.nspname);
  END LOOP;
  FOR item IN SELECT c.oid::regclass AS name, c.relkind FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relowner = '{admin}'::regrole AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
        AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' LOOP
    EXECUTE format('ALTER TABLE %s OWNER TO {role}', item.name);
  END LOOP;
  FOR item IN SELECT c.oid::regclass AS name FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relowner = '{admin}'::regrole AND c.relkind = 'S'
        AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' LOOP
    EXECUTE format('ALTER SEQUENCE %s OWNER TO {role}', item.name);
  END LOOP;
  FOR item IN SELECT p.oid::regprocedure AS name FROM pg_proc p
      JOIN pg_namespace n ON n.oid = p.pronamespace
      WHERE p.proowner = '{admin}'::regrole
        AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' LOOP
    EXECUTE format('ALTER ROUTINE %s OWNER TO {role}', item.name);
  END LOOP;
  FOR item IN SELECT t.oid::regtype AS name FROM pg_type t
      JOIN pg_namespace n ON n.oid = t.typnamespace
      WHERE t.typowner = '{admin}'::regrole AND t.typtype IN ('c', 'd', 'e', 'r')
        AND (t.typrelid = 0 OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
        AND n.nspname NOT LIKE 'pg\\_%' AND n.nspname <> 'information_schema' LOOP
    EXECUTE format('ALTER TYPE %s OWNER TO {role}', item.name);
  END LOOP;
END $$;"""


def hand_over_statement(*, admin: str, role: str) -> str:
    """Run in the cluster's database as ``admin``: everything ``admin`` owns there passes to
    ``role``."""
    return _HAND_OVER.format(admin=_identifier(admin), role=_identifier(role))
