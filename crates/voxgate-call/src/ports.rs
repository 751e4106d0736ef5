//! The ports the call core needs from the outside, as traits the server crate implements:
//! storage ([`CallStore`]), dialling ([`Dialer`]), audio files for `play` ([`AudioLoader`]) and the
//! speech engines ([`Speech`]).

use crate::leg::{Leg, LegPort};
use crate::vocab::DialOptions;
use async_trait::async_trait;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use voxgate_media::speech::{Synthesizer, Transcriber};
use voxgate_media::vad::{SegmenterConfig, VoiceDetector};

/// A store failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum StoreError {
    /// The record already exists (a call id used before).
    #[error("store: {0} already exists")]
    Conflict(String),
    /// The backend failed; the message is logged, API clients see a generic error.
    #[error("store: {0}")]
    Backend(String),
}

/// A call as stored. Times are Unix epoch ms.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CallRecord {
    pub id: String,
    /// The leg's transport: `websocket`, `sip`, `twilio`.
    pub transport: String,
    pub caller: Option<String>,
    pub callee: Option<String>,
    /// Codec name (`pcm`, `pcmu`, `pcma`, `g722`, `opus`).
    pub codec: Option<String>,
    pub created_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub hangup_reason: Option<String>,
    pub hangup_initiator: Option<String>,
    /// The leg's figures at its end (RTP packets, loss, jitter, RTT for SIP), JSON.
    pub quality: Option<serde_json::Value>,
    /// The user (tenant) the call belongs to.
    pub user_id: Option<String>,
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

/// What the call core writes about calls. Shared by all calls.
#[async_trait]
pub trait CallStore: Send + Sync {
    /// Records a new call.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a call with this id was stored before (ids are never
    /// reused), [`StoreError::Backend`] otherwise.
    async fn call_created(&self, call: &CallRecord) -> Result<(), StoreError>;
    /// Sets the codec, caller and callee and the answer time.
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
    /// Records the leg's figures ([`crate::LegReport`]).
    async fn call_quality(&self, id: &str, quality: &serde_json::Value) -> Result<(), StoreError>;
    /// Adds a final transcript segment.
    async fn transcript_added(&self, t: &TranscriptRecord) -> Result<(), StoreError>;
}

/// Why a call could not be placed: reported as an `error` event from `sender`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DialError {
    pub sender: &'static str,
    pub message: String,
    pub code: Option<u16>,
}

/// Places outbound calls (the SIP user agent).
#[async_trait]
pub trait Dialer: Send + Sync {
    /// Starts a call for `call_id` and returns its leg, which reports ringing, answer or failure
    /// through `port`. Must return promptly (after sending the INVITE, not after the answer).
    ///
    /// # Errors
    /// [`DialError`] when the call cannot be started (no callee, no trunk, bad URI, no port).
    async fn dial(
        &self,
        call_id: &str,
        opts: &DialOptions,
        port: LegPort,
    ) -> Result<Box<dyn Leg>, DialError>;
}

/// Fetches and decodes audio for `play`.
#[async_trait]
pub trait AudioLoader: Send + Sync {
    /// The audio behind `url` (`http(s)://`, `file://` or a server path; WAV or MP3) as 16 kHz
    /// mono samples.
    ///
    /// # Errors
    /// A message with the cause (fetch, size or decode failure) for the `error` event.
    async fn load(&self, url: &str) -> Result<Vec<i16>, String>;
}

/// Makes a fresh voice detector for each call.
pub trait VadFactory: Send + Sync {
    fn detector(&self) -> Box<dyn VoiceDetector>;
}

impl<F> VadFactory for F
where
    F: Fn() -> Box<dyn VoiceDetector> + Send + Sync,
{
    fn detector(&self) -> Box<dyn VoiceDetector> {
        self()
    }
}

/// The server's speech engines, loaded once and shared by every call.
#[derive(Clone)]
pub struct Speech {
    pub asr: Option<Arc<dyn Transcriber>>,
    /// One permit per ASR model instance. Final transcripts wait for a permit; partial ones run
    /// only when a permit is free at once, so that partials never delay finals under load.
    pub asr_slots: Arc<tokio::sync::Semaphore>,
    /// TTS engines by name (`piper`, `flite`).
    pub tts: BTreeMap<String, Arc<dyn Synthesizer>>,
    pub default_tts: String,
    pub vad: Arc<dyn VadFactory>,
}

impl Speech {
    /// The TTS engine for a request: `provider` when given, else the default.
    ///
    /// # Errors
    /// A message naming the unknown provider and the available ones.
    pub fn synthesizer(&self, provider: Option<&str>) -> Result<Arc<dyn Synthesizer>, String> {
        let name = provider
            .filter(|p| !p.is_empty())
            .unwrap_or(&self.default_tts);
        self.tts.get(name).cloned().ok_or_else(|| {
            format!(
                "tts provider `{name}` is not available (available: {})",
                self.tts.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })
    }
}

/// What every call of a node shares.
#[derive(Clone)]
pub struct CallContext {
    pub speech: Arc<Speech>,
    pub store: Arc<dyn CallStore>,
    /// Places outbound calls; `None` when SIP is disabled.
    pub dialer: Option<Arc<dyn Dialer>>,
    pub loader: Arc<dyn AudioLoader>,
    pub settings: CallSettings,
}

/// Per-call behaviour from the server configuration.
#[derive(Clone, Debug)]
pub struct CallSettings {
    /// Caller speech (ms) that interrupts bot audio (`call.barge_in_ms`).
    pub barge_in_ms: u32,
    /// The VAD's energy gate, dBFS (`vad.gate_dbfs`).
    pub vad_gate_dbfs: f32,
    pub segmenter: SegmenterConfig,
    /// Cadence of partial transcripts, ms; 0 disables (`asr.partial_interval_ms`).
    pub partial_interval_ms: u32,
    /// How long a hang-up waits for pending transcripts before `hangup` goes out
    /// (`call.drain_secs`). The transcripts are still finished and stored afterwards.
    pub drain: Duration,
    /// How long a hang-up waits for the leg to close (stop media, hand over its figures).
    pub leg_close: Duration,
}

impl Default for CallSettings {
    fn default() -> Self {
        CallSettings {
            barge_in_ms: 200,
            vad_gate_dbfs: -55.0,
            segmenter: SegmenterConfig::default(),
            partial_interval_ms: 1000,
            drain: Duration::from_secs(15),
            leg_close: Duration::from_secs(5),
        }
    }
}
