-- Calls and their transcripts (issue 2). Times are Unix epoch milliseconds.
CREATE TABLE IF NOT EXISTS calls (
    id               TEXT PRIMARY KEY NOT NULL,
    transport        TEXT NOT NULL,
    caller           TEXT,
    callee           TEXT,
    codec            TEXT,
    created_at       INTEGER NOT NULL,
    answered_at      INTEGER,
    ended_at         INTEGER,
    hangup_reason    TEXT,
    hangup_initiator TEXT
);
CREATE TABLE IF NOT EXISTS transcripts (
    call_id    TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    idx        INTEGER NOT NULL,
    start_ms   INTEGER,
    end_ms     INTEGER,
    text       TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (call_id, idx)
);
CREATE INDEX IF NOT EXISTS calls_created_at ON calls(created_at);
