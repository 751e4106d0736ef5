//! The store port (DESIGN.md "Storage"): calls and transcripts. SQLite is the embedded default
//! ([`sqlite::SqliteStore`]); PostgreSQL arrives with its own backend behind the same trait.
//! Times are Unix epoch milliseconds.

pub mod sqlite;

use async_trait::async_trait;
use serde::Serialize;

/// Store failure, with the backend's message (logged; API clients see a generic 500).
#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

/// A call as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CallRecord {
    pub id: String,
    /// `websocket` for `/call`; later `sip`, `webrtc`, ...
    pub transport: String,
    pub caller: Option<String>,
    pub callee: Option<String>,
    /// Seed-002 codec name (`pcm`, `pcmu`, `pcma`, `g722`).
    pub codec: Option<String>,
    pub created_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub hangup_reason: Option<String>,
    pub hangup_initiator: Option<String>,
    /// RTP call-quality figures of a SIP call (packets, loss, jitter, RTT), JSON.
    pub quality: Option<serde_json::Value>,
}

/// One final transcript segment (`asrFinal`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TranscriptRecord {
    pub call_id: String,
    pub index: i64,
    /// Epoch ms of the utterance's start and end.
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub text: String,
    pub created_at: i64,
}

/// Persistence for calls. Implementations are shared by all calls (`Arc<dyn Store>`).
#[async_trait]
pub trait Store: Send + Sync {
    /// Records a new call (idempotent on `id`: a second create replaces nothing).
    async fn call_created(&self, call: &CallRecord) -> Result<(), StoreError>;
    /// Sets the codec, caller and callee chosen by `invite` and the answer time.
    async fn call_answered(
        &self,
        id: &str,
        codec: &str,
        caller: Option<&str>,
        callee: Option<&str>,
        at: i64,
    ) -> Result<(), StoreError>;
    /// Records the end of a call.
    async fn call_ended(
        &self,
        id: &str,
        at: i64,
        reason: &str,
        initiator: &str,
    ) -> Result<(), StoreError>;
    /// Appends a final transcript segment.
    /// Records the call-quality figures of the call's RTP leg.
    async fn call_quality(&self, id: &str, quality: &serde_json::Value) -> Result<(), StoreError>;
    async fn transcript_added(&self, t: &TranscriptRecord) -> Result<(), StoreError>;
    /// One call by id.
    async fn call(&self, id: &str) -> Result<Option<CallRecord>, StoreError>;
    /// A call's transcript, in index order.
    async fn transcript(&self, id: &str) -> Result<Vec<TranscriptRecord>, StoreError>;
}
