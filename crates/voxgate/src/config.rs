//! Layered configuration (DESIGN.md habit 9): defaults < TOML file (`voxgate.toml` in the working
//! directory, or `--config PATH`) < environment (`VOXGATE_...`, nested keys joined by `__`, e.g.
//! `VOXGATE_VAD__ENGINE=silero`) < command-line flags. Validated at start-up with every problem
//! reported at once.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The whole server configuration. Every field has a default; see the README's Configuration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address to serve HTTP and WebSocket on. A non-loopback address needs authentication on
    /// (an API key exists, `auth.enabled` or `auth.jwt_secret`); otherwise the server refuses to
    /// start.
    pub listen: String,
    /// Directory for the SQLite store and call dumps (created if missing).
    pub data_dir: PathBuf,
    /// Directory holding the models fetched by `scripts/fetch-models.sh`.
    pub models_dir: PathBuf,
    /// ICE servers returned by `GET /iceservers` (seed 002).
    pub ice_servers: Vec<IceServer>,
    pub call: CallConfig,
    pub vad: VadConfig,
    pub asr: AsrConfig,
    pub tts: TtsConfig,
    pub store: StoreConfig,
    pub sip: SipConfig,
    /// The URL this server is reached at from outside (a reverse proxy, a tunnel), e.g.
    /// `https://voxgate.example.com`: TwiML's `<Stream url>` and Twilio signatures use it. Default:
    /// `http://` + `listen`.
    pub public_url: Option<String>,
    pub bots: BotsConfig,
    pub twilio: TwilioConfig,
    pub llm: LlmConfig,
    /// Seed 001 agents (`/outbound-call`).
    pub agent: AgentConfig,
    pub auth: AuthConfig,
    pub limits: LimitsConfig,
    pub pbx: PbxConfig,
    pub play: PlayConfig,
    /// Log lines on stderr: `text` (default) or `json` (one object per line, with the call id
    /// and other fields; `RUST_LOG` filters both).
    pub log_format: String,
}

/// What the `play` command may read (README "Going to production").
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PlayConfig {
    /// The only directory `play` reads local files from (paths are relative to it, or absolute
    /// inside it). Default: `<data_dir>/media`.
    pub media_dir: Option<PathBuf>,
    /// Let `play` fetch URLs whose host resolves to a loopback, private, link-local or other
    /// non-public address (off: such URLs are refused, against SSRF).
    pub allow_private: bool,
}

/// Authentication (README "Going to production"). Authentication is on once any API key was
/// created (`voxgate keys create`), or when `enabled` or `jwt_secret` is set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Require a key even before one exists (every request is then refused until one is made).
    pub enabled: bool,
    /// HS256 secret of JSON Web Tokens accepted as bearer tokens (`sub` = user id, `exp`
    /// required and checked), e.g. seed 003's `eyJhbGciOiJIUzI1NiIs...` tokens.
    pub jwt_secret: Option<String>,
}

/// Per-user rate limits and quotas; `users.<id>` overrides any of the first three for one user.
/// Rates are counted in the store (shared by nodes on one database, kept across restarts).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Outbound calls a user may start per minute (seed 001: 5), counted per UTC minute
    /// (`/pbx/call`, `/call/sip` `invite`).
    pub originations_per_minute: u32,
    /// Concurrent streaming WebSocket connections per user (seed 001: 3): `/call`, `/call/sip`.
    pub streams_per_user: u32,
    /// Concurrent calls per user (all transports).
    pub calls_per_user: u32,
    /// Concurrent calls on this server (all users).
    pub calls: u32,
    pub users: std::collections::BTreeMap<String, UserLimits>,
}

/// One user's overrides of [`LimitsConfig`].
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct UserLimits {
    pub originations_per_minute: Option<u32>,
    pub streams_per_user: Option<u32>,
    pub calls_per_user: Option<u32>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            originations_per_minute: 5,
            streams_per_user: 3,
            calls_per_user: 50,
            calls: 1000,
            users: Default::default(),
        }
    }
}

impl LimitsConfig {
    /// `(originations_per_minute, streams_per_user, calls_per_user)` for `user`.
    pub fn for_user(&self, user: &str) -> (u32, u32, u32) {
        let o = self.users.get(user).cloned().unwrap_or_default();
        (
            o.originations_per_minute
                .unwrap_or(self.originations_per_minute),
            o.streams_per_user.unwrap_or(self.streams_per_user),
            o.calls_per_user.unwrap_or(self.calls_per_user),
        )
    }
}

/// Seed 003 (`/pbx/call`, `/pbx/hangup`, Socket.IO call rooms).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct PbxConfig {
    /// Inbound numbers whose calls go to a user's Socket.IO clients (`newSession` with
    /// `type: inbound`): number (the called SIP user) → user id. The call is answered when the
    /// first socket joins its room, or refused 480 after `sip.ring_timeout_secs`.
    pub numbers: std::collections::BTreeMap<String, String>,
    /// The Socket.IO path (Engine.IO v4).
    pub socketio_path: String,
}

impl Default for PbxConfig {
    fn default() -> Self {
        PbxConfig {
            numbers: Default::default(),
            socketio_path: "/socket.io".into(),
        }
    }
}

/// Seed 001 agents: an LLM holds a phone conversation (`POST /outbound-call`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AgentConfig {
    /// The token budget of one reply.
    pub max_tokens: u32,
    pub temperature: f32,
    /// Said once when the LLM has not produced a word this long after the caller's final
    /// transcript (a busy or slow model), ms; 0: never.
    pub hold_ms: u64,
    pub hold_phrase: String,
    /// Said when the LLM fails (timeout, error, full queue).
    pub apology: String,
    /// Said by `end_call` when the model gives no message.
    pub goodbye: String,
    /// Where the `transfer` tool sends the caller (a `sip:` URI or a number); without it the
    /// model is not offered the tool.
    pub transfer_to: Option<String>,
    /// Conversation turns kept in the LLM's context (older ones are dropped, the prompt stays).
    pub history_turns: usize,
    /// TTS engine and voice of agents (the server's defaults when unset).
    pub tts_provider: Option<String>,
    pub tts_speaker: Option<String>,
    /// Voiced caller speech over the agent that pauses it, ms (default 120, shorter than
    /// `call.barge_in_ms`: a pause costs little, the agent resumes when no words follow, and a
    /// real interruption is heard sooner).
    pub barge_in_ms: u32,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_tokens: 120,
            temperature: 0.4,
            hold_ms: 1500,
            hold_phrase: "One moment.".into(),
            apology: "Sorry, I did not catch that. Could you say it again?".into(),
            goodbye: "Goodbye!".into(),
            transfer_to: None,
            history_turns: 20,
            tts_provider: None,
            tts_speaker: None,
            barge_in_ms: 120,
        }
    }
}

/// Seed 004 bots: phone numbers, webhook loop, limits.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct BotsConfig {
    /// The phone numbers bots get, in order (E.164 or any dialable string). A SIP INVITE to a
    /// bot's number runs that bot. Default: ten fictional numbers (+1 202 555 0100 to 0109, a
    /// range reserved for fiction) so that bots work out of the box on SIP; set your DIDs.
    pub numbers: Vec<String>,
    /// Bots one user may have (seed 004: 10).
    pub max_per_user: u32,
    /// Calls one bot takes per UTC day (seed 004: 100); the next caller hears `refusal`.
    pub calls_per_day: u32,
    /// Webhook requests per second per bot (seed 004: 5); faster utterances are merged.
    pub webhook_rate_per_sec: u32,
    /// The webhook's time to answer a turn, ms (seed 004: 3 s), retries included.
    pub webhook_timeout_ms: u64,
    /// What the bot says when the webhook fails (timeout, non-2xx, no `say`).
    pub apology: String,
    /// What a caller over the daily limit hears before the call ends.
    pub refusal: String,
}

/// Twilio (seed 004's `/voice` and `/stream/{bot_id}`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TwilioConfig {
    /// The account's auth token: when set, `POST /voice` requires a valid `X-Twilio-Signature`
    /// (HMAC-SHA1, Twilio's documented scheme) and answers 403 otherwise.
    pub auth_token: Option<String>,
}

/// The LLM of seed-001 agents and of the bots' `llm_suggestion`: an OpenAI-compatible
/// chat-completions endpoint (OpenAI, vLLM, llama.cpp's server, Ollama) at `base_url`, or, without
/// one, the offline model (`offline`): llama.cpp's server (the xllamacpp wheel in `python`'s venv)
/// started by voxgate as a supervised child process on loopback, loaded once and shared by every
/// call.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LlmConfig {
    /// e.g. `https://api.openai.com/v1` or `http://127.0.0.1:8081/v1`.
    pub base_url: Option<String>,
    pub api_key: Option<String>,
    /// The `model` of each request (a local llama.cpp server ignores it).
    pub model: String,
    /// Time to the first byte of an answer and between streamed chunks, ms (the bots'
    /// suggestion is asked before each webhook request, so keep it short).
    pub timeout_ms: u64,
    /// Retries of a request that failed before answering (connection, 429, 5xx, timeout), with
    /// exponential backoff from 200 ms.
    pub retries: u32,
    /// Without `base_url`, run the offline model. Default true.
    pub offline: bool,
    /// The offline model (GGUF); default `<models_dir>/llm/qwen2.5-0.5b-instruct-q4_k_m.gguf`
    /// (`scripts/fetch-models.sh run`).
    pub model_path: Option<PathBuf>,
    /// The Python with xllamacpp installed; default `~/.cache/voxgate/llm-venv/bin/python`
    /// (`scripts/install-deps.sh`).
    pub python: Option<PathBuf>,
    /// Decoding threads of the offline model. 1: on a shared 2-core machine 2 threads collapse
    /// decoding (SPEECH.md).
    pub threads: u32,
    /// Context per request slot, tokens.
    pub context: u32,
    /// Requests the offline model decodes at once (llama.cpp slots).
    pub parallel: u32,
    /// Requests that may wait for a slot; more fail at once (the agent says its holding phrase).
    pub queue: u32,
    /// How long the offline model may take to load, ms.
    pub start_timeout_ms: u64,
}

impl Default for BotsConfig {
    fn default() -> Self {
        BotsConfig {
            numbers: (100..110).map(|n| format!("+12025550{n}")).collect(),
            max_per_user: 10,
            calls_per_day: 100,
            webhook_rate_per_sec: 5,
            webhook_timeout_ms: 3000,
            apology: "Sorry, I could not get an answer just now. Could you say that again?".into(),
            refusal: "Sorry, this line has reached its limit of calls for today. Please call again tomorrow. Goodbye.".into(),
        }
    }
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            base_url: None,
            api_key: None,
            model: "gpt-4o-mini".into(),
            timeout_ms: 1500,
            retries: 1,
            offline: true,
            model_path: None,
            python: None,
            threads: 1,
            context: 2048,
            parallel: 1,
            queue: 8,
            start_timeout_ms: 120_000,
        }
    }
}

/// The SIP user agent (RFC 3261) and its RTP media (`/call/sip`, seed 002).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SipConfig {
    /// Serve SIP at all.
    pub enabled: bool,
    /// UDP and TCP address for SIP, `ip:port` (port 0 picks a free one).
    pub listen: String,
    /// Also accept SIP over TCP on the same port.
    pub tcp: bool,
    /// SIP over TLS (RFC 3261 §26.2): address to listen on, e.g. `0.0.0.0:5061`, with
    /// `tls_cert` and `tls_key` (PEM files). Off unless all three are set.
    pub tls_listen: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) trusted when dialling out over TLS (`transport = "tls"` on a
    /// trunk, `;transport=tls` or `sips:` callees). Default: the system store
    /// (`/etc/ssl/certs/ca-certificates.crt`).
    pub tls_ca: Option<PathBuf>,
    /// Address written in Contact headers and SDP when it differs from the bound one (NAT).
    pub public_address: Option<String>,
    /// Local IP for RTP sockets; default: the SIP listen IP.
    pub rtp_address: Option<String>,
    /// RTP port range (even ports for RTP, the next odd port for RTCP).
    pub rtp_port_min: u16,
    pub rtp_port_max: u16,
    /// Codecs we offer and accept, in preference order: `pcmu`, `pcma`, `g722`, `opus`.
    pub codecs: Vec<String>,
    /// Packetisation time we send and offer, ms (10-60).
    pub ptime_ms: u32,
    /// Seconds an inbound call may wait for a `/call/sip` client to `accept` it (then 480), and
    /// an outbound call may ring (then CANCEL, `hangup` reason `no_answer`).
    pub ring_timeout_secs: u64,
    /// Jitter buffer bounds, ms.
    pub jitter_min_ms: u32,
    pub jitter_max_ms: u32,
    /// Carrier trunks and PBXs calls go out through (and may come in from).
    pub trunks: Vec<SipTrunk>,
    /// Which inbound called numbers voxgate answers, and who handles them.
    pub numbers: Vec<SipNumber>,
    /// Addresses (IPs or CIDRs, e.g. `203.0.113.0/24`) whose out-of-dialog requests (INVITE,
    /// OPTIONS, ...) are accepted; the trunks' hosts are always accepted. Others get 403 and
    /// nothing is kept. Default: loopback only.
    pub allow: Vec<String>,
    /// Inbound calls waiting for a webhook-announced client at once; more get 503.
    pub max_pending: usize,
    /// Session interval our INVITEs ask for, seconds (RFC 4028 `Session-Expires`; the far end
    /// may shorten it to its `Min-SE`); 0 asks for none. A call whose refreshes stop is ended.
    pub session_expires_secs: u32,
    /// Shortest session interval an inbound INVITE may ask for, seconds (RFC 4028 `Min-SE`;
    /// shorter gets 422). At least 90.
    pub min_se_secs: u32,
    /// SIP devices that may REGISTER and call in from anywhere with digest credentials
    /// (RFC 3261 §22; MD5 or SHA-256, RFC 8760). Empty: REGISTER is refused (405).
    pub users: Vec<SipUser>,
    /// Digest realm of `users`' challenges.
    pub realm: String,
    /// The digest algorithms challenged, most preferred first (`MD5`, `SHA-256`): a client uses
    /// the first it supports (RFC 8760 §2.4), and many phones read only the first.
    pub digest_algorithms: Vec<String>,
    /// SRTP with SDES keys (RFC 4568, RFC 3711): `optional` (default: an offer with `a=crypto`
    /// gets SRTP, a plain one plain RTP; our offers are plain), `required` (our offers are
    /// `RTP/SAVP`, plain offers get 488), `off` (`RTP/SAVP` offers get 488).
    pub srtp: String,
}

/// A SIP device account (`[[sip.users]]`): `username` is also the user part it registers and
/// is called by (`invite` with `callee` = the username).
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SipUser {
    pub username: String,
    pub password: String,
}

/// A trunk: where `invite` sends calls whose callee is a number, with optional registration.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SipTrunk {
    pub name: String,
    /// `host[:port]` of the carrier or PBX.
    pub host: String,
    /// `udp` (default), `tcp` or `tls` (RFC 3261 §26.2; the trunk's certificate must chain to
    /// `sip.tls_ca`, and match its host name or IP).
    pub transport: String,
    /// Digest credentials (answering 401/407 challenges); none for IP-authenticated trunks.
    pub username: Option<String>,
    pub password: Option<String>,
    /// Digest realm, when the trunk's challenge should be answered only for this realm.
    pub realm: Option<String>,
    /// Send REGISTER (with digest auth) and refresh it before it expires.
    pub register: bool,
    /// Requested registration lifetime, seconds.
    pub register_expires: u32,
    /// Send OPTIONS to the trunk this often (seconds) and report it up/down in `/health`;
    /// 0 disables.
    pub keepalive_secs: u64,
    /// Caller id (From user) when `invite` gives no `caller`.
    pub caller_id: Option<String>,
    /// Number rewriting for outbound callees: strip this prefix, then add `add_prefix`.
    pub strip_prefix: Option<String>,
    pub add_prefix: Option<String>,
    /// Offer SRTP (`RTP/SAVP` with an SDES key) on calls through this trunk, whatever
    /// `sip.srtp` says.
    pub srtp: bool,
}

/// An inbound number: `number` is the called user (Request-URI/To user) or `*` for any.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct SipNumber {
    pub number: String,
    /// Webhook told of each incoming call (POST JSON); the application then connects to
    /// `/call/sip?id=<callId>` and sends `accept`. Without a webhook, the call goes to the
    /// longest-waiting `/call/sip` client that has not placed a call.
    pub webhook: Option<String>,
    /// The user the number's calls belong to: only that user's (or an admin's) `/call/sip`
    /// clients take them. Default: `local`, the user of a server without authentication.
    pub user: Option<String>,
}

/// One STUN/TURN server, in the seed-002 `/iceservers` shape.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub credential: Option<String>,
}

/// Per-call behaviour.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CallConfig {
    /// `dump` when the `/call` query does not say (seed 002 default: true).
    pub dump_default: bool,
    /// Caller speech needed to interrupt bot audio (barge-in), ms.
    pub barge_in_ms: u32,
    /// Largest binary WebSocket message accepted, bytes.
    pub max_binary_bytes: usize,
    /// Seconds a call may take to finish its pending transcripts after the client disconnects.
    pub drain_secs: u64,
}

/// Voice-activity detection.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct VadConfig {
    /// `earshot` (built in, default) or `silero` (ONNX, `models/silero_vad.onnx`).
    pub engine: String,
    /// Speech probability threshold, 0..1.
    pub threshold: f32,
    /// Voiced time before `speaking`, ms.
    pub min_speech_ms: u32,
    /// Silence that ends an utterance (endpointing), ms.
    pub min_silence_ms: u32,
    /// Below this level (dBFS) for 200 ms the VAD model rests until the audio gets louder;
    /// -200 disables the gate.
    pub gate_dbfs: f32,
}

/// Speech recognition.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AsrConfig {
    /// `moonshine` (default) or `none`.
    pub engine: String,
    /// Model instances shared by all calls (each runs one utterance at a time).
    pub instances: usize,
    /// Interval between partial (`asrDelta`) results while the caller speaks, ms; 0 disables.
    pub partial_interval_ms: u32,
    /// Intra-op threads of each Moonshine instance, 1-16 (default 1). 2 transcribe a 7 s
    /// utterance in 0.40 s instead of 0.50 s on an idle 2-core machine (its final ~120 ms sooner
    /// at one call), but with 4 talking calls they cost ~20 % more CPU and gain nothing, and 4
    /// agent calls answer ~80 ms later; idle threads sleep, they do not spin.
    pub threads: usize,
}

/// Speech synthesis.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TtsConfig {
    /// Default engine: `piper` (default) or `flite`. Both are loaded when available; a `tts`
    /// command may pick one with `option.provider`.
    pub engine: String,
    /// The `espeak-ng` program Piper takes phonemes from.
    pub espeak_ng: PathBuf,
    /// The `flite` program.
    pub flite: PathBuf,
    /// Piper voice model; default `<models_dir>/piper/en_US-joe-medium.onnx`.
    pub piper_model: Option<PathBuf>,
    /// Piper model instances.
    pub instances: usize,
    /// Intra-op threads of each Piper instance (default 2: a reply's first sentence is
    /// synthesised ~1.7x sooner on a 2-core machine; idle threads sleep, they do not spin).
    pub threads: usize,
    /// Synthesised pieces (clauses, sentences of at most 200 characters) kept per engine, so that
    /// a repeated prompt or an agent's first message (synthesised while the call rings) costs
    /// no synthesis when spoken; 0 keeps none. Default 64 (a few MB).
    pub cache_pieces: usize,
}

/// Where calls and transcripts are stored.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:PATH`; default `sqlite:<data_dir>/voxgate.db`.
    pub database_url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: "./data".into(),
            models_dir: "./models".into(),
            ice_servers: Vec::new(),
            call: CallConfig::default(),
            vad: VadConfig::default(),
            asr: AsrConfig::default(),
            tts: TtsConfig::default(),
            store: StoreConfig::default(),
            sip: SipConfig::default(),
            public_url: None,
            bots: BotsConfig::default(),
            agent: AgentConfig::default(),
            twilio: TwilioConfig::default(),
            llm: LlmConfig::default(),
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            pbx: PbxConfig::default(),
            play: PlayConfig::default(),
            log_format: "text".into(),
        }
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        SipConfig {
            enabled: true,
            listen: "127.0.0.1:5060".into(),
            tcp: true,
            tls_listen: None,
            tls_cert: None,
            tls_key: None,
            tls_ca: None,
            public_address: None,
            rtp_address: None,
            rtp_port_min: 20000,
            rtp_port_max: 30000,
            codecs: vec!["pcmu".into(), "pcma".into(), "g722".into(), "opus".into()],
            ptime_ms: 20,
            ring_timeout_secs: 30,
            jitter_min_ms: 20,
            jitter_max_ms: 200,
            trunks: Vec::new(),
            numbers: vec![SipNumber {
                number: "*".into(),
                webhook: None,
                user: None,
            }],
            allow: vec!["127.0.0.0/8".into(), "::1/128".into()],
            max_pending: 256,
            session_expires_secs: 1800,
            min_se_secs: 90,
            users: Vec::new(),
            realm: "voxgate".into(),
            digest_algorithms: vec!["MD5".into(), "SHA-256".into()],
            srtp: "optional".into(),
        }
    }
}

impl Default for SipTrunk {
    fn default() -> Self {
        SipTrunk {
            name: String::new(),
            host: String::new(),
            transport: "udp".into(),
            username: None,
            password: None,
            realm: None,
            register: false,
            register_expires: 3600,
            keepalive_secs: 30,
            caller_id: None,
            strip_prefix: None,
            add_prefix: None,
            srtp: false,
        }
    }
}

impl Default for CallConfig {
    fn default() -> Self {
        CallConfig {
            dump_default: true,
            barge_in_ms: 200,
            max_binary_bytes: 64 * 1024,
            drain_secs: 15,
        }
    }
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            engine: "earshot".into(),
            threshold: 0.5,
            min_speech_ms: 60,
            min_silence_ms: 600,
            gate_dbfs: -55.0,
        }
    }
}

impl Default for AsrConfig {
    fn default() -> Self {
        AsrConfig {
            engine: "moonshine".into(),
            instances: 2,
            partial_interval_ms: 1000,
            threads: 1,
        }
    }
}

impl Default for TtsConfig {
    fn default() -> Self {
        TtsConfig {
            engine: "piper".into(),
            espeak_ng: "espeak-ng".into(),
            flite: "flite".into(),
            piper_model: None,
            instances: 1,
            threads: 2,
            cache_pieces: 64,
        }
    }
}

/// Command-line overrides (the highest layer).
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub models_dir: Option<PathBuf>,
}

/// An IP address or CIDR as a network (`10.0.0.1` is `10.0.0.1/32`).
pub fn parse_net(s: &str) -> Option<ipnet::IpNet> {
    let s = s.trim();
    s.parse::<ipnet::IpNet>()
        .ok()
        .or_else(|| s.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from))
}

impl Config {
    /// Loads the layers. `file`: an explicit TOML file (must exist); otherwise `voxgate.toml` in
    /// the working directory is used when present.
    ///
    /// # Errors
    /// A message listing every problem (unknown keys, wrong types, invalid values).
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Config, String> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        match file {
            Some(f) if !f.exists() => {
                return Err(format!("config file {} does not exist", f.display()))
            }
            Some(f) => fig = fig.merge(Toml::file_exact(f)),
            None => fig = fig.merge(Toml::file("voxgate.toml")),
        }
        fig = fig
            // VOXGATE_CACHE is the scripts' cache directory (and the offline LLM's venv), not a
            // setting.
            .merge(
                Env::prefixed("VOXGATE_")
                    .filter(|k| k != "cache")
                    .split("__"),
            )
            .merge(Serialized::defaults(overrides));
        let cfg: Config = fig.extract().map_err(|e| {
            e.into_iter()
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
                .join("\n")
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values; returns every problem at once.
    ///
    /// # Errors
    /// The problems, one per line.
    pub fn validate(&self) -> Result<(), String> {
        let mut errs = Vec::new();
        if let Err(e) = self.listen.parse::<SocketAddr>() {
            errs.push(format!(
                "listen: `{}` is not an address:port ({e})",
                self.listen
            ));
        }
        if !["text", "json"].contains(&self.log_format.as_str()) {
            errs.push(format!(
                "log_format: `{}` is not one of text, json",
                self.log_format
            ));
        }
        if !["earshot", "silero"].contains(&self.vad.engine.as_str()) {
            errs.push(format!(
                "vad.engine: `{}` is not one of earshot, silero",
                self.vad.engine
            ));
        }
        if !(0.0..=1.0).contains(&self.vad.threshold) {
            errs.push(format!(
                "vad.threshold: {} is outside 0..1",
                self.vad.threshold
            ));
        }
        if !["moonshine", "none"].contains(&self.asr.engine.as_str()) {
            errs.push(format!(
                "asr.engine: `{}` is not one of moonshine, none",
                self.asr.engine
            ));
        }
        if !["piper", "flite"].contains(&self.tts.engine.as_str()) {
            errs.push(format!(
                "tts.engine: `{}` is not one of piper, flite",
                self.tts.engine
            ));
        }
        if self.asr.instances == 0 || self.tts.instances == 0 {
            errs.push("asr.instances and tts.instances must be at least 1".into());
        }
        if !(1..=16).contains(&self.asr.threads) || !(1..=16).contains(&self.tts.threads) {
            errs.push("asr.threads and tts.threads must be 1-16".into());
        }
        if let Some(u) = &self.store.database_url {
            if !u.starts_with("sqlite:") {
                errs.push(format!(
                    "store.database_url: `{u}` is not supported yet (sqlite:PATH)"
                ));
            }
        }
        self.validate_sip(&mut errs);
        self.validate_bots(&mut errs);
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.join("\n"))
        }
    }

    fn validate_bots(&self, errs: &mut Vec<String>) {
        if let Some(u) = &self.public_url {
            match url::Url::parse(u) {
                Ok(p) if ["http", "https"].contains(&p.scheme()) => {}
                _ => errs.push(format!("public_url: `{u}` is not an http(s) URL")),
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, n) in self.bots.numbers.iter().enumerate() {
            if n.trim().is_empty() || n.len() > 64 {
                errs.push(format!("bots.numbers[{i}]: `{n}` is not a number"));
            }
            if !seen.insert(n) {
                errs.push(format!("bots.numbers[{i}]: `{n}` is listed twice"));
            }
        }
        if self.bots.webhook_rate_per_sec == 0 || self.bots.webhook_timeout_ms < 100 {
            errs.push("bots.webhook_rate_per_sec must be at least 1 and bots.webhook_timeout_ms at least 100".into());
        }
        if let Some(u) = &self.llm.base_url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                errs.push(format!("llm.base_url: `{u}` is not an http(s) URL"));
            }
        }
        let l = &self.llm;
        if !(1..=64).contains(&l.threads) || !(1..=16).contains(&l.parallel) {
            errs.push("llm.threads must be 1-64 and llm.parallel 1-16".into());
        }
        if !(256..=131_072).contains(&l.context) {
            errs.push(format!(
                "llm.context: {} is not 256-131072 tokens",
                l.context
            ));
        }
    }

    /// The offline LLM's model file: `llm.model_path`, or the default under `models_dir`.
    pub fn llm_model_path(&self) -> PathBuf {
        self.llm.model_path.clone().unwrap_or_else(|| {
            self.models_dir
                .join("llm")
                .join("qwen2.5-0.5b-instruct-q4_k_m.gguf")
        })
    }

    /// The Python that runs the offline LLM: `llm.python`, or the venv `scripts/install-deps.sh`
    /// makes (`$VOXGATE_CACHE` or `~/.cache/voxgate`, then `llm-venv/bin/python`).
    pub fn llm_python(&self) -> PathBuf {
        self.llm.python.clone().unwrap_or_else(|| {
            let cache = std::env::var_os("VOXGATE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                        .join(".cache/voxgate")
                });
            cache.join("llm-venv/bin/python")
        })
    }

    /// The URL this server is reached at (`public_url`, or `http://` + `listen`), without a
    /// trailing slash.
    pub fn public_url(&self, bound: Option<std::net::SocketAddr>) -> String {
        match &self.public_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None => format!(
                "http://{}",
                bound.map_or(self.listen.clone(), |a| a.to_string())
            ),
        }
    }

    fn validate_sip(&self, errs: &mut Vec<String>) {
        let sip = &self.sip;
        for (i, a) in sip.allow.iter().enumerate() {
            if parse_net(a).is_none() {
                errs.push(format!(
                    "sip.allow[{i}]: `{a}` is not an IP address or CIDR (e.g. 203.0.113.0/24)"
                ));
            }
        }
        if sip.listen.parse::<SocketAddr>().is_err() {
            errs.push(format!(
                "sip.listen: `{}` is not an address:port",
                sip.listen
            ));
        }
        match (&sip.tls_listen, &sip.tls_cert, &sip.tls_key) {
            (None, None, None) => {}
            (Some(l), Some(c), Some(k)) => {
                if l.parse::<SocketAddr>().is_err() {
                    errs.push(format!("sip.tls_listen: `{l}` is not an address:port"));
                }
                for (name, f) in [("tls_cert", c), ("tls_key", k)] {
                    if !f.is_file() {
                        errs.push(format!("sip.{name}: {} is not a readable file", f.display()));
                    }
                }
            }
            _ => errs.push("sip.tls_listen, sip.tls_cert and sip.tls_key go together: set all three for SIP over TLS".into()),
        }
        if let Some(a) = &sip.rtp_address {
            if a.parse::<std::net::IpAddr>().is_err() {
                errs.push(format!("sip.rtp_address: `{a}` is not an IP address"));
            }
        }
        if let Some(a) = &sip.public_address {
            if a.parse::<std::net::IpAddr>().is_err() {
                errs.push(format!("sip.public_address: `{a}` is not an IP address"));
            }
        }
        if sip.rtp_port_min < 1024 || sip.rtp_port_max <= sip.rtp_port_min {
            errs.push(format!(
                "sip.rtp_port_min/max: {}..{} is not a range above 1023",
                sip.rtp_port_min, sip.rtp_port_max
            ));
        }
        for c in &sip.codecs {
            if !["pcmu", "pcma", "g722", "opus"].contains(&c.as_str()) {
                errs.push(format!(
                    "sip.codecs: `{c}` is not one of pcmu, pcma, g722, opus"
                ));
            }
        }
        if sip.codecs.is_empty() {
            errs.push("sip.codecs: at least one codec is needed".into());
        }
        if !(10..=60).contains(&sip.ptime_ms) {
            errs.push(format!("sip.ptime_ms: {} is outside 10..60", sip.ptime_ms));
        }
        if sip.jitter_min_ms == 0 || sip.jitter_max_ms < sip.jitter_min_ms {
            errs.push("sip.jitter_min_ms/jitter_max_ms: need 0 < min <= max".into());
        }
        for (i, u) in sip.users.iter().enumerate() {
            let token = |c: char| c.is_ascii_alphanumeric() || "-_.!~*'()&=+$,;?/".contains(c);
            if u.username.is_empty() || !u.username.chars().all(token) {
                errs.push(format!(
                    "sip.users[{i}].username: empty or not a SIP user part"
                ));
            }
            if u.password.is_empty() {
                errs.push(format!("sip.users[{i}].password: empty"));
            }
        }
        if sip.digest_algorithms.is_empty()
            || sip
                .digest_algorithms
                .iter()
                .any(|a| !["MD5", "SHA-256"].contains(&a.as_str()))
        {
            errs.push("sip.digest_algorithms: one or both of \"MD5\", \"SHA-256\"".into());
        }
        if !["off", "optional", "required"].contains(&sip.srtp.as_str()) {
            errs.push(format!(
                "sip.srtp: \"off\", \"optional\" or \"required\", not {:?}",
                sip.srtp
            ));
        }
        if sip.min_se_secs < 90 {
            errs.push("sip.min_se_secs: RFC 4028 §4 forbids less than 90 s".into());
        }
        if sip.session_expires_secs != 0 && sip.session_expires_secs < sip.min_se_secs {
            errs.push("sip.session_expires_secs: 0 (off) or at least sip.min_se_secs".into());
        }
        for (i, t) in sip.trunks.iter().enumerate() {
            if t.name.is_empty() || t.host.is_empty() {
                errs.push(format!("sip.trunks[{i}]: `name` and `host` are required"));
            }
            if !["udp", "tcp", "tls"].contains(&t.transport.as_str()) {
                errs.push(format!(
                    "sip.trunks[{i}].transport: `{}` is not one of udp, tcp, tls",
                    t.transport
                ));
            }
            if t.register && (t.username.is_none() || t.password.is_none()) {
                errs.push(format!(
                    "sip.trunks[{i}]: `register = true` needs `username` and `password`"
                ));
            }
        }
        for (i, n) in sip.numbers.iter().enumerate() {
            if n.number.is_empty() {
                errs.push(format!(
                    "sip.numbers[{i}].number: empty (use `*` for any number)"
                ));
            }
            if let Some(w) = &n.webhook {
                if !(w.starts_with("http://") || w.starts_with("https://")) {
                    errs.push(format!(
                        "sip.numbers[{i}].webhook: `{w}` is not an http(s) URL"
                    ));
                }
            }
        }
    }

    /// The effective configuration as TOML, with secrets (TURN credentials) redacted.
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        for s in &mut c.ice_servers {
            if s.credential.is_some() {
                s.credential = Some("<redacted>".into());
            }
        }
        if c.twilio.auth_token.is_some() {
            c.twilio.auth_token = Some("<redacted>".into());
        }
        if c.llm.api_key.is_some() {
            c.llm.api_key = Some("<redacted>".into());
        }
        if c.auth.jwt_secret.is_some() {
            c.auth.jwt_secret = Some("<redacted>".into());
        }
        for t in &mut c.sip.trunks {
            if t.password.is_some() {
                t.password = Some("<redacted>".into());
            }
        }
        for u in &mut c.sip.users {
            u.password = "<redacted>".into();
        }
        toml::to_string_pretty(&c).unwrap_or_else(|e| format!("# cannot render: {e}"))
    }

    /// The SQLite URL in use.
    pub fn database_url(&self) -> String {
        self.store
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite:{}", self.data_dir.join("voxgate.db").display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_loopback() {
        let c = Config::default();
        c.validate().unwrap();
        assert_eq!(c.listen, "127.0.0.1:8080");
    }

    #[test]
    fn every_problem_is_reported() {
        let c = Config {
            listen: "0.0.0.0:80800".into(),
            vad: VadConfig {
                engine: "x".into(),
                ..Default::default()
            },
            asr: AsrConfig {
                engine: "whisper".into(),
                ..Default::default()
            },
            ..Default::default()
        };
        let e = c.validate().unwrap_err();
        assert!(
            e.contains("listen") && e.contains("vad.engine") && e.contains("asr.engine"),
            "{e}"
        );
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail returns its own error type
    fn layers_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("v.toml");
        std::fs::write(&f, "listen = \"127.0.0.1:9000\"\n[vad]\nengine = \"silero\"\n[[ice_servers]]\nurls = [\"turn:x\"]\nusername = \"u\"\ncredential = \"secret\"\n[[sip.users]]\nusername = \"alice\"\npassword = \"secret2\"\n").unwrap();
        figment::Jail::expect_with(|jail| {
            jail.set_env("VOXGATE_ASR__PARTIAL_INTERVAL_MS", "500");
            let c = Config::load(
                Some(&f),
                &Overrides {
                    listen: Some("127.0.0.1:9100".into()),
                    ..Default::default()
                },
            )
            .unwrap();
            assert_eq!(c.listen, "127.0.0.1:9100");
            assert_eq!(c.vad.engine, "silero");
            assert_eq!(c.asr.partial_interval_ms, 500);
            let shown = c.to_redacted_toml();
            assert!(shown.contains("<redacted>") && !shown.contains("secret"));
            Ok(())
        });
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "lissten = 1\n").unwrap();
        assert!(Config::load(Some(&bad), &Overrides::default())
            .unwrap_err()
            .contains("lissten"));
    }
}
