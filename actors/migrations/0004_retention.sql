-- Indexes for the retention sweep (actors/_store_retention.py) and for the cascades it sets off.
-- A grant's deletion cascades to its connections and authorization codes: without an index on
-- their grant_id each cascade would scan the whole table (the partial index on open
-- connections does not cover closed ones, which are the ones still there when a grant goes).
CREATE INDEX connections_grant_idx ON connections (grant_id);
CREATE INDEX authorization_codes_grant_idx ON authorization_codes (grant_id);

-- Ended grants, found by the time they ended (or were last seen, for those without an end).
CREATE INDEX grants_retention_idx ON grants ((coalesce(ended_at, last_seen_at)))
    WHERE status IN ('ended', 'revoked', 'expired', 'reauth_required');

CREATE INDEX transport_sessions_ended_idx ON transport_sessions (ended_at)
    WHERE ended_at IS NOT NULL;
CREATE INDEX nodes_dead_idx ON nodes (heartbeat_at) WHERE status = 'dead';
