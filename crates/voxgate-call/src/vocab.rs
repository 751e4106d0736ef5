//! The call core's vocabulary (DESIGN.md "One call core, many adapters"): what a controller asks
//! of a call ([`CallCommand`]) and what a call reports ([`CallEvent`]). Every external API (seed
//! 002 JSON, Twilio Media Streams, webhooks, Socket.IO, REST) is an adapter onto these types;
//! none of their wire names live here.

use serde::Serialize;
use voxgate_media::codec::Codec;

/// Milliseconds since the Unix epoch, the unit of every event `timestamp` (seed 002).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// How the call core treats the caller's audio and the bot's speech once the call is answered.
#[derive(Clone, Debug, PartialEq)]
pub struct MediaOptions {
    /// Run speech recognition on the caller's audio (`asrDelta`, `asrFinal`). Default true.
    pub asr: bool,
    /// Default TTS engine for this call's `tts` commands (`piper`, `flite`); the server's when
    /// `None`.
    pub tts_provider: Option<String>,
    /// Default voice for this call's `tts` commands.
    pub tts_speaker: Option<String>,
    /// Caller speech over bot audio interrupts it (barge-in). Default true.
    pub barge_in: bool,
    /// Voiced caller speech (ms of media time) that interrupts bot audio; the server's
    /// `call.barge_in_ms` when `None`.
    pub barge_in_ms: Option<u32>,
    /// Run voice activity detection for `speaking`/`silence` events. Default true; ASR and
    /// barge-in run it whatever this says. Off (with both of those off), the caller's audio only
    /// reaches the leg's audio taps: a controller that does its own listening (seed 003) pays
    /// nothing for it.
    pub vad: bool,
    /// Partial transcripts (`asrDelta`) while the caller speaks. Default true; a controller that
    /// acts on finals only (an LLM agent) turns them off and leaves the model to finals.
    pub partials: bool,
    /// Adaptive endpointing ([`crate::turns`]): the speculative transcript decides how much
    /// silence ends the caller's turn (300 ms after a complete sentence, 1,200 ms after a
    /// hesitation, [`Self::min_silence_ms`] otherwise). Default false here; `/call` sessions
    /// (unless their `vad.adaptive` is false), LLM agents and webhook bots turn it on.
    pub adaptive_endpointing: bool,
    /// Silence that ends an utterance for this call, ms (`None`: the server's
    /// `vad.min_silence_ms`, 600 ms by default). With adaptive endpointing this is the rule for
    /// transcripts that are neither complete nor hesitant.
    pub min_silence_ms: Option<u32>,
    /// Barge-in waits for words (what LiveKit calls resuming false interruptions): caller speech
    /// over bot audio *pauses* it at once (`barge_in_ms` into the speech); the utterance's
    /// transcript then decides — words that are not a backchannel ("mhm", "yeah", "okay", see
    /// [`crate::turns::is_backchannel`]) or speech still going on 1 s after the pause interrupt it
    /// (`interruption`, as without this option); a backchannel, a cough or noise (no words)
    /// resume it where it stopped (a `metrics` event `interruption.resumed` with the pause in
    /// ms). Needs ASR; default false (seed 002 interrupts at once); LLM agents turn it on.
    pub false_interruption_resume: bool,
    /// Report each speculative transcript (`AsrSpeculative`, computed 200 ms into a silence while
    /// endpointing still waits) so that the controller can start on it early. Default false;
    /// LLM agents turn it on.
    pub speculative_transcripts: bool,
}

impl Default for MediaOptions {
    fn default() -> Self {
        MediaOptions {
            asr: true,
            tts_provider: None,
            tts_speaker: None,
            barge_in: true,
            barge_in_ms: None,
            vad: true,
            partials: true,
            adaptive_endpointing: false,
            min_silence_ms: None,
            false_interruption_resume: false,
            speculative_transcripts: false,
        }
    }
}

/// Answer the call's leg: an inbound call that rings (SIP), or a leg that is already connected
/// (a `/call` WebSocket, a Twilio stream). Seed 002 `invite` on `/call` and `accept` everywhere.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct AnswerOptions {
    /// Caller and callee as the application names them (stored with the call; the leg's own
    /// values are used when absent).
    pub caller: Option<String>,
    pub callee: Option<String>,
    /// An SDP offer given by the application (kept for `/call/lists`; legs negotiate their own).
    pub offer: Option<String>,
    /// The codec the leg should use or prefer: a `/call` WebSocket's binary audio codec, the first
    /// codec of a SIP answer. The core never codes audio itself; it hands this to the leg.
    pub codec: Option<Codec>,
    pub media: MediaOptions,
}

/// Place a call through the configured [`crate::Dialer`] (SIP): seed 002 `invite` on `/call/sip`,
/// seed 003 `/pbx/call`, seed 001 `/outbound-call`.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct DialOptions {
    /// A `sip:` URI, or a number sent through the first trunk. Required by the SIP dialer.
    pub callee: Option<String>,
    /// Caller id (the From user); the trunk's `caller_id` when absent.
    pub caller: Option<String>,
    /// Codec to offer first.
    pub codec: Option<Codec>,
    pub media: MediaOptions,
    /// Extension headers for the far end, name → value, in order (SIP: `X-` headers on the
    /// INVITE; the adapter validates them).
    pub headers: Vec<(String, String)>,
}

/// A `tts` command: speak `text`, sentence by sentence as it is synthesised.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct TtsRequest {
    pub text: String,
    pub speaker: Option<String>,
    /// The same `play_id` as a track still being produced appends to it; another (or none)
    /// interrupts what is playing.
    pub play_id: Option<String>,
    /// Hang up once the track has been played out (heard, where the leg reports playout).
    pub auto_hangup: bool,
    /// `text` is a piece of a stream (LLM tokens): sentences are spoken as they complete.
    pub streaming: bool,
    /// The stream is complete: speak what is left.
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

/// The default length of a DTMF key (and of the pause after it), ms.
pub const DTMF_MS: u32 = 100;

/// What a controller asks of a call.
#[derive(Clone, Debug, PartialEq)]
pub enum CallCommand {
    /// Answer the leg (see [`AnswerOptions`]).
    Answer(AnswerOptions),
    /// Early media: let a ringing inbound caller hear bot audio before the call is answered
    /// (SIP `183 Session Progress` carrying our SDP answer, RFC 3261 §13.3.1.1 and RFC 3960's
    /// gateway model). `tts`, `play` and `audio` are heard from then on; [`CallCommand::Answer`]
    /// later sends the same SDP in the 200 OK and the audio goes on. Caller audio is not
    /// transcribed before the answer. Legs without such signalling refuse it (`error` 400).
    EarlyMedia(AnswerOptions),
    /// Place a call (see [`DialOptions`]).
    Dial(DialOptions),
    Tts(TtsRequest),
    Play(PlayRequest),
    /// End the call. `reason` and `initiator` appear in the `hangup` event (defaults `hangup`,
    /// `user`); an unanswered inbound SIP call is refused with the matching status (README).
    /// `headers` (name, value) go on the leg's hang-up signalling where it has any (SIP: `X-`
    /// headers on the BYE or CANCEL, validated by the adapter that took them).
    Hangup {
        reason: Option<String>,
        initiator: Option<String>,
        headers: Vec<(String, String)>,
    },
    /// Stop bot audio at once (`interruption`, `trackEnd`).
    Interrupt,
    Pause,
    Resume,
    /// Send DTMF keys (`0-9 * # A-D`), each `duration_ms` long (40-2000, default
    /// [`DTMF_MS`]) and as long apart: RFC 4733 events where the leg supports them, in-band tones
    /// otherwise.
    SendDtmf {
        keys: String,
        duration_ms: u32,
    },
    /// Blind transfer (SIP REFER) to a `sip:` URI or a number.
    Transfer(String),
    /// The application's decision on a transfer the far end asked for ([`EventKind::Transfer`]
    /// with state `requested`, a SIP REFER received, RFC 3515): accept (the leg calls the
    /// target and, once it answers, the call goes on with it) or refuse.
    TransferReply {
        accept: bool,
    },
    /// A marker after the bot audio queued so far: `mark` is reported when that audio has been
    /// played out (Twilio `mark`, seed 003 `checkPoint`).
    Mark(String),
    /// Queue 16 kHz mono samples after the bot audio already queued, as one track that never
    /// interrupts (seed 003 `audio`: the application streams its own audio). Callers should send
    /// whole 20 ms frames (multiples of 320 samples): a track's last frame is padded with silence.
    Audio(Vec<i16>),
}

/// What a call reports. `timestamp` is epoch ms at emission; other times are epoch ms too.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CallEvent {
    pub timestamp: i64,
    pub kind: EventKind,
}

impl CallEvent {
    /// An event stamped now.
    pub fn now(kind: EventKind) -> Self {
        CallEvent {
            timestamp: now_ms(),
            kind,
        }
    }
}

/// The event vocabulary. `track_id` is the call id for caller-side events (speech, DTMF) and the
/// bot track (its `playId`, or a generated id) for playback events.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum EventKind {
    /// An inbound call rings for this call's controller; answer with [`CallCommand::Answer`].
    Incoming {
        track_id: String,
        caller: String,
        callee: String,
        /// The SDP offer (empty for a late offer or a non-SIP leg).
        sdp: String,
        /// The far end's extension headers (SIP `X-` headers of the INVITE), name → value.
        headers: Vec<(String, String)>,
    },
    /// The callee is ringing (SIP 180/183); `early_media` when 183 carried SDP.
    Ringing {
        track_id: String,
        early_media: bool,
    },
    /// A transfer the far end asked for (SIP REFER received, RFC 3515): `state` is `requested`
    /// (answer with [`CallCommand::TransferReply`]), `rejected`, `ringing` (the target rings),
    /// `completed` (the target answered: the call goes on with it, the transferor is hung up)
    /// or `failed` (`code`: the target's SIP status; the call goes on with the transferor).
    Transfer {
        track_id: String,
        target: String,
        state: String,
        referred_by: Option<String>,
        code: Option<u16>,
    },
    /// The call is answered; `sdp` is the SIP answer (ours or the far end's).
    Answer {
        track_id: String,
        sdp: Option<String>,
    },
    Hangup {
        reason: String,
        initiator: String,
    },
    /// The caller started speaking (VAD), at `start_time`.
    Speaking {
        track_id: String,
        start_time: i64,
    },
    /// The caller stopped: silent since `start_time` for `duration` ms (endpointing).
    Silence {
        track_id: String,
        start_time: i64,
        duration: u64,
    },
    /// A partial transcript of the utterance in progress.
    AsrDelta {
        track_id: String,
        index: u32,
        start_time: i64,
        end_time: i64,
        text: String,
    },
    /// The transcript the final of utterance `index` will have if the caller's current silence
    /// ends the utterance ([`MediaOptions::speculative_transcripts`]); the caller may speak on,
    /// and then a longer utterance gets its own. A controller may start work on it (an LLM
    /// request) and keep it when the `asrFinal` of the same `index` has the same text.
    AsrSpeculative {
        track_id: String,
        index: u32,
        start_time: i64,
        end_time: i64,
        text: String,
    },
    /// The final transcript of one utterance (`index` counts from 1).
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
    /// The first frame of a bot track went out.
    TrackStart {
        track_id: String,
        play_id: Option<String>,
    },
    /// The bot track finished (or was interrupted: `duration` = position), ms.
    TrackEnd {
        track_id: String,
        play_id: Option<String>,
        duration: u64,
    },
    /// Bot audio stopped by `interrupt`, a new track, or barge-in; `position` is the ms of the
    /// track the caller heard.
    Interruption {
        track_id: String,
        play_id: Option<String>,
        position: u64,
    },
    /// Playout reached a [`CallCommand::Mark`].
    Mark {
        name: String,
    },
    /// Bad input or a failed engine; the call goes on. `sender`: `command`, `media`, `asr`,
    /// `tts`, `play`, `dtmf`, `sip`, ...
    Error {
        track_id: String,
        sender: String,
        error: String,
        code: Option<u16>,
    },
    /// A measurement: `ttfb.tts.<engine>`, `ttfb.asr.<engine>`, `audio_dropped`, `rtp`, ...
    Metrics {
        key: String,
        duration: u64,
        data: serde_json::Value,
    },
}
