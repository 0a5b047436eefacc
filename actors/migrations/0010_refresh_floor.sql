-- Refreshes that fit any token lifetime (docs/sessions.md, "When the token keeper refreshes").
-- access_issued_at: when the access token was received; its lifetime is access_expires_at minus
-- this, and the refresh lead is bounded by a fraction of it. Rows from before this migration take
-- their last write (updated_at); a row inserted at sign-in takes the database's now().
-- refresh_not_before: no refresh of the grant starts before this, on any node (the floor between
-- two refreshes, doubled while the IdP keeps answering short lifetimes, and after a failed one).
-- short_lifetimes: how many refreshes in a row were answered with a lifetime too short for the
-- floor (the backoff's exponent); a normal answer resets it.
ALTER TABLE upstream_tokens
    ADD COLUMN access_issued_at timestamptz,
    ADD COLUMN refresh_not_before timestamptz,
    ADD COLUMN short_lifetimes integer NOT NULL DEFAULT 0;
UPDATE upstream_tokens SET access_issued_at = updated_at;
ALTER TABLE upstream_tokens
    ALTER COLUMN access_issued_at SET DEFAULT now(),
    ALTER COLUMN access_issued_at SET NOT NULL;
