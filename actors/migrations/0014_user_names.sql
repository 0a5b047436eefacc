-- Users by name (actors/_user_names.py): an operator may name a user by the subject or the email
-- address instead of the full id, and a list shows the subject unless another user shares it.
CREATE INDEX users_subject_idx ON users (subject);
CREATE INDEX users_email_idx ON users (lower(email));
