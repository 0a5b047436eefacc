"""The authorization flow: ``/authorize`` (``begin``), the identity provider's callback (sign
the user in), the consent, and its completion into a grant and a one-time code. Its statements
on ``authorization_requests``, ``consents`` and ``authorization_codes`` are here, with the
sign-in's first rows of ``users``, ``grants`` and ``upstream_tokens``."""

from __future__ import annotations

import datetime
import hmac
import json
import uuid
from typing import Any, NoReturn

import trio

from actors._crypto import hash_token, new_token
from actors._grants import grant_created
from actors._redirect_uris import (
    consent_may_be_remembered,
    consent_redirect_key,
    redirect_uri_matches,
    valid_redirect_uri,
)
from actors._statuses import AuthEvent
from actors._store import Conn, Op, Store
from actors._tiers import TierChange, apply_idp_tier
from actors._upstream import IdTokenInvalid, UpstreamClient, UpstreamTokens
from actors.auth._audit_log import AuthAudit
from actors.auth._clients import ClientRegistry
from actors.auth._tier_claims import TierClaimReader
from actors.auth._values import (
    AuthPolicy,
    ConsentNeeded,
    OAuthError,
    UserRevokedError,
    in_,
    s256,
    with_params,
)
from actors.auth._vault import UpstreamVault

__all__ = ["DISCARD_WAIT", "AuthorizationFlow"]

UTC = datetime.UTC
DISCARD_WAIT = 5.0  # seconds to revoke the upstream tokens of a refused sign-in


class AuthorizationFlow:
    """From ``/authorize`` to the code the client exchanges: one authorization request, signed
    in at the identity provider, consented, completed into a grant."""

    def __init__(
        self,
        store: Store,
        upstream: UpstreamClient,
        policy: AuthPolicy,
        *,
        vault: UpstreamVault,
        clients: ClientRegistry,
        claims: TierClaimReader,
        audit: AuthAudit,
        node_id: str,
    ) -> None:
        self._store = store
        self._upstream = upstream
        self._policy = policy
        self._vault = vault
        self._clients = clients
        self._claims = claims
        self._audit = audit
        self._node_id = node_id

    def _scopes(self, requested: str | None) -> tuple[str, ...]:
        if not requested:
            return self._policy.default_scopes
        scopes = tuple(dict.fromkeys(requested.split()))
        unknown = [s for s in scopes if s not in self._policy.scopes_supported]
        if unknown:
            raise OAuthError(
                "invalid_scope",
                f"unknown scope {unknown[0]!r}; supported: {' '.join(self._policy.scopes_supported)}",
            )
        return scopes

    async def begin(self, params: dict[str, str], *, callback_uri: str) -> str:
        """Validate an /authorize request and return the upstream IdP URL to redirect to.

        Raises:
            OAuthError: before the redirect URI is verified, errors are shown, never redirected.
        """
        client_id = params.get("client_id", "")
        client = await self._clients.client(client_id) if client_id else None
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
        resource = self._policy.canonical_resource(params.get("resource") or self._policy.resource)
        if resource is None:
            raise OAuthError(
                "invalid_target", f"resource must be one of {', '.join(self._policy.resources)}"
            )
        scopes = self._scopes(params.get("scope"))
        # the IdP's endpoints are known (discovery succeeded) before anything is stored
        self._upstream.require_ready()
        request_token = new_token()
        verifier = new_token() + new_token()
        request_hash = hash_token(request_token)
        key_id, verifier_ct = self._vault.keyring.encrypt(verifier, aad=request_hash)
        # OpenID Connect: a nonce binds the id_token to this request; only its hash is kept
        nonce = new_token() if self._upstream.wants_id_token else None
        await self._store.write(
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
                    in_(self._policy.request_ttl),
                    None if nonce is None else hash_token(nonce),
                ),
            )
        )
        return self._upstream.authorize_url(
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
        row = await self._store.fetchrow(
            "SELECT * FROM authorization_requests WHERE request_hash = $1 AND consumed_at IS NULL AND user_id IS NULL AND expires_at > now()",
            request_hash,
        )
        if row is None:
            raise OAuthError("invalid_request", "unknown, used or expired state")
        verifier = self._vault.keyring.decrypt(
            row["key_id"], row["verifier_ciphertext"], aad=request_hash
        )
        tokens = await self._upstream.exchange_code(
            code=code, code_verifier=verifier, redirect_uri=callback_uri
        )
        try:
            info = await self._upstream.identity(tokens, nonce_hash=row.get("nonce_hash"))
        except IdTokenInvalid as exc:
            # the request ends here: nothing of this sign-in is stored
            await self._store.write(
                Op(
                    "UPDATE authorization_requests SET consumed_at = now() WHERE request_hash = $1",
                    (request_hash,),
                )
            )
            self._audit(
                AuthEvent.SIGN_IN_REFUSED, client_id=row["client_id"], reason=str(exc)[:300]
            )
            raise OAuthError(
                "server_error", f"the identity provider's answer was refused: {exc}", status=502
            ) from None
        subject = str(info["sub"])
        issuer = self._upstream.config.issuer
        user_id = f"{issuer}|{subject}"
        idp_tier = self._claims.resolve_tier(info, user_id=user_id, at="sign_in")
        blob = json.dumps(
            {"a": tokens.access_token, "r": tokens.refresh_token, "e": tokens.expires_at}
        )
        key_id, upstream_ct = self._vault.keyring.encrypt(blob, aad=request_hash)
        csrf = new_token()
        # remembered consent is bound to the user, the client, the redirect URI and the scopes
        known = await self._store.fetchrow(
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
                change = await apply_idp_tier(conn, user_id, idp_tier, origin=self._node_id)
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

        self._claims.tier_changed(user_id, await self._store.transact(sign_in), source="sign_in")
        self._audit(AuthEvent.UPSTREAM_SIGN_IN, user_id=user_id, client_id=row["client_id"])
        if (
            known["scopes"] is not None
            and set(row["scopes"]) <= set(known["scopes"])
            and consent_may_be_remembered(row["redirect_uri"])
        ):
            return await self._complete(request_hash)
        client = await self._clients.client(row["client_id"])
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
        await self._store.write(
            Op(
                "UPDATE authorization_requests SET consumed_at = now(), upstream_ciphertext = NULL WHERE request_hash = $1",
                (request_hash,),
            )
        )
        client_id = request["client_id"]
        self._audit(
            AuthEvent.SIGN_IN_REFUSED, user_id=user_id, client_id=client_id, reason="user revoked"
        )
        raise UserRevokedError(
            user_id,
            with_params(
                request["redirect_uri"],
                {
                    "error": "access_denied",
                    "error_description": "this user's access was revoked",
                    "state": request["client_state"],
                    "iss": self._policy.issuer,
                },
            ),
        )

    async def _discard_upstream(self, tokens: UpstreamTokens) -> None:
        """The tokens the IdP issued for a sign-in Steward refuses are revoked there (RFC 7009),
        refresh token first, within ``DISCARD_WAIT`` seconds and at best effort: nothing of them is
        stored, so no later revocation could reach them."""
        with trio.move_on_after(DISCARD_WAIT):
            if tokens.refresh_token:
                await self._upstream.revoke(tokens.refresh_token, hint="refresh_token")
            await self._upstream.revoke(tokens.access_token, hint="access_token")

    async def _refuse_without_tier(
        self, request_hash: bytes, user_id: str, client_id: str
    ) -> NoReturn:
        """The identity provider's claim maps to no tier and the configured default is
        ``refuse``: the authorization request ends here, unanswered."""
        await self._store.write(
            Op(
                "UPDATE authorization_requests SET consumed_at = now(), upstream_ciphertext = NULL WHERE request_hash = $1",
                (request_hash,),
            )
        )
        self._audit(
            AuthEvent.SIGN_IN_REFUSED, user_id=user_id, client_id=client_id, reason="no tier"
        )
        raise OAuthError(
            "access_denied",
            f"the identity provider gives this account no subscription tier this service "
            f"offers (claim {self._policy.tier_mapping.claim!r}); ask its administrator for access",
            status=403,
        )

    async def consent(self, *, request_token: str, csrf_token: str, approve: bool) -> str:
        """The consent form's answer; returns where to send the browser."""
        request_hash = hash_token(request_token)
        row = await self._store.fetchrow(
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
            await self._store.write(
                Op(
                    "UPDATE authorization_requests SET consumed_at = now() WHERE request_hash = $1",
                    (request_hash,),
                )
            )
            self._audit(
                AuthEvent.CONSENT_DENIED, user_id=row["user_id"], client_id=row["client_id"]
            )
            return with_params(
                row["redirect_uri"],
                {
                    "error": "access_denied",
                    "state": row["client_state"],
                    "iss": self._policy.issuer,
                },
            )
        await self._store.write(
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
        self._audit(
            AuthEvent.CONSENT_GRANTED,
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
            await grant_created(
                conn,
                grant_id,
                user_id=row["user_id"],
                client_id=row["client_id"],
                resource=row["resource"],
                tier=row["tier"],
                scopes=row["scopes"],
                expires_at=in_(self._policy.session_ttl),
            )
            blob = self._vault.keyring.decrypt(
                row["key_id"], row["upstream_ciphertext"], aad=request_hash
            )
            kept = json.loads(blob)
            tokens = UpstreamTokens(kept["a"], kept["r"], kept["e"])
            await self._vault.store(conn, grant_id, row["user_id"], tokens)
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
                in_(self._policy.code_ttl),
            )
            return dict(row)

        row = await self._store.transact(complete)
        if row is None:
            raise OAuthError("invalid_request", "this authorization request was already completed")
        if row.get("user_revoked"):
            await self._refuse_revoked_user(request_hash, row["user_id"], row)
        self._audit(
            AuthEvent.SIGN_IN, user_id=row["user_id"], client_id=row["client_id"], grant_id=grant_id
        )
        return with_params(
            row["redirect_uri"],
            {"code": code, "state": row["client_state"], "iss": self._policy.issuer},
        )
