-- Indexes for lookups on the request path that 0001 left to sequential scans.
-- A refresh finds the successor of a rotated refresh token (reuse detection, grace window).
CREATE INDEX tokens_parent_idx ON tokens (parent_hash) WHERE parent_hash IS NOT NULL;
-- Revoking a user closes every open connection of that user.
CREATE INDEX connections_open_user_idx ON connections (user_id) WHERE closed_at IS NULL;
-- Deleting a transport session closes its connections.
CREATE INDEX connections_session_idx ON connections (session_id) WHERE session_id IS NOT NULL;
