"""Steward's tokens: the token endpoint (code exchange, refresh with rotation and reuse
detection), revocation (RFC 7009) and the resource server's verification of an access token. Its
statements on ``tokens``, ``token_families`` and ``authorization_codes`` (their use) are here."""

from __future__ import annotations

import hmac
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

from actors._crypto import hash_token, new_token
from actors._statuses import LIVE_STATUSES, AuthEvent, RefreshOutcome
from actors._store import Conn, Op, Store
from actors.auth._audit_log import AuthAudit
from actors.auth._values import AuthPolicy, IssuedTokens, OAuthError, Principal, in_, now, s256

__all__ = ["GrantRevoker", "TokenService"]

LIVE_GRANT = LIVE_STATUSES  # the grant statuses a token of the grant may be used in


class GrantRevoker(Protocol):
    """Revokes a grant everywhere (streams end, caches forget, on every node), with ``also`` in
    its transaction."""

    async def __call__(
        self, grant_id: uuid.UUID, *, message: str, also: Sequence[Op] = ()
    ) -> None: ...


class TokenService:
    """Issues, rotates, revokes and verifies Steward's opaque tokens (stored as SHA-256 hashes,
    bound to the user, the client, the grant and the resource). A reused code or refresh token
    and a revoked token end their grant through ``revoke_grant`` (the one invalidation path)."""

    def __init__(
        self,
        store: Store,
        policy: AuthPolicy,
        *,
        audit: AuthAudit,
        revoke_grant: GrantRevoker,
    ) -> None:
        self._store = store
        self._policy = policy
        self._audit = audit
        self._revoke_grant = revoke_grant

    async def exchange_code(self, f: dict[str, str]) -> IssuedTokens:
        code = f.get("code", "")
        verifier = f.get("code_verifier", "")
        if not code or not verifier:
            raise OAuthError("invalid_request", "code and code_verifier are required")

        async def take(conn: Conn) -> dict[str, Any] | None:
            row = await conn.fetchrow(
                "SELECT c.*, g.status AS grant_status, u.revoked_at AS user_revoked FROM authorization_codes c "
                "JOIN grants g ON g.grant_id = c.grant_id JOIN users u ON u.user_id = c.user_id "
                "WHERE c.code_hash = $1 FOR UPDATE OF c",
                hash_token(code),
            )
            if row is None:
                return None
            if row["used_at"] is not None:
                # a code used twice: revoke what the first use issued (OAuth 2.1 §4.1.3); the
                # grant itself is revoked next, through the one invalidation path
                await conn.execute(
                    "UPDATE token_families SET revoked_at = now(), revoke_reason = 'code_reuse' WHERE grant_id = $1 AND revoked_at IS NULL",
                    row["grant_id"],
                )
                return {"reused": True, **dict(row)}
            await conn.execute(
                "UPDATE authorization_codes SET used_at = now() WHERE code_hash = $1",
                hash_token(code),
            )
            return dict(row)

        row = await self._store.transact(take)
        if row is None:
            raise OAuthError("invalid_grant", "unknown authorization code")
        if row.get("reused"):
            self._audit(
                AuthEvent.CODE_REUSE_DETECTED,
                user_id=row["user_id"],
                client_id=row["client_id"],
                grant_id=row["grant_id"],
            )
            if row["grant_status"] in LIVE_GRANT:
                await self._revoke_grant(
                    row["grant_id"],
                    message="the authorization code was used twice; the grant is revoked",
                )
            raise OAuthError("invalid_grant", "authorization code already used")
        if row["user_revoked"] is not None:
            raise OAuthError("invalid_grant", "this user's access was revoked")
        if row["grant_status"] not in LIVE_GRANT:
            raise OAuthError("invalid_grant", f"the authorization is {row['grant_status']}")
        if row["expires_at"] < now():
            raise OAuthError("invalid_grant", "authorization code expired")
        if f.get("client_id") != row["client_id"]:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if f.get("redirect_uri", row["redirect_uri"]) != row["redirect_uri"]:
            raise OAuthError(
                "invalid_grant", "redirect_uri does not match the authorization request"
            )
        resource = f.get("resource")
        if resource and resource.rstrip("/") != row["resource"].rstrip("/"):
            raise OAuthError("invalid_target", "resource does not match the authorization request")
        if not hmac.compare_digest(s256(verifier), row["code_challenge"]):
            raise OAuthError("invalid_grant", "PKCE verification failed")
        family_id = uuid.uuid4()
        tokens, ops = self._issue(family_id, row, parent=None)
        await self._store.write(
            Op(
                "INSERT INTO token_families (family_id, grant_id, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                (family_id, row["grant_id"], row["user_id"]),
            ),
            *ops,
        )
        self._audit(
            AuthEvent.TOKEN_ISSUED,
            user_id=row["user_id"],
            client_id=row["client_id"],
            grant_id=row["grant_id"],
        )
        return tokens

    def _issue(
        self, family_id: uuid.UUID, row: dict[str, Any], *, parent: bytes | None
    ) -> tuple[IssuedTokens, list[Op]]:
        access, refresh = new_token(), new_token()
        sql = (
            "INSERT INTO tokens (token_hash, kind, family_id, grant_id, user_id, client_id, resource, scopes, parent_hash, expires_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT DO NOTHING"
        )
        common = (
            family_id,
            row["grant_id"],
            row["user_id"],
            row["client_id"],
            row["resource"],
            list(row["scopes"]),
        )
        ops = [
            Op(sql, (hash_token(access), "access", *common, parent, in_(self._policy.access_ttl))),
            Op(
                sql,
                (hash_token(refresh), "refresh", *common, parent, in_(self._policy.refresh_ttl)),
            ),
        ]
        return IssuedTokens(
            access, refresh, int(self._policy.access_ttl), " ".join(row["scopes"])
        ), ops

    async def refresh(self, f: dict[str, str]) -> IssuedTokens:
        """The refresh-token grant, with rotation and no grace (RFC 9700 §4.14.2): the presented
        token is superseded by the pair issued in the same transaction, and any later
        presentation of it, or of any revoked token of its family, revokes the whole grant on
        every node and is audited as ``refresh_reuse_detected``."""
        token = f.get("refresh_token", "")
        if not token:
            raise OAuthError("invalid_request", "refresh_token is required")
        client_id = f.get("client_id", "")
        if not client_id:
            # public clients do not authenticate: they name themselves (RFC 6749 §3.2.1)
            raise OAuthError(
                "invalid_client",
                "client_id is required: a public client names itself on every token request",
                status=401,
            )
        requested = tuple(dict.fromkeys(f.get("scope", "").split())) or None
        token_hash = hash_token(token)

        async def rotate(conn: Conn) -> tuple[RefreshOutcome, dict[str, Any]]:
            row = await conn.fetchrow(
                "SELECT t.*, f.revoked_at AS family_revoked, g.status, u.revoked_at AS user_revoked "
                "FROM tokens t JOIN token_families f USING (family_id) JOIN grants g ON g.grant_id = t.grant_id "
                "JOIN users u ON u.user_id = t.user_id WHERE t.token_hash = $1 AND t.kind = 'refresh' FOR UPDATE OF t",
                token_hash,
            )
            if row is None:
                return RefreshOutcome.UNKNOWN, {}
            row = dict(row)
            if (
                row["rotated_at"] is not None
                or row["revoked_at"] is not None
                or row["family_revoked"] is not None
            ):
                # superseded or revoked: whoever presents it, under whatever client id, it has
                # leaked or been replayed, and the family is no longer trusted
                await conn.execute(
                    "UPDATE token_families SET revoked_at = now(), revoke_reason = 'refresh_reuse' WHERE family_id = $1 AND revoked_at IS NULL",
                    row["family_id"],
                )
                state = "superseded" if row["rotated_at"] is not None else "revoked"
                return RefreshOutcome.REUSE, {"state": state, **row}
            if client_id != row["client_id"]:  # a live token: refused before anything changes
                return RefreshOutcome.WRONG_CLIENT, row
            if row["user_revoked"] is not None:
                return RefreshOutcome.USER_REVOKED, row
            if row["status"] not in LIVE_GRANT:
                return RefreshOutcome.INACTIVE, row
            if row["expires_at"] < now():
                return RefreshOutcome.EXPIRED, row
            if requested is not None:
                extra = [s for s in requested if s not in row["scopes"]]
                if extra:
                    return RefreshOutcome.INVALID_SCOPE, {"extra": extra, **row}
            # a token carries its grant's scopes (the grant's are what requests are checked
            # against): a narrower request is answered with the grant's, as `scope` says
            tokens, ops = self._issue(row["family_id"], row, parent=token_hash)
            await conn.execute(
                "UPDATE tokens SET rotated_at = now() WHERE token_hash = $1", token_hash
            )
            for op in ops:  # the successor exists as soon as the token is superseded
                await conn.execute(op.sql, *op.args)
            return RefreshOutcome.OK, {"tokens": tokens, **row}

        outcome, row = await self._store.transact(rotate)
        if outcome is RefreshOutcome.UNKNOWN:
            raise OAuthError("invalid_grant", "unknown refresh token")
        if outcome is RefreshOutcome.WRONG_CLIENT:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        if outcome is RefreshOutcome.REUSE:
            self._audit(
                AuthEvent.REFRESH_REUSE_DETECTED,
                user_id=row["user_id"],
                client_id=row["client_id"],
                grant_id=row["grant_id"],
                token_state=row["state"],
            )
            if row["status"] in LIVE_GRANT:
                await self._revoke_grant(
                    row["grant_id"],
                    message="a superseded refresh token was presented again; the grant is revoked",
                )
            raise OAuthError(
                "invalid_grant", "refresh token reuse detected; the token family is revoked"
            )
        if outcome is RefreshOutcome.USER_REVOKED:
            raise OAuthError("invalid_grant", "this user's access was revoked")
        if outcome is RefreshOutcome.INACTIVE:
            raise OAuthError("invalid_grant", f"the session is {row['status']}; authorize again")
        if outcome is RefreshOutcome.INVALID_SCOPE:
            raise OAuthError(
                "invalid_scope",
                f"scope {row['extra'][0]!r} was not granted; the grant holds: {' '.join(row['scopes'])}",
            )
        if outcome is not RefreshOutcome.OK:
            raise OAuthError("invalid_grant", f"refresh token {outcome}")
        self._audit(
            AuthEvent.TOKEN_REFRESH,
            user_id=row["user_id"],
            client_id=row["client_id"],
            grant_id=row["grant_id"],
        )
        tokens: IssuedTokens = row["tokens"]
        return tokens

    async def revoke_token(self, token: str, *, client_id: str) -> tuple[str, uuid.UUID] | None:
        """RFC 7009: revoking a refresh token or an access token revokes its grant (the token
        family with it, §2.1 allows it for an access token), through the one invalidation path:
        every stream of the grant ends with its error event and every node's cache forgets its
        tokens. Returns (user, grant), or None for a token Steward does not know.

        Raises:
            OAuthError: ``invalid_grant`` when the token was issued to another client than
                ``client_id`` (§2.1); nothing changes then.
        """
        row = await self._store.fetchrow(
            "SELECT kind, family_id, grant_id, user_id, client_id FROM tokens WHERE token_hash = $1",
            hash_token(token),
        )
        if row is None:
            return None
        if row["client_id"] != client_id:
            raise OAuthError("invalid_grant", "the token was issued to another client")
        await self._revoke_grant(
            row["grant_id"],
            message="the client revoked its token; the grant is revoked",
            also=[
                Op(
                    "UPDATE token_families SET revoked_at = now(), revoke_reason = 'revoked' WHERE family_id = $1 AND revoked_at IS NULL",
                    (row["family_id"],),
                ),
                Op(
                    "UPDATE tokens SET revoked_at = now() WHERE token_hash = $1 AND revoked_at IS NULL",
                    (hash_token(token),),
                ),
            ],
        )
        self._audit(
            AuthEvent.TOKEN_REVOKED,
            user_id=row["user_id"],
            client_id=row["client_id"],
            grant_id=row["grant_id"],
            token_kind=row["kind"],
        )
        return row["user_id"], row["grant_id"]

    # -- the resource server ---------------------------------------------------------------------------

    async def verify_access(self, token: str) -> Principal | None:
        """The principal behind a Steward access token, or None if it is not valid for this server."""
        row = await self._store.fetchrow(
            "SELECT t.user_id, t.client_id, t.grant_id, t.scopes, t.resource, t.expires_at, u.tier, u.issuer, u.subject "
            "FROM tokens t JOIN token_families f USING (family_id) JOIN grants g ON g.grant_id = t.grant_id JOIN users u ON u.user_id = t.user_id "
            "WHERE t.token_hash = $1 AND t.kind = 'access' AND t.revoked_at IS NULL AND f.revoked_at IS NULL "
            "AND g.status = 'active' AND u.revoked_at IS NULL AND t.expires_at > now()",
            hash_token(token),
        )
        if row is None or self._policy.canonical_resource(row["resource"]) is None:
            return None
        return Principal(
            user_id=row["user_id"],
            client_id=row["client_id"],
            grant_id=row["grant_id"],
            issuer=row["issuer"],
            subject=row["subject"],
            scopes=frozenset(row["scopes"]),
            tier=row["tier"],
            resource=row["resource"],
            expires_at=row["expires_at"].timestamp(),
        )
