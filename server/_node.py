"""One Steward node: the supervision tree of one process, assembled from the settings.

root (one_for_one)
├── dev_idp      the development IdP's HTTP server (only without an upstream IdP)
├── postgres     keeps the embedded cluster's postmaster running (only when Steward runs it)
├── idp_discovery  the upstream IdP's metadata, fetched and retried with backoff until had
├── store        the persistence actor
├── schema       applies migrations before anything that reads the schema starts
├── sessions     dynamic supervisor of user sessions
├── notifier     LISTEN/NOTIFY: other nodes' events
├── janitor      heartbeat, expiry, stale connections, dead nodes, retention
├── revoker      revokes ended grants at the upstream IdP (actors/_revocation.py)
├── relay        the outbox: messages and requests for what another node holds
├── dev_user     dev_no_auth only: signs the development user in (server/dev/_sign_in.py)
└── http         Hypercorn serving Steward: started last, stopped first
"""

from __future__ import annotations

import datetime
import errno
import gc
import json
import os
import secrets
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import attrs
import httpx
import structlog
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve as hypercorn_serve

from actors import (
    AuthPolicy,
    AuthService,
    Janitor,
    JanitorPolicy,
    KeyRing,
    Notifier,
    SessionManager,
    SessionPolicy,
    SessionsPort,
    Store,
    StorePolicy,
    StoreUnavailable,
    TierLimit,
    ToolCallStats,
    UpstreamClient,
    UpstreamConfig,
    UpstreamRevoker,
    UsageMeter,
    UsageQuery,
    WriteQueue,
    migrate,
    parse_quota,
    pending_migrations,
    store_child_spec,
    usage_rules,
)
from runtime import ChildSpec, Supervisor, SupervisorHandle, TreeNode, tree
from server._asgi import StewardAsgi
from server._introspection import NodeStatistics, OpenStream, StreamKind, observed, open_stream
from server.app import Steward, UsageNames
from server.cluster import Relay
from server.config import DEV_IDP_EXPOSED, ConfigError, Settings, TierSettings
from server.dev import DevIdP, sign_in_dev_user
from server.http import address_limiter
from server.mcp import Dispatcher, LocalStreams, McpEdge, McpOptions
from server.oauth import DevPrincipal, MetadataFetcher, OAuthEndpoints, ResourceServer
from server.ops import AdminApi, NodeCollector, RequestCounter, UsageApi, new_registry
from server.postgres import PostmasterKeeper

__all__ = [
    "DEV_IDP_FILE",
    "GC_THRESHOLDS",
    "CannotListen",
    "Node",
    "NodeInfo",
    "RootPolicy",
    "bind_dev_idp",
    "bind_socket",
    "kept_dev_idp_port",
    "open_keyring",
    "run_node",
    "tune_gc",
]

# A node's heap holds many long-lived objects (sessions, streams and their tasks), and ending a
# stream makes short-lived cycles (cancellations and their tracebacks). With CPython's default
# first threshold (700) the cyclic collector ran 455 times, 0.44 s in all, while 1,000 streams
# of a revoked user were ended; at 10,000 it ran 34 times (docs/benchmarks.md, revocation-fanout).
GC_THRESHOLDS = (10_000, 10, 10)


def tune_gc() -> None:
    """The collector thresholds of a serving process (``steward serve`` and its workers)."""
    gc.set_threshold(*GC_THRESHOLDS)


log = structlog.get_logger("node")


@attrs.frozen(kw_only=True)
class NodeInfo:
    node_id: str
    base_url: str
    mcp_url: str
    issuer_url: str
    dev_idp_url: str | None
    dev_idp_control_secret: str | None = attrs.field(default=None, repr=False)
    listen_url: str = ""  # where this node's socket listens (differs from base_url behind a proxy)

    def ready_document(self) -> dict[str, Any]:
        doc = {
            "node_id": self.node_id,
            "mcp_url": self.mcp_url,
            "issuer_url": self.issuer_url,
            "base_url": self.base_url,
            "admin_url": f"{self.base_url}/admin/api/",
            "listen_url": self.listen_url,  # this node's own socket (the public URL may be shared)
        }
        if self.dev_idp_url is not None:
            doc["dev_idp_url"] = self.dev_idp_url
        return doc


# Seconds a client may leave the data sent to it unacknowledged (or refuse it with a zero window)
# before the kernel drops its connection: a client gone without FIN never acknowledges the next
# heartbeat, and its stream closes this long after, instead of after TCP's ~15 minutes of retries.
UNACKED_LIMIT = 60.0


class CannotListen(Exception):
    """A port Steward must listen on is taken or forbidden; the message says which and the fix."""

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


def bind_socket(
    host: str,
    port: int,
    *,
    reuse_port: bool = False,
    unacked_limit: float = UNACKED_LIMIT,
    fix: str = "stop what holds the port (a Steward already running?) or choose another "
    "(port / STEWARD_PORT, --port)",
) -> socket.socket:
    """A listening TCP socket; accepted connections inherit its options (TCP_USER_TIMEOUT of
    ``unacked_limit`` seconds where the platform has it).

    Raises:
        CannotListen: the address is in use or may not be bound (``fix`` ends its message).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:  # sibling worker processes share the port; the kernel spreads connections
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if hasattr(socket, "TCP_USER_TIMEOUT"):  # Linux
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, int(unacked_limit * 1000))
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        why = "in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise CannotListen(f"cannot listen on {host}:{port}: {why}; {fix}", exc.errno) from None
    return sock


DEV_IDP_FILE = "dev-idp.json"  # in the data folder: the development IdP's port, kept


def kept_dev_idp_port(settings: Settings) -> int | None:
    """The development IdP's port kept in the data folder; None before its first start.

    Raises:
        ConfigError: the file is not what Steward wrote.
    """
    path = settings.data_dir / DEV_IDP_FILE
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        msg = f"cannot read {path}: {exc.strerror}"
        raise ConfigError(msg) from None
    try:
        kept = json.loads(text)["port"]
    except (ValueError, KeyError, TypeError):
        kept = None
    if not isinstance(kept, int) or isinstance(kept, bool) or not 0 < kept < 65536:
        msg = (
            f'{path} should hold the development IdP\'s port, as {{"port": 43121}}: correct '
            "it, or delete it to take a new port (users signed in through the old one then sign "
            "in as new users)"
        )
        raise ConfigError(msg)
    return kept


def bind_dev_idp(settings: Settings) -> socket.socket:
    """The development IdP's socket, on the same port at every start of a data folder.

    Its URL is its issuer, and a user's id is ``<issuer>|<subject>``: a port of its own at each
    start would make each start's "bob" another user. The port is ``dev_idp_port`` when set, else
    the one kept in ``<data_dir>/dev-idp.json``, else one the system chooses, kept there.

    Raises:
        CannotListen: the port is taken (the message names the file that keeps it).
        ConfigError: the file is not what Steward wrote.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    path = settings.data_dir / DEV_IDP_FILE
    kept = None if settings.dev_idp_port else kept_dev_idp_port(settings)
    port = kept or settings.dev_idp_port
    fix = (
        f"the development IdP keeps this port (in {path}) so that its users keep their ids: "
        "stop what holds it, or delete the file to take a new port (users signed in through "
        "the old one then sign in as new users)"
        if kept is not None
        else "stop what holds it or choose another (dev_idp_port / STEWARD_DEV_IDP_PORT)"
    )
    sock = bind_socket(settings.host, port, fix=fix)
    chosen = sock.getsockname()[1]
    if chosen != kept:
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"port": chosen, "issuer": _url(sock)}) + "\n")
        tmp.replace(path)  # whole or absent
    return sock


def open_keyring(settings: Settings) -> KeyRing:
    """The upstream-token key ring: the inline key, or the key file (made on first use)."""
    key_file = settings.key_file
    if key_file is None:
        assert settings.encryption_key is not None
        return KeyRing.from_base64(settings.encryption_key_id, settings.encryption_key)
    return KeyRing.load_or_create(key_file, settings.encryption_key_id)


def _origin(url: str) -> str:
    """The origin (scheme://host[:port]) of a URL, as a browser's Origin header names it."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}.get(scheme)
    port = "" if parts.port in (None, default) else f":{parts.port}"
    return f"{scheme}://{host}{port}"


def _url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{port}"


async def serve_http(
    app: Any,
    sock: socket.socket,
    graceful: float,
    *,
    task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
) -> None:
    config = HypercornConfig()
    config.bind = [f"fd://{os.dup(sock.fileno())}"]
    config.graceful_timeout = graceful
    config.accesslog = None
    config.errorlog = None
    # hypercorn 0.18's trio worker races the app's last send against its own send_eof when a
    # connection reaches keep_alive_max_requests (BusyResourceError, a lost response): keep the
    # limit out of reach; the keep-alive timeout still recycles idle connections
    config.keep_alive_max_requests = 2**31
    await hypercorn_serve(app, config, task_status=task_status)


@attrs.frozen(kw_only=True)
class RootPolicy:
    """The root supervisor's restart intensity. Restarts because the database is away are not
    counted (runtime.Unavailable), so an outage of any length never reaches it."""

    intensity: int = 10
    period: float = 60.0


@attrs.frozen(eq=False, kw_only=True)
class Node:
    """Everything one node holds (the tests read it; each part is given only what it uses)."""

    settings: Settings
    info: NodeInfo
    store: Store
    auth: AuthService
    resource_server: ResourceServer
    oauth: OAuthEndpoints
    sessions: SessionManager
    mcp: McpEdge
    asgi: StewardAsgi
    usage: UsageMeter
    dev_idp: DevIdP | None
    notifier: Notifier
    janitor: Janitor
    relay: Relay
    root: SupervisorHandle  # the node's supervision tree, running
    admin_token: str = attrs.field(default="", repr=False)
    revoker: UpstreamRevoker | None = None

    # -- the node's read-only surface and operator actions (server/_introspection.py) ------------

    def statistics(self) -> NodeStatistics:
        """A snapshot of the ``/mcp`` endpoint's tables, the relay and the store."""
        return NodeStatistics(
            endpoint=self.mcp.statistics(),
            relay=self.relay.statistics(),
            store=self.store.statistics(),
        )

    def streams(
        self, *, kind: StreamKind | None = None, user_id: str | None = None
    ) -> tuple[OpenStream, ...]:
        """The long-lived streams this node holds (closing ones until they leave its tables)."""
        return tuple(
            s
            for s in map(open_stream, observed(self.mcp).held_streams())
            if (kind is None or s.kind == kind) and (user_id is None or s.user_id == user_id)
        )

    def stream(self, session_id: str) -> OpenStream | None:
        """The GET or legacy stream of a transport session while this node holds it."""
        return next((s for s in self.streams() if s.session_id == session_id), None)

    def subscribers(self, uri: str) -> frozenset[str]:
        """The transport sessions whose stream on this node hears of updates to ``uri``."""
        return observed(self.mcp).subscribers(uri)

    def notify_list_changed(self, kind: str) -> int:
        """``notifications/{kind}/list_changed`` to every stream here that hears of it; returns
        how many were sent."""
        return self.mcp.notify_list_changed(kind)

    def notify_resource_updated(self, uri: str) -> int:
        """``notifications/resources/updated`` to every subscriber of ``uri`` (through the outbox
        to those on other nodes); returns how many streams on this node got it."""
        return self.mcp.notify_resource_updated(uri)

    def send_to_session(self, session_id: str, message: dict[str, Any]) -> bool:
        """Send one JSON-RPC message on a transport session's open GET or legacy stream on this
        node; False when this node holds no such stream."""
        conn = self.mcp.session_stream(session_id)
        if conn is None:
            return False
        self.mcp.emit(conn, message)
        return True


async def run_node(
    settings: Settings,
    app: Steward,
    *,
    dsn: str,
    sock: socket.socket | None = None,
    idp_sock: socket.socket | None = None,
    on_ready: Callable[[Node], None] | None = None,
    store_policy: StorePolicy | None = None,
    session_policy: SessionPolicy | None = None,
    root_policy: RootPolicy | None = None,
    embedded_postgres: PostmasterKeeper | None = None,
    task_status: trio.TaskStatus[Node] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run one node until cancelled: its tree starts left to right and stops right to left.

    ``embedded_postgres``: the keeper of the private cluster ``dsn`` points at, run as a child of
    root before the store; its status is part of ``/readyz``.
    """
    # -- where the node listens, and who signs its users in ---------------------------------------
    node_id = settings.node_id or f"node-{secrets.token_hex(4)}"
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    bound: list[socket.socket] = []  # the sockets this node bound itself, closed at its end
    if sock is None:
        sock = bind_socket(settings.host, settings.port, reuse_port=settings.reuse_port)
        bound.append(sock)
    base_url = settings.public_url.rstrip("/") if settings.public_url else _url(sock)
    resource = f"{base_url}/mcp"
    legacy_resource = f"{base_url}/sse"

    upstream_config, dev_idp, idp_sock = _identity_provider(settings, idp_sock, bound)
    keyring = open_keyring(settings)

    # -- the store and the domain: authorization, sessions and their peers -----------------------
    store = _store(settings, dsn, node_id=node_id, policy=store_policy)
    policy = store.policy
    upstream = UpstreamClient(upstream_config)
    auth_policy = _auth_policy(settings, base_url, resource=resource, legacy=legacy_resource)
    # the authorization server ends grants and changes tiers through the session manager that is
    # built on it: bound below, as that manager is built
    auth_sessions = SessionsPort()
    auth = AuthService(
        store, keyring, upstream, auth_policy, node_id=node_id, sessions=auth_sessions
    )
    # dev_no_auth: the principal every request runs as, once the dev_user child signed it in
    dev_principal = DevPrincipal() if settings.dev_no_auth else None
    rs = ResourceServer(
        auth,
        endpoint_resources={"/sse": legacy_resource, "/messages": legacy_resource},
        dev=dev_principal,
    )
    revoker = UpstreamRevoker(store, auth, upstream, node_id=node_id)
    # the MCP edge is built on the session manager, which tells it of tier changes
    edge_tiers = _EdgeTiers()
    sessions = auth_sessions.bind(
        SessionManager(
            store,
            auth,
            upstream,
            node_id=node_id,
            on_forget=lambda grant_id, user_id: rs.forget_grant(grant_id),
            on_forget_user=rs.forget_user,
            on_grants_ended=revoker.wake,
            on_tier_changed=edge_tiers.tier_changed,
            policy=attrs.evolve(
                session_policy or session_policy_of(settings),
                transport_idle=settings.transport_session_idle,
            ),
        )
    )
    key_file = settings.key_file
    notifier = Notifier(
        store,
        sessions,
        auth=auth,
        node_id=node_id,
        reload_keys=(
            None
            if key_file is None
            else partial(KeyRing.load, key_file, settings.encryption_key_id)
        ),
    )
    janitor = Janitor(store, sessions, node_id=node_id, policy=janitor_policy(settings))
    # -- the edge: OAuth, the MCP endpoints over their tables and the relay, ops, the router --------
    oauth = OAuthEndpoints(
        auth,
        rs,
        base_url=base_url,
        metadata=MetadataFetcher(allow_private=settings.client_metadata_allow_private),
    )
    # rollups keep the application's names only; /metrics labels the application's tools
    usage = UsageMeter(
        store,
        {t.name: tier_limit(t) for t in settings.tiers},
        name_of=UsageNames(app),
        tool_stats=ToolCallStats(app.tools, tiers=settings.tier_names()),
    )
    app.use_tiers(settings.tier_names())
    mcp_options = McpOptions(
        max_body=settings.max_body_bytes,
        allowed_origins=settings.allowed_origins,
        own_origin=_origin(base_url),
        stream_token_grace=settings.stream_token_grace,
        client_request_timeout=settings.client_request_timeout,
        stream_fast_path=settings.stream_fast_path,
    )
    # the tables first: the relay reads them, and the MCP endpoints use the relay
    local = LocalStreams.new(store, node_id=node_id, options=mcp_options)
    relay = Relay(local, store, node_id=node_id)
    mcp = edge_tiers.bind(
        McpEdge(
            dispatcher=Dispatcher(
                app,
                on_subscribe=local.subscriptions.on_subscribe,
                on_log_level=local.subscriptions.on_log_level,
            ),
            sessions=sessions,
            resource_server=rs,
            store=store,
            usage=usage,
            local=local,
            relay=relay,
            options=mcp_options,
        )
    )
    app.watch(mcp.notify_list_changed)
    limiter = address_limiter(settings.address_limits)
    requests = RequestCounter()
    metrics = new_registry(
        NodeCollector(
            requests,
            sessions=sessions,
            auth=auth,
            usage=usage,
            store=store,
            limiter=limiter,
            mcp=mcp,
            relay=relay,
        )
    )
    info = NodeInfo(
        node_id=node_id,
        base_url=base_url,
        mcp_url=resource,
        issuer_url=base_url,
        dev_idp_url=dev_idp.issuer if dev_idp else None,
        dev_idp_control_secret=dev_idp.control_secret if dev_idp else None,
        listen_url=_url(sock),
    )

    readiness = _readiness(store, upstream, embedded_postgres)

    running: SupervisorHandle | None = None  # the root, once started

    def live_trees() -> list[TreeNode]:
        """This node's tree once it runs (before: every live tree of the process)."""
        return [running.tree()] if running is not None else tree()

    admin_token = settings.admin_token or secrets.token_urlsafe(24)
    admin = AdminApi(
        admin_token,
        node_id=node_id,
        base_url=base_url,
        store=store,
        sessions=sessions,
        tier_names=settings.tier_names(),
        trees=live_trees,
        usage=UsageApi(usage_query(store, settings), usage.limits),
    )
    asgi = StewardAsgi(
        mcp=mcp.http,
        legacy=mcp.legacy,
        origins=mcp.origins,
        oauth=oauth,
        admin=admin,
        requests=requests,
        metrics=metrics,
        readiness=readiness,
        limiter=limiter,
    )

    # -- the tree, left to right as the module's docstring draws it -----------------------------
    async def schema(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Makes the schema current and opens the store's gate, then holds nothing.

        With the database reachable at start it migrates before anything after it starts, as a
        start always did. Without, it reports ready at once (the node serves: /healthz, /readyz,
        verified tokens) and migrates inside its incarnation once the store connects; until
        then the gated store holds every read and commit (docs/runtime.md)."""
        with trio.move_on_after(policy.connect_timeout):
            with store.schema_work():
                await store.wait_connected()
        if store.statistics().connected:
            await _make_schema_current(store, settings, auth)
            task_status.started()
        else:
            log.warning("database_unreachable_at_start", reason=store.unready_reason())
            task_status.started()
            with store.schema_work():
                await store.wait_connected()
            await _make_schema_current(store, settings, auth)
        await trio.sleep_forever()

    async def dev_user(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """dev_no_auth: signs the development user in before HTTP starts, then holds nothing."""
        async with httpx.AsyncClient(timeout=10.0, follow_redirects=False) as http:
            principal = await sign_in_dev_user(auth, http, callback_uri=oauth.callback_uri)
        assert dev_principal is not None  # this child runs with dev_no_auth only
        dev_principal.signed_in(principal)
        log.warning(
            "authorization_disabled",
            setting="dev_no_auth",
            user=principal.user_id,
            tier=principal.tier,
            note="every MCP request runs as this development user, with or without a token",
        )
        task_status.started()
        await trio.sleep_forever()

    async def http(*, task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED) -> None:
        await serve_http(asgi, sock, 3.0, task_status=task_status)

    children = []
    if dev_idp is not None:
        assert idp_sock is not None
        children.append(ChildSpec("dev_idp", partial(serve_http, dev_idp, idp_sock, 1.0)))
    if embedded_postgres is not None:
        children.append(embedded_postgres.child_spec())
    if upstream_config.discovery:
        children.append(upstream.discovery_child_spec())
    children += [
        store_child_spec(store),
        ChildSpec("schema", schema, start_grace=120.0),
        sessions.child_spec(),
        notifier.child_spec(),
        janitor.child_spec(),
        revoker.child_spec(),
        relay.child_spec(mcp),
    ]
    if settings.dev_no_auth:
        children.append(ChildSpec("dev_user", dev_user, start_grace=30.0))
    children.append(ChildSpec("http", http, start_grace=60.0, shutdown_grace=5.0))
    rp = root_policy or RootPolicy()
    root = Supervisor("root", children, intensity=rp.intensity, period=rp.period)
    try:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(root.run)
            node = Node(
                settings=settings,
                info=info,
                store=store,
                auth=auth,
                resource_server=rs,
                oauth=oauth,
                sessions=sessions,
                mcp=mcp,
                asgi=asgi,
                usage=usage,
                dev_idp=dev_idp,
                notifier=notifier,
                janitor=janitor,
                relay=relay,
                revoker=revoker,
                admin_token=admin_token,
                root=running,
            )
            log.info(
                "node_ready",
                node_id=node_id,
                listen_url=info.listen_url,
                mcp_url=info.mcp_url,
                dev_idp_url=info.dev_idp_url,
            )
            if on_ready is not None:
                on_ready(node)
            task_status.started(node)
    finally:
        for own in bound:  # Hypercorn served duplicates of them: the port is free again
            own.close()
        with trio.move_on_after(2, shield=True):
            await upstream.aclose()


class _EdgeTiers:
    """The MCP edge's ear for tier changes, handed to the session manager that the edge is built
    on: bound once, to the edge, as soon as the edge exists (before anything runs)."""

    def __init__(self) -> None:
        self._edge: McpEdge | None = None

    def bind(self, edge: McpEdge) -> McpEdge:
        if self._edge is not None:
            msg = "the MCP edge's tier changes are bound once, and they are already bound"
            raise RuntimeError(msg)
        self._edge = edge
        return edge

    def tier_changed(self, user_id: str, tier: str) -> None:
        """A user's tier changed: list_changed on the user's streams here."""
        if self._edge is not None:
            self._edge.tier_changed(user_id, tier)


def _store(settings: Settings, dsn: str, *, node_id: str, policy: StorePolicy | None) -> Store:
    """The node's store: gated (nothing reads or commits before the schema child made the schema
    current), its write queue journaled in the data folder."""
    policy = policy or StorePolicy(
        write_wait=settings.db_wait,
        read_wait=min(1.0, settings.db_wait),
        answer_wait=settings.db_wait,
    )
    return Store(
        dsn,
        policy=policy,
        queue=WriteQueue(
            memory_bound=policy.memory_bound,
            journal_path=settings.data_dir / f"store-{node_id}.journal",
            journal_max_bytes=settings.journal_max_bytes,
        ),
        gated=True,
    )


def _auth_policy(settings: Settings, base_url: str, *, resource: str, legacy: str) -> AuthPolicy:
    return AuthPolicy(
        issuer=base_url,
        resource=resource,
        # the deprecated HTTP+SSE transport's URL names the same resource (docs/security.md)
        resource_aliases=(legacy,),
        access_ttl=settings.access_token_ttl,
        refresh_ttl=settings.refresh_token_ttl,
        session_ttl=settings.session_ttl,
        scopes_supported=settings.scopes_supported,
        default_scopes=settings.default_scopes,
        tier_mapping=settings.tier_mapping(),
    )


def _identity_provider(
    settings: Settings, idp_sock: socket.socket | None, bound: list[socket.socket]
) -> tuple[UpstreamConfig, DevIdP | None, socket.socket | None]:
    """The upstream identity provider: the configured one, or the development IdP on its own
    socket (bound here if not given, and added to ``bound``)."""
    dev_idp: DevIdP | None = None
    if settings.upstream is not None:
        upstream_config = settings.upstream.client_config()
    elif settings.dev_idp:
        if idp_sock is None:
            # the same port at every start of this data folder, free again once this node ends
            idp_sock = bind_dev_idp(settings)
            bound.append(idp_sock)
        idp_url = _url(idp_sock)
        dev_idp = DevIdP(idp_url, limiter=address_limiter(settings.address_limits, sign_in=True))
        if settings.dev_idp_exposed:  # allowed by dev_idp_allow_public_insecure only
            log.warning(
                "dev_idp_exposed", setting="dev_idp_allow_public_insecure", note=DEV_IDP_EXPOSED
            )
        upstream_config = UpstreamConfig(
            idp_url,
            f"{idp_url}/authorize",
            f"{idp_url}/token",
            "steward",
            f"{idp_url}/userinfo",
            f"{idp_url}/revoke",
            discovery=False,  # in this process, every endpoint known
        )
    else:
        msg = "no upstream identity provider is configured and the development IdP is off ([upstream] or dev_idp = true)"
        raise ValueError(msg)
    return upstream_config, dev_idp, idp_sock


def _readiness(
    store: Store, upstream: UpstreamClient, embedded_postgres: PostmasterKeeper | None
) -> Callable[[], Awaitable[dict[str, Any]]]:
    """``/readyz``: the embedded PostgreSQL (if any), the database and its schema, and the
    identity provider's discovery."""

    async def database_readiness() -> dict[str, Any]:
        reason = store.unready_reason()
        if reason is not None:
            connected = store.statistics().connected
            return {"database": "migrating" if connected else "unreachable", "reason": reason}
        try:
            pending = [m.version for m in await pending_migrations(store)]
        except StoreUnavailable as exc:
            return {"database": "unreachable", "reason": str(exc)}
        if pending:
            return {"database": "ok", "pending_migrations": pending, "reason": "migrations pending"}
        return {"database": "ok", "pending_migrations": []}

    # each check answers its fields, with "reason" while it is not ready; /readyz is ready when
    # no check gives a reason (another child of the tree adds its own check here)
    readiness_checks: list[Callable[[], Awaitable[dict[str, Any]]]] = [database_readiness]
    if embedded_postgres is not None:
        keeper = embedded_postgres

        async def postgres_readiness() -> dict[str, Any]:
            postmaster = keeper.status()
            fields: dict[str, Any] = {"postgres": postmaster.as_dict()}
            if not postmaster.up:
                fields["reason"] = f"the embedded PostgreSQL is {postmaster.state.value}" + (
                    f": {postmaster.error}" if postmaster.error else ""
                )
            return fields

        readiness_checks.insert(0, postgres_readiness)

    async def idp_readiness() -> dict[str, Any]:
        # reported, not a reason: without discovery a node still serves what is signed in
        if upstream.ready:
            return {"identity_provider": "ok"}
        return {
            "identity_provider": "discovering",
            "identity_provider_problem": upstream.discovery_problem,
        }

    readiness_checks.append(idp_readiness)

    async def readiness() -> dict[str, Any]:
        report: dict[str, Any] = {}
        reasons: list[str] = []
        for check in readiness_checks:
            fields = await check()
            if "reason" in fields:
                reasons.append(fields.pop("reason"))
            report.update(fields)
        return {"ready": not reasons, **report, **({"reasons": reasons} if reasons else {})}

    return readiness


async def _make_schema_current(store: Store, settings: Settings, auth: AuthService) -> None:
    with store.schema_work():
        await migrate(store)
    store.open_gate()
    await _register_configured_clients(settings, auth)
    log.info("schema_current")


def session_policy_of(settings: Settings) -> SessionPolicy:
    """The session policy the settings configure (the upstream refresh's lead, floor, backoff)."""
    return SessionPolicy(
        refresh_lead=settings.upstream_refresh_lead,
        refresh_lead_fraction=settings.upstream_refresh_lead_fraction,
        refresh_floor=settings.upstream_refresh_floor,
        refresh_backoff_max=settings.upstream_refresh_backoff_max,
    )


def janitor_policy(settings: Settings) -> JanitorPolicy:
    """The janitor's sweeps, with the usage rollups kept for the configured windows."""
    return JanitorPolicy(
        retention=usage_rules(
            days=settings.usage_retention_days,
            minute_hours=settings.usage_minute_retention_hours,
        )
    )


def usage_query(store: Store, settings: Settings) -> UsageQuery:
    """The query layer over the usage rollups (the admin API's and ``steward usage``'s)."""
    return UsageQuery(
        store, minute_retention=datetime.timedelta(hours=settings.usage_minute_retention_hours)
    )


def tier_limit(tier: TierSettings) -> TierLimit:
    quota = None if tier.tool_call_quota is None else parse_quota(tier.tool_call_quota)
    return TierLimit(
        tier.requests_per_minute,
        tier.burst,
        tier.max_streams,
        quota,
        tier.max_sessions,
        tier.initialize_per_minute,
    )


async def _register_configured_clients(settings: Settings, auth: AuthService) -> None:
    for client in settings.clients:
        metadata: dict[str, Any] = {"redirect_uris": list(client.redirect_uris)}
        if client.client_name:
            metadata["client_name"] = client.client_name
        if client.scope:
            metadata["scope"] = client.scope
        await auth.register_client(metadata, source="config", client_id=client.client_id)


def write_ready_file(path: Path, node: Node) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(node.info.ready_document(), indent=2))
    tmp.replace(path)
