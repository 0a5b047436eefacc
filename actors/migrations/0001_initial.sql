-- Steward's schema. Every table that belongs to a user carries user_id so the schema can be
-- distributed by user later (see docs/architecture.md §8). Every table that grows has a
-- retention rule, applied by the janitor (noted per table).

CREATE TABLE users (
    user_id        text PRIMARY KEY,              -- issuer-scoped subject: "<issuer>|<sub>"
    issuer         text NOT NULL,
    subject        text NOT NULL,
    email          text,
    tier           text NOT NULL DEFAULT 'free',
    revoked_at     timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (issuer, subject)
);

CREATE TABLE oauth_clients (
    client_id                  text PRIMARY KEY,
    client_secret_hash         bytea,            -- NULL for public clients
    client_name                text,
    redirect_uris              text[] NOT NULL,
    grant_types                text[] NOT NULL DEFAULT ARRAY['authorization_code', 'refresh_token'],
    token_endpoint_auth_method text NOT NULL DEFAULT 'none',
    scope                      text,
    source                     text NOT NULL,    -- 'dynamic' | 'metadata_document' | 'config'
    metadata                   jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    fetched_at                 timestamptz      -- metadata documents: when last fetched
);

-- A grant is a user session: one user through one MCP client.
CREATE TABLE grants (
    grant_id      uuid PRIMARY KEY,
    user_id       text NOT NULL REFERENCES users (user_id),
    client_id     text NOT NULL REFERENCES oauth_clients (client_id),
    resource      text NOT NULL,
    status        text NOT NULL DEFAULT 'active'
                  CHECK (status IN ('active', 'refreshing', 'reauth_required', 'revoked', 'expired', 'ended')),
    status_reason text,
    tier          text NOT NULL,
    scopes        text[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    ended_at      timestamptz                     -- retention: deleted 30 days after ended_at
);
CREATE INDEX grants_user_idx ON grants (user_id, status);
CREATE INDEX grants_sweep_idx ON grants (expires_at) WHERE status IN ('active', 'refreshing');

-- Our own tokens: only SHA-256 hashes are stored. A family is one refresh-token chain.
CREATE TABLE token_families (
    family_id   uuid PRIMARY KEY,
    grant_id    uuid NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
    user_id     text NOT NULL,
    revoked_at  timestamptz,
    revoke_reason text,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX token_families_grant_idx ON token_families (grant_id);

CREATE TABLE tokens (
    token_hash   bytea PRIMARY KEY,
    kind         text NOT NULL CHECK (kind IN ('access', 'refresh')),
    family_id    uuid NOT NULL REFERENCES token_families (family_id) ON DELETE CASCADE,
    grant_id     uuid NOT NULL,
    user_id      text NOT NULL,
    client_id    text NOT NULL,
    resource     text NOT NULL,
    scopes       text[] NOT NULL,
    parent_hash  bytea,                           -- the refresh token this one was rotated from
    issued_at    timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    first_used_at timestamptz,                    -- refresh tokens: when the successor was first used
    rotated_at   timestamptz,                     -- refresh tokens: when it was exchanged
    revoked_at   timestamptz                      -- retention: deleted 1 day after expires_at
);
CREATE INDEX tokens_family_idx ON tokens (family_id);
CREATE INDEX tokens_expiry_idx ON tokens (expires_at);

-- Upstream IdP tokens, AES-GCM encrypted; key_id names the key so keys can rotate.
CREATE TABLE upstream_tokens (
    grant_id           uuid PRIMARY KEY REFERENCES grants (grant_id) ON DELETE CASCADE,
    user_id            text NOT NULL,
    key_id             text NOT NULL,
    access_ciphertext  bytea NOT NULL,
    refresh_ciphertext bytea,
    access_expires_at  timestamptz NOT NULL,
    refresh_generation bigint NOT NULL DEFAULT 0,  -- bumped on each refresh: single-flight re-read
    refresh_lease_until timestamptz,               -- a node refreshing holds this lease (single flight)
    refresh_lease_owner text,
    updated_at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX upstream_tokens_key_idx ON upstream_tokens (key_id);
CREATE INDEX upstream_tokens_expiry_idx ON upstream_tokens (access_expires_at);

-- 2025-era transport sessions (Mcp-Session-Id), owned by a grant.
CREATE TABLE transport_sessions (
    session_id        text PRIMARY KEY,
    grant_id          uuid NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
    user_id           text NOT NULL,
    client_id         text NOT NULL,
    protocol_version  text NOT NULL,
    client_info       jsonb NOT NULL DEFAULT '{}'::jsonb,
    capabilities      jsonb NOT NULL DEFAULT '{}'::jsonb,
    log_level         text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    last_seen_at      timestamptz NOT NULL DEFAULT now(),
    ended_at          timestamptz                  -- retention: deleted 7 days after ended_at
);
CREATE INDEX transport_sessions_grant_idx ON transport_sessions (grant_id);
CREATE INDEX transport_sessions_idle_idx ON transport_sessions (last_seen_at) WHERE ended_at IS NULL;

CREATE TABLE nodes (
    node_id        text PRIMARY KEY,
    started_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    status         text NOT NULL DEFAULT 'alive' CHECK (status IN ('alive', 'stopped', 'dead')),
    info           jsonb NOT NULL DEFAULT '{}'::jsonb   -- retention: dead nodes deleted after 7 days
);

-- One live SSE stream.
CREATE TABLE connections (
    connection_id  uuid PRIMARY KEY,
    node_id        text NOT NULL,
    grant_id       uuid NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
    user_id        text NOT NULL,
    session_id     text,                          -- transport session, when there is one
    kind           text NOT NULL CHECK (kind IN ('get', 'post', 'legacy_sse', 'listen')),
    opened_at      timestamptz NOT NULL DEFAULT now(),
    heartbeat_at   timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz,
    close_reason   text                           -- retention: deleted 7 days after closed_at
);
CREATE INDEX connections_open_node_idx ON connections (node_id) WHERE closed_at IS NULL;
CREATE INDEX connections_open_grant_idx ON connections (grant_id) WHERE closed_at IS NULL;
CREATE INDEX connections_closed_idx ON connections (closed_at) WHERE closed_at IS NOT NULL;

-- Events of resumable SSE streams (2025-era resumption with Last-Event-ID).
CREATE TABLE stream_events (
    session_id  text NOT NULL,
    stream_id   text NOT NULL,
    seq         bigint NOT NULL,
    user_id     text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),  -- retention: deleted after 1 hour
    PRIMARY KEY (session_id, stream_id, seq)
);
CREATE INDEX stream_events_created_idx ON stream_events (created_at);

-- Usage: raw events (client-made UUIDs, idempotent) and per-minute rollups.
CREATE TABLE usage_events (
    event_id    uuid PRIMARY KEY,
    user_id     text NOT NULL,
    grant_id    uuid,
    method      text NOT NULL,
    name        text,
    tier        text NOT NULL,
    outcome     text NOT NULL,
    duration_ms double precision,
    occurred_at timestamptz NOT NULL               -- retention: deleted after 7 days (rollups kept 90)
);
CREATE INDEX usage_events_time_idx ON usage_events (occurred_at);
CREATE INDEX usage_events_user_idx ON usage_events (user_id, occurred_at);

CREATE TABLE usage_rollups (
    user_id    text NOT NULL,
    minute     timestamptz NOT NULL,
    method     text NOT NULL,
    calls      bigint NOT NULL DEFAULT 0,
    errors     bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, minute, method)          -- retention: deleted after 90 days
);
CREATE INDEX usage_rollups_minute_idx ON usage_rollups (minute);

-- Authentication audit: never a secret, only identifiers and outcomes.
CREATE TABLE auth_events (
    event_id    uuid PRIMARY KEY,
    occurred_at timestamptz NOT NULL DEFAULT now(),
    kind        text NOT NULL,                    -- sign_in, refresh, refresh_failed, revoked, reauth_required, ...
    user_id     text,
    client_id   text,
    grant_id    uuid,
    node_id     text,
    detail      jsonb NOT NULL DEFAULT '{}'::jsonb   -- retention: deleted after 90 days
);
CREATE INDEX auth_events_time_idx ON auth_events (occurred_at);
CREATE INDEX auth_events_user_idx ON auth_events (user_id, occurred_at);

-- Cross-node events, also kept as rows so a node whose LISTEN connection dropped can catch up.
CREATE TABLE cluster_events (
    seq         bigserial PRIMARY KEY,
    kind        text NOT NULL,                    -- revoke_user, revoke_grant, end_session, tier_changed, deliver
    user_id     text,
    grant_id    uuid,
    payload     jsonb NOT NULL DEFAULT '{}'::jsonb,
    origin_node text,
    created_at  timestamptz NOT NULL DEFAULT now()   -- retention: deleted after 1 hour
);
CREATE INDEX cluster_events_created_idx ON cluster_events (created_at);
