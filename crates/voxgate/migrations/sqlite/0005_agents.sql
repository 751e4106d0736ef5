-- Seed 001 agents (issue 9): the prompt and first message a call was dialled with, and every
-- turn of its conversation. Times are Unix epoch ms; durations ms.
CREATE TABLE IF NOT EXISTS agent_calls (
    call_id       TEXT PRIMARY KEY NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    user_id       TEXT NOT NULL,
    number        TEXT NOT NULL,
    prompt        TEXT NOT NULL,
    first_message TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);
-- One row per turn: `role` `agent` (what the agent said; `heard` is what the caller heard before an
-- interruption) or `caller` (a final transcript the agent answered).
CREATE TABLE IF NOT EXISTS agent_turns (
    call_id          TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
    idx              INTEGER NOT NULL,
    role             TEXT NOT NULL,
    text             TEXT NOT NULL,
    heard            TEXT,
    interrupted      INTEGER NOT NULL DEFAULT 0,
    tool             TEXT,
    -- caller stopped (end of speech) → endpointed (silence event), → final transcript,
    -- → LLM first token, → first audio out
    endpoint_ms      INTEGER,
    asr_ms           INTEGER,
    llm_first_ms     INTEGER,
    first_audio_ms   INTEGER,
    prompt_tokens    INTEGER,
    completion_tokens INTEGER,
    error            TEXT,
    created_at       INTEGER NOT NULL,
    PRIMARY KEY (call_id, idx)
);
