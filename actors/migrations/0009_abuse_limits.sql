-- Bounds on what anonymous callers and one user can add (docs/security.md, "Abuse limits").
-- A user's live transport sessions are counted on every initialize (max_sessions per tier).
CREATE INDEX transport_sessions_live_user_idx ON transport_sessions (user_id) WHERE ended_at IS NULL;
-- The retention of registered clients without a grant: found by age, checked against grants
-- and authorization requests in flight without a scan of either.
CREATE INDEX oauth_clients_unused_idx ON oauth_clients ((coalesce(fetched_at, created_at)))
    WHERE source IN ('dynamic', 'metadata_document');
CREATE INDEX grants_client_idx ON grants (client_id);
CREATE INDEX authorization_requests_client_idx ON authorization_requests (client_id);
