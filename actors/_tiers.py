"""Subscription tiers from the identity provider's claims, failing closed (docs/security.md).

A ``TierMapping`` reads one claim (a dotted path into the userinfo or id_token claims, such as
``realm_access.roles``), maps its value or values to a configured tier and, when nothing maps,
answers the configured default tier or a refusal. It never answers a tier that is not
configured. A list-valued claim (roles, groups) maps to the highest tier any of its values maps
to; values that map to nothing are ignored unless none maps.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping
from typing import Any

import attrs

from actors._audit import audit_op
from actors._events import ClusterEvent, cluster_event_ops
from actors._statuses import AuthEvent, TierClaimUnmapped
from actors._store import Conn, Store, run_ops

__all__ = [
    "REFUSE",
    "TierChange",
    "TierMapping",
    "TierResolution",
    "apply_idp_tier",
    "override_tier",
    "set_tier_override",
    "tier_override_of",
]

REFUSE = "refuse"  # the ``default`` that refuses a sign-in whose claim maps to no tier
_MAX_VALUES = 1000  # values of a list-valued claim looked at (roles, groups)
_SHOWN = 5  # values named in a log line or an error, each cut to _SHOWN_CHARS
_SHOWN_CHARS = 64


@attrs.frozen
class TierResolution:
    """What a claim mapped to: ``tier`` (None: refused), and for a value that mapped to nothing
    ``unmapped`` says why (``TierClaimUnmapped``) with ``values`` a short, cut view of it."""

    tier: str | None
    unmapped: TierClaimUnmapped | None = None
    values: tuple[str, ...] = ()


@attrs.frozen
class TierMapping:
    """IdP claim values to configured tiers; ``tiers`` are the configured names, lowest first.

    ``mapping`` empty: each configured tier name maps to itself. ``default``: a configured tier,
    or ``"refuse"``. ``case_sensitive`` false: values and keys are compared casefolded.

    Raises:
        ValueError: a mapped tier or the default is not configured, or two keys are one under
            casefolding; the message names the value.
    """

    tiers: tuple[str, ...]
    claim: str = "tier"
    mapping: Mapping[str, str] = attrs.field(factory=dict)
    default: str = ""  # "" : the lowest configured tier
    case_sensitive: bool = True
    _table: dict[str, str] = attrs.field(init=False, repr=False, eq=False)

    def __attrs_post_init__(self) -> None:
        if not self.tiers:
            msg = "a tier mapping needs at least one configured tier"
            raise ValueError(msg)
        if not self.claim or any(not part for part in self.claim.split(".")):
            msg = f"the tier claim must be a claim name or a dotted path, got {self.claim!r}"
            raise ValueError(msg)
        if self.default == "":
            object.__setattr__(self, "default", self.tiers[0])
        if self.default != REFUSE and self.default not in self.tiers:
            msg = (
                f"the tier default must be one of {', '.join(self.tiers)} or {REFUSE!r}, "
                f"got {self.default!r}"
            )
            raise ValueError(msg)
        source = self.mapping or {t: t for t in self.tiers}
        table: dict[str, str] = {}
        for value, tier in source.items():
            if tier not in self.tiers:
                msg = (
                    f"the tier map sends {value!r} to {tier!r}, which is not a configured tier "
                    f"({', '.join(self.tiers)})"
                )
                raise ValueError(msg)
            key = self._key(value)
            if key in table and table[key] != tier:
                msg = (
                    f"the tier map has {value!r} and another value that are the same without "
                    f"case, mapped to different tiers ({table[key]!r}, {tier!r}); with "
                    "case_sensitive = false keep one"
                )
                raise ValueError(msg)
            table[key] = tier
        object.__setattr__(self, "_table", table)

    def _key(self, value: str) -> str:
        return value if self.case_sensitive else value.casefold()

    def rank(self, tier: str) -> int:
        return self.tiers.index(tier)

    def claim_value(self, claims: Mapping[str, Any]) -> Any:
        """The claim at ``claim`` in ``claims``: a top-level key of that exact name first (claim
        names such as ``https://example.com/tier`` hold dots), else the dotted path; None when
        absent."""
        if self.claim in claims:
            return claims[self.claim]
        node: Any = claims
        for part in self.claim.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        return node

    def resolve(self, claims: Mapping[str, Any]) -> TierResolution:
        """The tier these claims give, the default, or a refusal (``tier`` None)."""
        raw = self.claim_value(claims)
        values = _values(raw)
        best: str | None = None
        for value in values:
            tier = self._table.get(self._key(value))
            if tier is not None and (best is None or self.rank(tier) > self.rank(best)):
                best = tier
        if best is not None:
            return TierResolution(best)
        unmapped = TierClaimUnmapped.MISSING if not values else TierClaimUnmapped.UNKNOWN
        shown = tuple(v[:_SHOWN_CHARS] for v in values[:_SHOWN])
        return TierResolution(None if self.default == REFUSE else self.default, unmapped, shown)


def _values(raw: Any) -> list[str]:
    """A claim's values as strings: a string, a number, or a list of them (others ignored)."""
    if raw is None or isinstance(raw, bool):
        return []
    if isinstance(raw, str):
        return [raw] if raw else []
    if isinstance(raw, int | float):
        return [str(raw)]
    if isinstance(raw, list | tuple):
        out = [
            str(v)
            for v in raw[:_MAX_VALUES]
            if (isinstance(v, str) and v)
            or (isinstance(v, int | float) and not isinstance(v, bool))
        ]
        return list(collections.OrderedDict.fromkeys(out))
    return []


@attrs.frozen
class TierChange:
    """A user's effective tier before and after a write (equal: nothing changed)."""

    before: str
    after: str

    @property
    def changed(self) -> bool:
        return self.before != self.after


async def _publish(conn: Conn, user_id: str, tier: str, origin: str) -> None:
    await run_ops(
        conn,
        cluster_event_ops(
            ClusterEvent.TIER_CHANGED, origin=origin, user_id=user_id, payload={"tier": tier}
        ),
    )


async def apply_idp_tier(conn: Conn, user_id: str, tier: str, *, origin: str) -> TierChange | None:
    """Record what the identity provider's claim maps to for the user (``idp_tier``); the
    effective tier becomes it unless an operator's override holds. A change is published to
    every node (``tier_changed``) in the same transaction. None: no such user."""
    row = await conn.fetchrow(
        "SELECT tier, idp_tier, tier_override FROM users WHERE user_id = $1 FOR UPDATE", user_id
    )
    if row is None:
        return None
    after = row["tier_override"] or tier
    if row["idp_tier"] != tier or row["tier"] != after:
        await conn.execute(
            "UPDATE users SET idp_tier = $2, tier = $3, updated_at = now() WHERE user_id = $1",
            user_id,
            tier,
            after,
        )
    if after != row["tier"]:
        await _publish(conn, user_id, after, origin)
    return TierChange(row["tier"], after)


async def set_tier_override(
    conn: Conn, user_id: str, tier: str | None, *, origin: str
) -> TierChange | None:
    """An operator's override: ``tier`` holds until it is cleared (``tier`` None), whatever the
    identity provider says; cleared, the user's tier is the provider's last mapped value (kept
    as it is when none was ever recorded). A change is published to every node. None: no such
    user."""
    row = await conn.fetchrow(
        "SELECT tier, idp_tier FROM users WHERE user_id = $1 FOR UPDATE", user_id
    )
    if row is None:
        return None
    after = tier if tier is not None else (row["idp_tier"] or row["tier"])
    await conn.execute(
        "UPDATE users SET tier_override = $2, tier = $3, updated_at = now() WHERE user_id = $1",
        user_id,
        tier,
        after,
    )
    if after != row["tier"]:
        await _publish(conn, user_id, after, origin)
    return TierChange(row["tier"], after)


async def override_tier(
    store: Store, user_id: str, tier: str | None, *, origin: str
) -> TierChange | None:
    """An operator's tier override (``set_tier_override``), audited in the same transaction as
    ``tier_override_set`` or, ``tier`` None, ``tier_override_cleared`` (detail: the tier the
    user has now). The one implementation behind the admin API and ``steward users set-tier``.
    None: no such user.

    Raises:
        StoreUnavailable: the database cannot be reached; nothing changed.
    """

    async def write(conn: Conn) -> TierChange | None:
        change = await set_tier_override(conn, user_id, tier, origin=origin)
        if change is not None:
            kind = (
                AuthEvent.TIER_OVERRIDE_SET if tier is not None else AuthEvent.TIER_OVERRIDE_CLEARED
            )
            audit = audit_op(kind, node_id=origin, user_id=user_id, detail={"tier": change.after})
            await run_ops(conn, [audit])
        return change

    return await store.transact(write)


async def tier_override_of(store: Store, user_id: str) -> str | None:
    """The operator's override of the user's tier, None when none holds (or no such user)."""
    override: str | None = await store.fetchval(
        "SELECT tier_override FROM users WHERE user_id = $1", user_id
    )
    return override
