-- API keys and call ownership (issue 8). A key is shown once (`vg_<id>_<secret>`); only the
-- SHA-256 of its secret is stored. Times are Unix epoch ms.
CREATE TABLE IF NOT EXISTS api_keys (
    id          TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL,
    label       TEXT,
    secret_hash TEXT NOT NULL,
    admin       INTEGER NOT NULL DEFAULT 0,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
CREATE INDEX IF NOT EXISTS api_keys_user ON api_keys(user_id);
-- The user a call belongs to (its creator's key; inbound: the owner of the called number).
ALTER TABLE calls ADD COLUMN user_id TEXT;
CREATE INDEX IF NOT EXISTS calls_user ON calls(user_id, created_at);
