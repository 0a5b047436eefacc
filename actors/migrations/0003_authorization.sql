-- The authorization flow's server-side state. All short-lived; the janitor deletes expired rows.

-- One /authorize in flight: created when Steward redirects to the upstream IdP, completed by the
-- callback and the consent. request_hash is the SHA-256 of the state Steward sent upstream.
CREATE TABLE authorization_requests (
    request_hash      bytea PRIMARY KEY,
    client_id         text NOT NULL,
    redirect_uri      text NOT NULL,
    client_state      text NOT NULL,
    code_challenge    text NOT NULL,
    scopes            text[] NOT NULL,
    resource          text NOT NULL,
    key_id            text NOT NULL,
    verifier_ciphertext bytea NOT NULL,     -- Steward's own PKCE verifier for the upstream IdP
    user_id           text,                 -- set by the callback
    tier              text,
    upstream_ciphertext bytea,              -- upstream tokens between callback and consent
    csrf_hash         bytea,                -- the consent form's CSRF token (also in a __Host- cookie)
    created_at        timestamptz NOT NULL DEFAULT now(),
    expires_at        timestamptz NOT NULL,  -- retention: deleted once expired
    consumed_at       timestamptz
);
CREATE INDEX authorization_requests_expiry_idx ON authorization_requests (expires_at);

-- Authorization codes issued to MCP clients: hashed, one-time, short-lived.
CREATE TABLE authorization_codes (
    code_hash      bytea PRIMARY KEY,
    grant_id       uuid NOT NULL REFERENCES grants (grant_id) ON DELETE CASCADE,
    user_id        text NOT NULL,
    client_id      text NOT NULL,
    redirect_uri   text NOT NULL,
    code_challenge text NOT NULL,
    resource       text NOT NULL,
    scopes         text[] NOT NULL,
    expires_at     timestamptz NOT NULL,     -- retention: deleted once expired
    used_at        timestamptz
);
CREATE INDEX authorization_codes_expiry_idx ON authorization_codes (expires_at);

-- A user's consent to an MCP client (MCP-R30: per user and client), remembered.
CREATE TABLE consents (
    user_id    text NOT NULL,
    client_id  text NOT NULL REFERENCES oauth_clients (client_id) ON DELETE CASCADE,
    scopes     text[] NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, client_id)
);
