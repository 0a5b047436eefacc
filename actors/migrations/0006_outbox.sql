-- Cross-node delivery (docs/scaling.md, "Across nodes"): a message for something another node
-- holds (a stream, a server request awaiting its answer, a forwarded request) is a row addressed
-- to it until the node holding it claims the row with DELETE ... RETURNING.
CREATE TABLE outbox (
    message_id  bigserial PRIMARY KEY,
    -- 'session:<Mcp-Session-Id>' (its GET or legacy stream), 'listen:<connection id>',
    -- 'reply:<server request id>', 'node:<node id>' (a forwarded request), 'relay:<forward id>'
    target      text NOT NULL,
    user_id     text,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()   -- retention: deleted after 1 hour
);
CREATE INDEX outbox_target_idx ON outbox (target, message_id);
CREATE INDEX outbox_created_idx ON outbox (created_at);

-- Resource subscriptions, so that an update published on any node finds every subscriber.
CREATE TABLE resource_subscriptions (
    uri         text NOT NULL,
    target      text NOT NULL,              -- 'session:<Mcp-Session-Id>' or 'listen:<connection id>'
    user_id     text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (uri, target)               -- retention: deleted once their session or stream ended
);
CREATE INDEX resource_subscriptions_target_idx ON resource_subscriptions (target);
