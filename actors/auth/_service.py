"""Authorization domain: clients, the authorization flow, grants, Steward's tokens, audit events.

Steward's tokens are opaque (256 random bits) and stored only as SHA-256 hashes, bound to the
user, the client, the grant and the resource. Upstream tokens are AES-GCM encrypted with the key
ring, their associated data binding them to their row. Every authentication event goes to the
``auth_events`` table and the log, never with a secret.

``AuthService`` is the one name the edge and the sessions hold. Each role is a part with its own
module: the client registry (``ClientRegistry``), the authorization flow
(``AuthorizationFlow``), Steward's tokens (``TokenService``), the upstream token vault
(``UpstreamVault``), the claims-to-tier reading (``TierClaimReader``) and the audit log
(``AuthAudit``). The methods here only forward to them. The session manager, built on this
service, is reached through ``sessions``, a port the node binds to it (``SessionsPort``).
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from actors._crypto import KeyRing
from actors._grants import grant_end_ops
from actors._statuses import GrantStatus, TierClaimFallback, TierClaimUnmapped
from actors._store import Op, Store
from actors._tiers import TierChange
from actors._upstream import UpstreamClient, UpstreamTokens
from actors.auth._audit_log import AuthAudit
from actors.auth._clients import ClientRegistry
from actors.auth._flow import AuthorizationFlow
from actors.auth._sessions_port import SessionsPort
from actors.auth._tier_claims import TierClaimReader
from actors.auth._tokens import TokenService
from actors.auth._values import (
    AuthPolicy,
    ConsentNeeded,
    IssuedTokens,
    Principal,
)
from actors.auth._vault import UpstreamVault

__all__ = ["AuthService"]


class AuthService:
    def __init__(
        self,
        store: Store,
        keyring: KeyRing,
        upstream: UpstreamClient,
        policy: AuthPolicy,
        *,
        node_id: str = "node",
        sessions: SessionsPort | None = None,
    ) -> None:
        self.store = store
        self.upstream = upstream
        self.policy = policy
        self.node_id = node_id
        # the session manager built on this service: revocations found here (/revoke, code and
        # refresh-token reuse) end the grant through the same path as an operator's revoke, and
        # tier changes reach its live sessions
        self.sessions = sessions if sessions is not None else SessionsPort()
        self.audit = AuthAudit(store, node_id=node_id)
        self.vault = UpstreamVault(keyring)
        self.claims = TierClaimReader(
            upstream,
            policy.tier_mapping,
            audit=self.audit,
            on_tier_changed=self.sessions.tier_changed,
        )
        self.clients = ClientRegistry(store, audit=self.audit)
        self.flow = AuthorizationFlow(
            store,
            upstream,
            policy,
            vault=self.vault,
            clients=self.clients,
            claims=self.claims,
            audit=self.audit,
            node_id=node_id,
        )
        self.tokens = TokenService(store, policy, audit=self.audit, revoke_grant=self._revoke_grant)

    @property
    def keyring(self) -> KeyRing:
        """The node's current key ring (the vault's); replaced when the keys are reloaded."""
        return self.vault.keyring

    def use_keyring(self, ring: KeyRing) -> None:
        """The keys were reloaded (a rotation): the vault seals with ``ring`` from now on."""
        self.vault.use(ring)

    @property
    def tier_unmapped(self) -> collections.Counter[tuple[TierClaimUnmapped, TierClaimFallback]]:
        return self.claims.tier_unmapped

    async def _revoke_grant(
        self, grant_id: uuid.UUID, *, message: str, also: Sequence[Op] = ()
    ) -> None:
        """Revoke the grant everywhere: streams end, caches forget, on every node."""
        if self.sessions.bound:
            await self.sessions.invalidate(
                grant_id, reason=GrantStatus.REVOKED, message=message, also=also
            )
            return
        # no session manager (a bare service): the rows alone, which the token checks read
        await self.store.write(
            *grant_end_ops([grant_id], status=GrantStatus.REVOKED, message=message), *also
        )

    # -- what the parts do, under one name -----------------------------------------------------------

    async def upstream_claims(self, tokens: UpstreamTokens) -> dict[str, Any] | None:
        return await self.claims.upstream_claims(tokens)

    def resolve_tier(
        self,
        claims: Mapping[str, Any],
        *,
        user_id: str,
        at: str,
        grant_id: uuid.UUID | None = None,
    ) -> str | None:
        return self.claims.resolve_tier(claims, user_id=user_id, at=at, grant_id=grant_id)

    def tier_changed(self, user_id: str, change: TierChange | None, *, source: str) -> None:
        self.claims.tier_changed(user_id, change, source=source)

    @property
    def resources(self) -> tuple[str, ...]:
        return self.policy.resources

    def canonical_resource(self, resource: str) -> str | None:
        return self.policy.canonical_resource(resource)

    async def register_client(
        self, metadata: dict[str, Any], *, source: str = "dynamic", client_id: str | None = None
    ) -> dict[str, Any]:
        return await self.clients.register_client(metadata, source=source, client_id=client_id)

    async def client(self, client_id: str) -> dict[str, Any] | None:
        return await self.clients.client(client_id)

    async def begin(self, params: dict[str, str], *, callback_uri: str) -> str:
        return await self.flow.begin(params, callback_uri=callback_uri)

    async def callback(self, *, state: str, code: str, callback_uri: str) -> ConsentNeeded | str:
        return await self.flow.callback(state=state, code=code, callback_uri=callback_uri)

    async def consent(self, *, request_token: str, csrf_token: str, approve: bool) -> str:
        return await self.flow.consent(
            request_token=request_token, csrf_token=csrf_token, approve=approve
        )

    async def exchange_code(self, f: dict[str, str]) -> IssuedTokens:
        return await self.tokens.exchange_code(f)

    async def refresh(self, f: dict[str, str]) -> IssuedTokens:
        return await self.tokens.refresh(f)

    async def revoke_token(self, token: str, *, client_id: str) -> tuple[str, uuid.UUID] | None:
        return await self.tokens.revoke_token(token, client_id=client_id)

    async def verify_access(self, token: str) -> Principal | None:
        return await self.tokens.verify_access(token)

    def encrypt_upstream(
        self, grant_id: uuid.UUID, tokens: UpstreamTokens
    ) -> tuple[str, bytes, bytes | None]:
        return self.vault.encrypt_upstream(grant_id, tokens)

    def decrypt_upstream(self, row: dict[str, Any]) -> UpstreamTokens:
        return self.vault.decrypt_upstream(row)
