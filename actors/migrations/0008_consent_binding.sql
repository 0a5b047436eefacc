-- Remembered consent is bound to the redirect URI as well as the user, the client and the scopes:
-- a request for another redirect URI of the same client, or for wider scopes, asks again.
-- Consents remembered before had no redirect URI: they are forgotten, so each user is asked once
-- more on their next authorization.
DELETE FROM consents;
ALTER TABLE consents ADD COLUMN redirect_uri text NOT NULL;
ALTER TABLE consents DROP CONSTRAINT consents_pkey;
ALTER TABLE consents ADD PRIMARY KEY (user_id, client_id, redirect_uri);
