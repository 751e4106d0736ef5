-- Seed 004 bots (issue 7): bots with their phone number and webhook, every webhook turn of their
-- calls, and usage counters for limits (calls per bot per day). Times are Unix epoch ms.
CREATE TABLE IF NOT EXISTS bots (
    id          TEXT PRIMARY KEY NOT NULL,
    user_id     TEXT NOT NULL,
    number      TEXT NOT NULL UNIQUE,
    goal        TEXT NOT NULL,
    webhook     TEXT NOT NULL,
    context     TEXT,
    voice       TEXT,
    transfer_to TEXT,
    greeting    TEXT,
    secret      TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bots_user ON bots(user_id);
-- Which bot a call ran (a call's transcript is in `transcripts`, its turns below).
CREATE TABLE IF NOT EXISTS bot_calls (
    call_id    TEXT PRIMARY KEY NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    bot_id     TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS bot_calls_bot ON bot_calls(bot_id, created_at);
CREATE TABLE IF NOT EXISTS bot_turns (
    call_id        TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    idx            INTEGER NOT NULL,
    bot_id         TEXT NOT NULL,
    user_text      TEXT NOT NULL,
    llm_suggestion TEXT,
    reply          TEXT,
    action         TEXT,
    webhook_ms     INTEGER,
    error_code     INTEGER,
    error          TEXT,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (call_id, idx)
);
-- Counters for limits, shared by every node that uses this store: `scope` names what is counted
-- (`bot:ID:calls`), `period` the window (`2026-11-26` for a UTC day).
CREATE TABLE IF NOT EXISTS usage_counters (
    scope  TEXT NOT NULL,
    period TEXT NOT NULL,
    count  INTEGER NOT NULL,
    PRIMARY KEY (scope, period)
);
