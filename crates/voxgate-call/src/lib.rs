//! voxgate's call core (layer L3 of `DESIGN.md`): one actor task per call, and the seam every
//! transport and API plugs into. This crate names no transport or storage crate; the compiler,
//! not a convention, keeps it that way.
//!
//! # Legs and controllers
//! - A **leg** ([`Leg`]) carries one party's audio and signalling: the `/call` WebSocket, SIP/RTP,
//!   a Twilio Media Stream. It hands the call 16 kHz mono 20 ms [`voxgate_media::AudioFrame`]s
//!   and [`LegEvent`]s through its [`LegPort`] and takes bot frames and [`LegCommand`]s. Codecs,
//!   framing, resampling and jitter buffers belong to the leg.
//! - A **controller** is whoever sends [`CallCommand`]s through a [`CallHandle`] and reads
//!   [`CallEvent`]s as a [`Subscriber`]: the seed-002 JSON protocol, the webhook bot, later
//!   Socket.IO, REST and LLM agents. A call may have any number of subscribers, each with its own
//!   bounded queue ([`subscriber`]); a call may start with no socket at all
//!   ([`CallCore::originate`]).
//! - **Answer and dial** are two commands: [`CallCommand::Answer`] answers the leg the call has
//!   (an inbound SIP call, a connected WebSocket or Twilio stream); [`CallCommand::Dial`] places
//!   a call through the [`Dialer`] port.
//! - **Ports** ([`ports`]) are what the core needs from outside: [`CallStore`], [`Dialer`],
//!   [`AudioLoader`], [`Speech`].
//!
//! # Modules
//! - [`vocab`]: commands and events.
//! - [`leg`]: the leg interface.
//! - [`subscriber`]: event (and audio) delivery with per-subscriber queues.
//! - [`handle`]: the call handle controllers use.
//! - [`ports`]: store, dialer, audio loader, speech engines, settings.
//! - [`core`]: [`CallCore`], the live calls of a node.
//! - [`turns`]: turn-taking rules on transcripts (adaptive endpointing, backchannels).
//! - `actor`: the call's state machine (private; see [`CallCore::start`]).
//! - `observe`: the calls' Prometheus measurements through the `metrics` facade (private; the
//!   names are listed in its module doc and the README).
//!
//! The modules form a DAG: `vocab` ← `leg`, `subscriber`, `observe` ← `ports`, `handle` ←
//! `actor` ← `core` (each imports only modules to its left).

mod actor;
pub mod core;
pub mod handle;
pub mod leg;
mod observe;
pub mod ports;
pub mod subscriber;
pub mod turns;
pub mod vocab;

#[cfg(test)]
mod tests;

pub use crate::core::{CallCore, CallInfo, CallSpec, StartError};
pub use actor::{MAX_VAD_BACKLOG, PENDING_ASR, PENDING_SENTENCES};
pub use handle::{CallHandle, TryCommandError, INBOX};
pub use leg::{
    CallGone, Leg, LegCaps, LegCommand, LegEvent, LegInfo, LegPort, LegReply, LegReport,
    PendingLeg, LEG_QUEUE,
};
pub use ports::{
    AudioLoader, CallContext, CallRecord, CallSettings, CallStore, DialError, Dialer, Speech,
    StoreError, TranscriptRecord, VadFactory,
};
pub use subscriber::{AudioTrack, Delivery, Subscriber, Subscription, Unsubscribed};
pub use vocab::{
    now_ms, AnswerOptions, CallCommand, CallEvent, DialOptions, EventKind, MediaOptions,
    PlayRequest, TtsRequest, DTMF_MS,
};
