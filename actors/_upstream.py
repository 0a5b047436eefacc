"""The client of the upstream identity provider (httpx): discovery, code exchange, refresh,
id_token validation, userinfo, revoke.

Steward never passes a client's token upstream (MCP-R24): upstream calls use upstream tokens.

The provider's endpoints come from its metadata (OpenID Connect discovery, or RFC 8414), fetched
from the issuer by the ``idp_discovery`` actor at start and retried with backoff while the IdP is
away; any endpoint set in the configuration wins over the discovered one. Until the endpoints a
sign-in needs are known, a sign-in is refused with :class:`UpstreamNotReady` (503, Retry-After).
An ``id_token`` is validated (signature through the provider's JWKS, ``iss``, ``aud``, ``azp``,
``exp``, ``iat``, ``nonce``) with joserfc, and its claims are the identity when the provider has
no userinfo endpoint (docs/security.md, "The upstream identity provider").
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
import json
import math
import random
import time
from typing import Any
from urllib.parse import quote, urlencode, urlsplit, urlunsplit

import attrs
import httpx
import structlog
import trio
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from runtime import ChildSpec

__all__ = [
    "ID_TOKEN_ALGORITHMS",
    "IdTokenInvalid",
    "ProviderMetadata",
    "RevokeOutcome",
    "UpstreamClient",
    "UpstreamConfig",
    "UpstreamNotReady",
    "UpstreamRevoked",
    "UpstreamTokens",
    "UpstreamUnavailable",
    "discovery_urls",
]

log = structlog.get_logger("upstream")

# asymmetric signatures only: never "none", never an HMAC under the client secret
ID_TOKEN_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
_DOCUMENT_LIMIT = 256 * 1024  # bytes of a metadata document or a JWK Set
_ID_TOKEN_LIMIT = 16 * 1024  # characters of an id_token
_MAX_KEYS = 100  # keys of a JWK Set kept
_JWKS_MIN_REFETCH = 30.0  # seconds between two fetches caused by an unknown key id
_DISCOVERY_BACKOFF = (1.0, 60.0)  # seconds: first retry, longest wait between retries


class UpstreamRevoked(Exception):
    """The IdP refused the grant (invalid_grant): the user must authorize again."""


class UpstreamUnavailable(Exception):
    """The IdP could not be reached, timed out or failed (5xx): retry later with backoff."""


class UpstreamNotReady(UpstreamUnavailable):
    """The IdP's endpoints are not known yet: its discovery has not succeeded (503)."""


class IdTokenInvalid(Exception):
    """The IdP's answer fails validation (a bad id_token, no subject): the sign-in is refused."""


class RevokeOutcome(enum.Enum):
    """What the IdP's revocation endpoint (RFC 7009) answered for one token."""

    REVOKED = "revoked"  # 200: revoked, or unknown to it (§2.2 answers both alike)
    REFUSED = "refused"  # another 4xx (unsupported_token_type, invalid_client): a retry won't help
    UNAVAILABLE = "unavailable"  # unreachable, timed out, 429 or 5xx (§2.2.1 503): retry later
    NOT_OFFERED = "not_offered"  # no revocation_endpoint is configured


@attrs.frozen
class UpstreamConfig:
    issuer: str
    authorization_endpoint: str | None  # None: from discovery
    token_endpoint: str | None  # None: from discovery
    client_id: str
    userinfo_endpoint: str | None = None
    revocation_endpoint: str | None = None
    client_secret: str | None = attrs.field(default=None, repr=False)
    scopes: tuple[str, ...] = ("openid", "profile", "email")
    request_timeout: float = 10.0
    jwks_uri: str | None = None
    discovery: bool = True  # fetch the issuer's metadata for what is not set here
    jwks_ttl: float = 3600.0  # seconds a fetched JWK Set is used before it is fetched again
    clock_skew: float = 60.0  # seconds of leeway on exp and iat
    # None: client_secret_post unless the provider offers only client_secret_basic
    token_endpoint_auth_method: str | None = None


@attrs.frozen
class ProviderMetadata:
    """What Steward uses of the provider's metadata, configuration over discovery."""

    issuer: str
    authorization_endpoint: str | None
    token_endpoint: str | None
    userinfo_endpoint: str | None
    revocation_endpoint: str | None
    jwks_uri: str | None
    grant_types_supported: tuple[str, ...]
    code_challenge_methods_supported: tuple[str, ...] | None  # None: not stated
    token_endpoint_auth_methods_supported: tuple[str, ...]
    source: str  # the discovery URL, or "configuration"


@attrs.frozen
class UpstreamTokens:
    access_token: str = attrs.field(repr=False)
    refresh_token: str | None = attrs.field(repr=False)
    expires_at: float  # unix seconds
    id_token: str | None = attrs.field(default=None, repr=False)


def discovery_urls(issuer: str) -> list[str]:
    """Where an issuer's metadata may be: OpenID Connect discovery (the issuer, then
    ``/.well-known/openid-configuration``), then RFC 8414 (``/.well-known/oauth-authorization-
    server`` before the issuer's path, and after it, as some providers serve it)."""
    base = issuer.rstrip("/")
    parts = urlsplit(base)
    urls = [f"{base}/.well-known/openid-configuration"]
    path = parts.path.rstrip("/")
    urls.append(urlunsplit(parts._replace(path=f"/.well-known/oauth-authorization-server{path}")))
    if path:
        urls.append(f"{base}/.well-known/oauth-authorization-server")
    return urls


def _strings(value: Any) -> tuple[str, ...]:
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


def _url_or_none(doc: dict[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if isinstance(value, str) and value.startswith(("https://", "http://")):
        return value
    return None


DEFAULT_EXPIRES_IN = 3600.0  # an answer without expires_in (RFC 6749 makes it optional)
MAX_EXPIRES_IN = 366 * 86400.0


def _expires_in(value: object) -> float:
    """A token response's ``expires_in`` in seconds: absent, the default; bounded to a year
    either way (0 and negative are kept: the token keeper's floor holds against them).

    Raises:
        ValueError: it is not a finite number.
    """
    if value is None:
        return DEFAULT_EXPIRES_IN
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        msg = f"expires_in must be a number, got {type(value).__name__}"
        raise ValueError(msg)
    seconds = float(value)
    if not math.isfinite(seconds):
        msg = "expires_in must be a finite number"
        raise ValueError(msg)
    return min(max(seconds, -MAX_EXPIRES_IN), MAX_EXPIRES_IN)


class UpstreamClient:
    def __init__(self, config: UpstreamConfig, *, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._http = http or httpx.AsyncClient(timeout=config.request_timeout)
        self.discovered: dict[str, Any] | None = None  # the metadata document, once fetched
        self.discovery_url: str | None = None
        self.discovery_problem: str | None = None  # why the last discovery failed
        self.discovery_attempts = 0
        self._keys: KeySet | None = None
        self._keys_fetched = 0.0  # trio-independent monotonic seconds
        self._keys_lock = trio.Lock()
        self._missed: dict[str, float] = {}  # key ids looked for and not found: when

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- metadata ----------------------------------------------------------------------------------

    @property
    def metadata(self) -> ProviderMetadata:
        c, d = self.config, self.discovered or {}
        grants = _strings(d.get("grant_types_supported")) or ("authorization_code", "implicit")
        methods = d.get("code_challenge_methods_supported")
        return ProviderMetadata(
            issuer=str(d.get("issuer") or c.issuer),
            authorization_endpoint=c.authorization_endpoint
            or _url_or_none(d, "authorization_endpoint"),
            token_endpoint=c.token_endpoint or _url_or_none(d, "token_endpoint"),
            userinfo_endpoint=c.userinfo_endpoint or _url_or_none(d, "userinfo_endpoint"),
            revocation_endpoint=c.revocation_endpoint or _url_or_none(d, "revocation_endpoint"),
            jwks_uri=c.jwks_uri or _url_or_none(d, "jwks_uri"),
            grant_types_supported=grants,
            code_challenge_methods_supported=None if methods is None else _strings(methods),
            token_endpoint_auth_methods_supported=_strings(
                d.get("token_endpoint_auth_methods_supported")
            )
            or ("client_secret_basic",),
            source=self.discovery_url or "configuration",
        )

    @property
    def ready(self) -> bool:
        """Whether a sign-in can start: the authorization and token endpoints are known."""
        m = self.metadata
        return m.authorization_endpoint is not None and m.token_endpoint is not None

    def require_ready(self) -> ProviderMetadata:
        """The metadata, or UpstreamNotReady naming what is missing and why."""
        m = self.metadata
        if m.authorization_endpoint is not None and m.token_endpoint is not None:
            return m
        why = self.discovery_problem or "its first attempt has not finished"
        msg = (
            f"the identity provider's endpoints are not known yet: discovery of "
            f"{self.config.issuer} has not succeeded ({why})"
        )
        raise UpstreamNotReady(msg)

    async def _get_json(self, url: str, what: str) -> tuple[int, Any]:
        """GET a JSON document of at most _DOCUMENT_LIMIT bytes: (status, parsed body or None).

        Raises:
            UpstreamUnavailable: unreachable, or a body that is too large.
        """
        try:
            async with self._http.stream("GET", url, headers={"accept": "application/json"}) as r:
                body = b""
                async for chunk in r.aiter_bytes():
                    body += chunk
                    if len(body) > _DOCUMENT_LIMIT:
                        msg = f"{what} {url} is larger than {_DOCUMENT_LIMIT} bytes"
                        raise UpstreamUnavailable(msg)
                status = r.status_code
        except httpx.HTTPError as exc:
            msg = f"{what} {url} unreachable: {type(exc).__name__}"
            raise UpstreamUnavailable(msg) from exc
        try:
            return status, json.loads(body)
        except ValueError:
            return status, None

    async def discover(self) -> dict[str, Any]:
        """Fetch the issuer's metadata (the first of :func:`discovery_urls` that answers a JSON
        object) and keep it; its ``issuer`` must be the configured one.

        Raises:
            UpstreamUnavailable: no document could be had, or it names another issuer.
        """
        self.discovery_attempts += 1
        problems = []
        expected = self.config.issuer.rstrip("/")
        for url in discovery_urls(self.config.issuer):
            status, doc = await self._get_json(url, "metadata")
            if status >= 500:
                raise UpstreamUnavailable(f"metadata {url} answered {status}")
            if status != 200 or not isinstance(doc, dict):
                problems.append(f"{url} answered {status}{'' if doc is not None else ' non-JSON'}")
                continue
            named = doc.get("issuer")
            if not isinstance(named, str) or named.rstrip("/") != expected:
                msg = (
                    f"the metadata at {url} names issuer {named!r}, not the configured "
                    f"{self.config.issuer!r}: set upstream.issuer to the provider's issuer"
                )
                raise UpstreamUnavailable(msg)
            self.discovered = doc
            self.discovery_url = url
            self.discovery_problem = None
            return doc
        raise UpstreamUnavailable("no metadata document: " + "; ".join(problems))

    async def run_discovery(
        self, *, task_status: trio.TaskStatus[UpstreamClient] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """The ``idp_discovery`` actor: one attempt before it reports ready (bounded by the
        request timeout), then retries with backoff (1 s doubling to 60 s, ±20 %) until the
        metadata is had. An IdP that is away is no reason not to start (docs/runtime.md): until
        then a sign-in answers 503 with Retry-After and what is already signed in keeps
        working."""
        delay = _DISCOVERY_BACKOFF[0]
        started = False
        while self.discovered is None:
            try:
                with trio.move_on_after(self.config.request_timeout * 3):
                    await self.discover()
                if self.discovered is None and self.discovery_problem is None:
                    self.discovery_problem = "timed out"
            except UpstreamUnavailable as exc:
                self.discovery_problem = str(exc)
            if self.discovered is not None:
                m = self.metadata
                log.info(
                    "idp_discovered",
                    url=self.discovery_url,
                    issuer=m.issuer,
                    userinfo=m.userinfo_endpoint is not None,
                    jwks=m.jwks_uri is not None,
                    refresh_grant="refresh_token" in m.grant_types_supported,  # not a secret
                )
                break
            log.warning(
                "idp_discovery_failed",
                issuer=self.config.issuer,
                problem=self.discovery_problem,
                retry_in=round(delay, 1),
                sign_in="ready" if self.ready else "refused until discovery succeeds (503)",
            )
            if not started:
                started = True
                task_status.started(self)
            await trio.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, _DISCOVERY_BACKOFF[1])
        if not started:
            task_status.started(self)
        await trio.sleep_forever()

    def discovery_child_spec(self) -> ChildSpec:
        return ChildSpec("idp_discovery", self.run_discovery, shutdown_grace=1.0, start_grace=60.0)

    # -- the code flow -------------------------------------------------------------------------------

    def authorize_url(
        self,
        *,
        state: str,
        code_challenge: str,
        redirect_uri: str,
        login_hint: str | None = None,
        nonce: str | None = None,
    ) -> str:
        endpoint = self.require_ready().authorization_endpoint
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
            "scope": " ".join(self.config.scopes),
        }
        if nonce is not None:
            params["nonce"] = nonce
        if login_hint:
            params["login_hint"] = login_hint
        return f"{endpoint}{'&' if '?' in str(endpoint) else '?'}{urlencode(params)}"

    @property
    def wants_id_token(self) -> bool:
        """Whether the authorization request asks for OpenID Connect (the ``openid`` scope)."""
        return "openid" in self.config.scopes

    def _client_auth(self, data: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
        """The form and headers that authenticate Steward at the token endpoint."""
        data = {**data, "client_id": self.config.client_id}
        secret = self.config.client_secret
        if not secret:
            return data, {}
        method = self.config.token_endpoint_auth_method
        if method is None:
            offered = self.metadata.token_endpoint_auth_methods_supported
            post = "client_secret_post" in offered or self.discovered is None
            method = "client_secret_post" if post else "client_secret_basic"
        if method == "client_secret_basic":
            raw = f"{quote(self.config.client_id, safe='')}:{quote(secret, safe='')}"
            return data, {"authorization": "Basic " + base64.b64encode(raw.encode()).decode()}
        return {**data, "client_secret": secret}, {}

    async def _token_request(self, data: dict[str, str]) -> UpstreamTokens:
        endpoint = self.require_ready().token_endpoint
        assert endpoint is not None
        data, headers = self._client_auth(data)
        try:
            response = await self._http.post(endpoint, data=data, headers=headers)
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"token endpoint unreachable: {type(exc).__name__}") from exc
        if response.status_code >= 500:
            raise UpstreamUnavailable(f"token endpoint answered {response.status_code}")
        try:
            body: dict[str, Any] = response.json()
        except ValueError as exc:
            raise UpstreamUnavailable(
                f"token endpoint answered {response.status_code} without JSON"
            ) from exc
        if response.status_code != 200:
            error = body.get("error", "unknown")
            if error in ("invalid_grant", "unauthorized_client", "invalid_client", "access_denied"):
                raise UpstreamRevoked(f"upstream refused the grant: {error}")
            raise UpstreamUnavailable(f"token endpoint answered {response.status_code}: {error}")
        try:
            id_token = body.get("id_token")
            return UpstreamTokens(
                access_token=str(body["access_token"]),
                refresh_token=body.get("refresh_token") or data.get("refresh_token"),
                expires_at=time.time() + _expires_in(body.get("expires_in")),
                id_token=id_token if isinstance(id_token, str) else None,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamUnavailable("token endpoint answered a malformed token response") from exc

    async def exchange_code(
        self, *, code: str, code_verifier: str, redirect_uri: str
    ) -> UpstreamTokens:
        return await self._token_request(
            {
                "grant_type": "authorization_code",
                "code": code,
                "code_verifier": code_verifier,
                "redirect_uri": redirect_uri,
            }
        )

    async def refresh(self, refresh_token: str) -> UpstreamTokens:
        return await self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token}
        )

    # -- the identity --------------------------------------------------------------------------------

    async def identity(self, tokens: UpstreamTokens, *, nonce_hash: bytes | None) -> dict[str, Any]:
        """The signed-in user's claims: the validated id_token's, then userinfo's on top (whose
        ``sub`` must be the id_token's, OpenID Connect Core §5.3.2). Without a userinfo endpoint
        the id_token alone; without an id_token, userinfo alone.

        Raises:
            IdTokenInvalid: the id_token fails validation, or no subject can be had.
            UpstreamUnavailable: the JWKS or userinfo could not be fetched.
            UpstreamRevoked: userinfo refused the access token.
        """
        claims: dict[str, Any] = {}
        if tokens.id_token is not None:
            claims = await self.validate_id_token(tokens.id_token, nonce_hash=nonce_hash)
        elif nonce_hash is not None and self.metadata.userinfo_endpoint is None:
            msg = "the identity provider returned no id_token and has no userinfo endpoint"
            raise IdTokenInvalid(msg)
        if self.metadata.userinfo_endpoint is not None:
            info = await self.userinfo(tokens.access_token)
            if claims and str(info.get("sub") or "") != claims["sub"]:
                msg = (
                    f"userinfo's sub {str(info.get('sub'))[:100]!r} is not the id_token's "
                    f"{claims['sub'][:100]!r}"
                )
                raise IdTokenInvalid(msg)
            claims = {**claims, **info}
        if not isinstance(claims.get("sub"), str) or not claims["sub"]:
            raise IdTokenInvalid("the identity provider returned no subject")
        return claims

    async def _key_set(self, kid: str | None) -> KeySet:
        """The provider's signing keys: fetched when none are held, when they are older than
        ``jwks_ttl``, or when ``kid`` is not among them (a rotation; the same unknown key id at
        most once every 30 s)."""
        jwks_uri = self.metadata.jwks_uri
        if jwks_uri is None:
            msg = (
                "the identity provider returned an id_token but has no jwks_uri to check it "
                "with: set upstream.jwks_uri"
            )
            raise IdTokenInvalid(msg)
        async with self._keys_lock:
            now = time.monotonic()
            known = self._keys is not None and (
                kid is None or any(k.kid == kid for k in self._keys.keys)
            )
            fresh = now - self._keys_fetched < self.config.jwks_ttl
            # a key id not among the keys is looked for once, then again after 30 s at most
            looked = kid is not None and now - self._missed.get(kid, -1e9) < _JWKS_MIN_REFETCH
            if not known and kid is not None and not looked:
                self._missed[kid] = now
                while len(self._missed) > _MAX_KEYS:
                    del self._missed[next(iter(self._missed))]
            if self._keys is None or not fresh or (not known and not looked):
                self._keys = await self.fetch_jwks(jwks_uri)
                self._keys_fetched = time.monotonic()
                log.info("idp_jwks_fetched", keys=len(self._keys.keys), reason=kid or "expired")
            return self._keys

    async def fetch_jwks(self, jwks_uri: str) -> KeySet:
        """The JWK Set at ``jwks_uri``: its public signing keys (symmetric keys and keys for
        encryption are left out).

        Raises:
            UpstreamUnavailable: unreachable, not a JWK Set, or no usable key in it.
        """
        status, doc = await self._get_json(jwks_uri, "jwks_uri")
        if status != 200:
            raise UpstreamUnavailable(f"jwks_uri {jwks_uri} answered {status}")
        raw = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(raw, list):
            raise UpstreamUnavailable(f"jwks_uri {jwks_uri} is not a JWK Set (no keys list)")
        keys = []
        for item in raw[:_MAX_KEYS]:
            if not isinstance(item, dict) or item.get("kty") not in ("RSA", "EC", "OKP"):
                continue
            if item.get("use", "sig") != "sig":
                continue
            try:
                keys.append(KeySet.import_key_set({"keys": [item]}).keys[0])
            except (JoseError, ValueError, TypeError):
                continue
        if not keys:
            raise UpstreamUnavailable(f"jwks_uri {jwks_uri} holds no usable signing key")
        return KeySet(keys)

    async def validate_id_token(
        self, id_token: str, *, nonce_hash: bytes | None = None
    ) -> dict[str, Any]:
        """The claims of a valid id_token (OpenID Connect Core §3.1.3.7): signed with one of the
        provider's keys by an asymmetric algorithm, ``iss`` the provider's issuer, ``aud``
        holding Steward's client id (and ``azp`` it when there are several audiences), ``exp``
        in the future and ``iat`` not, both within ``clock_skew``, a ``sub``, and, when the
        authorization request sent a nonce, the same ``nonce`` (compared as SHA-256 hashes).

        Raises:
            IdTokenInvalid: it fails one of these rules; the message names the rule.
            UpstreamUnavailable: the JWK Set could not be fetched.
        """
        if len(id_token) > _ID_TOKEN_LIMIT:
            raise IdTokenInvalid(f"the id_token is longer than {_ID_TOKEN_LIMIT} characters")
        try:
            header = json.loads(_b64decode(id_token.split(".", 1)[0]))
        except (ValueError, UnicodeDecodeError) as exc:
            raise IdTokenInvalid("the id_token is not a JWS in compact form") from exc
        if not isinstance(header, dict):
            raise IdTokenInvalid("the id_token's header is not a JSON object")
        alg = header.get("alg")
        if alg not in ID_TOKEN_ALGORITHMS:
            msg = f"the id_token's algorithm {str(alg)[:20]!r} is not one of {', '.join(ID_TOKEN_ALGORITHMS)}"
            raise IdTokenInvalid(msg)
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        keys = await self._key_set(kid)
        try:
            token = jwt.decode(id_token, keys, algorithms=list(ID_TOKEN_ALGORITHMS))
        except JoseError as exc:
            reason = {
                "bad_signature": "its signature does not verify with the provider's keys",
                "invalid_key_id": f"it is signed with key {str(kid)[:60]!r}, not in the provider's JWK Set",
            }.get(exc.error, f"it cannot be decoded ({exc.error})")
            raise IdTokenInvalid(f"the id_token is refused: {reason}") from exc
        except (ValueError, TypeError) as exc:
            raise IdTokenInvalid("the id_token is refused: it cannot be decoded") from exc
        claims = dict(token.claims)
        self._check_claims(claims, nonce_hash)
        return claims

    def _check_claims(self, claims: dict[str, Any], nonce_hash: bytes | None) -> None:
        issuer = self.metadata.issuer
        if claims.get("iss") != issuer:
            raise IdTokenInvalid(
                f"the id_token's iss {str(claims.get('iss'))[:200]!r} is not the issuer {issuer!r}"
            )
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        client_id = self.config.client_id
        if client_id not in audiences:
            raise IdTokenInvalid(
                f"the id_token's aud {str(aud)[:200]!r} does not hold the client id {client_id!r}"
            )
        azp = claims.get("azp")
        if (len(audiences) > 1 or azp is not None) and azp != client_id:
            raise IdTokenInvalid(
                f"the id_token's azp {str(azp)[:200]!r} is not the client id {client_id!r}"
            )
        now, skew = time.time(), self.config.clock_skew
        exp, iat = _number(claims.get("exp")), _number(claims.get("iat"))
        if exp is None or exp <= now - skew:
            raise IdTokenInvalid(f"the id_token expired or has no exp (exp {exp})")
        if iat is None or iat > now + skew:
            raise IdTokenInvalid(f"the id_token's iat is missing or in the future (iat {iat})")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub or len(sub) > 255:
            raise IdTokenInvalid("the id_token has no sub (1 to 255 characters)")
        if nonce_hash is not None:
            nonce = claims.get("nonce")
            if not isinstance(nonce, str) or not hmac.compare_digest(
                hashlib.sha256(nonce.encode("utf-8", "surrogatepass")).digest(), nonce_hash
            ):
                raise IdTokenInvalid(
                    "the id_token's nonce is missing or not the one of this sign-in"
                )

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        endpoint = self.metadata.userinfo_endpoint
        if endpoint is None:
            return {}
        try:
            response = await self._http.get(
                endpoint, headers={"Authorization": f"Bearer {access_token}"}
            )
        except httpx.HTTPError as exc:
            raise UpstreamUnavailable(f"userinfo unreachable: {type(exc).__name__}") from exc
        if response.status_code == 401:
            raise UpstreamRevoked("upstream refused the access token")
        if response.status_code != 200:
            raise UpstreamUnavailable(f"userinfo answered {response.status_code}")
        try:
            info = response.json()
        except ValueError as exc:
            raise UpstreamUnavailable("userinfo answered without JSON") from exc
        if not isinstance(info, dict):
            raise UpstreamUnavailable("userinfo answered JSON that is not an object")
        return info

    async def revoke(self, token: str, *, hint: str | None = None) -> RevokeOutcome:
        """Revoke one upstream token at the IdP (RFC 7009), naming its kind in ``hint``
        (``refresh_token`` or ``access_token``), with the client authentication of the token
        endpoint. Never raises for the IdP's sake."""
        c = self.config
        if c.revocation_endpoint is None and c.discovery and self.discovered is None:
            # whether the provider offers revocation is not known until its metadata is had
            log.warning("upstream_revoke_unavailable", error="metadata not discovered yet")
            return RevokeOutcome.UNAVAILABLE
        endpoint = self.metadata.revocation_endpoint
        if endpoint is None:
            return RevokeOutcome.NOT_OFFERED
        fields = {"token": token}
        if hint is not None:
            fields["token_type_hint"] = hint
        data, headers = self._client_auth(fields)
        try:
            response = await self._http.post(endpoint, data=data, headers=headers)
        except httpx.HTTPError as exc:
            log.warning("upstream_revoke_unavailable", error=type(exc).__name__)
            return RevokeOutcome.UNAVAILABLE
        if response.status_code == 200:
            return RevokeOutcome.REVOKED
        if response.status_code == 429 or response.status_code >= 500:
            log.warning("upstream_revoke_unavailable", status=response.status_code)
            return RevokeOutcome.UNAVAILABLE
        log.warning("upstream_revoke_refused", status=response.status_code)
        return RevokeOutcome.REFUSED


def _b64decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _number(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
