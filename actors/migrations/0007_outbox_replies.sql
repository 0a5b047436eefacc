-- A user's answers to server requests awaiting another node's claim are bounded
-- (RelayPolicy.max_replies): this index keeps their count off a scan of the outbox.
CREATE INDEX outbox_user_replies_idx ON outbox (user_id) WHERE target LIKE 'reply:%';
