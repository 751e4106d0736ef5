//! The call core (layer L3): one actor task per call, driven by [`CallCommand`]s and audio, and
//! speaking [`CallEvent`]s. Every external API is an adapter onto this vocabulary (DESIGN.md "One
//! call core, many adapters"); seed 002's `/call` is the first one (`crate::api::call_ws`).

pub mod actor;
pub mod registry;

use serde::Serialize;
use voxgate_media::codec::Codec;

/// Milliseconds since the Unix epoch, the unit of every event `timestamp` (seed 002).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Options of `invite`/`accept`.
#[derive(Clone, Debug, PartialEq)]
pub struct InviteOptions {
    pub caller: Option<String>,
    pub callee: Option<String>,
    /// SDP offer (WebRTC and SIP legs; unused on a WebSocket audio leg).
    pub offer: Option<String>,
    /// Codec of the binary audio in both directions.
    pub codec: Codec,
    /// Run speech recognition on the caller's audio (default true).
    pub asr: bool,
    /// Default TTS engine for this call (`piper`, `flite`), or the server default.
    pub tts_provider: Option<String>,
    /// Default voice for this call's `tts` commands.
    pub tts_speaker: Option<String>,
    /// Caller speech (ms) that interrupts bot audio; the server default when `None`.
    pub barge_in_ms: Option<u32>,
    /// Disable barge-in for this call.
    pub barge_in: bool,
}

/// A `tts` command.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TtsRequest {
    pub text: String,
    pub speaker: Option<String>,
    pub play_id: Option<String>,
    pub auto_hangup: bool,
    pub streaming: bool,
    pub end_of_stream: bool,
    pub provider: Option<String>,
}

/// A `play` command: `url` is `http(s)://`, `file://` or a path on the server; WAV or MP3.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct PlayRequest {
    pub url: String,
    pub play_id: Option<String>,
    pub auto_hangup: bool,
}

/// What an application asks of a call.
#[derive(Clone, Debug, PartialEq)]
pub enum CallCommand {
    Invite(InviteOptions),
    Accept(InviteOptions),
    Tts(TtsRequest),
    Play(PlayRequest),
    Hangup {
        reason: Option<String>,
        initiator: Option<String>,
    },
    Interrupt,
    Pause,
    Resume,
    /// Send DTMF keys (`0-9 * # A-D`): RFC 4733 events on a SIP leg, in-band tones otherwise.
    SendDtmf(String),
    /// Blind transfer (SIP REFER) to a `sip:` URI or a number (sent to the first trunk's host).
    Transfer(String),
}

/// What a call reports. `timestamp` is epoch ms at emission; other times are epoch ms too.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallEvent {
    pub timestamp: i64,
    pub kind: EventKind,
}

/// The event vocabulary (seed 002 names in the adapters).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum EventKind {
    /// An inbound SIP call for this client (seed 002 `incoming`).
    Incoming {
        track_id: String,
        caller: String,
        callee: String,
        sdp: String,
    },
    /// The callee is ringing (seed 002 `ringing`); `early_media` when 183 carried SDP.
    Ringing {
        track_id: String,
        early_media: bool,
    },
    Answer {
        track_id: String,
        sdp: Option<String>,
    },
    Hangup {
        reason: String,
        initiator: String,
    },
    Speaking {
        track_id: String,
        start_time: i64,
    },
    Silence {
        track_id: String,
        start_time: i64,
        duration: u64,
    },
    AsrDelta {
        track_id: String,
        index: u32,
        start_time: i64,
        end_time: i64,
        text: String,
    },
    AsrFinal {
        track_id: String,
        index: u32,
        start_time: i64,
        end_time: i64,
        text: String,
    },
    Dtmf {
        track_id: String,
        digit: char,
    },
    TrackStart {
        track_id: String,
        play_id: Option<String>,
    },
    TrackEnd {
        track_id: String,
        play_id: Option<String>,
        duration: u64,
    },
    Interruption {
        track_id: String,
        play_id: Option<String>,
        position: u64,
    },
    Error {
        track_id: String,
        sender: String,
        error: String,
        code: Option<u16>,
    },
    Metrics {
        key: String,
        duration: u64,
        data: serde_json::Value,
    },
}

impl CallEvent {
    pub fn now(kind: EventKind) -> Self {
        CallEvent {
            timestamp: now_ms(),
            kind,
        }
    }
}
