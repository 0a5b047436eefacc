-- Usage an operator can read (docs/operating.md, "Usage"): the rollups carry the tool, resource
-- or prompt name and the tier, the duration sum and a fixed latency distribution, so that calls,
-- errors, p50 and p99 follow for any user, tier, name and window (actors/_usage_query.py).
-- b0..b11 count the requests whose duration fell at or under 5, 10, 25, 50, 100, 250, 500, 1000,
-- 2500, 5000, 10000 ms, and above (b11): actors/_usage.py LATENCY_BOUNDS_MS.
-- usage_rollups: one row per user, minute, method, name and tier (kept usage_minute_retention);
-- usage_hourly: the same per hour (kept usage_retention, 90 days unless configured).
ALTER TABLE usage_rollups
    ADD COLUMN name text NOT NULL DEFAULT '',          -- '' for a method without a name
    ADD COLUMN tier text NOT NULL DEFAULT '',          -- '' for rows written before this migration
    ADD COLUMN duration_ms double precision NOT NULL DEFAULT 0,
    ADD COLUMN b0 integer NOT NULL DEFAULT 0, ADD COLUMN b1 integer NOT NULL DEFAULT 0,
    ADD COLUMN b2 integer NOT NULL DEFAULT 0, ADD COLUMN b3 integer NOT NULL DEFAULT 0,
    ADD COLUMN b4 integer NOT NULL DEFAULT 0, ADD COLUMN b5 integer NOT NULL DEFAULT 0,
    ADD COLUMN b6 integer NOT NULL DEFAULT 0, ADD COLUMN b7 integer NOT NULL DEFAULT 0,
    ADD COLUMN b8 integer NOT NULL DEFAULT 0, ADD COLUMN b9 integer NOT NULL DEFAULT 0,
    ADD COLUMN b10 integer NOT NULL DEFAULT 0, ADD COLUMN b11 integer NOT NULL DEFAULT 0;
ALTER TABLE usage_rollups DROP CONSTRAINT usage_rollups_pkey;
ALTER TABLE usage_rollups ADD PRIMARY KEY (user_id, minute, method, name, tier);

CREATE TABLE usage_hourly (
    user_id     text NOT NULL,
    hour        timestamptz NOT NULL,
    method      text NOT NULL,
    name        text NOT NULL DEFAULT '',
    tier        text NOT NULL DEFAULT '',
    calls       integer NOT NULL DEFAULT 0,
    errors      integer NOT NULL DEFAULT 0,
    duration_ms double precision NOT NULL DEFAULT 0,
    b0 integer NOT NULL DEFAULT 0, b1 integer NOT NULL DEFAULT 0, b2 integer NOT NULL DEFAULT 0,
    b3 integer NOT NULL DEFAULT 0, b4 integer NOT NULL DEFAULT 0, b5 integer NOT NULL DEFAULT 0,
    b6 integer NOT NULL DEFAULT 0, b7 integer NOT NULL DEFAULT 0, b8 integer NOT NULL DEFAULT 0,
    b9 integer NOT NULL DEFAULT 0, b10 integer NOT NULL DEFAULT 0, b11 integer NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, hour, method, name, tier)    -- retention: usage_retention (90 days)
);
CREATE INDEX usage_hourly_hour_idx ON usage_hourly (hour);
-- the rollups written before this migration, summed per hour (UTC); from here on each request
-- adds to its minute row and its hour row in one statement
INSERT INTO usage_hourly (user_id, hour, method, name, tier, calls, errors)
SELECT user_id, date_trunc('hour', minute AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', method, '', '',
       sum(calls)::integer, sum(errors)::integer
FROM usage_rollups GROUP BY 1, 2, 3;
