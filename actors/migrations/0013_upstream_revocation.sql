-- Upstream revocation (docs/sessions.md, "Ending a grant upstream"): once its grant ends, an
-- upstream_tokens row is marked and the revoker (actors/_revocation.py) revokes its tokens at
-- the identity provider (RFC 7009) and deletes the row. The claim of a row moves
-- revoke_next_at to the next attempt's time, so a node that dies mid-call leaves it to another
-- node after the backoff; past revoke_give_up the row is deleted unrevoked (audited).
ALTER TABLE upstream_tokens
    ADD COLUMN revoke_requested_at timestamptz,       -- set in the transaction that ends the grant
    ADD COLUMN revoke_next_at      timestamptz,       -- the next attempt, at the earliest
    ADD COLUMN revoke_attempts     integer NOT NULL DEFAULT 0;
CREATE INDEX upstream_tokens_revoke_idx ON upstream_tokens (revoke_next_at)
    WHERE revoke_requested_at IS NOT NULL;

-- Grants that ended before this migration kept their ciphertext: theirs is revoked now too.
UPDATE upstream_tokens SET revoke_requested_at = now(), revoke_next_at = now()
WHERE grant_id IN (SELECT grant_id FROM grants WHERE status NOT IN ('active', 'refreshing'));
