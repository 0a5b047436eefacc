-- A user's tier is the user's (docs/security.md, "Tiers"): every grant of the user reads
-- users.tier. idp_tier is what the identity provider's claim last mapped to (at a sign-in or an
-- upstream refresh); tier_override is an operator's set-tier, which wins until it is cleared.
-- users.tier is always coalesce(tier_override, idp_tier) once either is known.
ALTER TABLE users ADD COLUMN idp_tier text, ADD COLUMN tier_override text;
UPDATE users SET idp_tier = tier;
-- grants.tier and authorization_requests.tier keep the tier at the sign-in, for the record;
-- nothing reads them to apply a limit.
