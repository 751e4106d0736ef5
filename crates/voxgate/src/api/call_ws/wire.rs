//! Seed 002 (`002_f6c4bd0cf22adb87.txt`, "WebSocket Commands"): the JSON commands of `/call`.
//! The only place this API's command JSON lives. Events are written in `adapter.rs`.

use serde::Deserialize;

/// `option` of `invite` / `accept`. Fields beyond the seed are voxgate extensions, documented in
/// the README: `sampleRate` (PCM only, Hz), `bargeIn`, `bargeInMs`, `vad`.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct InviteOption {
    pub caller: Option<String>,
    pub callee: Option<String>,
    pub offer: Option<String>,
    pub codec: Option<String>,
    #[serde(alias = "samplerate", alias = "sample_rate")]
    pub sample_rate: Option<u32>,
    pub asr: Option<EngineOption>,
    pub tts: Option<EngineOption>,
    pub barge_in: Option<bool>,
    pub barge_in_ms: Option<u32>,
    pub vad: Option<VadOption>,
    /// `X-` headers for the INVITE (on `/call/sip`), name → value.
    pub headers: Option<std::collections::BTreeMap<String, String>>,
}

/// `vad` (a voxgate extension): how the caller's turn is endpointed. Unknown fields are ignored,
/// so that clients written for other servers' `vad` objects still connect.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct VadOption {
    /// Adaptive endpointing (default true): 300 ms of silence after a complete sentence,
    /// 1,200 ms after a hesitation, `minSilenceMs` otherwise (`voxgate_call::turns`).
    pub adaptive: Option<bool>,
    /// Silence that ends an utterance, ms (100–5,000; default the server's `vad.min_silence_ms`).
    pub min_silence_ms: Option<u32>,
}

/// `asr` / `tts` objects: `provider` picks the engine; `enabled: false` turns ASR off.
#[derive(Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct EngineOption {
    pub provider: Option<String>,
    pub enabled: Option<bool>,
    pub speaker: Option<String>,
    pub voice: Option<String>,
}

/// One command. `command` selects the variant.
#[derive(Debug, Deserialize, PartialEq)]
#[serde(tag = "command", rename_all = "camelCase", deny_unknown_fields)]
pub enum Command {
    Invite {
        #[serde(default)]
        option: Option<InviteOption>,
    },
    Accept {
        #[serde(default)]
        option: Option<InviteOption>,
    },
    /// voxgate extension: early media for a ringing inbound SIP call (183 Session Progress with
    /// our SDP answer): `tts`/`play` are heard before `accept`. `option` as `accept`'s.
    Progress {
        #[serde(default)]
        option: Option<InviteOption>,
    },
    #[serde(rename_all = "camelCase")]
    Tts {
        text: String,
        #[serde(default)]
        speaker: Option<String>,
        #[serde(default)]
        play_id: Option<String>,
        #[serde(default)]
        auto_hangup: Option<bool>,
        #[serde(default)]
        streaming: Option<bool>,
        #[serde(default)]
        end_of_stream: Option<bool>,
        #[serde(default)]
        option: Option<EngineOption>,
    },
    #[serde(rename_all = "camelCase")]
    Play {
        url: String,
        #[serde(default)]
        auto_hangup: Option<bool>,
        #[serde(default)]
        play_id: Option<String>,
    },
    Hangup {
        #[serde(default)]
        reason: Option<String>,
        #[serde(default)]
        initiator: Option<String>,
        /// voxgate extension: `X-` headers for the SIP BYE (or CANCEL), as `invite`'s `headers`.
        #[serde(default)]
        headers: Option<std::collections::BTreeMap<String, String>>,
    },
    Interrupt {},
    Pause {},
    Resume {},
    /// voxgate extension: send DTMF keys (RFC 4733 events on SIP legs, in-band tones otherwise).
    Dtmf {
        #[serde(alias = "digit")]
        digits: String,
    },
    /// voxgate extension: blind transfer of a SIP call (REFER, RFC 3515) to `target`.
    Refer {
        #[serde(alias = "callee")]
        target: String,
    },
    Candidate {
        #[serde(default)]
        candidates: Vec<String>,
    },
    /// voxgate extension: accept the transfer the far end asked for (a `transfer` event with
    /// state `requested`, SIP REFER received): voxgate calls the target.
    AcceptTransfer {},
    /// voxgate extension: refuse it (the far end hears 603 Declined).
    RejectTransfer {},
}

/// The command names this endpoint knows.
pub const COMMANDS: [&str; 14] = [
    "invite",
    "accept",
    "progress",
    "tts",
    "play",
    "hangup",
    "interrupt",
    "pause",
    "resume",
    "candidate",
    "dtmf",
    "refer",
    "acceptTransfer",
    "rejectTransfer",
];
