-- Bounds on what anonymous callers and one user can add (docs/security.md, "Abuse limits").
-- A user's live transport sessions are counted on every initialize (max_sessions per tier).
CREATE INDEX transport_sessions_live_user_idx ON transport_sessions (user_id) WHERE ended_at IS NULL;
-- The retention of registered clients without a grant: found by age, checked against grants
-- and authorization requests in flight without a scan of either.
CREATE INDEX oauth_clients_unused_idx ON oauth_clients ((coalesce(fetched_at, created_at)))
    WHERE source IN ('dynamic', 'metadata_document');
CREATE INDEX grants_client_idx ON grants (client_id);
CREATE INDEX authorization_requests_client_idx ON authorization_requests (client_id);

-- The condition of a transport session's insert (actors/_sessions.py): true while the user holds
-- fewer than max_sessions live ones; otherwise it refuses the statement (SQLSTATE STW01), which
-- the store reports to that one write while the rest of its batch commits. Counted in the
-- inserting transaction, it sees the batch's earlier inserts; it reads at most max_sessions
-- index entries.
CREATE FUNCTION steward_session_slot(p_user text, p_max integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    IF (SELECT count(*) FROM (SELECT 1 FROM transport_sessions
                              WHERE user_id = p_user AND ended_at IS NULL LIMIT p_max) AS live) >= p_max THEN
        RAISE EXCEPTION 'max_sessions (%) reached', p_max USING ERRCODE = 'STW01';
    END IF;
    RETURN true;
END
$$;
