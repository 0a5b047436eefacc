"""Authorization domain: clients, the authorization flow, grants, Steward's tokens, audit events.

Steward's tokens are opaque (256 random bits) and stored only as SHA-256 hashes, bound to the
user, the client, the grant and the resource. Upstream tokens are AES-GCM encrypted with the key
ring, their associated data binding them to their row. Every authentication event goes to the
``auth_events`` table and the log, never with a secret.
"""

from __future__ import annotations

import base64
import collections
import datetime
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn, Protocol
from urllib.parse import urlencode

import attrs
import structlog
import trio

from actors._audit import audit_op
from actors._crypto import KeyRing, hash_token, new_token
from actors._grants import grant_end_ops
from actors._redirect_uris import (
    consent_may_be_remembered,
    consent_redirect_key,
    redirect_uri_matches,
    redirect_uri_problem,
    valid_redirect_uri,
)
from actors._statuses import LIVE_STATUSES, GrantStatus, RefreshOutcome
from actors._store import Conn, Op, Store
from actors._tiers import TierChange, TierMapping, apply_idp_tier
from actors._upstream import IdTokenInvalid, UpstreamClient, UpstreamTokens

__all__ = [
    "AuthPolicy",
    "AuthService",
    "ConsentNeeded",
    "GrantInvalidator",
    "IssuedTokens",
    "OAuthError",
    "Principal",
    "UserRevokedError",
    "audit_op",
    "valid_redirect_uri",
]

log = structlog.get_logger("auth")
UTC = datetime.UTC
DISCARD_WAIT = 5.0  # seconds to revoke the upstream tokens of a refused sign-in
LIVE_GRANT = LIVE_STATUSES  # the grant statuses a token of the grant may be used in


def _now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def _in(seconds: float) -> datetime.datetime:
    return _now() + datetime.timedelta(seconds=seconds)


class OAuthError(Exception):
    """An OAuth error response: ``error`` code, a description, an HTTP status."""

    def __init__(self, error: str, description: str, status: int = 400) -> None:
        super().__init__(f"{error}: {description}")
        self.error = error
        self.description = description
        self.status = status

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


class UserRevokedError(OAuthError):
    """An operator revoked the user signing in (``steward users revoke``): the sign-in ends at
    the callback or the consent. ``client_redirect`` sends the browser back to the client with
    the OAuth error (RFC 6749 §4.1.2.1: the redirect URI was verified at /authorize)."""

    def __init__(self, user_id: str, client_redirect: str) -> None:
        super().__init__("access_denied", "this user's access was revoked", status=403)
        self.user_id = user_id
        self.client_redirect = client_redirect


@attrs.frozen
class Principal:
    """Who is calling, from a verified Steward access token."""

    user_id: str
    client_id: str
    grant_id: uuid.UUID
    issuer: str
    subject: str
    scopes: frozenset[str]
    tier: str
    resource: str
    expires_at: float


@attrs.frozen
class IssuedTokens:
    access_token: str = attrs.field(repr=False)
    refresh_token: str = attrs.field(repr=False)
    expires_in: int
    scope: str

    def body(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
            "refresh_token": self.refresh_token,
            "scope": self.scope,
        }


@attrs.frozen
class ConsentNeeded:
    """The callback found no remembered consent: show the consent page."""

    request_token: str = attrs.field(repr=False)
    csrf_token: str = attrs.field(repr=False)
    client_id: str
    client_name: str
    redirect_uri: str
    scopes: tuple[str, ...]
    user_id: str


class GrantInvalidator(Protocol):
    """The one invalidation of a grant (``SessionManager.invalidate``, docs/sessions.md): the
    grant's status and open connection rows change and a cluster event is published, with
    ``also`` in the same transaction; every node's streams of the grant end with their error
    event and every node's verified-token cache forgets the grant's tokens."""

    async def __call__(
        self,
        grant_id: uuid.UUID,
        *,
        reason: GrantStatus,
        message: str | None = None,
        also: Sequence[Op] = (),
    ) -> None: ...


@attrs.frozen
class AuthPolicy:
    issuer: str  # Steward's base URL (the authorization server facade)
    resource: str  # this server's resource URL: the audience of its tokens
    # other identifiers of the same protected resource (the deprecated transport's ``/sse``): a
    # client may ask for any of them and a token for one is valid on every MCP endpoint of this
    # server (docs/security.md, "One resource, two identifiers")
    resource_aliases: tuple[str, ...] = ()
    access_ttl: float = 3600.0
    refresh_ttl: float = 30 * 86400.0
    code_ttl: float = 60.0
    request_ttl: float = 600.0
    session_ttl: float = 30 * 86400.0
    scopes_supported: tuple[str, ...] = ("mcp:tools", "mcp:resources", "mcp:prompts")
    default_scopes: tuple[str, ...] = ("mcp:tools", "mcp:resources", "mcp:prompts")
    # the identity provider's claim to a configured tier (docs/security.md, "Tiers")
    tier_mapping: TierMapping = attrs.field(
        factory=lambda: TierMapping(("free", "pro", "enterprise"))
    )


def s256(verifier: str) -> str:
    return (
        # a verifier is ASCII (RFC 7636); anything else is hashed as it is, never a 500
        base64.urlsafe_b64encode(hashlib.sha256(verifier.encode("utf-8", "surrogatepass")).digest())
        .rstrip(b"=")
        .decode()
    )


class AuthService:
    def __init__(
        self,
        store: Store,
        keyring: KeyRing,
        upstream: UpstreamClient,
        policy: AuthPolicy,
        *,
        node_id: str = "node",
    ) -> None:
        self.store = store
        self.keyring = keyring
        self.upstream = upstream
        self.policy = policy
        self.node_id = node_id
        # set by the SessionManager built on this service: revocations found here (/revoke, code
        # and refresh-token reuse) end the grant through the same path as an operator's revoke
        self.invalidate_grant: GrantInvalidator | None = None
        # set by the SessionManager: a user's tier changed here (this node's sessions take it
        # up; the other nodes through the tier_changed event committed with the change)
        self.on_tier_changed: Callable[[str, str], None] | None = None
        # claims that mapped to no tier, by (missing | unknown, default | refused)
        self.tier_unmapped: collections.Counter[tuple[str, str]] = collections.Counter()

    # -- audit -----------------------------------------------------------------------------------

    def audit(
        self,
        kind: str,
        *,
        user_id: str | None = None,
        client_id: str | None = None,
        grant_id: uuid.UUID | None = None,
        **detail: Any,
    ) -> None:
        """Record an authentication event in the audit table and the log. Never pass a secret."""
        self.store.write_nowait(
            audit_op(
                kind,
                node_id=self.node_id,
                user_id=user_id,
                client_id=client_id,
                grant_id=grant_id,
                detail=detail,
            )
        )
        log.info(
            "auth_event",
            kind=kind,
            user_id=user_id,
            client_id=client_id,
            grant_id=str(grant_id) if grant_id else None,
            **detail,
        )

    async def _revoke_grant(
        self, grant_id: uuid.UUID, *, message: str, also: Sequence[Op] = ()
    ) -> None:
        """Revoke the grant everywhere: streams end, caches forget, on every node."""
        if self.invalidate_grant is not None:
            await self.invalidate_grant(
                grant_id, reason=GrantStatus.REVOKED, message=message, also=also
            )
            return
        # no session manager (a bare service): the rows alone, which the token checks read
        await self.store.write(
            *grant_end_ops([grant_id], status=GrantStatus.REVOKED, message=message), *also
        )

    # -- tiers -----------------------------------------------------------------------------------------

    async def upstream_claims(self, tokens: UpstreamTokens) -> dict[str, Any] | None:
        """The identity provider's claims about the user behind freshly refreshed ``tokens``:
        the id_token's, when the refresh returned one (validated as at sign-in, without a
        nonce), with userinfo's answer on top when the provider has a userinfo endpoint; None
        when it gives neither.

        Raises:
            UpstreamUnavailable, UpstreamRevoked: as ``UpstreamClient.userinfo``.
            ValueError: the id_token is refused (``IdTokenInvalid``), or userinfo names
                another subject.
        """
        claims: dict[str, Any] = {}
        if tokens.id_token is not None:
            claims = await self.upstream.validate_id_token(tokens.id_token)
        if self.upstream.metadata.userinfo_endpoint is not None:
            info = await self.upstream.userinfo(tokens.access_token)
            if not isinstance(info, dict):
                info = {}
            if claims and str(info.get("sub") or "") != claims["sub"]:
                msg = "userinfo names another subject than the refreshed id_token"
                raise IdTokenInvalid(msg)
            claims = {**claims, **info}
        return claims or None

    def resolve_tier(
        self,
        claims: Mapping[str, Any],
        *,
        user_id: str,
        at: str,
        grant_id: uuid.UUID | None = None,
    ) -> str | None:
        """The configured tier the claims map to, the default, or None (refused). A value that
        maps to nothing is logged (``tier_claim_unmapped``: the claim path, at most a few cut
        values, never a token) and counted."""
        mapping = self.policy.tier_mapping
        found = mapping.resolve(claims)
        if found.unmapped is not None:
            outcome = "refused" if found.tier is None else "default"
            self.tier_unmapped[(found.unmapped, outcome)] += 1
            log.warning(
                "tier_claim_unmapped",
                user_id=user_id,
                grant_id=str(grant_id) if grant_id else None,
                at=at,
                claim=mapping.claim,
                reason=found.unmapped,
                values=list(found.values),
                outcome=outcome,
                tier=found.tier,
            )
        return found.tier

    @property
    def resources(self) -> tuple[str, ...]:
        """Every identifier of this server's protected resource, the canonical one first."""
        return (self.policy.resource, *self.policy.resource_aliases)

    def canonical_resource(self, resource: str) -> str | None:
        """``resource`` as this server names it (one of ``resources``; a trailing slash aside),
        or None when it names another resource."""
        for mine in self.resources:
            if resource.rstrip("/") == mine.rstrip("/"):
                return mine
        return None

    def tier_changed(self, user_id: str, change: TierChange | None, *, source: str) -> None:
        """After a committed tier write: this node's sessions take the new tier up; audited."""
        if change is None or not change.changed:
            return
        self.audit(
            "tier_changed", user_id=user_id, before=change.before, after=change.after, source=source
        )
        if self.on_tier_changed is not None:
            self.on_tier_changed(user_id, change.after)

    # -- clients -----------------------------------------------------------------------------------

    async def register_client(
        self, metadata: dict[str, Any], *, source: str = "dynamic", client_id: str | None = None
    ) -> dict[str, Any]:
        """Dynamic client registration (RFC 7591): validates and stores a public client."""
        uris = metadata.get("redirect_uris")
        if not isinstance(uris, list) or not uris or not all(isinstance(u, str) for u in uris):
            raise OAuthError(
                "invalid_redirect_uri", "redirect_uris must be a non-empty list of URIs"
            )
        for uri in uris:
            problem = redirect_uri_problem(uri)
            if problem is not None:
                raise OAuthError("invalid_redirect_uri", f"{problem}: {uri[:200]!r}")
        method = metadata.get("token_endpoint_auth_method", "none")
        if method != "none":
            raise OAuthError(
                "invalid_client_metadata",
                "only public clients (token_endpoint_auth_method none) may register",
            )
        grant_types = metadata.get("grant_types", ["authorization_code", "refresh_token"])
        if not (
            isinstance(grant_types, list)
            and all(isinstance(g, str) for g in grant_types)
            and set(grant_types) <= {"authorization_code", "refresh_token"}
        ):
            raise OAuthError(
                "invalid_client_metadata",
                "grant_types may hold authorization_code and refresh_token only",
            )
        name = metadata.get("client_name")
        if name is not None and (not isinstance(name, str) or len(name) > 200):
            raise OAuthError(
                "invalid_client_metadata", "client_name must be a string of at most 200 characters"
            )
        scope = metadata.get("scope")
        if scope is not None and not isinstance(scope, str):
            raise OAuthError("invalid_client_metadata", "scope must be a string")
        client_id = client_id or f"stw-{secrets.token_urlsafe(16)}"
        await self.store.write(
            Op(
                "INSERT INTO oauth_clients (client_id, client_name, redirect_uris, grant_types, token_endpoint_auth_method, scope, source, metadata, fetched_at) "
                "VALUES ($1, $2, $3, $4, 'none', $5, $6, $7, CASE WHEN $6 = 'metadata_document' THEN now() END) "
                "ON CONFLICT (client_id) DO UPDATE SET client_name = EXCLUDED.client_name, redirect_uris = EXCLUDED.redirect_uris, "
                "scope = EXCLUDED.scope, metadata = EXCLUDED.metadata, fetched_at = EXCLUDED.fetched_at",
                (
                    client_id,
                    name,
                    uris,
                    grant_types,
                    scope,
                    source,
                    {k: v for k, v in metadata.items() if k != "client_secret"},
                ),
            )
        )
        self.audit("client_registered", client_id=client_id, source=source)
        return {
            "client_id": client_id,
            "client_id_issued_at": int(_now().timestamp()),
            "redirect_uris": uris,
            "grant_types": grant_types,
            "response_types": ["code"],
            "token_endpoint_auth_method": "none",
            **({"client_name": name} if name else {}),
            **({"scope": scope} if scope else {}),
        }

    async def client(self, client_id: str) -> dict[str, Any] | None:
        return await self.store.fetchrow(
            "SELECT client_id, client_name, redirect_uris, scope, source, fetched_at FROM oauth_clients WHERE client_id = $1",
            client_id,
        )

    # -- the authorization flow ----------------------------------------------------------------------

    def _scopes(self, requested: str | None) -> tuple[str, ...]:
        if not requested:
            return self.policy.default_scopes
        scopes = tuple(dict.fromkeys(requested.split()))
        unknown = [s for s in scopes if s not in self.policy.scopes_supported]
        if unknown:
            raise OAuthError(
                "invalid_scope",
                f"unknown scope {unknown[0]!r}; supported: {' '.join(self.policy.scopes_supported)}",
            )
        return scopes

    async def begin(self, params: dict[str, str], *, callback_uri: str) -> str:
        """Validate an /authorize request and return the upstream IdP URL to redirect to.

        Raises:
            OAuthError: before the redirect URI is verified, errors are shown, never redirected.
        """
        client_id = params.get("client_id", "")
        client = await self.client(client_id) if client_id else None
        if client is None:
            raise OAuthError("invalid_client", "unknown client_id")
        redirect_uri = params.get("redirect_uri", "")
        if not valid_redirect_uri(redirect_uri) or not any(
            redirect_uri_matches(redirect_uri, r) for r in client["redirect_uris"]
        ):
            raise OAuthError(
                "invalid_request", "redirect_uri does not exactly match a registered redirect URI"
            )
        if params.get("response_type") != "code":
            raise OAuthError("unsupported_response_type", "response_type must be code")
        challenge = params.get("code_challenge", "")
        if params.get("code_challenge_method") != "S256" or not (43 <= len(challenge) <= 128):
            raise OAuthError("invalid_request", "PKCE with code_challenge_method S256 is required")
        # OAuth 2.1: with PKCE, state is optional; when sent it is returned as it came ("" is
        # stored for none: a state that is sent must have 1 to 1024 characters)
        state = params.get("state")
        if state is not None and not 1 <= len(state) <= 1024:
            raise OAuthError(
                "invalid_request",
                f"state, when sent, must have 1 to 1024 characters, got {len(state)}",
            )
        resource = self.canonical_resource(params.get("resource") or self.policy.resource)
        if resource is None:
            raise OAuthError(
                "invalid_target", f"resource must be one of {', '.join(self.resources)}"
            )
        scopes = self._scopes(params.get("scope"))
        # the IdP's endpoints are known (discovery succeeded) before anything is stored
        self.upstream.require_ready()
        request_token = new_token()
        verifier = new_token() + new_token()
        request_hash = hash_token(request_token)
        key_id, verifier_ct = self.keyring.encrypt(verifier, aad=request_hash)
        # OpenID Connect: a nonce binds the id_token to this request; only its hash is kept
        nonce = new_token() if self.upstream.wants_id_token else None
        await self.store.write(
            Op(
                "INSERT INTO authorization_requests (request_hash, client_id, redirect_uri, client_state, code_challenge, scopes, resource, key_id, verifier_ciphertext, expires_at, nonce_hash) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT DO NOTHING",
                (
                    request_hash,
                    client_id,
                    redirect_uri,
                    state or "",
                    challenge,
                    list(scopes),
                    resource,
                    key_id,
                    verifier_ct,
                    _in(self.policy.request_ttl),
                    None if nonce is None else hash_token(nonce),
                ),
            )
        )
        return self.upstream.authorize_url(
            state=request_token,
            code_challenge=s256(verifier),
            redirect_uri=callback_uri,
            login_hint=params.get("login_hint"),
            nonce=nonce,
        )

    async def callback(self, *, state: str, code: str, callback_uri: str) -> ConsentNeeded | str:
        """The upstream IdP's redirect back: sign the user in. Returns the consent to ask for, or
        (consent remembered) the URL to send the user back to the client with a code."""
        request_hash = hash_token(state)
        row = await self.store.fetchrow(
            "SELECT * FROM authorization_requests WHERE request_hash = $1 AND consumed_at IS NULL AND user_id IS NULL AND expires_at > now()",
            request_hash,
        )
        if row is None:
            raise OAuthError("invalid_request", "unknown, used or expired state")
        verifier = self.keyring.decrypt(row["key_id"], row["verifier_ciphertext"], aad=request_hash)
        tokens = await self.upstream.exchange_code(
            code=code, code_verifier=verifier, redirect_uri=callback_uri
        )
        try:
            info = await self.upstream.identity(tokens, nonce_hash=row.get("nonce_hash"))
        except IdTokenInvalid as exc:
            # the request ends here: nothing of this sign-in is stored
            await self.store.write(
                Op(
                    "UPDATE authorization_requests SET consumed_at = now() WHERE request_hash = $1",
                    (request_hash,),
                )
            )
            self.audit("sign_in_refused", client_id=row["client_id"], reason=str(exc)[:300])
            raise OAuthError(
                "server_error", f"the identity provider's answer was refused: {exc}", status=502
            ) from None
        subject = str(info["sub"])
        issuer = self.upstream.config.issuer
        user_id = f"{issuer}|{subject}"
        idp_tier = self.resolve_tier(info, user_id=user_id, at="sign_in")
        blob = json.dumps(
            {"a": tokens.access_token, "r": tokens.refresh_token, "e": tokens.expires_at}
        )
        key_id, upstream_ct = self.keyring.encrypt(blob, aad=request_hash)
        csrf = new_token()
        # remembered consent is bound to the user, the client, the redirect URI and the scopes
        known = await self.store.fetchrow(
            "SELECT (SELECT revoked_at IS NOT NULL FROM users WHERE user_id = $1) AS revoked, "
            "(SELECT tier_override FROM users WHERE user_id = $1) AS tier_override, "
            "(SELECT scopes FROM consents WHERE user_id = $1 AND client_id = $2 AND redirect_uri = $3) AS scopes",
            user_id,
            row["client_id"],
            consent_redirect_key(row["redirect_uri"]),
        )
        assert known is not None
        if known["revoked"]:
            await self._discard_upstream(tokens)
            await self._refuse_revoked_user(request_hash, user_id, row)
        if idp_tier is None and known["tier_override"] is None:
            await self._discard_upstream(tokens)
            await self._refuse_without_tier(request_hash, user_id, row["client_id"])
        # a new user's first tier is the override-free one; apply_idp_tier then records the
        # provider's value (an operator's override, once set, wins) and publishes a change
        first = idp_tier or known["tier_override"]

        async def sign_in(conn: Conn) -> TierChange | None:
            await conn.execute(
                "INSERT INTO users (user_id, issuer, subject, email, tier, idp_tier) VALUES ($1, $2, $3, $4, $5, $6) "
                "ON CONFLICT (user_id) DO UPDATE SET email = EXCLUDED.email, updated_at = now()",
                user_id,
                issuer,
                subject,
                info.get("email"),
                first,
                idp_tier,
            )
            change = None
            if idp_tier is not None:
                change = await apply_idp_tier(conn, user_id, idp_tier, origin=self.node_id)
            tier = await conn.fetchval("SELECT tier FROM users WHERE user_id = $1", user_id)
            await conn.execute(
                "UPDATE authorization_requests SET user_id = $2, tier = $3, upstream_ciphertext = $4, key_id = $5, csrf_hash = $6 "
                "WHERE request_hash = $1 AND user_id IS NULL",
                request_hash,
                user_id,
                tier,
                upstream_ct,
                key_id,
                hash_token(csrf),
            )
            return change

        self.tier_changed(user_id, await self.store.transact(sign_in), source="sign_in")
        self.audit("upstream_sign_in", user_id=user_id, client_id=row["client_id"])
        if (
            known["scopes"] is not None
            and set(row["scopes"]) <= set(known["scopes"])
            and consent_may_be_remembered(row["redirect_uri"])
        ):
            return await self._complete(request_hash)
        client = await self.client(row["client_id"])
        return ConsentNeeded(
            request_token=state,
            csrf_token=csrf,
            client_id=row["client_id"],
            client_name=(client or {}).get("client_name") or row["client_id"],
            redirect_uri=row["redirect_uri"],
            scopes=tuple(row["scopes"]),
            user_id=user_id,
        )

    async def _refuse_revoked_user(
        self, request_hash: bytes, user_id: str, request: dict[str, Any]
    ) -> NoReturn:
        """An operator revoked this user: the authorization request ends here, with no code."""
        await self.store.write(
            Op(
                "UPDATE authorization_requests SET consumed_at = now(), upstream_ciphertext = NULL WHERE request_hash = $1",
                (request_hash,),
            )
        )
        client_id = request["client_id"]
        self.audit("sign_in_refused", user_id=user_id, client_id=client_id, reason="user revoked")
        raise UserRevokedError(
            user_id,
            _with_params(
                request["redirect_uri"],
                {
                    "error": "access_denied",
                    "error_description": "this user's access was revoked",
                    "state": request["client_state"],
                    "iss": self.policy.issuer,
                },
            ),
        )

    async def _discard_upstream(self, tokens: UpstreamTokens) -> None:
        """The tokens the IdP issued for a sign-in Steward refuses are revoked there (RFC 7009),
        refresh token first, within ``DISCARD_WAIT`` seconds and at best effort: nothing of them is
        stored, so no later revocation could reach them."""
        with trio.move_on_after(DISCARD_WAIT):
            if tokens.refresh_token:
                await self.upstream.revoke(tokens.refresh_token, hint="refresh_token")
            await self.upstream.revoke(tokens.access_token, hint="access_token")

    async def _refuse_without_tier(
        self, request_hash: bytes, user_id: str, client_id: str
    ) -> NoReturn:
        """The identity provider's claim maps to no tier and the configured default is
        ``refuse``: the authorization request ends here, unanswered."""
        await self.store.write(
            Op(
                "UPDATE authorization_requests SET consumed_at = now(), upstream_ciphertext = NULL WHERE request_hash = $1",
                (request_hash,),
            )
        )
        self.audit("sign_in_refused", user_id=user_id, client_id=client_id, reason="no tier")
        raise OAuthError(
            "access_denied",
            f"the identity provider gives this account no subscription tier this service "
            f"offers (claim {self.policy.tier_mapping.claim!r}); ask its administrator for access",
            status=403,
        )

    async def consent(self, *, request_token: str, csrf_token: str, approve: bool) -> str:
        """The consent form's answer; returns where to send the browser."""
        request_hash = hash_token(request_token)
        row = await self.store.fetchrow(
            "SELECT r.*, u.revoked_at AS user_revoked FROM authorization_requests r LEFT JOIN users u USING (user_id) "
            "WHERE r.request_hash = $1 AND r.consumed_at IS NULL AND r.user_id IS NOT NULL AND r.expires_at > now()",
            request_hash,
        )
        if (
            row is None
            or row["csrf_hash"] is None
            or not hmac.compare_digest(row["csrf_hash"], hash_token(csrf_token))
        ):
            raise OAuthError(
                "invalid_request",
                "unknown or expired consent request, or a bad CSRF token",
                status=403,
            )
        if row["user_revoked"] is not None:
            await self._refuse_revoked_user(request_hash, row["user_id"], row)
        if not approve:
            await self.store.write(
                Op(
                    "UPDATE authorization_requests SET consumed_at = now() WHERE request_hash = $1",
                    (request_hash,),
                )
            )
            self.audit("consent_denied", user_id=row["user_id"], client_id=row["client_id"])
            return _with_params(
                row["redirect_uri"],
                {"error": "access_denied", "state": row["client_state"], "iss": self.policy.issuer},
            )
        await self.store.write(
            Op(
                "INSERT INTO consents (user_id, client_id, redirect_uri, scopes) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (user_id, client_id, redirect_uri) DO UPDATE SET scopes = (SELECT array_agg(DISTINCT s) FROM unnest(consents.scopes || EXCLUDED.scopes) s), granted_at = now()",
                (
                    row["user_id"],
                    row["client_id"],
                    consent_redirect_key(row["redirect_uri"]),
                    row["scopes"],
                ),
            )
        )
        self.audit(
            "consent_granted",
            user_id=row["user_id"],
            client_id=row["client_id"],
            scopes=list(row["scopes"]),
            redirect_uri=row["redirect_uri"],
        )
        return await self._complete(request_hash)

    async def _complete(self, request_hash: bytes) -> str:
        """Consume the request: create the grant (the user session) and a one-time code."""
        code = new_token()
        grant_id = uuid.uuid4()

        async def complete(conn: Conn) -> dict[str, Any] | None:
            row = await conn.fetchrow(
                "UPDATE authorization_requests SET consumed_at = now() WHERE request_hash = $1 AND consumed_at IS NULL AND user_id IS NOT NULL RETURNING *",
                request_hash,
            )
            if row is None:
                return None
            # FOR SHARE: an operator's revoke of this user (which updates the row, then the
            # user's grants) either commits first and is seen here, or revokes this grant too
            revoked = await conn.fetchval(
                "SELECT revoked_at IS NOT NULL FROM users WHERE user_id = $1 FOR SHARE",
                row["user_id"],
            )
            if revoked:
                await conn.execute(
                    "UPDATE authorization_requests SET upstream_ciphertext = NULL WHERE request_hash = $1",
                    request_hash,
                )
                return {"user_revoked": True, **dict(row)}
            await conn.execute(
                "INSERT INTO grants (grant_id, user_id, client_id, resource, tier, scopes, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                grant_id,
                row["user_id"],
                row["client_id"],
                row["resource"],
                row["tier"],
                row["scopes"],
                _in(self.policy.session_ttl),
            )
            blob = self.keyring.decrypt(row["key_id"], row["upstream_ciphertext"], aad=request_hash)
            tokens = json.loads(blob)
            key_id, access_ct = self.keyring.encrypt(tokens["a"], aad=grant_id.bytes)
            refresh_ct = (
                self.keyring.encrypt(tokens["r"], aad=grant_id.bytes)[1] if tokens["r"] else None
            )
            await conn.execute(
                "INSERT INTO upstream_tokens (grant_id, user_id, key_id, access_ciphertext, refresh_ciphertext, access_expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
                grant_id,
                row["user_id"],
                key_id,
                access_ct,
                refresh_ct,
                datetime.datetime.fromtimestamp(tokens["e"], UTC),
            )
            await conn.execute(
                "UPDATE authorization_requests SET upstream_ciphertext = NULL WHERE request_hash = $1",
                request_hash,
            )
            await conn.execute(
                "INSERT INTO authorization_codes (code_hash, grant_id, user_id, client_id, redirect_uri, code_challenge, resource, scopes, expires_at) "
                "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                hash_token(code),
                grant_id,
                row["user_id"],
                row["client_id"],
                row["redirect_uri"],
                row["code_challenge"],
                row["resource"],
                row["scopes"],
                _in(self.policy.code_ttl),
            )
            return dict(row)

        row = await self.store.transact(complete)
        if row is None:
            raise OAuthError("invalid_request", "this authorization request was already completed")
        if row.get("user_revoked"):
            await self._refuse_revoked_user(request_hash, row["user_id"], row)
        self.audit("sign_in", user_id=row["user_id"], client_id=row["client_id"], grant_id=grant_id)
        return _with_params(
            row["redirect_uri"],
            {"code": code, "state": row["client_state"], "iss": self.policy.issuer},
        )

    # -- the token endpoint --------------------------------------------------------------------------

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

        row = await self.store.transact(take)
        if row is None:
            raise OAuthError("invalid_grant", "unknown authorization code")
        if row.get("reused"):
            self.audit(
                "code_reuse_detected",
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
        if row["expires_at"] < _now():
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
        await self.store.write(
            Op(
                "INSERT INTO token_families (family_id, grant_id, user_id) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                (family_id, row["grant_id"], row["user_id"]),
            ),
            *ops,
        )
        self.audit(
            "token_issued",
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
            Op(sql, (hash_token(access), "access", *common, parent, _in(self.policy.access_ttl))),
            Op(
                sql, (hash_token(refresh), "refresh", *common, parent, _in(self.policy.refresh_ttl))
            ),
        ]
        return IssuedTokens(
            access, refresh, int(self.policy.access_ttl), " ".join(row["scopes"])
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
            if row["expires_at"] < _now():
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

        outcome, row = await self.store.transact(rotate)
        if outcome is RefreshOutcome.UNKNOWN:
            raise OAuthError("invalid_grant", "unknown refresh token")
        if outcome is RefreshOutcome.WRONG_CLIENT:
            raise OAuthError("invalid_grant", "the refresh token was issued to another client")
        if outcome is RefreshOutcome.REUSE:
            self.audit(
                "refresh_reuse_detected",
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
        self.audit(
            "token_refresh",
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
        row = await self.store.fetchrow(
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
        self.audit(
            "token_revoked",
            user_id=row["user_id"],
            client_id=row["client_id"],
            grant_id=row["grant_id"],
            token_kind=row["kind"],
        )
        return row["user_id"], row["grant_id"]

    # -- the resource server ---------------------------------------------------------------------------

    async def verify_access(self, token: str) -> Principal | None:
        """The principal behind a Steward access token, or None if it is not valid for this server."""
        row = await self.store.fetchrow(
            "SELECT t.user_id, t.client_id, t.grant_id, t.scopes, t.resource, t.expires_at, u.tier, u.issuer, u.subject "
            "FROM tokens t JOIN token_families f USING (family_id) JOIN grants g ON g.grant_id = t.grant_id JOIN users u ON u.user_id = t.user_id "
            "WHERE t.token_hash = $1 AND t.kind = 'access' AND t.revoked_at IS NULL AND f.revoked_at IS NULL "
            "AND g.status = 'active' AND u.revoked_at IS NULL AND t.expires_at > now()",
            hash_token(token),
        )
        if row is None or self.canonical_resource(row["resource"]) is None:
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

    # -- upstream tokens -----------------------------------------------------------------------------

    def encrypt_upstream(
        self, grant_id: uuid.UUID, tokens: UpstreamTokens
    ) -> tuple[str, bytes, bytes | None]:
        key_id, access_ct = self.keyring.encrypt(tokens.access_token, aad=grant_id.bytes)
        refresh_ct = (
            self.keyring.encrypt(tokens.refresh_token, aad=grant_id.bytes)[1]
            if tokens.refresh_token
            else None
        )
        return key_id, access_ct, refresh_ct

    def decrypt_upstream(self, row: dict[str, Any]) -> UpstreamTokens:
        grant_id: uuid.UUID = row["grant_id"]
        access = self.keyring.decrypt(row["key_id"], row["access_ciphertext"], aad=grant_id.bytes)
        refresh = (
            self.keyring.decrypt(row["key_id"], row["refresh_ciphertext"], aad=grant_id.bytes)
            if row["refresh_ciphertext"]
            else None
        )
        return UpstreamTokens(access, refresh, row["access_expires_at"].timestamp())


def _with_params(uri: str, params: dict[str, str]) -> str:
    """``uri`` with ``params`` added; an empty ``state`` (the client sent none) is left out."""
    if params.get("state") == "":
        params = {k: v for k, v in params.items() if k != "state"}
    return f"{uri}{'&' if '?' in uri else '?'}{urlencode(params)}"
