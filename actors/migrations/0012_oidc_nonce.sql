-- OpenID Connect: the nonce sent in the authorization request to the upstream IdP, as a SHA-256
-- hash (the id_token's nonce is hashed and compared). NULL for a request that sent none.
ALTER TABLE authorization_requests ADD COLUMN nonce_hash bytea;
