//! The store (DESIGN.md "Storage"): the call core's [`CallStore`] port plus the reads the APIs
//! need. SQLite is the embedded default ([`sqlite::SqliteStore`]); PostgreSQL arrives with its own
//! backend behind the same traits. Times are Unix epoch milliseconds.

pub mod sqlite;

use async_trait::async_trait;
pub use voxgate_call::{CallRecord, CallStore, StoreError, TranscriptRecord};

/// Everything voxgate stores: the core's writes ([`CallStore`]) and the reads of the APIs.
#[async_trait]
pub trait Store: CallStore {
    /// One call by id.
    async fn call(&self, id: &str) -> Result<Option<CallRecord>, StoreError>;
    /// A call's transcript, in index order.
    async fn transcript(&self, id: &str) -> Result<Vec<TranscriptRecord>, StoreError>;
}

/// A seed-004 bot as stored. Times are Unix epoch ms.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct BotRecord {
    pub id: String,
    /// Owner (one local user until API keys exist).
    pub user_id: String,
    /// The phone number it answers, from `[bots] numbers`.
    pub number: String,
    pub goal: String,
    pub webhook: String,
    pub context: Option<String>,
    /// As requested (`elevenlabs:emma`, `piper:joe`, ...).
    pub voice: Option<String>,
    /// Where `action: transfer` sends the caller when the reply names no `transfer_to`.
    pub transfer_to: Option<String>,
    /// What the bot says when it answers (none: it waits for the caller).
    pub greeting: Option<String>,
    /// The HMAC-SHA256 key of `X-Voxgate-Signature`.
    pub secret: String,
    pub status: String,
    pub created_at: i64,
}

/// One webhook turn of a bot's call.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct TurnRecord {
    pub call_id: String,
    pub index: i64,
    pub bot_id: String,
    /// What the caller said (utterances merged into this turn, in order).
    pub user_text: String,
    pub llm_suggestion: Option<String>,
    /// The `say` the bot spoke (the apology when the webhook failed).
    pub reply: Option<String>,
    /// `continue`, `hangup` or `transfer`.
    pub action: Option<String>,
    /// Webhook latency, ms (all attempts).
    pub webhook_ms: Option<i64>,
    /// 408 for a timeout, the HTTP status of a non-2xx answer, 502 for an answer without `say`.
    pub error_code: Option<i64>,
    pub error: Option<String>,
    pub created_at: i64,
}

/// Why a bot could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BotCreateError {
    #[error("this user already has {0} bots, the limit")]
    TooMany(u32),
    #[error("no phone number is free: add numbers to [bots] numbers")]
    NoNumber,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Bots, their turns and usage counters.
#[async_trait]
pub trait BotStore: Send + Sync {
    /// Creates `bot` with the first number of `pool` that no bot has, unless its user already has
    /// `max_per_user` bots. Returns the bot with its number.
    async fn bot_create(
        &self,
        bot: &BotRecord,
        pool: &[String],
        max_per_user: u32,
    ) -> Result<BotRecord, BotCreateError>;
    /// A user's bots, oldest first.
    async fn bots(&self, user_id: &str) -> Result<Vec<BotRecord>, StoreError>;
    async fn bot(&self, id: &str) -> Result<Option<BotRecord>, StoreError>;
    async fn bot_by_number(&self, number: &str) -> Result<Option<BotRecord>, StoreError>;
    /// Deletes a bot (its number becomes free); `false` when there was none.
    async fn bot_delete(&self, id: &str) -> Result<bool, StoreError>;
    /// Records that `call_id` ran `bot_id`.
    async fn bot_call_added(&self, call_id: &str, bot_id: &str, at: i64) -> Result<(), StoreError>;
    async fn turn_added(&self, t: &TurnRecord) -> Result<(), StoreError>;
    /// A call's turns, in order.
    async fn turns(&self, call_id: &str) -> Result<Vec<TurnRecord>, StoreError>;
    /// Adds one to a counter and returns its new value.
    async fn usage_add(&self, scope: &str, period: &str) -> Result<i64, StoreError>;
    /// A counter's value (0 when never counted).
    async fn usage(&self, scope: &str, period: &str) -> Result<i64, StoreError>;
}

/// A seed-001 agent call (`POST /outbound-call`). Times are Unix epoch ms.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct AgentCallRecord {
    pub call_id: String,
    pub user_id: String,
    /// The dialled number, normalised (`+` and digits).
    pub number: String,
    /// The system prompt.
    pub prompt: String,
    pub first_message: String,
    pub created_at: i64,
}

/// One turn of an agent's conversation.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct AgentTurnRecord {
    pub call_id: String,
    /// 0, 1, 2 ... in conversation order.
    pub index: i64,
    /// `agent` (what the agent said) or `caller` (a final transcript it answered).
    pub role: String,
    /// The caller's words, or all the agent generated for this turn.
    pub text: String,
    /// Agent turns: what the caller heard, cut at the interruption position (the history the
    /// LLM sees next); the whole text when not interrupted.
    pub heard: Option<String>,
    pub interrupted: bool,
    /// `end_call` or `transfer` when the agent called a tool.
    pub tool: Option<String>,
    /// Agent turns, ms from the caller's end of speech (the start of the silence that ended the
    /// utterance): to the end of the utterance being detected (endpointing: the `silence`
    /// event), to the final transcript, to the LLM's first token, to the first audio sent.
    pub endpoint_ms: Option<i64>,
    pub asr_ms: Option<i64>,
    pub llm_first_ms: Option<i64>,
    pub first_audio_ms: Option<i64>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    /// The LLM's failure, when the agent apologised instead.
    pub error: Option<String>,
    pub created_at: i64,
}

/// Seed-001 agent calls and their turns.
#[async_trait]
pub trait AgentStore: Send + Sync {
    async fn agent_call_added(&self, a: &AgentCallRecord) -> Result<(), StoreError>;
    async fn agent_call(&self, call_id: &str) -> Result<Option<AgentCallRecord>, StoreError>;
    async fn agent_turn_added(&self, t: &AgentTurnRecord) -> Result<(), StoreError>;
    /// A call's turns, in order.
    async fn agent_turns(&self, call_id: &str) -> Result<Vec<AgentTurnRecord>, StoreError>;
}

/// An API key as stored: never the key itself, only the SHA-256 of its secret part.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct KeyRecord {
    /// The key's public id (the `ID` of `vg_ID_SECRET`).
    pub id: String,
    pub user_id: String,
    pub label: Option<String>,
    /// Lower-case hex SHA-256 of the secret part.
    #[serde(skip)]
    pub secret_hash: String,
    /// Sees and controls every user's resources.
    pub admin: bool,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// A SIP device account kept in the store (`voxgate sip-users add`): the digest HA1 values
/// (RFC 7616 §3.4.2, lower-case hex), never the password. Issue 10 point 6.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SipUserRecord {
    /// The digest username, also the user part it registers and is called by.
    pub username: String,
    /// The tenant its calls belong to.
    pub user_id: String,
    /// The realm the HA1 values were computed for (`sip.realm` then).
    pub realm: String,
    /// MD5(username:realm:password).
    pub ha1_md5: String,
    /// SHA-256(username:realm:password).
    pub ha1_sha256: String,
    pub created_at: i64,
}

/// SIP device accounts.
#[async_trait]
pub trait SipUserStore: Send + Sync {
    /// Creates the account, or replaces its credentials and tenant.
    async fn sip_user_put(&self, u: &SipUserRecord) -> Result<(), StoreError>;
    async fn sip_user(&self, username: &str) -> Result<Option<SipUserRecord>, StoreError>;
    /// All accounts, by username.
    async fn sip_users(&self) -> Result<Vec<SipUserRecord>, StoreError>;
    /// `false` when there was no such account.
    async fn sip_user_delete(&self, username: &str) -> Result<bool, StoreError>;
    async fn sip_users_exist(&self) -> Result<bool, StoreError>;
}

/// API keys.
#[async_trait]
pub trait KeyStore: Send + Sync {
    async fn key_create(&self, key: &KeyRecord) -> Result<(), StoreError>;
    async fn key(&self, id: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// Keys (revoked ones too), oldest first; one user's when `user` is given.
    async fn keys(&self, user: Option<&str>) -> Result<Vec<KeyRecord>, StoreError>;
    /// Revokes a key at `at`; `false` when there is no such key or it was revoked already.
    async fn key_revoke(&self, id: &str, at: i64) -> Result<bool, StoreError>;
    /// Whether any key was ever created (authentication is on from then on).
    async fn keys_exist(&self) -> Result<bool, StoreError>;
    /// Every user's bots, oldest first (admin listing).
    async fn all_bots(&self) -> Result<Vec<BotRecord>, StoreError>;
}
