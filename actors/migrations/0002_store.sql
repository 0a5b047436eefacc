-- Ids of journaled write groups already applied: a journal replayed after a crash applies once.
CREATE TABLE store_applied_ops (
    op_id      uuid PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()   -- retention: deleted after 7 days
);
CREATE INDEX store_applied_ops_time_idx ON store_applied_ops (applied_at);
